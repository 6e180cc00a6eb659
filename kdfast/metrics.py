"""Accuracy and Matthews correlation (MCC), the metric CoLA is scored by.

MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), 0 when any factor is 0: a constant predictor
scores 0 however imbalanced the data (predicting "acceptable" everywhere gets 68.9% accuracy on CoLA dev).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    p, y = np.asarray(preds), np.asarray(labels)
    return float((p == y).mean()) if len(y) else 0.0


def mcc(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    p, y = np.asarray(preds).astype(bool), np.asarray(labels).astype(bool)
    tp = float(np.sum(p & y))
    tn = float(np.sum(~p & ~y))
    fp = float(np.sum(p & ~y))
    fn = float(np.sum(~p & y))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def dev_report(preds: np.ndarray, labels: np.ndarray, in_domain: np.ndarray) -> dict[str, float]:
    """Accuracy and MCC on the whole dev set and on each half."""
    out = {"dev_acc": accuracy(preds, labels), "dev_mcc": mcc(preds, labels)}
    for name, mask in (("in_domain", in_domain), ("out_of_domain", ~in_domain)):
        out[f"dev_{name}_acc"] = accuracy(preds[mask], labels[mask])
        out[f"dev_{name}_mcc"] = mcc(preds[mask], labels[mask])
    return out
