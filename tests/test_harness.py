"""kdfast.bench.harness, the plumbing kdfast bench and benchmarks/ share (its timer's warm-up, iters and min_time are
tested in test_bench.py, git_commit in test_bench_lora_matmul.py)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import torch

from kdfast.bench.harness import append_csv, markdown_table, stamp, synchronizer, time_calls, write_json


def test_importing_the_harness_imports_no_torch() -> None:
    code = "import sys, kdfast.bench.harness as h; h.synchronizer('cpu')(); h.stamp(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_synchronizer_waits_only_for_cuda() -> None:
    assert synchronizer(torch.device("cuda")) is torch.cuda.synchronize
    assert synchronizer("cuda:1") is torch.cuda.synchronize
    for device in (None, "cpu", torch.device("cpu")):
        assert synchronizer(device) is not torch.cuda.synchronize
        synchronizer(device)()


def test_grad_to_none_times_a_fresh_backward_each_call() -> None:
    w = torch.ones(3, requires_grad=True)
    seen = []

    def step() -> None:
        seen.append(w.grad)
        (2 * w).sum().backward()

    times = time_calls(step, warmup=1, iters=3, grad_to_none=[w])
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert seen == [None] * 4  # reset before every call: no gradient piles up
    assert torch.equal(w.grad, torch.full((3,), 2.0))


def test_writers(tmp_path: Path) -> None:
    path = tmp_path / "new" / "rows.csv"
    append_csv(path, [{"a": 1.23456789, "b": "x", "extra": 0}], ["a", "b"], float_format=".3g")
    append_csv(path, [{"a": 2}], ["a", "b"])
    with path.open() as f:
        assert list(csv.reader(f)) == [["a", "b"], ["1.23", "x"], ["2", ""]]
    assert markdown_table(["k", "v"], [["a|b", 1]]) == ["| k | v |", "| --- | --- |", "| a\\|b | 1 |"]
    env = stamp("torch")
    write_json(tmp_path / "out" / "env.json", env)
    assert json.loads((tmp_path / "out" / "env.json").read_text()) == env
    assert env["versions"]["torch"] == torch.__version__ and env["commit"] and env["machine"]["cpus"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["env.json"]  # no temporary file left
