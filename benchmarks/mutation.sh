#!/usr/bin/env bash
# Mutation testing of the metrics, LoRA, the KD loss and the batching, configured in pyproject.toml's [tool.mutmut].
# mutmut copies the package to ./mutants, mutates every function of the four files, and runs the tests that cover
# each mutant; only kd_loss's mutants are run from kd_loss.py (not word_loss's). Prints the share killed (or crashed, or timed out)
# per module and in all; `python -m mutmut results` then lists the survivors, `python -m mutmut show NAME` one diff.
# Usage: benchmarks/mutation.sh [MUTANT-PATTERN...]   (default: all four; e.g. 'kdfast.metrics.*' for one module)
# Slow, so not part of CI: on 2 cores the metrics, batching and KD loss take about 5 minutes, LoRA an estimated half hour more
# (most of it mutants that send the layer through the Triton interpreter, or slow the PEFT test, until they time out).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
rm -rf mutants
if [ $# -eq 0 ]; then
    set -- 'kdfast.metrics.*' 'kdfast.train.lora.*' 'kdfast.batching.*' 'kdfast.train.kd_loss.x_kd_loss__mutmut_*'
fi
"$py" -m mutmut run --max-children "${MAX_CHILDREN:-2}" "$@" >/dev/null || true
"$py" -m mutmut results --all true >mutants/results.txt 2>&1 || "$py" -m mutmut results >mutants/results.txt
"$py" - <<'PY'
import collections
import re

counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
for line in open("mutants/results.txt"):
    m = re.match(r"\s*(kdfast[\w.]*?)\.(x\S+)__mutmut_\d+: (.+)$", line)
    if m and m[3].strip() != "not checked" and (m[1] != "kdfast.train.kd_loss" or m[2] == "x_kd_loss"):
        counts[m[1]][m[3].strip()] += 1
# a mutant that crashes the tests is caught too; one that times out probably is (counted apart); "no tests" and
# "survived" are what the tests miss; mutants not run (other patterns) are left out
CAUGHT = ("killed", "segfault")
total: collections.Counter[str] = collections.Counter()
for module, c in sorted(counts.items()):
    total += c
    n, k = sum(c.values()), sum(c[s] for s in CAUGHT)
    print(f"{module:18} {k:4}/{n:<4} killed ({100 * k / n:.0f}%; {100 * (k + c['timeout']) / n:.0f}% with timeouts)  "
          f"{dict(c)}")
n, k = sum(total.values()), sum(total[s] for s in CAUGHT)
print(f"{'all':18} {k:4}/{n:<4} killed ({100 * k / max(n, 1):.0f}%; {100 * (k + total['timeout']) / max(n, 1):.0f}% "
      "with timeouts)")
PY
