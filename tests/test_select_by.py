"""``--select-by`` end to end: over four epochs whose dev accuracy, MCC and F1 each peak at a different epoch,
``train lora``, ``distill`` and ``train rnn`` keep the epoch the chosen score picks, in ``metrics.json`` and in the
weights they save.

Which epoch a real run's scores favour is not up to the test, so the dev scores the training loop sees are scripted
(the accuracy peaks at epoch 2, MCC at 3, F1 at 4), while the dev loss stays the real one of each epoch's weights:
``kdfast eval`` of the saved run must give the dev loss of the picked epoch and of no other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli

# epoch -> the dev scores the loop sees: each criterion's best epoch differs (only F1's is the last)
SCRIPT = {1: {"dev_acc": 0.70, "dev_mcc": 0.10, "dev_f1": 0.60},
          2: {"dev_acc": 0.80, "dev_mcc": 0.05, "dev_f1": 0.50},
          3: {"dev_acc": 0.60, "dev_mcc": 0.30, "dev_f1": 0.55},
          4: {"dev_acc": 0.65, "dev_mcc": 0.20, "dev_f1": 0.70}}
PICKS = {"acc": 2, "f1": 4, None: 3}  # None: the flag left out (the default, mcc)
FAST = ["--epochs", "4", "--max-train-samples", "48", "--batch-size", "16", "--seed", "0", "--device", "cpu",
        "--no-progress"]
STUDENT = ["--hidden", "8", "--embed-dim", "8", "--lr", "1e-2", *FAST]


def scripted(real: Any) -> tuple[Any, list[dict[str, float]]]:
    """``score_dev`` with the scripted scores over the real ones (the dev loss kept), and the real reports."""
    seen: list[dict[str, float]] = []

    def score_dev(logits: Any, data: Any) -> dict[str, float]:
        report = real(logits, data)
        seen.append(report)
        return {**report, **SCRIPT[len(seen)]}

    return score_dev, seen


# every criterion and the default on one command; on the others, enough that each reads the flag (kept to six runs)
CASES = [("rnn", "acc"), ("rnn", "f1"), ("rnn", None), ("distill", "f1"), ("lora", "acc"), ("lora", None)]


@pytest.mark.parametrize(("command", "select_by"), CASES)
def test_the_kept_epoch_is_the_one_the_chosen_score_picks(command: str, select_by: str | None, tmp_path: Path,
                                                          tiny_gpt2: Path, teacher_run: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import kdfast.train.student_stage
    import kdfast.train.teacher

    out = tmp_path / "run"
    args = {"lora": ["train", "lora", "--model", str(tiny_gpt2), "--rank", "4", "--alpha", "8", "--lr", "2e-3", *FAST],
            "distill": ["distill", "--teacher", str(teacher_run), "--recipe", "plain", *STUDENT],
            "rnn": ["train", "rnn", *STUDENT]}[command]
    flag = [] if select_by is None else ["--select-by", select_by]
    module = kdfast.train.teacher if command == "lora" else kdfast.train.student_stage
    with monkeypatch.context() as m:  # the training loop's scores scripted; kdfast eval's below are the real ones
        fake, real = scripted(module.score_dev)
        m.setattr(module, "score_dev", fake)
        code, _, err = run_cli([*args, "--out", str(out), *flag], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    picked = PICKS[select_by]
    assert metrics["config"]["select_by"] == (select_by or "mcc")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4] and len(real) == 4
    key = f"dev_{select_by or 'mcc'}"
    assert max(range(4), key=lambda i: metrics["history"][i][key]) + 1 == picked  # the history's argmax ...
    assert metrics["best"]["epoch"] == picked  # ... is the best entry
    assert metrics["best"] == {"epoch": picked, **{k: v for k, v in metrics["history"][picked - 1].items()
                                                   if k.startswith("dev_") and k != "dev_loss"}}

    # the saved weights are that epoch's: their real dev loss is its loss and far from every other epoch's
    code, stdout, err = run_cli(["eval", str(out), "--json", "--device", "cpu"], capsys)
    assert code == 0, err
    loss = json.loads(stdout)["dev_loss"]
    losses = [r["dev_loss"] for r in real]
    nearest = min(range(4), key=lambda i: abs(losses[i] - loss))
    assert nearest + 1 == picked, (loss, losses)
    assert loss == pytest.approx(losses[picked - 1], rel=1e-5), (loss, losses)
    others = min(abs(losses[i] - losses[picked - 1]) for i in range(4) if i != picked - 1)
    assert others > 100 * abs(loss - losses[picked - 1]) and others > 1e-5, (loss, losses)
