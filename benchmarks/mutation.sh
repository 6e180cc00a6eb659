#!/usr/bin/env bash
# Mutation testing, configured in pyproject.toml's [tool.mutmut]: mutmut copies the package to ./mutants, mutates every
# function of the files named there, and runs the unit tests that reach each mutant. Prints per module the mutants
# killed (or crashed), timed out (apart: probably, not certainly, caught), survived and reached by no test;
# `python -m mutmut results` then lists the survivors, `python -m mutmut show NAME` one diff.
# Usage: benchmarks/mutation.sh [core | new | sample | MUTANT-PATTERN...]   (default: core and new; 'kdfast.metrics.*')
#   core: the metrics, LoRA, the batching and kd_loss (not word_loss). On 2 cores the metrics, batching and KD loss
#         take about 5 minutes, LoRA an estimated half hour more (mutants that send the layer through the Triton
#         interpreter, or slow the PEFT test, until they time out).
#   new:  kdfast/serve/ (not the stopping: KdfastServer's shutdown, serve(), tested only by signals to a running
#         server), labels.py, tabular.py, int8.py's rule and report (not the ONNX Runtime plumbing), and
#         distributed.py's single-process logic (not gather_rows, barrier, the teardown: torchrun only).
#         1,897 mutants: about four hours on 2 loaded cores.
#   sample: the mutants named in benchmarks/mutation-sample.txt, 45 per module of `new` drawn at random (seeded):
#         what README.md's scores of the new modules measure (38 minutes on 2 cores at a load of 9 to 19).
# Slow, so not part of CI. MAX_CHILDREN sets the parallel test runs (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
core=('kdfast.metrics.*' 'kdfast.train.lora.*' 'kdfast.batching.*' 'kdfast.train.kd_loss.x_kd_loss__mutmut_*')
s='kdfast.serve.server.'
i8='kdfast.export.int8.'
dd='kdfast.train.distributed.'
new=('kdfast.serve.predict.*' 'kdfast.serve.inputs.*' 'kdfast.data.labels.*' 'kdfast.data.tabular.*'
     "${s}x_json_error__*" "${s}x_invalid_request__*" "${s}x_internal_error__*" "${s}xǁRequestGuardǁ*"
     "${s}xǁ_Prefetchedǁ*" "${s}xǁBlockingBatchedLoopǁ*" "${s}xǁClassifierAPIǁ*" "${s}x_metadata__*"
     "${s}x_build__*"
     "${i8}x_judge__*" "${i8}x_wilson_lower__*" "${i8}x_unprovable__*" "${i8}x_fallback_steps__*"
     "${i8}x_too_slow__*" "${i8}x_describe_threads__*" "${i8}xǁTunerǁrun__*" "${i8}xǁTunerǁchoose__*"
     "${i8}xǁTunerǁverdict__*" "${i8}x_tune__*" "${i8}xǁCalibrationSetǁdraw__*" "${i8}x_sentences_sha256__*"
     "${dd}xǁContextǁweight__*" "${dd}xǁContextǁmicro_batches__*" "${dd}xǁContextǁshard__*"
     "${dd}xǁContextǁwrap__*" "${dd}xǁContextǁsync__*" "${dd}xǁContextǁautocast__*" "${dd}xǁContextǁscaler__*"
     "${dd}xǁContextǁall_sum__*" "${dd}x_split__*" "${dd}x_env_world__*" "${dd}x_is_master__*" "${dd}x_setup__*")
if [ $# -eq 0 ]; then
    set -- core new
fi
patterns=()
for a in "$@"; do
    case $a in
        core) patterns+=("${core[@]}") ;;
        new) patterns+=("${new[@]}") ;;
        sample) mapfile -t names < <(grep -v '^#' benchmarks/mutation-sample.txt); patterns+=("${names[@]}") ;;
        *) patterns+=("$a") ;;
    esac
done
rm -rf mutants
# one thread per test run (MAX_CHILDREN run at once), and no OpenMP thread team for a forked child to inherit
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
log=$(mktemp)
"$py" -m mutmut run --max-children "${MAX_CHILDREN:-2}" "${patterns[@]}" >"$log" 2>&1 || true
mv "$log" mutants/run.log 2>/dev/null || true
"$py" -m mutmut results --all true >mutants/results.txt 2>&1 || "$py" -m mutmut results >mutants/results.txt
"$py" - "${patterns[@]}" <<'PY'
import collections
import fnmatch
import re
import sys

patterns = sys.argv[1:]
counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
for line in open("mutants/results.txt"):
    m = re.match(r"\s*((kdfast[\w.]*?)\.x\S+__mutmut_\d+): (.+)$", line)
    if m and m[3].strip() != "not checked" and any(fnmatch.fnmatchcase(m[1], p) for p in patterns):
        counts[m[2]][m[3].strip()] += 1
# killed: the tests failed (a crash counts: "segfault"); a timeout is counted apart, never as killed; "survived" and
# "no tests" are what the tests miss; anything else mutmut reports is listed as it is
CAUGHT = ("killed", "segfault")
KNOWN = (*CAUGHT, "timeout", "survived", "no tests")
print(f"{'module':28} {'mutants':>7} {'killed':>12} {'timed out':>9} {'survived':>8} {'no tests':>8}  other")
total: collections.Counter[str] = collections.Counter()
for module, c in [*sorted(counts.items()), ("all", None)]:
    if c is None:
        c = total
    else:
        total += c
    n, k = sum(c.values()), sum(c[s] for s in CAUGHT)
    other = {s: v for s, v in c.items() if s not in KNOWN}
    print(f"{module:28} {n:7} {k:5} ({100 * k / max(n, 1):3.0f}%) {c['timeout']:9} {c['survived']:8} "
          f"{c['no tests']:8}  {other or ''}")
PY
