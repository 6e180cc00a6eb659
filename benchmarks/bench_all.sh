#!/usr/bin/env bash
# The runs behind benchmarks/results/bench-*.{json,md}: kdfast bench on the real runs of /work/runs, 2 threads, batch
# 1 and 32, on the shared 2-core CPU machine. Writes JSON, CSV, Markdown and PNG to $OUT and copies JSON + Markdown
# here. Check `uptime` first: other jobs on the two cores change every number (each row records the load average).
#
#   benchmarks/bench_all.sh [RUNS=/work/runs] [OUT=/work/runs/bench]
set -euo pipefail
RUNS=${1:-/work/runs}
OUT=${2:-$RUNS/bench}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT" "$HERE/results"

# The MiniLM teacher (real weights: its accuracy means something) with a student distilled from it (student-e-nb4-s0:
# --augment 4, seed 0) and one trained from scratch (rnn-d, seed 0): the same BiLSTM shape, so their latencies agree.
STUDENTS=()
for s in student-e-nb4-s0 rnn-d; do
  [ -f "$RUNS/$s/run.json" ] && STUDENTS+=(--student "$RUNS/$s")
done
# The finished MiniLM teacher run (minilm-teacher, minilm-teacher-b, ...) with the best dev MCC.
TEACHER=$(python3 -c '
import json, sys
from pathlib import Path
done = [r for r in Path(sys.argv[1]).glob("minilm-teacher*") if (r / "run.json").exists()]
print(max(done, key=lambda r: json.loads((r / "metrics.json").read_text())["best"]["dev_mcc"]))' "$RUNS")
kdfast bench --teacher "$TEACHER" "${STUDENTS[@]}" --batch-sizes 1,32 --threads 2 \
  --json "$OUT/bench-minilm.json" --csv "$OUT/bench-minilm.csv" --md "$OUT/bench-minilm.md" \
  --plot "$OUT/bench-minilm.png"

# A full-size GPT-2 (124M, random weights + LoRA: its accuracy is meaningless, its latency is GPT-2's) with one
# student, for the latency ratios stated for GPT-2. Fewer calls: one eager call at batch 32 takes about 0.4 s.
kdfast bench --teacher "$RUNS/gpt2-random-teacher" "${STUDENTS[@]:0:2}" --batch-sizes 1,32 \
  --threads 2 --iters 20 --min-time 1 --warmup 3 \
  --json "$OUT/bench-gpt2.json" --csv "$OUT/bench-gpt2.csv" --md "$OUT/bench-gpt2.md" --plot "$OUT/bench-gpt2.png"

cp "$OUT"/bench-minilm.{json,md} "$OUT"/bench-gpt2.{json,md} "$HERE/results/"

# How close each teacher's batch-1 latency is to this machine's read bandwidth (appends to results/memory_floor.csv).
python "$HERE/memory_floor.py" --run "$RUNS/gpt2-random-teacher" --bench "$HERE/results/bench-gpt2.json" --threads 2
python "$HERE/memory_floor.py" --run "$TEACHER" --bench "$HERE/results/bench-minilm.json" --threads 2
