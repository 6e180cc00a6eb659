#!/usr/bin/env bash
# The GPU check: what one run on a borrowed GPU (an H200, one command of at most 600 s) must bring back.
#   1. pytest_gpu         tests/test_lora_matmul.py, natively on CUDA (the gpu-marked tests too), no -x, xdist
#   2. bench_lora_matmul  fused vs merged vs unfused on GPT-2's projections: M 1..4096, fp16 and bf16, both layouts,
#                         do_bench and (M <= 64) do_bench_cudagraph, forward + backward at M 1024, autotune picks
#   3. bench_teacher_e2e  GPT-2 small's LoRA classifier unmerged, fused and merged, batch 1 and 32
#   4. bench_student      the student: nn.LSTM, cell loop, torch.compile in reduce-overhead mode (CUDA graphs)
#
#   benchmarks/gpu_check.sh --stamp             # here, before the tree is copied: writes .gpu_check_commit
#   benchmarks/gpu_check.sh [OUT]               # on the GPU machine; OUT defaults to $OUT, else a dated folder
#   benchmarks/gpu_check.sh --dry-run [OUT]     # on a CPU: every step with tiny sizes (what CI runs)
#
# The GPU machine has python3 only (torch+cu130, triton 3.6, transformers 5.17, pytest-xdist), no network, and
# returns at most 8 files from OUT: OUT gets summary.txt, logs.tar.gz (every log, the environment, pytest's junit
# XML) and the three CSVs, nothing else. The commit comes from git, or where there is no git (the copy on the GPU
# machine) from .gpu_check_commit, which --stamp writes and the copy must carry (it is git-ignored; with the device
# tool: carry [".gpu_check_commit"]). Steps share a budget of GPU_CHECK_BUDGET_S seconds (570 by default, under the
# 600 s a command gets there); a step past its share is stopped and the next one runs.
#
# --dry-run proves the flow on a CPU before a GPU ever runs it: a temporary venv of python3 that sees this
# machine's CPU torch and holds the GPU machine's triton and transformers (DEVICE_TRITON, DEVICE_TRANSFORMERS;
# GPU_CHECK_VENV=DIR keeps it between runs), the kernels under Triton's interpreter, the benchmarks at tiny sizes.
# Its timings are the interpreter's and mean nothing; what it checks is that every step runs to the end.
set -uo pipefail

DEVICE_TRITON="3.6.*"
DEVICE_TRANSFORMERS="5.17.*"
# triton 3.6's interpreter calls int() on one-element arrays, which numpy 2.4 refuses (the GPU path never
# interprets, so this pin exists for the dry run only).
DRY_RUN_NUMPY="numpy<2.4"
# kdfast's dependencies that the GPU machine is not known to have: the dry run makes their imports fail.
DEVICE_ABSENT="matplotlib datasets onnx onnxscript peft"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stamp_file="$repo/.gpu_check_commit"

write_stamp() {  # the commit, -dirty when tracked files differ from it, and when it was written
    local commit
    commit="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null)" || { echo "gpu_check: not a git checkout" >&2; return 1; }
    [ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] || commit="$commit-dirty"
    echo "$commit $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$stamp_file"
}

dry_run=0
case "${1:-}" in
    --stamp) write_stamp && cat "$stamp_file"; exit ;;
    --dry-run) dry_run=1; shift ;;
esac
out="${1:-${OUT:-$repo/benchmarks/results/gpu_check-$(date +%Y%m%d-%H%M%S)}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$repo"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
logs="$work/logs"
mkdir -p "$logs"
summary="$out/summary.txt"
: > "$summary"
status=0
budget="${GPU_CHECK_BUDGET_S:-$([ "$dry_run" = 1 ] && echo 900 || echo 570)}"

say() { echo "$*" | tee -a "$summary"; }
pack_logs() { tar -czf "$out/logs.tar.gz" -C "$work" logs; }  # after every step: a run cut short keeps its logs

step() {  # step NAME LIMIT_S COMMAND...: run within the budget, log to logs/NAME.log, record rc and duration
    local name="$1" limit="$2"
    shift 2
    local left=$((budget - SECONDS - 10))  # 10 s kept for packing the logs
    if [ "$left" -lt 20 ]; then
        say "== $name: skipped, the budget of ${budget}s is spent"
        status=1
        return
    fi
    [ "$limit" -le "$left" ] || limit="$left"
    local start=$SECONDS
    say "== $name (limit ${limit}s): $*"
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$logs/$name.log" 2>&1
    local rc=$?
    say "   rc=$rc in $((SECONDS - start))s$([ "$rc" -eq 124 ] && echo ', stopped at its limit') (log: $name.log)"
    tail -n 4 "$logs/$name.log" | sed 's/^/   | /' | tee -a "$summary"
    [ "$rc" -eq 0 ] || status=1
    pack_logs
}

