"""``kdfast serve``: a run's model behind HTTP, on LitServe (https://github.com/Lightning-AI/LitServe).

    POST /predict {"texts": [...]} ─ a body over --max-body-bytes is a 413 before anything reads it (RequestGuard)
        ─ validated here (FastAPI + pydantic: a bad request is a 4xx with a JSON ``detail``, the server goes on)
        ─ LitServe's queue: requests arriving within --batch-timeout-ms are batched, up to --max-batch-size of them
        ─ ClassifierAPI.predict(batch) in a worker: every text of every request in one Classifier.predict_proba call
        ─ one response per request: {"labels", "probs", "batch"}
    GET /health (LitServe's), GET /metadata (labels, kind, runtime, manifest sha256, kdfast version)

Batching is the server's job; the model code sees lists, and it is the same ``Classifier`` that ``kdfast predict`` and
``kdfast.load`` use. Requests are validated in the HTTP process, before the queue: in a batched loop, an error in one
request's ``decode_request`` would fail every request of its batch.

Stopping: SIGTERM (``kill PID``: systemd, Docker, Kubernetes) and SIGINT (Ctrl-C, to the process alone or to its
whole group) on the main process stop the HTTP workers first (each answers the requests it holds, then exits), then
the model workers, then LitServe's queue manager; whatever is still alive after that is killed, so no process of the
server outlives it and the port is free again.

No ``from __future__ import annotations`` here: LitServe and FastAPI read ``decode_request``'s annotation as a class.
"""

import contextlib
import itertools
import json
import multiprocessing
import os
import re
import signal
import threading
import warnings
from pathlib import Path
from queue import Empty
from typing import Any, ClassVar

import litserve as ls
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from litserve.loops import BatchedLoop
from pydantic import BaseModel, StrictStr, model_validator

from kdfast.configs import ServeConfig
from kdfast.errors import KdfastError

DRAIN_S = 10.0  # on SIGTERM/SIGINT, how long an HTTP worker may take to answer the requests it holds
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate: JSON's \ud800 escape, not a character


class PredictRequest(BaseModel):
    """The body of POST /predict. Limits are set once per server, before it forks its HTTP workers."""

    texts: list[StrictStr]
    limits: ClassVar[tuple[int, int]] = (256, 2000)  # (max texts, max characters per text)

    @model_validator(mode="after")
    def within_limits(self) -> "PredictRequest":
        max_texts, max_chars = self.limits
        if not self.texts:
            raise ValueError("texts is empty: send at least one text")
        if len(self.texts) > max_texts:
            raise ValueError(f"{len(self.texts)} texts; at most {max_texts} per request")
        for i, t in enumerate(self.texts):
            if not t.strip():
                raise ValueError(f"texts[{i}] is blank")
            if len(t) > max_chars:
                raise ValueError(f"texts[{i}] has {len(t)} characters; at most {max_chars}")
            if _SURROGATE.search(t):  # not text: no UTF-8 for it, and a tokenizer would fail on it in the worker
                raise ValueError(f"texts[{i}] is not valid Unicode (a lone surrogate)")
        return self


# --- the HTTP side: every request that is not a valid prediction request gets a 4xx with a JSON ``detail``


