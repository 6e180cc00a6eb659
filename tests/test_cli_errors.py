"""Every command's user errors are one ``error: ...`` line on stderr, exit code 2, and no traceback: export, train rnn,
compare and eval (bench, train lora and generate have their own in their test files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_one_error_line, run_cli

CASES = [
    (["export", "{student}"], "say which format: --onnx"),
    (["export", "--onnx", "{missing}"], "no such run folder"),
    (["export", "--onnx", "{plain}"], "not a kdfast run folder"),
    (["export", "--onnx", "{student}", "--opset", "3"], "--opset must be between 14 and"),
    (["export", "--onnx", "{student}", "--atol", "0"], "--atol must be positive"),
    (["train", "rnn", "--data", "{missing}", "--out", "{out}"], "nope"),
    (["train", "rnn", "--data", "{cola}", "--out", "{out}", "--epochs", "0"], "--epochs"),
    (["train", "rnn", "--data", "{cola}", "--out", "{out}", "--hiden", "8"], "No such option: --hiden"),
    (["compare", "{missing}"], "no such run folder"),
    (["compare", "{plain}"], "not a kdfast run folder"),
    (["compare", "{no_metrics}"], "metrics.json"),
    (["eval", "{missing}"], "no such run folder"),
    (["eval", "{plain}"], "not a kdfast run folder"),
    (["eval", "{no_metrics}"], "metrics.json"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a[:2]) + f" {i}" for i, (a, _) in enumerate(CASES)])
def test_a_mistake_is_one_error_line(args: list[str], message: str, tmp_path: Path, cola_dir: Path, capsys) -> None:
    plain = tmp_path / "plain"  # a folder, but not a run
    plain.mkdir()
    no_metrics = tmp_path / "no-metrics"  # a run folder whose metrics.json is missing
    no_metrics.mkdir()
    (no_metrics / "run.json").write_text(json.dumps({"kind": "student", "mode": "scratch"}))
    paths = {"missing": tmp_path / "nope", "plain": plain, "no_metrics": no_metrics, "student": no_metrics,
             "out": tmp_path / "out", "cola": cola_dir}
    code, _, err = run_cli([a.format(**paths) for a in args], capsys)
    assert code == 2
    assert_one_error_line(err, message)
    assert not (tmp_path / "out").exists()
