"""kdfast pipeline end to end on a tiny GPT-2, and its resume: only a removed stage and what reads it run again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import run_cli


def test_pipeline_runs_end_to_end_and_resumes(tiny_gpt2: Path, cola_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"
    args = ["pipeline", "--model", str(tiny_gpt2), "--data", str(cola_dir), "--out", str(out), "--preset", "quick",
            "--device", "cpu", "--no-progress"]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    for path in ("teacher/merged", "student/student.safetensors", "rnn/student.safetensors",
                 "teacher/onnx/model.onnx", "student/onnx/model.onnx", "rnn/onnx/model.onnx", "bench/bench.json",
                 "bench/bench.md", "bench/bench.csv", "bench/bench.png"):
        assert (out / path).exists(), path
    report = json.loads((out / "bench" / "bench.json").read_text())
    variants = {r["variant"] for r in report["results"]}
    assert {"teacher-merged", "teacher-onnx-fp32", "student-eager", "student-onnx-fp32"} <= variants
    state = json.loads((out / "pipeline.json").read_text())["stages"]
    assert set(state) == {"teacher", "student", "rnn", "export-teacher", "export-student", "export-rnn", "bench"}

    # Nothing changed: everything is skipped.
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    assert "ran: nothing" in stdout

    # The scratch student's outputs are gone: it runs again, with its export and the bench, and nothing else.
    shutil.rmtree(out / "rnn")
    teacher_mtime = (out / "teacher" / "metrics.json").stat().st_mtime
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    assert "ran: rnn, export-rnn, bench;" in stdout
    assert (out / "rnn" / "onnx" / "model.onnx").exists()
    assert (out / "teacher" / "metrics.json").stat().st_mtime == teacher_mtime


def test_pipeline_rejects_an_unknown_preset(tmp_path: Path, capsys) -> None:
    code, _, stderr = run_cli(["pipeline", "--preset", "huge", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and stderr.startswith("error: --preset must be one of quick, full")