def json_error(status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON error that any input can be written into: the body is written here, ASCII-escaped, so a lone surrogate
    stays JSON (a JSONResponse would encode it as UTF-8 and fail: a 500), and nothing of the request is echoed but
    its error's location."""
    body = json.dumps({"detail": detail}, ensure_ascii=True, default=str)
    return Response(content=body, status_code=status, headers=headers, media_type="application/json")


async def invalid_request(request: Request, exc: Exception) -> Response:
    """FastAPI's 422, without the ``input`` and ``ctx`` it echoes: an echo can be megabytes, and can hold what JSON
    cannot write (NaN, a lone surrogate), which made FastAPI's own handler fail with a 500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"type": str(e.get("type", "")), "loc": [x if isinstance(x, int) else str(x) for x in e.get("loc", ())],
               "msg": str(e.get("msg", ""))} for e in list(errors)[:16]]
    return json_error(422, detail)


async def internal_error(request: Request, exc: Exception) -> Response:
    """A failure of ours (not of the request) is still a 500, but a JSON one."""
    return json_error(500, "internal server error")


IN_FLIGHT = [0]  # POST requests this HTTP process is answering now (GET /metadata reports it)


class RequestGuard:
    """Pure ASGI middleware, outermost: a body over ``max_bytes`` is a 413, judged on Content-Length before a byte of
    it is read, else while it arrives (chunked), so the server never holds more than ``max_bytes`` of one request.
    The body is then handed on whole. Counts the requests in flight, for /metadata."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self.reject(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: no one to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self.reject(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body: list[bytes] | None = [b"".join(chunks)]

        async def replay() -> dict[str, Any]:
            nonlocal body
            if body is not None:
                message, body = {"type": "http.request", "body": body[0], "more_body": False}, None
                return message
            return await receive()

        counted = scope["method"] == "POST"
        IN_FLIGHT[0] += counted
        try:
            await self.app(scope, replay, send)
        finally:
            IN_FLIGHT[0] -= counted

    async def reject(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        response = json_error(413, f"request body over {self.max_bytes} bytes (--max-body-bytes)",
                              headers={"Connection": "close"})
        await response(scope, receive, send)


# --- the model side


class _Prefetched:
    """A request queue with one request already taken off it, given back first."""

    def __init__(self, first: Any, queue: Any) -> None:
        self.first, self.queue = [first], queue

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.first.pop() if self.first else self.queue.get(block, timeout)

    def get_nowait(self) -> Any:
        return self.first.pop() if self.first else self.queue.get_nowait()


class BlockingBatchedLoop(BatchedLoop):
    """LitServe's batched loop, except that an idle worker waits on its request queue (waking once a second)
    instead of asking it for a request every millisecond: LitServe's loop costs an idle server several percent of a
    core in the worker and in the queue's manager process. A batch starts when its first request arrives and takes
    whatever else arrives within ``batch_timeout``, up to ``max_batch_size`` requests."""

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        try:
            first = request_queue.get(timeout=1.0)
        except Empty:
            return [], []
        return super().get_batch_requests(lit_api, _Prefetched(first, request_queue), transport)


class ClassifierAPI(ls.LitAPI):
    """setup (load once per worker), decode_request, predict on a batch of requests, encode_response."""

    def __init__(self, cfg: ServeConfig) -> None:
        with warnings.catch_warnings():  # batching off (--max-batch-size 1) on purpose: LitServe's warning is noise
            warnings.filterwarnings("ignore", message="The LitServer has both batch and unbatch")
            super().__init__(max_batch_size=cfg.max_batch_size, batch_timeout=cfg.batch_timeout_ms / 1000,
                             loop=BlockingBatchedLoop() if cfg.max_batch_size > 1 else "auto")
        self.cfg = cfg

    def setup(self, device: str) -> None:
        from kdfast.serve.predict import Classifier

        if multiprocessing.current_process().name == "inference-worker":
            # Ctrl-C in a terminal reaches every process of the group: the main process stops this worker once the
            # HTTP workers have answered what they hold, so the worker itself must not die of it first
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        cfg = self.cfg
        self.clf = Classifier(cfg.run_dir, cfg.runtime, batch_size=cfg.batch_size, threads=cfg.threads,
                              device=cfg.device, spin=False)
        self.batches = itertools.count(1)

    def decode_request(self, request: PredictRequest) -> list[str]:
        return request.texts

    def batch(self, inputs: list[list[str]]) -> list[list[str]]:
        return inputs  # a batch of requests stays a list of lists; predict flattens it

    def predict(self, x: list[list[str]] | list[str]) -> list[dict[str, Any]] | dict[str, Any]:
        """Every text of every request of the batch in one call; each request gets its own rows back, in order.
        With --max-batch-size 1 LitServe passes one request (its texts) and expects one answer."""
        batched = self.max_batch_size > 1
        requests: list[list[str]] = x if batched else [x]  # type: ignore[assignment,list-item]
        texts = [t for request in requests for t in request]
        probs = self.clf.predict_proba(texts)  # (N, C)
        batch = {"id": f"{os.getpid()}-{next(self.batches)}", "requests": len(requests), "texts": len(texts)}
        out, start = [], 0
        for request in requests:
            p = probs[start : start + len(request)]
            start += len(request)
            out.append({"labels": [self.clf.labels[i] for i in p.argmax(axis=1)], "probs": p.tolist(),
                        "batch": batch})
        return out if batched else out[0]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def metadata(cfg: ServeConfig) -> dict[str, Any]:
    """What GET /metadata answers, read from the run folder in the HTTP process (the model lives in the workers)."""
    import hashlib

    from kdfast import __version__
    from kdfast.runs import read_run_info, run_labels
    from kdfast.serve.predict import MANIFEST, ONNX_FOLDER, choose_runtime

    info = read_run_info(cfg.run_dir)
    manifest = Path(cfg.run_dir) / ONNX_FOLDER / MANIFEST
    return {"run": str(cfg.run_dir), "kind": info["kind"], "mode": info.get("mode"), "labels": run_labels(cfg.run_dir),
            "runtime": choose_runtime(cfg.run_dir, cfg.runtime), "requested_runtime": cfg.runtime,
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else None,
            "kdfast_version": __version__,
            "batching": {"max_batch_size": cfg.max_batch_size, "batch_timeout_ms": cfg.batch_timeout_ms,
                         "workers": cfg.workers},
            "limits": {"max_texts": cfg.max_texts, "max_chars": cfg.max_chars, "max_body_bytes": cfg.max_body_bytes}}


class KdfastServer(ls.LitServer):
    """LitServer with a shutdown that stops every process: LitServe 0.2.19's own, after Ctrl-C with its default
    (zmq) queue, fails on closing a transport the main process never opened, before it stops any worker."""

    def _set_shutdown_event(self) -> None:
        with contextlib.suppress(Exception):
            self._shutdown_event.set()

    def _perform_graceful_shutdown(self, manager: Any, uvicorn_workers: dict[Any, Any],
                                   shutdown_reason: str = "normal") -> None:
        if getattr(self, "_stopping", False):  # LitServe's worker monitor may call this too: once is enough
            return
        self._stopping = True
        # LitServe's worker monitor ends once this event is set, rather than see the workers die below. Set from a
        # thread of its own: a manager proxy has a connection per thread, and this thread's may be stuck in the
        # wait() that a signal interrupted, which the manager is still serving.
        setter = threading.Thread(target=self._set_shutdown_event, daemon=True)
        setter.start()
        setter.join(timeout=5)
        http = [w for w in uvicorn_workers.values() if isinstance(w, multiprocessing.process.BaseProcess)]
        for w in http:  # uvicorn on SIGTERM: stop accepting, answer the requests in hand, exit
            if w.is_alive():
                w.terminate()
        for w in http:
            w.join(timeout=DRAIN_S + 2)
        for w in getattr(self, "inference_workers", []):  # then the model workers, their requests answered
            if w.is_alive():
                w.terminate()
        stop_all(http + list(getattr(self, "inference_workers", [])))
        with contextlib.suppress(Exception):
            self._transport.close(send_sentinel=False)
        with contextlib.suppress(Exception):
            manager.shutdown()


def build(cfg: ServeConfig) -> ls.LitServer:
    """The server, not yet running: checks the run and its runtime first, so a mistake is an error line."""
    cfg.validate()
    meta = metadata(cfg)  # a missing run, or a runtime the run lacks, fails here rather than in a worker
    if meta["runtime"] != "torch":
        from kdfast.serve.predict import manifest_of, variant_file

        manifest = manifest_of(cfg.run_dir)
        if manifest is None:
            raise KdfastError(f"{cfg.run_dir}: no ONNX export (onnx/manifest.json missing); run kdfast export --onnx "
                              f"{cfg.run_dir}, or use --runtime torch")
        variant_file(manifest, {"onnx": "fp32", "onnx-opt": "optimized", "onnx-int8": "int8"}[meta["runtime"]])
    PredictRequest.limits = (cfg.max_texts, cfg.max_chars)
    server = KdfastServer(ClassifierAPI(cfg), accelerator="cpu", devices=1, workers_per_device=cfg.workers,
                          timeout=60, fast_queue=True, middlewares=[(RequestGuard, {"max_bytes": cfg.max_body_bytes})])
    server.uvicorn_graceful_timeout = DRAIN_S
    server.app.router.redirect_slashes = False  # POST /predict/ is a 404, not a redirect that loses the body
    server.app.add_exception_handler(RequestValidationError, invalid_request)
    server.app.add_exception_handler(Exception, internal_error)

    async def get_metadata() -> dict[str, Any]:
        return {**meta, "in_flight": IN_FLIGHT[0]}

    server.app.add_api_route("/metadata", get_metadata, methods=["GET"])
    return server


def stop_all(processes: list[Any], timeout: float = 5.0) -> None:
    """Wait for ``processes`` to end (SIGTERM already sent, or not needed), then kill what is left."""
    for p in processes:
        p.join(timeout=timeout)
        if p.is_alive():
            p.kill()
            p.join(timeout=timeout)


_MAIN_PID = [0]


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM or SIGINT in the main process: LitServe's shutdown runs (as after Ctrl-C); further signals wait.
    A process forked from it inherits this handler: there (an HTTP worker that has drained, re-raising the signal
    uvicorn caught; the queue manager) it ends the process quietly."""
    if os.getpid() != _MAIN_PID[0]:
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def serve(cfg: ServeConfig) -> None:
    """Build the server and run it until SIGTERM or SIGINT; then stop every process it started."""
    server = build(cfg)
    _MAIN_PID[0] = os.getpid()
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        # no access log: a line per request costs the HTTP process as much CPU as a small model's forward pass
        server.run(host=cfg.host, port=cfg.port, generate_client_file=False, pretty_logs=False, log_level="warning")
    except KeyboardInterrupt:
        pass  # a signal during start-up, before LitServe's own handling: the sweep below stops what was started
    except ValueError as e:
        raise KdfastError(str(e)) from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        children = multiprocessing.active_children()  # HTTP and model workers, the queue manager: whatever is left
        for p in children:
            p.terminate()
        stop_all(children)
        for s, handler in previous.items():
            signal.signal(s, handler)
