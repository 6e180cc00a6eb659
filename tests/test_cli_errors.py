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


def default_signals() -> None:
    """In the child: SIGINT and SIGTERM as a terminal gives them. A test run started in the background by a shell
    without job control inherits SIGINT ignored, and a command respects an ignored signal (nohup's contract)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize(("signame", "message"), [("SIGTERM", "error: terminated"), ("SIGINT", "error: interrupted")])
def test_a_signal_is_one_error_line_and_leaves_nothing(signame: str, message: str, tmp_path: Path, tiny_gpt2: Path,
                                                       cola_dir: Path) -> None:
    """``kill PID`` or Ctrl-C during a run (here inside the save of its run folder, where tests/ddp_interrupt.py
    waits): one error line, exit 128 + the signal, no traceback, and neither the run folder nor its staging folder
    left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    signum = getattr(signal, signame)

    here = Path(__file__).parent
    out, saving = tmp_path / "runs" / "t", tmp_path / "saving"
    job = subprocess.Popen([sys.executable, str(here / "ddp_interrupt.py"), "train", "lora", "--model", str(tiny_gpt2),
                            "--data", str(cola_dir), "--out", str(out), "--epochs", "1", "--max-train-samples", "16",
                            "--batch-size", "8", "--device", "cpu"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "KDFAST_TEST_SAVING": str(saving), "KDFAST_NO_PROGRESS": "1"},
                           preexec_fn=default_signals)
    try:
        for _ in range(1500):  # polls: a hang guard (about 5 minutes), not a speed check
            if saving.exists():
                break
            assert job.poll() is None, job.stderr.read()[-2000:] if job.stderr else ""
            time.sleep(0.2)
        else:
            pytest.fail("the run never reached its save")
        job.send_signal(signum)
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 128 + signum, err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("error:")] == [message], err
    assert not list(out.parent.iterdir())  # neither the run folder nor its hidden staging folder
