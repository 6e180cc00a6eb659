"""Accuracy, Matthews correlation (MCC) and macro-F1, for two classes or more.

MCC in its multi-class form (Gorodkin 2004, https://doi.org/10.1016/j.compbiolchem.2004.09.006), from the confusion
matrix C (rows: true class, columns: predicted), with s samples, c of them correct, t_k true and p_k predicted in
class k:

    MCC = (c·s − Σ_k p_k·t_k) / sqrt((s² − Σ_k p_k²) · (s² − Σ_k t_k²)),  0 when either factor is 0.

For two classes it equals (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), the metric CoLA is scored by. A
constant predictor scores 0 however imbalanced the data (predicting "acceptable" everywhere gets 68.9% accuracy
on CoLA dev). Macro-F1 is the unweighted mean of each class's F1 over the classes that occur in the labels or the
predictions (scikit-learn's ``f1_score(average="macro")``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SELECT_BY = ("mcc", "acc", "f1")  # what --select-by may pick the best epoch by


def confusion(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """(C, C) counts, C the number of classes seen in either: rows true class, columns predicted."""
    p, y = np.asarray(preds, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    n = int(max(p.max(initial=-1), y.max(initial=-1))) + 1
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (y, p), 1)
    return m


def accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    p, y = np.asarray(preds), np.asarray(labels)
    return float((p == y).mean()) if len(y) else 0.0


def mcc(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    m = confusion(preds, labels).astype(np.float64)
    s, c = m.sum(), np.trace(m)
    t, p = m.sum(1), m.sum(0)  # true and predicted counts per class
    denom = math.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - p @ t) / denom) if denom else 0.0


def macro_f1(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    m = confusion(preds, labels).astype(np.float64)
    tp, t, p = np.diag(m), m.sum(1), m.sum(0)
    present = (t + p) > 0
    f1 = np.divide(2 * tp, t + p, out=np.zeros_like(tp), where=present)
    return float(f1[present].mean()) if present.any() else 0.0


def scores(preds: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
    return {f"{prefix}_acc": accuracy(preds, labels), f"{prefix}_mcc": mcc(preds, labels),
            f"{prefix}_f1": macro_f1(preds, labels)}


def dev_report(preds: np.ndarray, labels: np.ndarray, in_domain: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy, MCC and macro-F1 on the whole dev set, and on each half when ``in_domain`` is given (CoLA)."""
    out = scores(preds, labels, "dev")
    if in_domain is not None:
        for name, mask in (("in_domain", in_domain), ("out_of_domain", ~in_domain)):
            out.update(scores(preds[mask], labels[mask], f"dev_{name}"))
    return out


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean −log softmax(logits)[label] (N, C) → scalar, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), np.asarray(labels)].mean()) if len(labels) else 0.0


def score_logits(logits: np.ndarray, labels: np.ndarray, in_domain: np.ndarray | None = None) -> dict[str, float]:
    """``dev_loss`` and :func:`dev_report` of logits (N, C) against ``labels`` (N,)."""
    return {"dev_loss": cross_entropy(logits, labels), **dev_report(np.asarray(logits).argmax(-1), labels, in_domain)}


def best_summary(epoch: int, report: dict[str, float]) -> dict[str, float | int]:
    """What ``metrics.json`` keeps of the best epoch: its number and every dev score but the loss."""
    return {"epoch": epoch, **{k: v for k, v in report.items() if k != "dev_loss"}}


def improves(report: dict[str, float], best: dict[str, float | int] | None, select_by: str) -> bool:
    """Whether this epoch's ``report`` beats the ``best`` so far by dev ``select_by`` (mcc | acc | f1); ties keep the
    earlier epoch."""
    key = f"dev_{select_by}"
    return best is None or report[key] > best[key]
