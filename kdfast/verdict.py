"""A trained model against the majority class: what ``train lora``, ``distill`` and ``train rnn`` say when they end.

A classifier that answers the majority class for every sentence scores that class's share as accuracy (68.94% on
CoLA dev, "acceptable") and MCC 0: the failure of the report this project grew from, which printed 69.26% as a
result. ``against_majority`` puts a run's best dev scores beside that baseline and says plainly when the model
predicts one class for everything, with the likely cause and what to try.

One class for everything is recognised from the scores alone, so that it costs no extra pass over dev and works on
any ``metrics.json``: a model that predicts class k for all N dev sentences gets exactly t_k right (t_k: dev
sentences of class k), MCC 0, and macro-F1 (2·t_k / (N + t_k)) / C, C the classes present in dev (every other
class's F1 is 0). All three at once from a model that predicts two classes would take an exact coincidence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NEAR_ZERO_MCC = 0.05  # below this dev MCC a model has learned little beyond the class shares: say so


def constant_class(acc: float, mcc: float, f1: float | None, counts: np.ndarray) -> int | None:
    """The class a model predicts for every dev sentence, when its dev scores are exactly those of that constant
    predictor (``counts``: dev sentences per class); None otherwise."""
    n = int(counts.sum())
    if n == 0 or abs(mcc) > 1e-9:
        return None
    present = int((counts > 0).sum())
    for k in np.flatnonzero(counts):
        t = int(counts[k])
        if round(acc * n) != t:
            continue
        if f1 is None or abs(f1 - 2 * t / (n + t) / present) < 1e-6:
            return int(k)
    return None


def against_majority(best: dict[str, Any], dev_labels: np.ndarray, label_names: list[str], what: str = "the model",
                     steps: int | None = None, lr: float | None = None) -> dict[str, Any]:
    """``best`` (a run's best dev scores: ``dev_acc``, ``dev_mcc``, ``dev_f1``) beside the majority class of
    ``dev_labels``. Returns what ``metrics.json`` keeps as ``verdict``: the majority class and its accuracy, the
    gains over it, ``one_class`` (the class predicted for everything, or None), ``learned`` and ``lines`` (what
    to print; the first is the comparison, any others a warning and its advice)."""
    counts = np.bincount(np.asarray(dev_labels, dtype=np.int64), minlength=len(label_names))
    majority = int(counts.argmax())
    majority_acc = float(counts[majority] / counts.sum()) if counts.sum() else 0.0
    acc, mcc = float(best["dev_acc"]), float(best["dev_mcc"])
    one = constant_class(acc, mcc, best.get("dev_f1"), counts)
    name = label_names[majority]
    lines = [f"{what}: dev accuracy {acc:.4f} against {majority_acc:.4f} for answering {name!r} (the majority "
             f"class) to every sentence; dev MCC {mcc:.4f} against 0"]
    budget = ", ".join(x for x in (f"{steps:,} optimizer steps" if steps else "",
                                   f"learning rate {lr:g}" if lr else "") if x)
    budget = f" ({budget})" if budget else ""
    if one is not None:
        lines.append(f"{what} predicts {label_names[one]!r} for every dev sentence: it has learned nothing beyond "
                     "the class shares")
        lines.append(f"likely cause: too few training steps{budget}, or a learning rate too high (it diverges to "
                     "one class) or too low (it never leaves the start); try more --epochs or more data "
                     "(--max-train-samples), or another --lr")
    elif mcc < NEAR_ZERO_MCC:
        lines.append(f"{what} is barely better than the majority class (dev MCC {mcc:.4f} < {NEAR_ZERO_MCC}): "
                     f"too few training steps{budget} or a learning rate that does not suit it are the usual "
                     "causes; try more --epochs or data, or another --lr")
    return {"majority_class": name, "majority_acc": majority_acc, "acc": acc, "mcc": mcc,
            "acc_gain": acc - majority_acc, "one_class": None if one is None else label_names[one],
            "learned": one is None and mcc >= NEAR_ZERO_MCC, "lines": lines}
