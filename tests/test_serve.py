"""``kdfast serve`` on a tiny exported student, on a free loopback port: concurrent requests are batched (fewer
batches than requests, as the server reports them) and each gets its own answer; bad requests are a 4xx with a JSON
error and the server keeps serving. The Triton repository's config asks for dynamic batching and instance groups."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import train_tiny_student

from kdfast.serve.predict import Classifier

SENTENCES = ["The book that John wrote was read by everyone.", "Books.", "Who did you see Mary and?",
             "She sang , and he danced .", "It is raining cats and dogs", "the the the"]
MAX_TEXTS, MAX_CHARS = 4, 100


@pytest.fixture(scope="module")
def student(cola_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kdfast.export.onnx import ExportConfig
    from kdfast.export.onnx import run as export

    out = train_tiny_student(tmp_path_factory.mktemp("serve-runs") / "student", cola_dir)
    export(ExportConfig(run_dir=out, int8=False, max_check_sentences=16, progress=False))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, body: bytes | None = None) -> tuple[int, Any]:
    """(status, body decoded from JSON, or as text when it is not JSON) of a GET, or of a POST of ``body`` as JSON."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode()


@pytest.fixture(scope="module")
def server(student: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "kdfast", "serve", str(student), "--port", str(port),
                                 "--runtime", "onnx", "--max-batch-size", "8", "--batch-timeout-ms", "300",
                                 "--max-texts", str(MAX_TEXTS), "--max-chars", str(MAX_CHARS), "--threads", "1"],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # up to 60 s for the worker to load the model
            if proc.poll() is not None:
                pytest.fail(f"kdfast serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if call(url + "/health")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.25)
        else:
            pytest.fail(f"kdfast serve not healthy after 60 s:\n{log.read_text()[-3000:]}")
        yield url
    finally:  # the server, its HTTP and model workers: the whole process group, as Ctrl-C in a terminal would
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # any worker still alive


def test_metadata(server: str, student: Path) -> None:
    status, meta = call(server + "/metadata")
    assert status == 200
    clf = Classifier(student, "onnx")
    assert meta["labels"] == clf.labels and meta["kind"] == "student" and meta["runtime"] == "onnx"
    assert meta["manifest_sha256"] == clf.manifest_sha256 and meta["kdfast_version"]


def test_concurrent_requests_are_batched_and_answered_in_order(server: str, student: Path) -> None:
    clf = Classifier(student, "onnx")
    requests = [[SENTENCES[i % len(SENTENCES)], SENTENCES[(i * 5 + 1) % len(SENTENCES)]][: 1 + i % 2]
                for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda texts: call(server + "/predict", json.dumps({"texts": texts}).encode()),
                                requests))
    batches = {}
    for texts, (status, body) in zip(requests, answers, strict=True):
        assert status == 200, body
        want = clf.predict_proba(texts)
        np.testing.assert_allclose(np.array(body["probs"]), want, atol=1e-5)
        assert body["labels"] == [clf.labels[i] for i in want.argmax(axis=1)]
        batches[body["batch"]["id"]] = body["batch"]["requests"]
    assert sum(batches.values()) == len(requests)  # every request in exactly one batch the server reports
    assert len(batches) < len(requests), batches  # and some batched together


@pytest.mark.parametrize(("body", "status"), [
    (b"{not json", 422),
    (b"[1, 2]", 422),
    (b'{"texts": "one string"}', 422),
    (b'{"texts": ["ok", 3]}', 422),
    (b'{"texts": []}', 422),
    (json.dumps({"texts": ["a"] * (MAX_TEXTS + 1)}).encode(), 422),
    (json.dumps({"texts": ["a" * (MAX_CHARS + 1)]}).encode(), 422),
    (b'{"sentences": ["a"]}', 422),
])
def test_bad_requests_are_4xx_and_the_server_goes_on(server: str, body: bytes, status: int) -> None:
    got, answer = call(server + "/predict", body)
    assert got == status and isinstance(answer, dict) and "detail" in answer
    got, answer = call(server + "/predict", json.dumps({"texts": [SENTENCES[0]]}).encode())
    assert got == 200 and len(answer["labels"]) == 1


def test_triton_config_asks_for_dynamic_batching_and_instances(tmp_path: Path, student: Path) -> None:
    from kdfast.export.triton_repo import parse_config, write_repo

    model_dir = write_repo(tmp_path / "repo", "student", student / "onnx" / "model.onnx", max_batch_size=64)
    text = (model_dir / "config.pbtxt").read_text()
    config = parse_config(text)
    assert config["max_batch_size"] == 64 and config["dynamic_batching"]
    assert "preferred_batch_size: [ 8, 16, 32, 64 ]" in text and "max_queue_delay_microseconds: 1000" in text
    assert "instance_group [" in text and "count: 2" in text and "kind: KIND_AUTO" in text


@pytest.mark.parametrize("max_batch_size", [1, 8])
def test_the_api_answers_one_request_or_a_batch(student: Path, max_batch_size: int) -> None:
    """LitServe hands predict a list of requests when batching, one request when not (--max-batch-size 1)."""
    from kdfast.serve.server import ClassifierAPI, ServeConfig

    api = ClassifierAPI(ServeConfig(run_dir=student, runtime="onnx", max_batch_size=max_batch_size))
    api.setup("cpu")
    clf = Classifier(student, "onnx")
    if max_batch_size == 1:
        answer = api.predict(SENTENCES[:3])
        assert answer["labels"] == clf.predict(SENTENCES[:3]) and answer["batch"]["requests"] == 1
    else:
        answers = api.unbatch(api.predict(api.batch([SENTENCES[:2], SENTENCES[2:3]])))
        assert [a["labels"] for a in answers] == [clf.predict(SENTENCES[:2]), clf.predict(SENTENCES[2:3])]
        assert answers[0]["batch"] == answers[1]["batch"] and answers[0]["batch"]["texts"] == 3


def test_serve_refuses_bad_arguments_before_starting(student: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import run_cli

    for args, message in [([str(tmp_path / "missing")], "no such run folder"),
                          ([str(student), "--runtime", "onnx-opt"], "the export has no optimized model"),
                          ([str(student), "--runtime", "tf"], "--runtime 'tf'"),
                          ([str(student), "--port", "80"], "--port must be from 1024 to 65535"),
                          ([str(student), "--host", "example.com"], "--host must be"),
                          ([str(student), "--max-batch-size", "0"], "--max-batch-size must be at least 1")]:
        code, _, err = run_cli(["serve", *args], capsys)
        assert code != 0 and "error: " in err and message in err, (args, err)
