#!/usr/bin/env bash
# Mutation testing of the metrics, LoRA, the KD loss and the batching, configured in pyproject.toml's [tool.mutmut].
# mutmut copies the package to ./mutants, mutates every function of the four files, and runs the tests that cover
# each mutant; only kd_loss's mutants are run from distill.py. Prints the share killed (or crashed, or timed out)
# per module and in all; `python -m mutmut results` then lists the survivors, `python -m mutmut show NAME` one diff.
# Usage: benchmarks/mutation.sh [max-children]   (about 10-15 minutes on 2 cores; not part of CI)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
rm -rf mutants
"$py" -m mutmut run --max-children "${1:-2}" \
    'kdfast.metrics.*' 'kdfast.lora.*' 'kdfast.batching.*' 'kdfast.distill.x_kd_loss__mutmut_*' >/dev/null || true
"$py" -m mutmut results --all true >mutants/results.txt 2>&1 || "$py" -m mutmut results >mutants/results.txt
"$py" - <<'PY'
import collections
import re

counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
for line in open("mutants/results.txt"):
    m = re.match(r"\s*(kdfast\.\w+)\.(\S+)__mutmut_\d+: (.+)$", line)
    if m and (m[1] != "kdfast.distill" or m[2] == "x_kd_loss"):
        counts[m[1]][m[3].strip()] += 1
# a mutant that crashes or hangs the tests is caught too; "no tests" and "survived" are what the tests miss
CAUGHT = ("killed", "timeout", "segfault")
total: collections.Counter[str] = collections.Counter()
for module, c in sorted(counts.items()):
    total += c
    n, k = sum(c.values()), sum(c[s] for s in CAUGHT)
    print(f"{module:18} {k:4}/{n:<4} killed ({100 * k / n:.0f}%)  {dict(c)}")
n, k = sum(total.values()), sum(total[s] for s in CAUGHT)
print(f"{'all':18} {k:4}/{n:<4} killed ({100 * k / max(n, 1):.0f}%)")
PY
