"""ONNX Runtime against PyTorch: the same token ids through both, compared logit by logit.

Two kinds of check, both on real sentences:

- shapes: a few (batch, seq) shapes, batch 1 and an odd length among them, none the size of the example the model
  was traced with. A dynamic axis that the exporter froze to the example's size fails here (ONNX Runtime refuses
  the input, or a Reshape baked with the example's size does).
- parity: every dev sentence, batched by length exactly as ``kdfast eval`` batches them. fp32 models must agree on
  every label and stay within ``atol`` on every logit; reduced-precision ones (int8, fp16) must agree on ≥ 99% of
  the labels (int8: ``min_agreement``, and its dev MCC within ``max_mcc_drop`` of PyTorch's, the rule int8 tuning
  held on training sentences), and their dev accuracy and MCC are reported next to PyTorch's.

Everything here needs ``onnxruntime``, imported inside the functions so that ``kdfast`` imports without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdfast.batching import in_order, length_sorted_batches, pad_batch
from kdfast.data.dataset import Targets
from kdfast.errors import KdfastError
from kdfast.metrics import dev_report, mcc

# (batch, seq): batch 1, an odd length, a batch wider than the longest sentence in it (so padding at the end).
CHECK_SHAPES = ((1, 9), (3, 7), (8, 24))
FP32_AGREEMENT = 1.0  # every label
LOW_PRECISION_AGREEMENT = 0.99


def fit_batch(seqs: Sequence[Sequence[int]], pad_id: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both int64 (B, width): each sequence truncated or right-padded to ``width``."""
    ids, mask = pad_batch([list(s[:width]) for s in seqs], pad_id)
    extra = width - ids.shape[1]  # pad_batch pads to the longest; pad on to the width asked for
    if extra > 0:
        ids = torch.nn.functional.pad(ids, (0, extra), value=pad_id)
        mask = torch.nn.functional.pad(mask, (0, extra), value=0)
    return ids, mask


