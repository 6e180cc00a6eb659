"""``kdfast serve``: a run's model as an HTTP JSON service with dynamic batching (LitServe)."""

from __future__ import annotations

from pathlib import Path

import typer

from kdfast.cli.main import app
from kdfast.errors import KdfastError


@app.command("serve")
def serve_command(
    run_dir: Path = typer.Argument(..., help="A teacher or student run folder."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every one)."),
    port: int = typer.Option(8000),
    runtime: str = typer.Option("auto", help="auto, torch, onnx, onnx-opt or onnx-int8 (as kdfast predict)."),
    max_batch_size: int = typer.Option(32, help="Requests batched into one forward pass, at most; 1: no batching."),
    batch_timeout_ms: float = typer.Option(5.0, help="How long a batch waits to fill, in milliseconds."),
    batch_size: int = typer.Option(16, help="Sentences per forward pass within a batch (sorted by length)."),
    workers: int = typer.Option(1, help="Model processes, each batching on its own."),
    threads: int | None = typer.Option(None, help="Intra-op threads per worker (default: the runtime's)."),
    max_texts: int = typer.Option(256, help="Texts per request, at most (more: a 422)."),
    max_chars: int = typer.Option(2000, help="Characters per text, at most (more: a 422)."),
    max_body_bytes: int = typer.Option(4 * 1024 * 1024, help="Bytes per request body, at most (more: a 413, before "
                                       "it is read); the default holds any request within the default limits."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (the torch runtime)."),
) -> None:
    """Serve a run over HTTP: POST /predict {"texts": [...]} -> labels and probabilities; GET /health, /metadata."""
    try:
        from kdfast.serve.server import ServeConfig, serve
    except ImportError as e:
        raise KdfastError(f"kdfast serve needs LitServe: pip install 'kdfast[serve]' ({e})") from None
    serve(ServeConfig(run_dir=run_dir, host=host, port=port, runtime=runtime, max_batch_size=max_batch_size,
                      batch_timeout_ms=batch_timeout_ms, batch_size=batch_size, workers=workers, threads=threads,
                      max_texts=max_texts, max_chars=max_chars, max_body_bytes=max_body_bytes,
                      device=device))