# -- the commit, from git where there is git, else from the file --stamp wrote before the copy ------------------
if [ "$dry_run" = 1 ]; then
    write_stamp  # then read back the way the GPU machine reads it
    commit="$(cut -d' ' -f1 "$stamp_file")"
    commit_source="from .gpu_check_commit, written by --stamp"
elif commit="$(git rev-parse --short HEAD 2>/dev/null)"; then
    [ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit-dirty"
    commit_source="from git"
elif [ -f "$stamp_file" ]; then
    commit="$(cut -d' ' -f1 "$stamp_file")"
    commit_source="from .gpu_check_commit, stamped $(cut -d' ' -f2 "$stamp_file")"
else
    commit="unknown"
    commit_source="no git and no .gpu_check_commit: run --stamp before copying the tree, and carry the file"
fi
export KDFAST_COMMIT="$commit"  # what every benchmark writes in its rows
say "gpu_check$([ "$dry_run" = 1 ] && echo ' --dry-run') at commit $commit ($commit_source), $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# -- the interpreter: python3, or for the dry run a venv of it with the GPU machine's triton and transformers ----
if [ "$dry_run" = 1 ]; then
    venv="${GPU_CHECK_VENV:-$work/venv}"
    if [ ! -x "$venv/bin/python3" ]; then
        python3 -m venv --system-site-packages "$venv"
        # --system-site-packages shows the base interpreter's packages. When python3 is itself a virtual environment's
        # (kdfast installed in a venv, as the README has it), its packages are not the base's: a .pth makes them
        # seen too, after the dry-run venv's own (its triton and transformers win) and before the base's.
        "$venv/bin/python3" - "$(python3 -c 'import site, sys; sys.prefix != sys.base_prefix and print(*site.getsitepackages(), sep="\n")')" <<'PY'
import site
import sys
from pathlib import Path

outer = [line for line in sys.argv[1].splitlines() if line]
if outer:
    own = Path(site.getsitepackages()[0])
    (own / "_gpu_check_outer_venv.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in outer))
PY
    fi
    step venv 600 "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
        "triton==$DEVICE_TRITON" "transformers==$DEVICE_TRANSFORMERS" "$DRY_RUN_NUMPY" pytest-xdist
    python="$venv/bin/python3"
    # what CI checks, calling this from a venv where kdfast is installed from this checkout: the dry run's venv sees
    # the caller's packages (this checkout's kdfast, before any other interpreter's and before the install below)
    seen=no
    "$python" -c "import sys, kdfast; sys.exit(not kdfast.__file__.startswith('$repo/'))" > /dev/null 2>&1 && seen=yes
    say "   this checkout's kdfast importable from the calling environment: $seen"
else
    python="${PYTHON:-python3}"
fi

{
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    else
        echo "nvidia-smi: not here"
    fi
    "$python" - <<'PY'
import importlib.metadata
import platform

import torch

versions = {}
for name in ("torch", "triton", "transformers", "numpy", "onnxruntime", "pytest-xdist"):
    try:
        versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        versions[name] = "absent"
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"python {platform.python_version()}; {gpu}; cuda {torch.version.cuda};",
      ", ".join(f"{name} {version}" for name, version in versions.items()))
PY
} > "$logs/environment.txt" 2>&1
sed 's/^/   /' "$logs/environment.txt" | tee -a "$summary"

# A sitecustomize on PYTHONPATH: in the dry run it makes the packages of DEVICE_ABSENT unimportable (as on the GPU
# machine); below, it may also map kdfast's folders.
mkdir -p "$work/site"
export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
if [ "$dry_run" = 1 ]; then
    cat > "$work/site/sitecustomize.py" <<PY
import sys

for _name in "$DEVICE_ABSENT".split():  # not on the GPU machine: importing one fails there, so here too
    sys.modules.setdefault(_name, None)
PY
fi

# pyproject maps kernels/ to kdfast.kernels, so kdfast must be installed from this checkout: --no-deps, and no
# build isolation (the GPU machine has no network). If that fails (e.g. a setuptools too old for the license
# field), the sitecustomize maps the two folders the way the editable install would. An install from another
# checkout does not count: kdfast must import from this one.
importable() {
    "$python" -c "import sys, kdfast, kdfast.kernels.lora_matmul as m; here = '$repo/'
sys.exit(not (kdfast.__file__.startswith(here) and m.__file__.startswith(here)))" > /dev/null 2>&1
}
if ! importable && [ -z "${GPU_CHECK_NO_INSTALL:-}" ]; then
    say "== install: $python -m pip install --no-deps --no-build-isolation -e . (the shim stands in if it fails)"
    timeout 120 "$python" -m pip install --no-deps --no-build-isolation --quiet -e . > "$logs/install.log" 2>&1
    say "   rc=$? (log: install.log)"
fi
if ! importable; then
    cat >> "$work/site/sitecustomize.py" <<PY
import importlib.util
import sys


class _KdfastPackageDirs:  # pyproject's [tool.setuptools.package-dir], for a checkout that is not installed
    dirs = {"kdfast.kernels": "$repo/kernels", "kdfast.cli": "$repo/cli"}

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in cls.dirs:
            return None
        folder = cls.dirs[name]
        return importlib.util.spec_from_file_location(name, folder + "/__init__.py", submodule_search_locations=[folder])


sys.meta_path.insert(0, _KdfastPackageDirs)
PY
    export PYTHONPATH="$work/site:$repo${PYTHONPATH#"$work/site"}"
    if importable; then say "   kdfast imported from $repo through a sitecustomize on PYTHONPATH"; fi
fi
importable || { say "kdfast does not import from $repo; see install.log"; status=1; }

pytest_flags=(-q -p no:cacheprovider)  # and with pytest-xdist, workers: Triton compiles in parallel (16 CPUs there)
workers="${GPU_CHECK_WORKERS:-$([ "$dry_run" = 1 ] && echo 2 || echo 8)}"
"$python" -c "import xdist" > /dev/null 2>&1 && pytest_flags+=(-n "$workers")

# -- the steps ---------------------------------------------------------------------------------------------------
if [ "$dry_run" = 1 ]; then
    # the kernels on CPU tensors, with the production tiles through the autotuner, as on the GPU
    kernel_env=(env TRITON_INTERPRET=1 KDFAST_INTERPRETER_TILES=production TRITON_PRINT_AUTOTUNING=1)
    lora_sizes=(--device cpu --m 1 --backward-m 17 --shapes attn.c_proj --dtype fp16 bf16 --rank 4)
    teacher_sizes=(--device cpu --tiny --batch-sizes 1 2 --seq-len 8 --warmup 1 --repeats 2)
    student_sizes=(--device cpu --n-single 2 --n-batched 1 --repeats 1 --batch-sizes 1 2)
else
    kernel_env=(env TRITON_PRINT_AUTOTUNING=1)  # every autotuner pick, with its time, in the log
    lora_sizes=(--device cuda)
    teacher_sizes=(--device cuda)
    student_sizes=(--device cuda --n-single 100 --n-batched 10)
fi

step pytest_gpu 150 "$python" -m pytest "${pytest_flags[@]}" tests/test_lora_matmul.py \
    --junitxml="$logs/pytest_gpu.xml"
step bench_lora_matmul 220 "${kernel_env[@]}" "$python" -u benchmarks/bench_lora_matmul.py "${lora_sizes[@]}" \
    --csv "$out/lora_matmul.csv"
step bench_teacher_e2e 70 "${kernel_env[@]}" "$python" -u benchmarks/bench_teacher_e2e.py "${teacher_sizes[@]}" \
    --csv "$out/teacher_e2e.csv"
step bench_student 90 "$python" -u benchmarks/bench_student.py --data cola --mode reduce-overhead \
    "${student_sizes[@]}" --csv "$out/student.csv"

# -- what comes back: at most 8 files ----------------------------------------------------------------------------
pack_logs
files=$(find "$out" -mindepth 1 | wc -l)
if [ "$files" -gt 8 ]; then
    say "OUT holds $files entries, more than the 8 files that come back: $(ls "$out" | tr '\n' ' ')"
    status=1
fi
say "== done in ${SECONDS}s: status=$status, $files files in $out: $(ls "$out" | tr '\n' ' ')"
exit "$status"
