"""``kdfast serve`` on a tiny exported student, on a free loopback port.

- Any request that is not a valid prediction request gets a 4xx with a JSON ``detail``, never a 5xx or a hang,
  whatever its bytes, size, encoding, content type, method or path: Hypothesis generates the requests, valid ones
  mixed in and sent from many threads at once, and each valid one must get exactly the answer that the in-process
  ``Classifier`` gives. The limits are pinned at their boundaries (n texts pass, n + 1 do not), the body limit too.
- SIGTERM to the server (``kill PID``) and SIGINT to its process group (Ctrl-C in a terminal) answer the request in
  flight, then leave no process of the server alive and the port free.
- Concurrent requests are batched; the Triton repository's config asks for dynamic batching and instance groups.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import alive_in_group, train_tiny_student
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdfast.serve.predict import Classifier

SENTENCES = ["The book that John wrote was read by everyone.", "Books.", "Who did you see Mary and?",
             "She sang , and he danced .", "It is raining cats and dogs", "the the the"]
MAX_TEXTS, MAX_CHARS, MAX_BODY = 4, 100, 8192
DEADLINE_S = 120  # generous: how long a test waits for the server to start, answer or stop before it fails


@pytest.fixture(scope="module")
def student(cola_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kdfast.export.onnx import ExportConfig
    from kdfast.export.onnx import run as export

    out = train_tiny_student(tmp_path_factory.mktemp("serve-runs") / "student", cola_dir)
    export(ExportConfig(run_dir=out, int8=False, max_check_sentences=16, progress=False))
    return out


@pytest.fixture(scope="module")
def clf(student: Path) -> Classifier:
    return Classifier(student, "onnx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, body: bytes | None = None, timeout: float = DEADLINE_S) -> tuple[int, Any]:
    """(status, body decoded from JSON, or as text when it is not JSON) of a GET, or of a POST of ``body`` as JSON."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode()


