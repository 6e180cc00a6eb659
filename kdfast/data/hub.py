"""Hugging Face Hub names (``--model gpt2``, ``--data hub:glue/sst2``), failing fast where the Hub cannot be reached.

``transformers`` and ``datasets`` retry an unreachable Hub for half a minute before they give up. kdfast first
checks, within a few seconds, that the Hub's host answers (or that the model is already in the local cache), and
otherwise stops with one ``error:`` line that names the local alternative.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from kdfast.errors import KdfastError, first_line

CONNECT_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether the Hub's host accepts a TCP connection within ``timeout`` seconds (name lookup included)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    ok: list[bool] = []

    def probe() -> None:  # in a thread: a name lookup ignores socket timeouts
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def require_hub(what: str, alternative: str) -> None:
    """An error naming ``alternative`` when ``what`` needs the Hub and it cannot be reached."""
    if not hub_reachable():
        raise KdfastError(f"{what} needs the Hugging Face Hub, which cannot be reached from this machine; "
                          f"offline, {alternative}")


def parse_hub_name(spec: str) -> tuple[str, str | None]:
    """``hub:OWNER/NAME[/CONFIG]`` or ``hub:NAME/CONFIG`` for GLUE (``hub:glue/sst2``) → (dataset, config)."""
    parts = [p for p in spec.removeprefix("hub:").split("/") if p]
    if len(parts) == 3:
        return "/".join(parts[:2]), parts[2]
    if len(parts) == 2 and parts[0] in ("glue", "super_glue"):  # GLUE's legacy names live under nyu-mll now
        return f"nyu-mll/{parts[0]}", parts[1]
    if len(parts) in (1, 2):
        return "/".join(parts), None
    raise KdfastError(f"--data {spec}: expected hub:OWNER/NAME[/CONFIG]")


def load_hub_splits(spec: str) -> tuple[dict[str, list[dict]], list[str] | None, str]:
    """The ``train`` and ``validation`` splits of a Hub dataset as rows, its ClassLabel names (None if the label
    column is not a ClassLabel), and its name."""
    name, config = parse_hub_name(spec)
    try:
        import datasets
    except ImportError:
        raise KdfastError(f"--data {spec} needs the 'datasets' package: pip install 'kdfast[hub]'") from None
    require_hub(f"--data {spec}", "use the bundled CoLA (--data cola) or a local file or folder (--data PATH)")
    try:
        ds = datasets.load_dataset(name, config)
    except Exception as e:
        raise KdfastError(f"--data {spec}: could not load {name}{f' ({config})' if config else ''} from the Hub "
                          f"({first_line(e)})") from None
    dev_split = next((s for s in ("validation", "dev") if s in ds), None)
    if "train" not in ds or dev_split is None:
        raise KdfastError(f"--data {spec}: needs 'train' and 'validation' splits, has {', '.join(ds)}")
    names = None
    feature = ds["train"].features.get("label")
    if feature is not None and hasattr(feature, "names"):
        names = list(feature.names)
    return {"train": list(ds["train"]), "dev": list(ds[dev_split])}, names, f"hub:{name}" + (
        f"/{config}" if config else "")