def feeds(ids: torch.Tensor, mask: torch.Tensor, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    tensors = {"input_ids": ids, "attention_mask": mask}
    return {name: tensors[name].numpy() for name in input_names}


def session(path: Path, provider: str = "CPUExecutionProvider") -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT warns about every initializer it constant-folds
    return ort.InferenceSession(str(path), options, providers=[provider])


@torch.no_grad()
def torch_logits(module: nn.Module, ids: list[list[int]], pad_id: int, input_names: Sequence[str],
                 batch_size: int = 64) -> np.ndarray:
    """Logits (N, C) of the exported module itself, batched by length."""
    parts = []
    for idx in length_sorted_batches(ids, batch_size):
        input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        parts.append((idx, module(*(inputs[n] for n in input_names)).float().numpy()))
    return in_order(parts, len(ids))



def onnx_logits(sess: Any, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Logits (N, C) from an ONNX Runtime session, batched as :func:`torch_logits` batches."""
    names = [i.name for i in sess.get_inputs()]
    parts = []
    for idx in length_sorted_batches(ids, batch_size):
        input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
        parts.append((idx, sess.run(["logits"], feeds(input_ids, mask, names))[0]))
    return in_order(parts, len(ids))


@dataclass
class VariantResult:
    """One ONNX file's parity with PyTorch on dev (and its shape checks)."""

    variant: str  # fp32 | optimized | int8 | fp16
    file: str
    fp32: bool  # judged by the fp32 rule (every label, max |Δlogit| ≤ atol) or by the low-precision one
    provider: str = "CPUExecutionProvider"
    checked: bool = True
    agreement: float = float("nan")  # share of dev sentences where ONNX and PyTorch pick the same label
    max_abs_diff: float = float("nan")  # max |Δlogit| over dev
    shapes_ok: bool = True
    passed: bool = False
    metrics: dict[str, float] = field(default_factory=dict)  # dev acc and MCC (and per half) of this variant
    note: str = ""
    min_agreement: float = LOW_PRECISION_AGREEMENT  # the low-precision rule: share of labels equal to PyTorch's
    max_mcc_drop: float | None = None  # and, when set, max |dev MCC - PyTorch's dev MCC|

    @property
    def rule(self) -> str:
        if self.fp32:
            return "100% labels, max|Δ| ≤ atol"
        return f"≥ {self.min_agreement:.1%} labels" + (
            f", |Δ MCC| ≤ {self.max_mcc_drop:g}" if self.max_mcc_drop is not None else "")


def check_shapes(sess: Any, module: nn.Module, ids: list[list[int]], pad_id: int, input_names: Sequence[str],
                 atol: float | None) -> list[dict[str, Any]]:
    """Run :data:`CHECK_SHAPES` through ONNX and PyTorch; ``atol`` None checks the output shape only."""
    rows = []
    for batch, width in CHECK_SHAPES:
        input_ids, mask = fit_batch(ids[:batch], pad_id, width)
        row: dict[str, Any] = {"batch": batch, "seq": width}
        try:
            got = sess.run(["logits"], feeds(input_ids, mask, input_names))[0]
        except Exception as e:  # ORT raises its own types; a frozen axis shows up here
            rows.append({**row, "ok": False, "error": str(e).strip().splitlines()[0]})
            continue
        with torch.no_grad():
            inputs = {"input_ids": input_ids, "attention_mask": mask}
            want = module(*(inputs[n] for n in input_names)).float().numpy()
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        ok = got.shape == want.shape == (batch, want.shape[1]) and (atol is None or diff <= atol)
        rows.append({**row, "ok": ok, "output_shape": list(got.shape), "max_abs_diff": diff})
    return rows


def compare(result: VariantResult, got: np.ndarray, want: np.ndarray, dev: Targets, atol: float) -> None:
    """Fill ``result`` with agreement, max |Δlogit|, dev metrics and the verdict."""
    labels, in_domain = dev
    result.agreement = float((got.argmax(-1) == want.argmax(-1)).mean())
    result.max_abs_diff = float(np.abs(got - want).max())
    result.metrics = dev_report(got.argmax(-1), labels, in_domain)
    if result.fp32:
        ok = result.agreement >= FP32_AGREEMENT and result.max_abs_diff <= atol
    else:
        ok = result.agreement >= result.min_agreement
        if result.max_mcc_drop is not None:
            ok = ok and abs(mcc(want.argmax(-1), labels) - result.metrics["dev_mcc"]) <= result.max_mcc_drop
    result.passed = ok and result.shapes_ok


def check_variant(result: VariantResult, path: Path, module: nn.Module, ids: list[list[int]], pad_id: int,
                  input_names: Sequence[str], want: np.ndarray, dev: Targets, atol: float,
                  batch_size: int = 64) -> dict[str, Any]:
    """Shapes, then the whole of ``dev``, for one ONNX file; returns the result as a dict (with its shape rows)."""
    try:
        sess = session(path, result.provider)
    except Exception as e:
        raise KdfastError(f"{path.name}: ONNX Runtime cannot load it ({str(e).strip().splitlines()[0]})") from None
    shapes = check_shapes(sess, module, ids, pad_id, input_names, atol if result.fp32 else None)
    result.shapes_ok = all(r["ok"] for r in shapes)
    try:
        got = onnx_logits(sess, ids, pad_id, batch_size)
    except Exception as e:  # e.g. a frozen axis meeting a dev batch of another shape
        result.passed, result.note = False, f"ONNX Runtime failed on dev: {str(e).strip().splitlines()[0]}"
        return {**asdict(result), "rule": result.rule, "shapes": shapes}
    compare(result, got, want, dev, atol)
    return {**asdict(result), "rule": result.rule, "shapes": shapes}


def reference_row(want: np.ndarray, dev: Targets) -> dict[str, Any]:
    """PyTorch's own dev metrics, the row every variant is compared with."""
    labels, in_domain = dev
    return {"variant": "pytorch", "metrics": dev_report(want.argmax(-1), labels, in_domain)}
