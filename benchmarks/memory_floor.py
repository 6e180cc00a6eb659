"""How close a teacher's batch-1 latency is to this machine's memory floor.

    python benchmarks/memory_floor.py --run runs/teacher --bench benchmarks/results/bench-gpt2.json [--threads 2]

At batch 1 and a dozen tokens, a forward pass reads every weight matrix of the teacher from memory once and uses it
for a dozen rows: the call is bound by memory bandwidth, not by arithmetic. This script measures

1. the machine's read bandwidth with ``--threads`` threads: the median over ``--repeats`` of summing a 1 GiB fp32
   tensor (far larger than any cache), and of a matrix-vector product over a 1 GiB fp32 matrix (what a batch-1
   linear layer does); the faster of the two is the bandwidth;
2. the bytes a forward pass streams: every parameter except the embedding tables (which are gathered a row per
   token), at 4 bytes (fp32) or, for the int8 model, 1 byte for the quantized weight matrices (2-D, outside
   embeddings) and 4 for the rest;

and prints floor = bytes / bandwidth next to the batch-1 p50 of the merged, ONNX and int8 teacher in a ``kdfast
bench`` JSON, with the bandwidth each one achieves. A variant at about 100% of the bandwidth cannot get faster on
this machine without reading fewer bytes. The floor holds for weights well beyond the last-level cache (GPT-2
small's 340 MB); a model of a few tens of MB (MiniLM's 43 MB) stays partly cached between calls and can beat it.
Appends its rows to benchmarks/results/memory_floor.csv with the machine and git commit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kdfast.bench.harness import append_csv, git_commit, machine, now
from kdfast.bench.memory_floor import read_bandwidth, streamed_bytes
from kdfast.train.teacher import load_teacher

RESULTS = Path(__file__).resolve().parent / "results" / "memory_floor.csv"
FIELDS = ["date", "machine", "processor", "torch", "commit", "threads", "model", "variant", "bytes_mb",
          "bandwidth_gb_s", "floor_ms", "p50_ms", "achieved_gb_s", "of_bandwidth"]
VARIANTS = ("teacher-merged", "teacher-onnx-fp32", "teacher-onnx-opt", "teacher-onnx-int8")  # merged weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the teacher run the bench JSON measured")
    parser.add_argument("--bench", type=Path, required=True, help="a kdfast bench JSON with that teacher's rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    model, _ = load_teacher(args.run)
    sizes = streamed_bytes(model)
    del model
    bw = read_bandwidth(args.threads, args.repeats)
    bandwidth = max(bw.values())
    print(f"read bandwidth, {args.threads} threads: sum {bw['sum']:.1f} GB/s, gemv {bw['gemv']:.1f} GB/s")
    rows = [r for r in json.loads(args.bench.read_text())["results"]
            if r["model"] == args.run.name and r["batch_size"] == 1 and r["variant"] in VARIANTS]
    if not rows:
        raise SystemExit(f"error: {args.bench} has no batch-1 teacher rows for {args.run.name}")
    meta, commit = machine(), git_commit()
    out = []
    for r in rows:
        nbytes = sizes["int8" if r["variant"].endswith("int8") else "fp32"]
        floor_ms = nbytes / bandwidth / 1e6
        achieved = nbytes / (r["p50_ms"] / 1e3) / 1e9
        out.append({"date": now(), "machine": meta["host"], "processor": meta["cpu"], "torch": torch.__version__,
                    "commit": commit, "threads": args.threads, "model": args.run.name, "variant": r["variant"],
                    "bytes_mb": round(nbytes / 1e6, 1), "bandwidth_gb_s": round(bandwidth, 2),
                    "floor_ms": round(floor_ms, 3), "p50_ms": r["p50_ms"], "achieved_gb_s": round(achieved, 2),
                    "of_bandwidth": round(achieved / bandwidth, 3)})
        print(f"{r['variant']:20s} {nbytes / 1e6:7.1f} MB  floor {floor_ms:7.3f} ms  p50 {r['p50_ms']:8.3f} ms  "
              f"{achieved:6.1f} GB/s = {achieved / bandwidth:5.1%} of the bandwidth")
    append_csv(RESULTS, out, FIELDS)


if __name__ == "__main__":
    main()
