"""Student quality: bare ``kdfast distill`` against the same student from scratch, over several seeds.

    python benchmarks/bench_student_quality.py --teacher runs/minilm-teacher --runs runs/quality [--seeds 0 1 2 3 4]
        [--epochs 8] [--parallel 2] [--variant 'sentence=--recipe sentence' ...]

For each seed: ``kdfast distill --teacher T --data cola --epochs E --seed S`` (the bare command: every other option
at its default), ``kdfast train rnn --data cola --epochs E --seed S`` (scratch), and each ``--variant NAME=ARGS``
(``kdfast distill`` with those extra arguments). A run folder that already holds metrics.json is read, not run
again (so an interrupted benchmark resumes); ``--parallel`` runs that many at once, each with one thread
(``OMP_NUM_THREADS=1``). Writes ``student-quality.json`` and ``student-quality.md`` (``--out``): per variant and seed
the best dev MCC and accuracy (the epoch picked by dev MCC, as ``kdfast distill`` does), the means, the share of
the teacher's dev MCC, the majority class's dev accuracy, and each variant's paired difference from scratch
(mean, standard error over seeds, t = mean / SE).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kdfast.bench.harness import git_commit, machine, write_json, write_text

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT = "distilled (bare `kdfast distill`)"
SCRATCH = "scratch (`kdfast train rnn`)"


def command(variant: str, extra: list[str], teacher: Path, out: Path, seed: int, epochs: int) -> list[str]:
    base = [sys.executable, "-m", "kdfast"]
    common = ["--data", "cola", "--out", str(out), "--epochs", str(epochs), "--seed", str(seed), "--no-progress"]
    if variant == SCRATCH:
        return [*base, "train", "rnn", *common]
    return [*base, "distill", "--teacher", str(teacher), *common, *extra]


def run_one(cmd: list[str], out: Path) -> dict[str, Any]:
    if not (out / "metrics.json").is_file():
        log = out.with_name(out.name + ".log")
        start = time.perf_counter()
        with log.open("w") as f:
            result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                                  "KDFAST_NO_PROGRESS": "1"})
        if result.returncode:
            raise SystemExit(f"error: {shlex.join(cmd)} failed (exit {result.returncode}); see {log}")
        print(f"{out}: {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads((out / "metrics.json").read_text())


def summary(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return {"mean": mean, "sd": sd, "se": sd / math.sqrt(len(values)) if len(values) > 1 else float("nan")}


def majority_accuracy() -> float:
    from kdfast.data import load_dataset

    dev = load_dataset("cola").dev
    labels = [e.label for e in dev]
    return max(labels.count(c) for c in set(labels)) / len(labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="The teacher run (kdfast train lora).")
    parser.add_argument("--runs", type=Path, default=Path("runs/quality"), help="Folder for the student runs.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], help="NAME=ARGS: another distilled row.")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for student-quality.{json,md}.")
    args = parser.parse_args(argv)

    variants: dict[str, list[str]] = {DEFAULT: [], SCRATCH: []}
    for v in args.variant:
        name, _, extra = v.partition("=")
        variants[name] = shlex.split(extra)
    slug = {name: ("default" if name == DEFAULT else "scratch" if name == SCRATCH else
                   "".join(c if c.isalnum() else "-" for c in name)) for name in variants}
    jobs = [(name, seed, args.runs / f"{slug[name]}-s{seed}") for name in variants for seed in args.seeds]
    args.runs.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {(name, seed): pool.submit(run_one, command(name, variants[name], args.teacher, out, seed,
                                                               args.epochs), out) for name, seed, out in jobs}
        metrics = {key: f.result() for key, f in futures.items()}

    teacher = json.loads((args.teacher / "metrics.json").read_text())["best"]
    majority = majority_accuracy()
    rows: dict[str, Any] = {}
    for name in variants:
        mcc = [metrics[name, s]["best"]["dev_mcc"] for s in args.seeds]
        acc = [metrics[name, s]["best"]["dev_acc"] for s in args.seeds]
        row: dict[str, Any] = {"mcc": mcc, "acc": acc, "mcc_summary": summary(mcc), "acc_summary": summary(acc),
                               "share_of_teacher": statistics.fmean(mcc) / teacher["dev_mcc"],
                               "command": shlex.join(command(name, variants[name], args.teacher, Path("OUT"), 0,
                                                             args.epochs)[3:]),
                               "params": metrics[name, args.seeds[0]]["total_params"],
                               "train_seconds": [metrics[name, s]["train_seconds"] for s in args.seeds]}
        if name != SCRATCH:
            diff = [a - b for a, b in zip(mcc, [metrics[SCRATCH, s]["best"]["dev_mcc"] for s in args.seeds],
                                          strict=True)]
            d = summary(diff)
            row["vs_scratch"] = {**d, "t": d["mean"] / d["se"] if d["se"] and d["se"] > 0 else float("nan"),
                                 "wins": sum(x > 0 for x in diff)}
        rows[name] = row
    result = {"teacher": {"run": str(args.teacher), "dev_mcc": teacher["dev_mcc"], "dev_acc": teacher["dev_acc"]},
              "majority_dev_acc": majority, "seeds": args.seeds, "epochs": args.epochs, "rows": rows,
              "commit": git_commit(), "machine": machine()}
    write_json(args.out / "student-quality.json", result)
    write_text(args.out / "student-quality.md", markdown(result))
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    seeds = result["seeds"]
    t = result["teacher"]
    lines = [f"Teacher `{t['run']}`: dev MCC {t['dev_mcc']:.4f}, dev acc {t['dev_acc']:.4f}; majority class dev acc "
             f"{result['majority_dev_acc']:.4f}; best of {result['epochs']} epochs (by dev MCC), seeds "
             f"{', '.join(map(str, seeds))}.", "",
             "| student | " + " | ".join(f"seed {s}" for s in seeds) + " | mean MCC | share of teacher | mean acc | "
             "vs scratch (mean ± SE, t, wins) |",
             "| --- " * (len(seeds) + 5) + "|"]
    for name, row in result["rows"].items():
        vs = row.get("vs_scratch")
        vs_text = (f"{vs['mean']:+.4f} ± {vs['se']:.4f}, t = {vs['t']:.1f}, {vs['wins']}/{len(seeds)}" if vs else "")
        lines.append(f"| {name} | " + " | ".join(f"{m:.4f}" for m in row["mcc"]) +
                     f" | {row['mcc_summary']['mean']:.4f} | {row['share_of_teacher']:.0%} | "
                     f"{row['acc_summary']['mean']:.4f} | {vs_text} |")
    lines += ["", "Commands (OUT: the run folder; `--seed` per column):", ""]
    lines += [f"- {name}: `kdfast {row['command']}`" for name, row in result["rows"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
