"""A run against the majority class: the one-class warning fires on a collapsed model and not on a learning one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from kdfast.metrics import score_logits
from kdfast.verdict import NEAR_ZERO_MCC, against_majority, constant_class

NAMES = ["unacceptable", "acceptable"]


def cola_like_labels(n: int = 1043, seed: int = 0) -> np.ndarray:
    """Labels with CoLA dev's share of the majority class (about 69% "acceptable")."""
    return (np.random.default_rng(seed).random(n) < 0.69).astype(np.int64)


def judged(logits: np.ndarray, labels: np.ndarray, names: list[str] = NAMES) -> dict:
    return against_majority(score_logits(logits, labels), labels, names, "the model", steps=31, lr=3e-4)


@pytest.mark.parametrize("k", [0, 1])
def test_one_class_for_everything_is_named(k: int) -> None:
    labels = cola_like_labels()
    logits = np.zeros((len(labels), 2))
    logits[:, k] = 1.0  # the same answer for every sentence, whatever the margin
    logits[:, 1 - k] = np.random.default_rng(1).random(len(labels)) * 0.5
    v = judged(logits, labels)
    assert v["one_class"] == NAMES[k] and not v["learned"]
    assert v["majority_class"] == "acceptable" and v["majority_acc"] == pytest.approx(labels.mean())
    assert v["acc"] == pytest.approx((labels == k).mean()) and v["mcc"] == 0
    assert f"predicts {NAMES[k]!r} for every dev sentence" in v["lines"][1]
    assert "31 optimizer steps" in v["lines"][2] and "--lr" in v["lines"][2] and "--epochs" in v["lines"][2]


def test_a_learning_model_is_not_flagged() -> None:
    labels = cola_like_labels()
    rng = np.random.default_rng(2)
    preds = np.where(rng.random(len(labels)) < 0.8, labels, 1 - labels)  # right 80% of the time
    logits = np.eye(2)[preds]
    v = judged(logits, labels)
    assert v["one_class"] is None and v["learned"] and v["mcc"] > NEAR_ZERO_MCC
    assert len(v["lines"]) == 1 and "dev MCC" in v["lines"][0] and "'acceptable' (the majority class)" in v["lines"][0]
    assert v["acc_gain"] == pytest.approx(v["acc"] - labels.mean())


def test_two_classes_at_the_majority_share_are_not_one_class() -> None:
    """A model that predicts both classes but happens to score the majority share is not taken for a constant
    predictor; one barely better than chance is still warned about."""
    labels = cola_like_labels()
    rng = np.random.default_rng(3)
    preds = labels.copy()
    flip = rng.choice(len(labels), size=round(len(labels) * (1 - labels.mean())), replace=False)
    preds[flip] = 1 - preds[flip]  # accuracy = the majority share, exactly, with both classes predicted
    v = judged(np.eye(2)[preds], labels)
    assert v["acc"] == pytest.approx(labels.mean(), abs=1e-3)
    assert v["one_class"] is None
    coin = np.random.default_rng(3).random(len(labels)) < 0.51  # right 51% of the time
    barely = judged(np.eye(2)[np.where(coin, labels, 1 - labels)], labels)
    assert barely["one_class"] is None and 0 < barely["mcc"] < NEAR_ZERO_MCC  # seeded: a near-coin-flip model
    assert not barely["learned"] and "barely better than the majority class" in barely["lines"][1]


def test_constant_class_on_three_classes() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    for k in range(3):
        s = score_logits(np.eye(3)[np.full(100, k)], labels)
        assert constant_class(s["dev_acc"], s["dev_mcc"], s["dev_f1"], np.bincount(labels)) == k
    s = score_logits(np.eye(3)[labels], labels)
    assert constant_class(s["dev_acc"], s["dev_mcc"], s["dev_f1"], np.bincount(labels)) is None


def test_the_teacher_run_says_it_against_the_majority(teacher_run: Path, capsys) -> None:
    """On a tiny teacher: metrics.json keeps the verdict, and its one_class agrees with the run's dev predictions."""
    import torch

    from kdfast.data import dataset_from_config
    from kdfast.evaluate import run_logits

    metrics = json.loads((teacher_run / "metrics.json").read_text())
    v = metrics["verdict"]
    data = dataset_from_config(metrics["config"], labels=metrics["data"]["labels"])
    preds = run_logits(teacher_run, [e.text for e in data.dev], torch.device("cpu")).argmax(-1)
    constant = len(set(preds.tolist())) == 1
    assert (v["one_class"] is not None) == constant
    labels = data.dev_targets()[0]
    assert v["majority_acc"] == pytest.approx(np.bincount(labels).max() / len(labels))


@pytest.fixture(scope="module")
def blind_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 that cannot see its input: its final LayerNorm has weight 0, so every position's state is that
    LayerNorm's bias, and the logits are the same for every sentence however LoRA and the head train."""
    import torch
    from helpers import save_tiny_gpt2
    from transformers import GPT2ForSequenceClassification

    folder = save_tiny_gpt2(tmp_path_factory.mktemp("blind-gpt2"))
    model = GPT2ForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.normal_()
    model.save_pretrained(folder)
    return folder


def test_train_lora_prints_a_collapse(blind_gpt2: Path, cola_dir: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(["train", "lora", "--model", str(blind_gpt2), "--data", str(cola_dir), "--out",
                              str(tmp_path / "t"), "--epochs", "1", "--max-train-samples", "64", "--batch-size", "32",
                              "--lr", "3e-4", "--no-progress", "--device", "cpu"], capsys)
    assert code == 0, err
    text = " ".join(out.split())  # Rich wraps long lines
    verdict = json.loads((tmp_path / "t" / "metrics.json").read_text())["verdict"]
    assert verdict["one_class"] in ("acceptable", "unacceptable") and not verdict["learned"]
    assert "against 0.6894 for answering 'acceptable' (the majority class)" in text
    assert f"warning: the teacher predicts '{verdict['one_class']}' for every dev sentence" in text
    assert "too few training steps (2 optimizer steps, learning rate 0.0003)" in text


def test_train_rnn_prints_its_verdict(cola_dir: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(["train", "rnn", "--data", str(cola_dir), "--out", str(tmp_path / "s"), "--epochs", "1",
                              "--max-train-samples", "64", "--hidden", "8", "--embed-dim", "8", "--no-progress",
                              "--device", "cpu"], capsys)
    assert code == 0, err
    verdict = json.loads((tmp_path / "s" / "metrics.json").read_text())["verdict"]
    assert "the student: dev accuracy" in " ".join(out.split())
    assert verdict["majority_class"] == "acceptable"