def start_server(student: Path, port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``kdfast serve`` in its own process group, once GET /health answers ok."""
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "kdfast", "serve", str(student), "--port", str(port),
                                 "--runtime", "onnx", "--max-texts", str(MAX_TEXTS), "--max-chars", str(MAX_CHARS),
                                 "--max-body-bytes", str(MAX_BODY), "--threads", "1", *extra],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"kdfast serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError):
            if call(url + "/health", timeout=5)[0] == 200:
                return proc
        time.sleep(0.25)
    stop_group(proc)
    pytest.fail(f"kdfast serve not healthy after {DEADLINE_S} s:\n{log.read_text()[-3000:]}")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Teardown, whatever a test left: the whole group killed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(student: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_server(student, port, tmp_path_factory.mktemp("serve-log") / "server.log",
                        "--max-batch-size", "8", "--batch-timeout-ms", "20")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)


def assert_answers(clf: Classifier, texts: list[str], status: int, body: Any) -> None:
    """A 200 carrying exactly what the in-process classifier says of ``texts``: the same probabilities (float noise
    of other batch shapes aside) and the same labels, wherever the top two classes are not a float-noise tie."""
    assert status == 200, body
    want = clf.predict_proba(texts)
    got = np.array(body["probs"])
    np.testing.assert_allclose(got, want, atol=1e-5)
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-5
    want_labels = [clf.labels[i] for i in want.argmax(axis=1)]
    assert [w for w, c in zip(body["labels"], clear, strict=True) if c] == [w for w, c in zip(want_labels, clear,
                                                                                            strict=True) if c]


def test_metadata(server: str, clf: Classifier) -> None:
    status, meta = call(server + "/metadata")
    assert status == 200
    assert meta["labels"] == clf.labels and meta["kind"] == "student" and meta["runtime"] == "onnx"
    assert meta["manifest_sha256"] == clf.manifest_sha256 and meta["kdfast_version"]
    assert meta["limits"] == {"max_texts": MAX_TEXTS, "max_chars": MAX_CHARS, "max_body_bytes": MAX_BODY}
    assert meta["in_flight"] == 0


def test_concurrent_requests_are_answered_in_order_and_batched(server: str, clf: Classifier) -> None:
    """16 requests released together from 16 threads: each gets its own answer; every request is in exactly one batch
    the server reports. That some share a batch depends on their arriving within the 20 ms window, which a loaded
    machine can spread: the round is repeated (at most 10 times) until one batches, and only never is a failure."""
    requests = [[SENTENCES[i % len(SENTENCES)], SENTENCES[(i * 5 + 1) % len(SENTENCES)]][: 1 + i % 2]
                for i in range(16)]
    for _ in range(10):
        start = threading.Barrier(len(requests))

        def send(texts: list[str], start: threading.Barrier = start) -> tuple[int, Any]:
            start.wait()
            return call(server + "/predict", json.dumps({"texts": texts}).encode())

        with ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(send, requests))
        batches: dict[str, int] = {}
        for texts, (status, body) in zip(requests, answers, strict=True):
            assert_answers(clf, texts, status, body)
            batches[body["batch"]["id"]] = body["batch"]["requests"]
        assert sum(batches.values()) == len(requests)
        if len(batches) < len(requests):
            return
    pytest.fail(f"16 concurrent requests never shared a batch in 10 rounds: {batches}")


@pytest.mark.parametrize(("body", "status"), [
    (b"{not json", 422),
    (b"[1, 2]", 422),
    (b'{"texts": "one string"}', 422),
    (b'{"texts": ["ok", 3]}', 422),
    (b'{"texts": []}', 422),
    (b'{"texts": [""]}', 422),
    (b'{"texts": ["ok", "   "]}', 422),
    (b'{"texts": ["\\t\\n"]}', 422),
    (json.dumps({"texts": ["a"] * (MAX_TEXTS + 1)}).encode(), 422),
    (json.dumps({"texts": ["a" * (MAX_CHARS + 1)]}).encode(), 422),
    (b'{"sentences": ["a"]}', 422),
    (b'{"texts": NaN}', 422),  # FastAPI echoed NaN into its 422, which JSON cannot write: a 500
    (b'{"texts": ["a", Infinity]}', 422),
    (b'{"texts": ["\\ud800"]}', 422),  # a lone surrogate: not text
    (b'{"texts": ["\xff\xfe"]}', 400),  # not UTF-8
])
def test_bad_requests_are_4xx_and_the_server_goes_on(server: str, body: bytes, status: int) -> None:
    got, answer = call(server + "/predict", body)
    assert got == status and isinstance(answer, dict) and "detail" in answer, (got, answer)
    got, answer = call(server + "/predict", json.dumps({"texts": [SENTENCES[0]]}).encode())
    assert got == 200 and len(answer["labels"]) == 1


def test_limits_hold_at_their_boundaries(server: str, clf: Classifier) -> None:
    """Exactly --max-texts texts of exactly --max-chars characters pass; one more text, or character, does not."""
    longest = ("word " * MAX_CHARS)[:MAX_CHARS]
    texts = [longest] * MAX_TEXTS
    assert_answers(clf, texts, *call(server + "/predict", json.dumps({"texts": texts}).encode()))
    assert call(server + "/predict", json.dumps({"texts": [*texts, "a"]}).encode())[0] == 422
    assert call(server + "/predict", json.dumps({"texts": [longest + "s"]}).encode())[0] == 422
    assert_answers(clf, ["x"], *call(server + "/predict", b'{"texts": ["x"]}'))


def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, Any]:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` on a socket as far as the
    server reads it; (status, JSON body) of its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as s:
        s.sendall(head + b"\r\n\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for i in range(0, len(body), 4096):
                s.sendall(body[i : i + 4096])
        raw = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                raw += chunk
    header, _, payload = raw.partition(b"\r\n\r\n")
    status = int(header.split()[1])
    if b"transfer-encoding: chunked" in header.lower():
        payload = payload.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return status, json.loads(payload)


def test_the_body_limit_is_exact_and_judged_before_the_body_is_read(server: str, clf: Classifier) -> None:
    port = int(server.rsplit(":", 1)[1])
    valid = json.dumps({"texts": ["Books."]}).encode()
    exact = valid + b" " * (MAX_BODY - len(valid))  # JSON allows trailing whitespace: a valid body of MAX_BODY bytes
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close"
    assert_answers(clf, ["Books."], *raw_request(port, head + b"\r\nContent-Length: %d" % len(exact), exact))
    status, answer = raw_request(port, head + b"\r\nContent-Length: %d" % (len(exact) + 1), exact + b" ")
    assert status == 413 and "--max-body-bytes" in answer["detail"]
    # a declared length over the limit is refused with nothing sent; a chunked body when it passes the limit
    assert raw_request(port, head + b"\r\nContent-Length: 1000000000000")[0] == 413
    chunk = b" " * 1000
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2 * MAX_BODY // len(chunk))) + b"0\r\n\r\n"
    assert raw_request(port, head + b"\r\nTransfer-Encoding: chunked", chunked)[0] == 413
    assert_answers(clf, ["Books."], *call(server + "/predict", valid))


# --- fuzzing: Hypothesis writes the requests


@dataclass
class Req:
    """One HTTP request, well-formed as HTTP (what is not HTTP at all, uvicorn refuses before the application)."""

    method: str
    path: str
    content_type: str | None
    body: bytes
    texts: list[str] | None  # a valid request: the texts it asks about; None: not a valid request (or not known)
    invalid: bool  # known not to be a valid request: must be a 4xx


WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2007\u2028\u2029\u202f\u205f\u3000"
valid_text = st.one_of(st.sampled_from(SENTENCES),
                       st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_CHARS).filter(str.strip))
valid_texts = st.lists(valid_text, min_size=1, max_size=MAX_TEXTS)
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4), max_leaves=12)
defect = st.one_of(
    st.text(st.sampled_from(WHITESPACE), max_size=5),  # blank
    st.text(st.characters(codec="utf-8"), min_size=MAX_CHARS + 1, max_size=MAX_CHARS + 20).filter(str.strip),
    st.builds(lambda t, c: t + chr(c), valid_text, st.integers(0xD800, 0xDFFF)),  # a lone surrogate
    json_value.filter(lambda v: not isinstance(v, str)),  # not a string
)


@st.composite
def bad_texts(draw: st.DrawFn) -> Any:
    """A "texts" value with at least one thing wrong."""
    kind = draw(st.sampled_from(["defect", "empty", "too many", "not a list"]))
    if kind == "defect":
        texts: list[Any] = draw(st.lists(valid_text, max_size=MAX_TEXTS - 1))
        texts.insert(draw(st.integers(0, len(texts))), draw(defect))
        return texts
    if kind == "empty":
        return []
    if kind == "too many":
        return draw(st.lists(valid_text, min_size=MAX_TEXTS + 1, max_size=MAX_TEXTS + 3))
    return draw(json_value.filter(lambda v: not isinstance(v, list)))


def encode(draw: st.DrawFn, obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def requests(draw: st.DrawFn) -> Req:
    kind = draw(st.sampled_from(["valid", "valid", "bad texts", "bad shape", "bad transport", "bytes"]))
    json_type = draw(st.sampled_from(["application/json", "application/json; charset=utf-8"]))
    if kind == "valid":
        texts = draw(valid_texts)
        extra = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k != "texts"), json_value, max_size=2))
        return Req("POST", "/predict", json_type, encode(draw, {"texts": texts, **extra}), texts, False)
    if kind == "bad texts":
        return Req("POST", "/predict", json_type, encode(draw, {"texts": draw(bad_texts())}), None, True)
    if kind == "bad shape":  # valid JSON, but not an object with "texts"
        obj = draw(json_value.filter(lambda v: not (isinstance(v, dict) and "texts" in v)))
        return Req("POST", "/predict", json_type, encode(draw, obj), None, True)
    if kind == "bad transport":  # a valid body, sent the wrong way
        body = encode(draw, {"texts": draw(valid_texts)})
        how = draw(st.sampled_from(["method", "path", "content type", "encoding"]))
        if how == "method":
            return Req(draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])), "/predict",
                       json_type, body, None, True)
        if how == "path":
            path = draw(st.sampled_from(["/predict/", "/Predict", "/predict/x", "/", "/metadata", "/health", "/%00"]))
            return Req("POST", path, json_type, body, None, path != "/")  # LitServe's / answers any method
        if how == "content type":
            ctype = draw(st.sampled_from(["text/plain", "multipart/form-data; boundary=x", "application/xml",
                                          "application/x-www-form-urlencoded", "image/png", "json", ";;", None]))
            return Req("POST", "/predict", ctype, body, None, True)
        latin = draw(st.lists(st.characters(min_codepoint=0x80, max_codepoint=0xFF), min_size=1, max_size=MAX_TEXTS))
        return Req("POST", "/predict", json_type, json.dumps({"texts": latin}, ensure_ascii=False).encode("latin-1"),
                   None, True)  # not UTF-8
    body = draw(st.binary(max_size=MAX_BODY // 2))
    return Req(draw(st.sampled_from(["POST", "POST", "GET", "PUT"])), "/predict", draw(st.one_of(
        st.sampled_from(["application/json", "text/plain", None]),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30))), body, None, False)


def send(port: int, req: Req) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
    try:
        c.putrequest(req.method, req.path, skip_accept_encoding=True)
        if req.content_type is not None:
            c.putheader("Content-Type", req.content_type)
        c.putheader("Content-Length", str(len(req.body)))
        c.endheaders(req.body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def parsed_texts(body: bytes) -> Any:
    try:
        return json.loads(body)["texts"]
    except Exception:
        return None


@settings(max_examples=int(os.environ.get("KDFAST_FUZZ_EXAMPLES", "120")), deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(st.lists(requests(), min_size=1, max_size=8))
def test_fuzzed_requests_are_answered_or_refused_with_a_4xx(server: str, clf: Classifier, batch: list[Req]) -> None:
    """A round of requests sent at once from as many threads: none gets a 5xx or hangs; each known-bad one gets a 4xx
    with a JSON ``detail``; each valid one, and anything else the server answers with a 200, gets exactly the
    in-process answer."""
    port = int(server.rsplit(":", 1)[1])
    with ThreadPoolExecutor(len(batch)) as pool:
        answers = list(pool.map(lambda r: send(port, r), batch))
    for req, (status, raw) in zip(batch, answers, strict=True):
        context = (req, status, raw[:300])
        assert status < 500, context
        if req.texts is not None:
            assert_answers(clf, req.texts, status, json.loads(raw))
        elif req.invalid:
            assert 400 <= status < 500, context
        if 400 <= status < 500 and req.method != "HEAD":
            answer = json.loads(raw)
            assert isinstance(answer, dict) and "detail" in answer, context
        elif status == 200 and req.path == "/predict":  # a valid request Hypothesis made by chance
            assert_answers(clf, parsed_texts(req.body), status, json.loads(raw))


def test_the_server_still_serves_after_the_fuzzing(server: str, clf: Classifier) -> None:
    assert call(server + "/health")[0] == 200
    texts = SENTENCES[:MAX_TEXTS]
    assert_answers(clf, texts, *call(server + "/predict", json.dumps({"texts": texts}).encode()))
    assert call(server + "/metadata")[1]["in_flight"] == 0


# --- stopping


@pytest.mark.parametrize("how", ["SIGTERM to the server", "SIGINT to its process group"])
def test_a_signal_answers_the_request_in_flight_then_stops_every_process(
        student: Path, clf: Classifier, tmp_path: Path, how: str) -> None:
    """A request waits in a 3 s batch window; once the server reports it in flight, the signal. The request is
    answered, then no process of the server's group is left and the port can be bound again."""
    port = free_port()
    log = tmp_path / "server.log"
    proc = start_server(student, port, log, "--max-batch-size", "8", "--batch-timeout-ms", "3000")
    url = f"http://127.0.0.1:{port}"
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(call, url + "/predict", json.dumps({"texts": SENTENCES[:2]}).encode())
            deadline = time.monotonic() + DEADLINE_S
            while call(url + "/metadata")[1]["in_flight"] < 1:
                assert not answer.done(), "the request was answered before it showed as in flight"
                if time.monotonic() > deadline:  # a hang guard, not a speed check
                    pytest.fail("the request never showed as in flight")
                time.sleep(0.05)
            if how == "SIGTERM to the server":
                os.kill(proc.pid, signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGINT)
            assert_answers(clf, SENTENCES[:2], *answer.result(timeout=DEADLINE_S))
        proc.wait(timeout=DEADLINE_S)
        deadline = time.monotonic() + DEADLINE_S
        while (left := alive_in_group(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"still running after {how}:\n" + "\n".join(left)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind; TIME_WAIT does not count
            s.bind(("127.0.0.1", port))
            s.listen()
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        stop_group(proc)


# --- in process: the request model, the guard, the loop, the API


def test_a_request_is_valid_exactly_within_the_limits() -> None:
    from pydantic import ValidationError

    from kdfast.serve.server import PredictRequest

    old, PredictRequest.limits = PredictRequest.limits, (3, 5)
    try:
        assert PredictRequest.model_validate({"texts": ["abcde", "a", " b "]}).texts == ["abcde", "a", " b "]
        for texts, message in [(["abcdef"], "texts[0] has 6 characters; at most 5"),
                               (["a", "b", "c", "d"], "4 texts; at most 3"),
                               ([], "texts is empty"),
                               (["a", ""], "texts[1] is blank"), (["a", " \t"], "texts[1] is blank"),
                               (["a\ud800"], "texts[0] is not valid Unicode"),
                               (["\udfff"], "texts[0] is not valid Unicode")]:
            with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
                PredictRequest.model_validate({"texts": texts})
    finally:
        PredictRequest.limits = old


def guarded_app(max_bytes: int) -> Any:
    """The server's HTTP side without LitServe: RequestGuard, the error handlers, a route that echoes a count."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    from kdfast.serve.server import IN_FLIGHT, PredictRequest, RequestGuard, internal_error, invalid_request

    app = FastAPI()
    app.add_middleware(RequestGuard, max_bytes=max_bytes)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, internal_error)

    async def predict(request: PredictRequest) -> dict[str, Any]:
        return {"n": len(request.texts), "in_flight": IN_FLIGHT[0]}

    predict.__annotations__["request"] = PredictRequest  # a class, not this module's postponed string: a body
    app.post("/predict")(predict)

    @app.get("/fail")
    async def fail() -> None:
        raise RuntimeError("a bug of ours")

    return app


def test_the_guard_limits_bodies_counts_requests_and_errors_are_json() -> None:
    from fastapi.testclient import TestClient

    client = TestClient(guarded_app(1024), raise_server_exceptions=False, headers={"Content-Type": "application/json"})
    body = b'{"texts": ["a", "b"]}'
    assert client.post("/predict", content=body + b" " * (1024 - len(body))).json() == {"n": 2, "in_flight": 1}
    r = client.post("/predict", content=body + b" " * (1025 - len(body)))
    assert r.status_code == 413 and r.json() == {"detail": "request body over 1024 bytes (--max-body-bytes)"}
    r = client.post("/predict", content=iter([b'{"texts": ["a"]}', b" " * 2000]))  # chunked: no Content-Length
    assert r.status_code == 413
    r = client.post("/predict", content=b'{"texts": ["\\ud800", NaN]}')
    assert r.status_code == 422 and r.json() == {"detail": [
        {"type": "string_type", "loc": ["body", "texts", 1], "msg": "Input should be a valid string"}]}
    r = client.post("/predict", content=b'{"texts": ["\\ud800"]}')
    assert r.status_code == 422 and "input" not in r.text and "lone surrogate" in r.json()["detail"][0]["msg"]
    r = client.post("/predict", content=json.dumps({"texts": [1] * 40}).encode())
    assert r.status_code == 422 and len(r.json()["detail"]) == 16  # at most 16 errors told
    r = client.get("/fail")
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}


def test_the_batched_loop_blocks_for_the_first_request_then_takes_what_waits() -> None:
    """An idle worker waits on its queue (no request: an empty batch after the 1 s wait, not a busy poll); a batch
    takes the requests already queued, up to max_batch_size, in order."""
    import queue

    import litserve as ls

    from kdfast.serve.server import BlockingBatchedLoop

    class Transport:
        def __init__(self) -> None:
            self.sent: list[Any] = []

        def send(self, item: Any, consumer_id: int) -> None:
            self.sent.append(item)

    class API(ls.LitAPI):
        def predict(self, x: Any) -> Any:
            return x

    api = API(max_batch_size=3, batch_timeout=0.05)
    api.request_timeout = 60
    loop, q, transport = BlockingBatchedLoop(), queue.Queue(), Transport()
    assert loop.get_batch_requests(api, q, transport) == ([], [])
    for i in range(4):
        q.put((0, f"uid{i}", time.monotonic(), {"i": i}))
    batch, timed_out = loop.get_batch_requests(api, q, transport)
    assert [uid for _, uid, _ in batch] == ["uid0", "uid1", "uid2"] and timed_out == []
    batch, _ = loop.get_batch_requests(api, q, transport)
    assert [uid for _, uid, _ in batch] == ["uid3"] and q.empty()


def test_the_triton_config_asks_for_dynamic_batching_and_instances(tmp_path: Path, student: Path) -> None:
    from kdfast.export.triton_repo import parse_config, write_repo

    model_dir = write_repo(tmp_path / "repo", "student", student / "onnx" / "model.onnx", max_batch_size=64)
    text = (model_dir / "config.pbtxt").read_text()
    config = parse_config(text)
    assert config["max_batch_size"] == 64 and config["dynamic_batching"]
    assert "preferred_batch_size: [ 8, 16, 32, 64 ]" in text and "max_queue_delay_microseconds: 1000" in text
    assert "instance_group [" in text and "count: 2" in text and "kind: KIND_AUTO" in text


@pytest.mark.parametrize("max_batch_size", [1, 2, 8])  # 2: the smallest batch is a batch
def test_the_api_answers_one_request_or_a_batch(student: Path, clf: Classifier, max_batch_size: int) -> None:
    """LitServe hands predict a list of requests when batching, one request when not (--max-batch-size 1)."""
    from kdfast.serve.server import ClassifierAPI, ServeConfig

    api = ClassifierAPI(ServeConfig(run_dir=student, runtime="onnx", max_batch_size=max_batch_size))
    api.setup("cpu")
    if max_batch_size == 1:
        answer = api.predict(SENTENCES[:3])
        assert answer["labels"] == clf.predict(SENTENCES[:3]) and answer["batch"]["requests"] == 1
        np.testing.assert_allclose(answer["probs"], clf.predict_proba(SENTENCES[:3]), atol=1e-6)
    else:
        answers = api.unbatch(api.predict(api.batch([SENTENCES[:2], SENTENCES[2:3]])))
        assert [a["labels"] for a in answers] == [clf.predict(SENTENCES[:2]), clf.predict(SENTENCES[2:3])]
        np.testing.assert_allclose(answers[1]["probs"], clf.predict_proba(SENTENCES[2:3]), atol=1e-6)
        assert answers[0]["batch"] == answers[1]["batch"] and answers[0]["batch"]["texts"] == 3
        assert answers[0]["batch"]["requests"] == 2


def test_serve_refuses_bad_arguments_before_starting(student: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import assert_one_error_line, run_cli

    for args, message in [([str(tmp_path / "missing")], "no such run folder"),
                          ([str(student), "--runtime", "onnx-opt"], "the export has no optimized model"),
                          ([str(student), "--runtime", "tf"], "--runtime 'tf'"),
                          ([str(student), "--port", "80"], "--port must be from 1024 to 65535"),
                          ([str(student), "--host", "example.com"], "--host must be"),
                          ([str(student), "--max-batch-size", "0"], "--max-batch-size must be at least 1"),
                          ([str(student), "--max-body-bytes", "1023"], "--max-body-bytes must be at least 1024")]:
        code, _, err = run_cli(["serve", *args], capsys)
        assert code != 0, args
        assert_one_error_line(err, message)
