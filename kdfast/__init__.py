"""kdfast: a LoRA teacher (GPT-2 or any Hugging Face classifier) on CoLA or your data, distilled into a small RNN
student, made fast, exported and served."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdfast.serve.predict import Classifier

__version__ = "0.1.0"


def load(run_dir: Any, runtime: str = "auto", **options: Any) -> Classifier:
    """A run folder's model, ready to classify: ``kdfast.load("runs/student").predict(["A sentence."])``.

    ``runtime``: auto (the fastest ONNX export that passed its parity check, else PyTorch), torch, onnx, onnx-opt or
    onnx-int8; ``options``: batch_size, threads, device. See :class:`kdfast.serve.predict.Classifier`."""
    from kdfast.serve.predict import Classifier

    return Classifier(run_dir, runtime, **options)
