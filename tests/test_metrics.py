"""kdfast.metrics beyond MCC's worked examples (tests/test_data.py): the confusion matrix, the degenerate cases, the
dev loss, and how the best epoch is chosen and kept."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdfast.metrics import (
    accuracy,
    best_summary,
    confusion,
    cross_entropy,
    dev_report,
    improves,
    macro_f1,
    mcc,
    score_logits,
    scores,
)


def test_confusion_rows_are_true_columns_predicted() -> None:
    m = confusion([0, 2, 1, 1], [1, 2, 1, 0])
    assert m.dtype == np.int64
    assert m.tolist() == [[0, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert confusion([3], [0]).shape == (4, 4)  # a class seen only among the predictions counts
    assert confusion([], []).shape == (0, 0)
    assert confusion(np.array([1.0, 0.0]), np.array([1.0, 1.0])).tolist() == [[0, 0], [1, 1]]  # float ids are ids


def test_degenerate_cases_score_zero_not_nan() -> None:
    assert accuracy([], []) == 0.0 and mcc([], []) == 0.0 and macro_f1([], []) == 0.0
    assert accuracy([0, 1, 1], [0, 1, 0]) == pytest.approx(2 / 3)
    assert mcc([1, 1, 1], [1, 1, 1]) == 0.0  # one class only: both factors of the denominator are 0
    assert mcc([2, 2, 2, 2], [0, 1, 2, 1]) == 0.0  # a constant predictor, three classes
    assert mcc([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(1 / math.sqrt(3))  # TP 2, TN 1, FP 0, FN 1


def test_macro_f1_counts_classes_seen_in_labels_or_predictions() -> None:
    # class 0: F1 1; class 1 (labels only) and class 2 (predictions only): F1 0
    assert macro_f1([0, 2], [0, 1]) == pytest.approx(1 / 3)
    assert macro_f1([0, 2, 2], [0, 2, 0]) == pytest.approx((2 / 3 + 2 / 3) / 2)  # class 1, seen nowhere, is left out
    assert macro_f1([0, 1, 1, 1], [0, 0, 1, 1]) == pytest.approx((2 / 3 + 4 / 5) / 2)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert macro_f1([0, 2], [0, 1]) == pytest.approx(sklearn.f1_score([0, 1], [0, 2], average="macro"))


def test_scores_and_dev_report_per_half() -> None:
    preds, labels = np.array([1, 0, 1, 0, 0, 0]), np.array([1, 0, 0, 1, 0, 0])
    in_domain = np.array([True, True, True, False, False, False])
    assert scores(preds, labels, "x") == {"x_acc": accuracy(preds, labels), "x_mcc": mcc(preds, labels),
                                          "x_f1": macro_f1(preds, labels)}
    report = dev_report(preds, labels, in_domain)
    assert report["dev_acc"] == pytest.approx(4 / 6)
    assert report["dev_in_domain_acc"] == pytest.approx(2 / 3)
    assert report["dev_out_of_domain_acc"] == pytest.approx(2 / 3)
    assert report["dev_in_domain_mcc"] == pytest.approx(0.5)  # TP 1, TN 1, FP 1, FN 0
    assert report["dev_out_of_domain_mcc"] == 0.0  # a constant predictor on that half
    assert report["dev_out_of_domain_f1"] == pytest.approx(macro_f1([0, 0, 0], [1, 0, 0]))
    assert set(dev_report(preds, labels)) == {"dev_acc", "dev_mcc", "dev_f1"}


def test_cross_entropy_by_hand_and_stable() -> None:
    logits, labels = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]]), np.array([0, 1, 0])
    want = -(math.log(math.e**2 / (math.e**2 + 1)) + math.log(math.e / (1 + math.e)) + math.log(
        math.e / (math.e + math.e**3))) / 3
    assert cross_entropy(logits, labels) == pytest.approx(want, rel=1e-12)
    assert cross_entropy(np.array([[1000.0, 0.0]], dtype=np.float32), np.array([1])) == pytest.approx(1000.0)
    assert cross_entropy(np.zeros((0, 2)), np.array([], dtype=np.int64)) == 0.0
    # in float64 even from float32 logits: log(1 + e⁻²⁰) ≈ 2.06e-9 is 0 in float32
    assert cross_entropy(np.array([[0.0, -20.0]], dtype=np.float32), np.array([0])) == pytest.approx(
        math.log1p(math.exp(-20)), rel=1e-6)


def test_score_logits_is_the_loss_and_the_report_of_the_argmax() -> None:
    logits, labels = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0], [0.5, 0.0]]), np.array([0, 1, 0, 1])
    in_domain = np.array([True, False, True, False])
    got = score_logits(logits, labels, in_domain)
    assert got == {"dev_loss": cross_entropy(logits, labels),
                   **dev_report(np.array([0, 1, 1, 0]), labels, in_domain)}


def test_best_epoch_is_kept_by_the_chosen_score_and_ties_keep_the_earlier() -> None:
    report = {"dev_loss": 0.7, "dev_acc": 0.8, "dev_mcc": 0.3, "dev_f1": 0.6}
    best = best_summary(2, report)
    assert best == {"epoch": 2, "dev_acc": 0.8, "dev_mcc": 0.3, "dev_f1": 0.6}
    assert improves(report, None, "mcc")  # the first epoch is the best so far
    assert not improves(report, best, "mcc")  # a tie keeps the earlier epoch
    better_mcc = {**report, "dev_mcc": 0.31, "dev_acc": 0.7}
    assert improves(better_mcc, best, "mcc") and not improves(better_mcc, best, "acc")
    assert improves({**report, "dev_f1": 0.61}, best, "f1") and not improves({**report, "dev_f1": 0.59}, best, "f1")
