"""The teacher end to end: CLI, artifacts, PEFT compatibility, GPT-2 padding, error lines, nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from safetensors.torch import load_file

from kdfast.data import load_dataset
from kdfast.evaluate import evaluate_run
from kdfast.train.teacher import encode, load_teacher, predict_logits, score_dev


def test_cli_trains_and_writes_every_artifact(tiny_gpt2: Path, cola_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "teacher"
    code, stdout, stderr = run_cli(
        ["train", "lora", "--model", str(tiny_gpt2), "--data", str(cola_dir), "--out", str(out), "--epochs", "2",
         "--max-train-samples", "128", "--batch-size", "32", "--rank", "4", "--no-progress"], capsys)
    assert code == 0, stderr
    assert {p.name for p in out.iterdir()} == {"run.json", "metrics.json", "adapter", "merged", "curves.png",
                                              "config.yaml"}
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert (out / "merged" / "config.json").exists() and (out / "merged" / "model.safetensors").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    for h in metrics["history"]:
        assert set(h) >= {"epoch", "train_loss", "train_acc", "dev_loss", "dev_acc", "dev_mcc"}
    assert set(metrics["best"]) >= {"epoch", "dev_acc", "dev_mcc", "dev_in_domain_mcc", "dev_out_of_domain_mcc"}
    best = max(metrics["history"], key=lambda h: h["dev_mcc"])
    assert metrics["best"]["epoch"] == best["epoch"]
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    assert metrics["config"]["rank"] == 4 and metrics["data"]["dev"] == 1043
    assert "trainable parameters" in stdout
    assert json.loads((out / "run.json").read_text())["kind"] == "teacher"
    # The saved model is the best epoch's: eval reproduces its dev numbers.
    report = evaluate_run(out)
    assert report["dev_mcc"] == pytest.approx(metrics["best"]["dev_mcc"], abs=1e-9)
    assert report["dev_acc"] == pytest.approx(metrics["best"]["dev_acc"], abs=1e-9)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_training_is_reproducible(tiny_gpt2: Path, cola_dir: Path, tmp_path: Path) -> None:
    from kdfast.train.teacher import TeacherConfig, run

    def once(out: Path) -> list[dict]:
        return run(TeacherConfig(model=str(tiny_gpt2), data=str(cola_dir), out=out, epochs=1, max_train_samples=64,
                                 rank=2, progress=False))["history"]

    a, b = once(tmp_path / "a"), once(tmp_path / "b")
    for key in ("train_loss", "dev_loss", "dev_mcc"):
        assert a[0][key] == b[0][key]


def test_peft_loads_the_adapter_with_equal_logits(teacher_run: Path, cola_dir: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    config = json.loads((teacher_run / "metrics.json").read_text())["config"]
    base = AutoModelForSequenceClassification.from_pretrained(config["model"], num_labels=2)
    base.config.pad_token_id = base.config.eos_token_id
    peft_model = peft.PeftModel.from_pretrained(base, teacher_run / "adapter").eval()
    ours, tokenizer = load_teacher(teacher_run, merged=False)
    merged, _ = load_teacher(teacher_run, merged=True)
    sentences = [e.text for e in load_dataset(cola_dir).dev[:40]]
    ids = encode(tokenizer, sentences, 64)
    device = torch.device("cpu")
    ref = predict_logits(peft_model, ids, tokenizer.pad_token_id, device)
    # The head trained: PEFT must have loaded it, not a fresh random one.
    state = load_file(str(teacher_run / "adapter" / "adapter_model.safetensors"))
    torch.testing.assert_close(peft_model.base_model.model.score.modules_to_save["default"].weight,
                               state["base_model.model.score.weight"])
    torch.testing.assert_close(predict_logits(ours, ids, tokenizer.pad_token_id, device), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(predict_logits(merged, ids, tokenizer.pad_token_id, device), ref, rtol=0, atol=1e-4)


def test_gpt2_pools_the_last_real_token_under_right_padding(teacher_run: Path) -> None:
    model, tokenizer = load_teacher(teacher_run)
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "right"
    sentences = ["The cat sat.", "Colourless green ideas sleep furiously on the old mat today."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1] == tokenizer.pad_token_id  # the short one really is padded
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**tokenizer([s], return_tensors="pt")).logits for s in sentences])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def test_dev_scoring_reports_both_halves(teacher_run: Path, cola_dir: Path) -> None:
    report = evaluate_run(teacher_run, str(cola_dir))
    assert report["dev"] == 1043
    for key in ("dev_acc", "dev_mcc", "dev_in_domain_acc", "dev_in_domain_mcc", "dev_out_of_domain_acc",
                "dev_out_of_domain_mcc", "dev_loss"):
        assert key in report
    cola = load_dataset(cola_dir)
    import numpy as np

    logits = np.zeros((1043, 2), dtype=np.float32)
    logits[:, 1] = 1.0  # always "acceptable"
    assert score_dev(logits, cola)["dev_in_domain_acc"] == pytest.approx(365 / 527)


def test_eval_command_json(teacher_run: Path, capsys) -> None:
    code, stdout, stderr = run_cli(["eval", str(teacher_run), "--json"], capsys)
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["kind"] == "teacher" and report["dev"] == 1043


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rank", "0"], "error: --rank must be at least 1"),
        (["--lr", "-1"], "error: --lr must be positive"),
        (["--model", "/nonexistent/model"], "error: --model /nonexistent/model: no such folder"),
        (["--data", "/nonexistent/cola"], "error: --data /nonexistent/cola: no such file or folder"),
        (["--bogus-flag"], "error: No such option: --bogus-flag"),
    ],
)
def test_user_errors_are_one_line(args: list[str], message: str, tiny_gpt2: Path, cola_dir: Path,
                                  tmp_path: Path, capsys) -> None:
    base = ["train", "lora", "--model", str(tiny_gpt2), "--data", str(cola_dir), "--out", str(tmp_path / "o")]
    code, _, stderr = run_cli(base + args, capsys)
    assert code != 0
    assert stderr.startswith(message), stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not (tmp_path / "o").exists()


def test_a_malformed_data_file_is_named(tiny_gpt2: Path, cola_dir: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "cola"
    data.mkdir()
    for name in ("in_domain_dev.tsv", "out_of_domain_dev.tsv"):
        (data / name).write_bytes((cola_dir / name).read_bytes())
    (data / "in_domain_train.tsv").write_text("gj04\t1\t\tGood.\ngj04\tx\t\tBad label.\n")
    code, _, stderr = run_cli(["train", "lora", "--model", str(tiny_gpt2), "--data", str(data),
                               "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and stderr.strip() == f"error: {data / 'in_domain_train.tsv'}:2: label must be 0 or 1, found 'x'"


def test_non_empty_out_is_refused_and_kept(tiny_gpt2: Path, cola_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "teacher"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    args = ["train", "lora", "--model", str(tiny_gpt2), "--data", str(cola_dir), "--out", str(out),
            "--max-train-samples", "32", "--epochs", "1", "--no-progress"]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "not empty; pass --overwrite" in stderr
    assert (out / "precious.txt").read_text() == "keep me"


def test_a_failed_run_destroys_nothing(tiny_gpt2: Path, cola_dir: Path, tmp_path: Path, monkeypatch,
                                       capsys) -> None:
    import kdfast.train.teacher

    out = tmp_path / "teacher"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(kdfast.train.teacher, "plot_curves", explode)  # fails while the run folder is being written
    args = ["train", "lora", "--model", str(tiny_gpt2), "--data", str(cola_dir), "--out", str(out),
            "--max-train-samples", "32", "--epochs", "1", "--no-progress", "--overwrite"]
    with pytest.raises(RuntimeError, match="disk full"):
        run_cli(args, capsys)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["teacher"]  # the staging folder is gone too


def test_nan_loss_stops_with_a_clear_message(tiny_gpt2: Path, cola_dir: Path, tmp_path: Path, capsys) -> None:
    code, _, stderr = run_cli(["train", "lora", "--model", str(tiny_gpt2), "--data", str(cola_dir), "--out",
                               str(tmp_path / "o"), "--lr", "1e30", "--max-train-samples", "256", "--epochs", "1",
                               "--no-progress"], capsys)
    assert code == 2
    assert stderr.startswith("error: the loss became nan") and "lower --lr" in stderr


def test_the_console_entry_point_prints_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "kdfast", "eval", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path}: not a kdfast run folder (no run.json)"


def test_a_hub_model_offline_fails_fast_naming_the_local_alternative(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                      capsys) -> None:
    """Offline, the Hub is not even asked: no connection is tried (fast by construction, not by a clock)."""
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was tried")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    code, _, err = run_cli(["train", "lora", "--model", "gpt2", "--data", "cola", "--out", str(tmp_path / "t"),
                            "--no-progress"], capsys)
    assert code == 2 and err.startswith("error: --model gpt2 needs the Hugging Face Hub") and "--model DIR" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "t").exists()
