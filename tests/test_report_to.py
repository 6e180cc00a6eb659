"""``--report-to tensorboard|mlflow``: what a training command logs, read back with TensorBoard's event reader and
MLflow's client (per-step loss and learning rate, per-epoch dev scores, the configuration, the best scores)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

NAMES = ("unacceptable", "acceptable")
STUDENT = ["--hidden", "8", "--embed-dim", "8", "--epochs", "2", "--batch-size", "16", "--device", "cpu",
           "--no-progress"]


@pytest.fixture(scope="module")
def small_data(cola_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CoLA's first 64 training and 48 dev sentences as CSV files, labels named as CoLA's (the teacher run's): runs
    in seconds (4 steps of 16 an epoch)."""
    data = tmp_path_factory.mktemp("data")
    for name, source, n in (("train", "in_domain_train.tsv", 64), ("dev", "in_domain_dev.tsv", 48)):
        rows = [line.split("\t") for line in (cola_dir / source).read_text().splitlines()[:n]]
        with (data / f"{name}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *((r[3], NAMES[int(r[1])]) for r in rows)])
    return data


def events(folder: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def best_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text())


def test_tensorboard_events_of_the_student_and_the_teacher(small_data: Path, tiny_gpt2: Path, tmp_path: Path,
                                                           capsys) -> None:
    out = tmp_path / "runs" / "rnn"
    code, _, err = run_cli(["train", "rnn", "--data", str(small_data), "--out", str(out), "--report-to",
                            "tensorboard", *STUDENT], capsys)
    assert code == 0, err
    acc = events(tmp_path / "runs" / "tensorboard" / "rnn")
    scalars = acc.Tags()["scalars"]
    loss, lr = acc.Scalars("train/loss"), acc.Scalars("train/lr")
    assert [e.step for e in loss] == [e.step for e in lr] == list(range(1, 9))  # 2 epochs of 4 steps
    assert all(e.value > 0 for e in loss) and lr[-1].value < max(e.value for e in lr)  # it decays
    metrics = best_of(out)
    mcc = acc.Scalars("dev/mcc")
    assert [e.step for e in mcc] == [4, 8]
    assert [e.value for e in mcc] == pytest.approx([h["dev_mcc"] for h in metrics["history"]], abs=1e-6)
    assert {"dev/acc", "dev/f1", "dev/loss", "train/epoch_loss", "train/acc"} <= set(scalars)
    assert acc.Scalars("best/mcc")[-1].value == pytest.approx(metrics["best"]["dev_mcc"], abs=1e-6)
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "hidden: 8" in config and "report_to: tensorboard" in config

    teacher = tmp_path / "runs" / "teacher"
    code, _, err = run_cli(["train", "lora", "--model", str(tiny_gpt2), "--data", str(small_data), "--out",
                            str(teacher), "--epochs", "1", "--rank", "4", "--batch-size", "16", "--device", "cpu",
                            "--no-progress", "--report-to", "tensorboard"], capsys)
    assert code == 0, err
    acc = events(tmp_path / "runs" / "tensorboard" / "teacher")
    assert len(acc.Scalars("train/loss")) == 4 and len(acc.Scalars("dev/mcc")) == 1
    assert acc.Scalars("best/mcc")[-1].value == pytest.approx(best_of(teacher)["best"]["dev_mcc"], abs=1e-6)


def test_mlflow_run_of_the_distilled_student(small_data: Path, teacher_run: Path, tmp_path: Path, capsys,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the default store: ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "kdfast-test")
    out = tmp_path / "student"
    code, _, err = run_cli(["distill", "--teacher", str(teacher_run), "--data", str(small_data), "--out", str(out),
                            "--recipe", "plain", "--report-to", "mlflow", *STUDENT], capsys)
    assert code == 0, err
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("kdfast-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "student" and run.info.status == "FINISHED"
    assert run.data.params["temperature"] == "2.0" and run.data.params["teacher"] == str(teacher_run)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 9))
    assert len(client.get_metric_history(run.info.run_id, "train/lr")) == 8
    metrics = best_of(out)
    mcc = client.get_metric_history(run.info.run_id, "dev/mcc")
    assert [m.value for m in sorted(mcc, key=lambda m: m.step)] == pytest.approx(
        [h["dev_mcc"] for h in metrics["history"]], abs=1e-6)
    assert run.data.metrics["best/mcc"] == pytest.approx(metrics["best"]["dev_mcc"], abs=1e-6)

    # MLFLOW_TRACKING_URI is honoured (a store MLflow refuses is one error line, nothing trained)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://nowhere")
    code, _, err = run_cli(["train", "rnn", "--data", str(small_data), "--out", str(tmp_path / "r2"), "--report-to",
                            "mlflow", *STUDENT], capsys)
    assert code == 2 and err.startswith("error: --report-to mlflow: could not start a run at bogus://nowhere")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r2").exists()


def test_report_to_takes_three_values(small_data: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["train", "rnn", "--data", str(small_data), "--out", str(tmp_path / "r"), "--report-to",
                            "wandb", *STUDENT], capsys)
    assert code == 2 and err.strip() == "error: --report-to must be one of none, tensorboard, mlflow, got 'wandb'"
