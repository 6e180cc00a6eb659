"""kdfast.serve.server's pieces in this process, without a server: RequestGuard driven message by message as ASGI
drives it, the error bodies, the API's batching switch and what build() and /metadata make of a configuration
(tests/test_serve.py holds the tests against a running server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import exported_tiny_student

from kdfast.serve.server import IN_FLIGHT, RequestGuard, invalid_request, json_error


def drive(guard_max: int, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]],
          method: str = "POST", kind: str = "http") -> dict[str, Any]:
    """Run RequestGuard over ``messages`` (what the client sends); what the inner app received and what was sent."""
    seen: dict[str, Any] = {"app": None, "received": [], "sent": [], "in_flight": None, "asked": 0}
    incoming = list(messages)

    async def receive() -> dict[str, Any]:
        seen["asked"] += 1
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        seen["sent"].append(message)

    async def app(scope: dict[str, Any], receive_: Any, send_: Any) -> None:
        seen["app"] = scope
        seen["in_flight"] = IN_FLIGHT[0]
        while True:
            message = await receive_()
            seen["received"].append(message)
            if not message.get("more_body") or message["type"] != "http.request":
                break

    scope = {"type": kind, "method": method, "headers": headers, "path": "/predict"}
    asyncio.run(RequestGuard(app, guard_max)(scope, receive, send))
    return seen


def status(seen: dict[str, Any]) -> int | None:
    starts = [m for m in seen["sent"] if m["type"] == "http.response.start"]
    return starts[0]["status"] if starts else None


def body(n: int, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": b"x" * n, "more_body": more}


def test_a_declared_length_is_judged_before_a_byte_is_read() -> None:
    for declared in (b"11", b"1000000000000", b"12x", b"-1", b""):
        seen = drive(10, [body(5)], [(b"content-length", declared)])
        assert status(seen) == 413 and seen["app"] is None and seen["asked"] == 0, declared
        start = next(m for m in seen["sent"] if m["type"] == "http.response.start")
        assert (b"connection", b"close") in start["headers"]
        sent = b"".join(m.get("body", b"") for m in seen["sent"] if m["type"] == "http.response.body")
        assert json.loads(sent) == {"detail": "request body over 10 bytes (--max-body-bytes)"}
    seen = drive(10, [body(10)], [(b"content-length", b"10")])
    assert seen["app"] is not None and status(seen) is None


def test_a_body_is_counted_as_it_arrives_and_handed_on_whole() -> None:
    seen = drive(10, [body(4, True), body(0, True), body(6)], [])
    assert seen["received"] == [{"type": "http.request", "body": b"x" * 10, "more_body": False}]
    assert status(seen) is None
    seen = drive(10, [body(4, True), {"type": "http.request", "more_body": True}, body(6)], [])  # "body" optional
    assert seen["received"] == [{"type": "http.request", "body": b"x" * 10, "more_body": False}]
    seen = drive(10, [body(4, True), {"type": "http.request"}], [])  # "more_body" optional too: false
    assert seen["received"] == [{"type": "http.request", "body": b"x" * 4, "more_body": False}]
    seen = drive(10, [body(4, True), body(7), body(0)], [])  # 11 bytes: refused at the chunk that passes the limit
    assert status(seen) == 413 and seen["app"] is None and seen["asked"] == 2


def test_after_the_body_the_app_receives_from_the_client_again() -> None:
    disconnect = {"type": "http.disconnect"}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append(await receive())
        got.append(await receive())

    got: list[dict[str, Any]] = []
    incoming = [body(3), disconnect]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing to send")

    asyncio.run(RequestGuard(app, 10)({"type": "http", "method": "POST", "headers": []}, receive, send))
    assert got == [{"type": "http.request", "body": b"xxx", "more_body": False}, disconnect]


def test_a_client_that_leaves_gets_nothing_and_reaches_nothing() -> None:
    seen = drive(10, [body(3, True), {"type": "http.disconnect"}], [])
    assert seen["app"] is None and seen["sent"] == []


def test_only_posts_count_as_in_flight_and_other_scopes_pass_through() -> None:
    before = IN_FLIGHT[0]
    assert drive(10, [body(2)], [], method="POST")["in_flight"] == before + 1
    assert drive(10, [body(2)], [], method="GET")["in_flight"] == before
    assert IN_FLIGHT[0] == before
    seen = drive(1, [{"type": "lifespan.startup"}], [(b"content-length", b"99")], kind="lifespan")
    assert seen["app"]["type"] == "lifespan" and seen["received"] == [{"type": "lifespan.startup"}]


def test_error_bodies_are_json_and_echo_nothing() -> None:
    r = json_error(400, {"bad": "é", "n": Path("x")}, headers={"X-A": "1"})  # what JSON cannot hold, as text
    assert r.status_code == 400 and r.headers["x-a"] == "1" and r.headers["content-type"] == "application/json"
    assert json.loads(r.body) == {"detail": {"bad": "é", "n": "x"}}
    lone = json_error(400, "half a pair: \ud800")  # a lone surrogate, which UTF-8 cannot encode
    assert lone.body == b'{"detail": "half a pair: \\ud800"}' and json.loads(lone.body)["detail"].endswith("\ud800")

    class Errors(Exception):
        def errors(self) -> list[dict[str, Any]]:
            return [{"type": "t", "loc": ("body", 3, Path("p")), "msg": "m", "input": "secret", "ctx": {}}] * 20

    from fastapi.exceptions import RequestValidationError

    exc = RequestValidationError(Errors().errors())
    r = asyncio.run(invalid_request(None, exc))  # type: ignore[arg-type]
    detail = json.loads(r.body)["detail"]
    assert r.status_code == 422 and len(detail) == 16
    assert detail[0] == {"type": "t", "loc": ["body", 3, "p"], "msg": "m"}
    r = asyncio.run(invalid_request(None, RequestValidationError([{}])))  # type: ignore[arg-type]
    assert json.loads(r.body) == {"detail": [{"type": "", "loc": [], "msg": ""}]}  # fields missing: empty, no 500
    r = asyncio.run(invalid_request(None, ValueError("not a validation error")))  # type: ignore[arg-type]
    assert r.status_code == 422 and json.loads(r.body) == {"detail": []}


@pytest.fixture(scope="module")
def student(cola_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_tiny_student(tmp_path_factory.mktemp("serve-units") / "student", cola_dir)


def test_the_api_batches_only_when_asked(student: Path) -> None:
    from litserve.loops import LitLoop

    from kdfast.serve.server import BlockingBatchedLoop, ClassifierAPI, ServeConfig

    batched = ClassifierAPI(ServeConfig(run_dir=student, runtime="onnx", max_batch_size=4, batch_timeout_ms=250))
    assert batched.max_batch_size == 4 and batched.batch_timeout == 0.25
    assert isinstance(batched.loop, BlockingBatchedLoop)
    single = ClassifierAPI(ServeConfig(run_dir=student, runtime="onnx", max_batch_size=1))
    assert single.max_batch_size == 1 and isinstance(single.loop, LitLoop)
    assert not isinstance(single.loop, BlockingBatchedLoop)

    from kdfast.serve.server import PredictRequest

    api = ClassifierAPI(ServeConfig(run_dir=student, runtime="auto", max_batch_size=4, batch_size=5, threads=1))
    api.setup("cpu")
    assert (api.clf.runtime, api.clf.batch_size, api.clf.requested) == ("onnx", 5, "auto")
    request = PredictRequest.model_validate({"texts": ["a", "b"]})
    assert batched.decode_request(request) == ["a", "b"]
    assert batched.encode_response({"labels": ["x"]}) == {"labels": ["x"]}


def test_metadata_and_build_read_the_configuration(student: Path) -> None:
    import hashlib

    from kdfast import __version__
    from kdfast.serve.server import DRAIN_S, PredictRequest, ServeConfig, build, metadata

    cfg = ServeConfig(run_dir=student, runtime="auto", max_batch_size=3, batch_timeout_ms=7.0, workers=2, max_texts=5,
                      max_chars=6, max_body_bytes=4096)
    meta = metadata(cfg)
    sha = hashlib.sha256((student / "onnx" / "manifest.json").read_bytes()).hexdigest()
    info = json.loads((student / "run.json").read_text())
    assert meta == {"run": str(student), "kind": "student", "mode": info.get("mode"), "labels": info["labels"],
                    "runtime": "onnx", "requested_runtime": "auto", "manifest_sha256": sha,
                    "kdfast_version": __version__,
                    "batching": {"max_batch_size": 3, "batch_timeout_ms": 7.0, "workers": 2},
                    "limits": {"max_texts": 5, "max_chars": 6, "max_body_bytes": 4096}}
    old = PredictRequest.limits
    try:
        server = build(cfg)
        assert PredictRequest.limits == (5, 6)
        assert server.app.router.redirect_slashes is False
        assert (RequestGuard, {"max_bytes": 4096}) in server.middlewares
        assert type(server.lit_api).__name__ == "ClassifierAPI" and server.lit_api.cfg is cfg
        assert server.workers_per_device == 2 and server.use_zmq and server.uvicorn_graceful_timeout == DRAIN_S
        assert any(getattr(r, "path", None) == "/metadata" for r in server.app.routes)
    finally:
        PredictRequest.limits = old


def test_the_prefetched_request_comes_first_then_the_queue() -> None:
    import queue

    from kdfast.serve.server import _Prefetched

    q: queue.Queue[str] = queue.Queue()
    q.put("second")
    p = _Prefetched("first", q)
    assert p.get_nowait() == "first" and p.get_nowait() == "second"
    with pytest.raises(queue.Empty):
        p.get_nowait()
    q.put("third")
    p = _Prefetched("first", q)
    assert p.get(timeout=0) == "first" and p.get(False) == "third"
    with pytest.raises(queue.Empty):
        p.get(timeout=0)

    class Recording:
        def __init__(self) -> None:
            self.calls: list[tuple[object, ...]] = []

        def get(self, block: bool, timeout: float | None) -> str:
            self.calls.append((block, timeout))
            return "queued"

    recording = Recording()
    p = _Prefetched("first", recording)
    assert p.get() == "first" and p.get() == "queued" and p.get(timeout=1.0) == "queued"
    assert recording.calls == [(True, None), (True, 1.0)]  # by default, a get waits
