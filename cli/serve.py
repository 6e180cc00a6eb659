"""``kdfast serve``: a run's model as an HTTP JSON service with dynamic batching (LitServe)."""

from __future__ import annotations

from kdfast.cli.main import app
from kdfast.configs import ServeConfig
from kdfast.errors import KdfastError
from kdfast.options import command


@app.command("serve")
@command(ServeConfig)
def serve_command(cfg: ServeConfig) -> None:
    """Serve a run over HTTP: POST /predict {"texts": [...]} -> labels and probabilities; GET /health, /metadata."""
    try:
        from kdfast.serve.server import serve
    except ImportError as e:
        raise KdfastError(f"kdfast serve needs LitServe: pip install 'kdfast[serve]' ({e})") from None
    serve(cfg)
