"""A dataset that is not CoLA, end to end: three classes with string labels in CSV (CoLA training sentences labelled
by the publication they come from, examples/make_cola_sources.py) through train lora (tiny GPT-2) → distill →
train rnn → export --onnx (parity on its dev) → bench → eval, each run folder holding the label names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import REPO, load_module, run_cli

LABELS = ["kim-sells-2008", "levin-1993", "ross-1967"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three-class CSV dataset, its dev cut to 120 rows to keep the test quick."""
    folder = tmp_path_factory.mktemp("cola-sources")
    load_module(REPO / "examples" / "make_cola_sources.py").make(folder)
    lines = (folder / "dev.csv").read_text().splitlines(keepends=True)
    (folder / "dev.csv").write_text("".join(lines[:121]))
    return folder


def test_three_classes_through_every_stage(sources: Path, tiny_gpt2: Path, tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    fast = ["--max-train-samples", "96", "--seed", "0", "--no-progress"]
    student = ["--epochs", "2", "--hidden", "8", "--embed-dim", "8", "--batch-size", "16", "--device", "cpu", *fast]
    steps = [
        ["train", "lora", "--model", str(tiny_gpt2), "--data", str(sources), "--out", str(runs / "teacher"),
         "--epochs", "1", "--rank", "4", "--alpha", "8", "--batch-size", "16", "--select-by", "f1", *fast],
        ["distill", "--teacher", str(runs / "teacher"), "--data", str(sources), "--out", str(runs / "student"),
         "--augment", "1", *student],
        ["train", "rnn", "--data", str(sources), "--out", str(runs / "rnn"), *student],
    ]
    for args in steps:
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
    for name in ("teacher", "student", "rnn"):
        run = runs / name
        assert json.loads((run / "run.json").read_text())["labels"] == LABELS
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["data"]["labels"] == LABELS and metrics["data"]["dev"] == 120
        assert "dev_in_domain_mcc" not in metrics["best"]  # halves are CoLA's alone
        assert {"dev_acc", "dev_mcc", "dev_f1"} <= set(metrics["best"])
        code, out, err = run_cli(["eval", str(run), "--json", "--device", "cpu"], capsys)
        assert code == 0, err
        report = json.loads(out)
        assert report["labels"] == LABELS and report["dev"] == 120
        assert report["dev_f1"] == pytest.approx(metrics["best"]["dev_f1"], abs=1e-6)
    teacher_metrics = json.loads((runs / "teacher" / "metrics.json").read_text())
    assert teacher_metrics["config"]["select_by"] == "f1"
    assert teacher_metrics["best"]["dev_f1"] == max(h["dev_f1"] for h in teacher_metrics["history"])
    merged = json.loads((runs / "teacher" / "merged" / "config.json").read_text())
    assert merged["id2label"] == {str(i): n for i, n in enumerate(LABELS)}
    from safetensors import safe_open

    with safe_open(str(runs / "student" / "teacher_logits.safetensors"), framework="pt") as f:
        assert f.get_tensor("logits").shape == (96 * 2, 3)

    for name in ("teacher", "student"):
        code, _, err = run_cli(["export", "--onnx", str(runs / name)], capsys)
        assert code == 0, err
        manifest = json.loads((runs / name / "onnx" / "manifest.json").read_text())
        assert manifest["labels"] == LABELS
        assert manifest["outputs"][0]["shape"][1] == 3
        assert manifest["parity"]["passed"] and manifest["parity"]["sentences"] == 120
        assert manifest["parity"]["variants"][0]["agreement"] == 1.0

    bench_json = tmp_path / "bench.json"
    code, _, err = run_cli(["bench", "--teacher", str(runs / "teacher"), "--student", str(runs / "student"),
                            "--student", str(runs / "rnn"), "--batch-sizes", "1", "--warmup", "1", "--iters", "2",
                            "--min-time", "0", "--variants", "teacher-merged,teacher-onnx-fp32,student-eager",
                            "--threads", "1", "--json", str(bench_json), "--no-progress"], capsys)
    assert code == 0, err
    rows = json.loads(bench_json.read_text())["results"]
    assert {(r["model"], r["variant"]) for r in rows} >= {("teacher", "teacher-merged"),
                                                         ("teacher", "teacher-onnx-fp32"),
                                                         ("student", "student-eager"), ("rnn", "student-eager")}
    onnx_row = next(r for r in rows if r["variant"] == "teacher-onnx-fp32")
    assert onnx_row["agreement"] == 1.0
    eager = next(r for r in rows if r["variant"] == "teacher-merged")
    assert onnx_row["mcc"] == pytest.approx(eager["mcc"])


def test_distill_refuses_labels_its_teacher_never_had(sources: Path, teacher_run: Path, tmp_path: Path,
                                                      capsys) -> None:
    code, _, err = run_cli(["distill", "--teacher", str(teacher_run), "--data", str(sources), "--out",
                            str(tmp_path / "s"), "--no-progress"], capsys)
    assert code == 2 and err.startswith("error: ") and "is not one of the run's labels" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("train", "dev", "message"),
    [
        ("words,label\nA.,x\nB.,y\n", "text,label\nC.,x\n", "no column 'text' or 'sentence'"),
        ("text,cls\nA.,x\nB.,y\n", "text,cls\nC.,x\n", "no column 'label'"),
        ("text,label\nA.,x\nB.,y\n", "text,label\nC.,z\n", "dev.csv:2: dev label 'z' does not occur in train"),
        ("text,label\nA.,x\nB.,x\n", "text,label\nC.,x\n", "a classifier needs at least two classes"),
        ("text,label\nA.,1\nB.,y\n", "text,label\nC.,1\n", "train.csv:3: label 'y' is a string"),
        ("", "text,label\nC.,x\n", "train.csv: empty file"),
    ],
)
def test_bad_data_is_one_error_line_and_nothing_written(tmp_path: Path, capsys, train: str, dev: str,
                                                        message: str) -> None:
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "dev.csv").write_text(dev)
    out = tmp_path / "rnn"
    code, stdout, err = run_cli(["train", "rnn", "--data", str(tmp_path), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + stdout
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".rnn")]
