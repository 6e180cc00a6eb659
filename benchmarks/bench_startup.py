"""Start-up of the kdfast command, against importing torch and transformers in the same run.

    python benchmarks/bench_startup.py --student RUN [--repeats 5] [--json benchmarks/results/startup.json]

Each command runs ``--repeats`` times in a fresh interpreter (after one untimed run that warms the page cache); the
median wall time is reported. Goals (issue 13): ``kdfast --help`` in at most 1/4 of ``import torch, transformers``,
and ``kdfast predict`` of one sentence on an exported student (``--runtime auto``: its ONNX model, word vocabulary,
no torch) end to end in at most 1/2 of it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from kdfast.bench.harness import git_commit, machine, time_calls, write_json


def wall(cmd: list[str], repeats: int) -> float:
    """Median seconds of ``cmd`` in a fresh process, after one untimed run."""
    def run() -> None:
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)

    return statistics.median(time_calls(run, warmup=1, iters=repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True, help="A student run exported with kdfast export --onnx.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="Write the results here.")
    args = parser.parse_args()

    py = sys.executable
    rows = {
        "import torch, transformers": wall([py, "-c", "import torch, transformers"], args.repeats),
        "kdfast --help": wall([py, "-m", "kdfast", "--help"], args.repeats),
        "kdfast predict (1 sentence, ONNX student)": wall(
            [py, "-m", "kdfast", "predict", str(args.student), "The book that John wrote was read by everyone.",
             "--runtime", "auto"], args.repeats),
    }
    base = rows["import torch, transformers"]
    goals = {"kdfast --help": 0.25, "kdfast predict (1 sentence, ONNX student)": 0.5}
    print(f"{'command':45s} {'median s':>9s} {'/ import':>9s} {'goal':>6s}")
    results = []
    for name, seconds in rows.items():
        goal = goals.get(name)
        ratio = seconds / base
        met = "" if goal is None else ("met" if ratio <= goal else "NOT MET")
        print(f"{name:45s} {seconds:9.3f} {ratio:9.3f} {'' if goal is None else f'≤{goal:g}':>6s} {met}")
        results.append({"command": name, "median_s": round(seconds, 4), "ratio_to_import": round(ratio, 4),
                        "goal": goal, "met": None if goal is None else ratio <= goal})
    if args.json:
        write_json(args.json, {"machine": machine(), "commit": git_commit(), "repeats": args.repeats,
                               "results": results})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
