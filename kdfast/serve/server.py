"""``kdfast serve``: a run's model behind HTTP, on LitServe (https://github.com/Lightning-AI/LitServe).

    POST /predict {"texts": [...]} ─ validated here (FastAPI + pydantic: a bad request is a 422, the server goes on)
        ─ LitServe's queue: requests arriving within --batch-timeout-ms are batched, up to --max-batch-size of them
        ─ ClassifierAPI.predict(batch) in a worker: every text of every request in one Classifier.predict_proba call
        ─ one response per request: {"labels", "probs", "batch"}
    GET /health (LitServe's), GET /metadata (labels, kind, runtime, manifest sha256, kdfast version)

Batching is the server's job; the model code sees lists, and it is the same ``Classifier`` that ``kdfast predict`` and
``kdfast.load`` use. Requests are validated in the HTTP process, before the queue: in a batched loop, an error in one
request's ``decode_request`` would fail every request of its batch.

No ``from __future__ import annotations`` here: LitServe and FastAPI read ``decode_request``'s annotation as a class.
"""

import itertools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import litserve as ls
from pydantic import BaseModel, StrictStr, model_validator

from kdfast.errors import KdfastError


@dataclass
class ServeConfig:
    run_dir: Path  # a teacher or student run folder
    host: str = "127.0.0.1"  # loopback by default; 0.0.0.0 to listen on every interface
    port: int = 8000
    runtime: str = "auto"  # as kdfast predict --runtime
    max_batch_size: int = 32  # requests per batch; 1 turns dynamic batching off
    batch_timeout_ms: float = 5.0  # how long the first request of a batch waits for others
    workers: int = 1  # model copies (processes), each batching on its own
    threads: int | None = None  # intra-op threads per worker (default: the runtime's)
    batch_size: int = 16  # sentences per forward pass inside a batch (length-sorted: less padding than one pass)
    max_texts: int = 256  # texts per request, at most
    max_chars: int = 2000  # characters per text, at most
    device: str = "auto"  # the torch runtime's device

    def validate(self) -> None:
        from kdfast.errors import require

        require([(self.host in ("127.0.0.1", "0.0.0.0", "::"), f"--host must be 127.0.0.1, 0.0.0.0 or ::, got "
                                                               f"{self.host!r}"),
                 (1024 <= self.port <= 65535, f"--port must be from 1024 to 65535, got {self.port}"),
                 (self.max_batch_size >= 1, f"--max-batch-size must be at least 1, got {self.max_batch_size}"),
                 (self.batch_timeout_ms >= 0, f"--batch-timeout-ms must be >= 0, got {self.batch_timeout_ms}"),
                 (self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
                 (self.max_texts >= 1, f"--max-texts must be at least 1, got {self.max_texts}"),
                 (self.max_chars >= 1, f"--max-chars must be at least 1, got {self.max_chars}")])


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
        return self


class ClassifierAPI(ls.LitAPI):
    """setup (load once per worker), decode_request, predict on a batch of requests, encode_response."""

    def __init__(self, cfg: ServeConfig) -> None:
        with warnings.catch_warnings():  # batching off (--max-batch-size 1) on purpose: LitServe's warning is noise
            warnings.filterwarnings("ignore", message="The LitServer has both batch and unbatch")
            super().__init__(max_batch_size=cfg.max_batch_size, batch_timeout=cfg.batch_timeout_ms / 1000)
        self.cfg = cfg

    def setup(self, device: str) -> None:
        from kdfast.serve.predict import Classifier

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
            "limits": {"max_texts": cfg.max_texts, "max_chars": cfg.max_chars}}


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
    server = ls.LitServer(ClassifierAPI(cfg), accelerator="cpu", devices=1, workers_per_device=cfg.workers,
                          timeout=60, fast_queue=True)
    server.app.add_api_route("/metadata", lambda: meta, methods=["GET"])
    return server


def serve(cfg: ServeConfig) -> None:
    """Build the server and run it until interrupted."""
    server = build(cfg)
    try:
        # no access log: a line per request costs the HTTP process as much CPU as a small model's forward pass
        server.run(host=cfg.host, port=cfg.port, generate_client_file=False, pretty_logs=False, log_level="warning")
    except ValueError as e:
        raise KdfastError(str(e)) from None
