#!/usr/bin/env bash
# The GPU checks for the fused LoRA kernel, in under 8 minutes on one H100:
#   1. the GPU-marked tests (the kernel natively, under torch.compile, without host syncs)
#   2. benchmarks/bench_lora_matmul.py (GPT-2 projections, M 1..4096, fp16 and bf16)
#   3. benchmarks/bench_student.py --device cuda, if that file exists
#
#   benchmarks/gpu_check.sh [OUT_DIR]      # default: $OUT, else benchmarks/results/gpu_check-<date>
#   GPU_CHECK_NO_INSTALL=1 PYTHON=python3 benchmarks/gpu_check.sh /tmp/out   # leave the environment alone
#
# Logs, the CSV and summary.txt land in OUT_DIR; commit the CSV rows under benchmarks/results/.
# Step limits add up to 8 minutes (60 + 180 + 180 + 60 s); on a cold Triton cache most of it goes to compiling the
# autotuner's configurations, once. Installs nothing heavy: torch and triton must be there already, and the project
# goes in with --no-deps.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-${OUT:-$repo/benchmarks/results/gpu_check-$(date +%Y%m%d-%H%M%S)}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$repo"
python="${PYTHON:-python}"
summary="$out/summary.txt"
: > "$summary"
status=0

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $out/NAME.log, record rc and duration
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    echo "== $name: $*" | tee -a "$summary"
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc in $((SECONDS - start))s (log: $name.log)" | tee -a "$summary"
    tail -n 4 "$out/$name.log" | sed 's/^/   | /' | tee -a "$summary"
    [ "$rc" -eq 0 ] || status=1
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    "$python" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    git rev-parse --short HEAD 2>/dev/null
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt" | tee -a "$summary"

# pyproject maps kernels/ to kdfast.kernels, so kdfast must be installed: --no-deps, and no build isolation (the
# machine may have no network). If that fails too (e.g. a setuptools too old for the license field), a
# sitecustomize on PYTHONPATH maps the two folders the way the editable install would.
importable() { "$python" -c "import kdfast.kernels.lora_matmul" > /dev/null 2>&1; }
if ! importable && [ -z "${GPU_CHECK_NO_INSTALL:-}" ]; then
    step install 60 "$python" -m pip install --no-deps --no-build-isolation --quiet -e .
fi
if ! importable; then
    shim="$(mktemp -d)"
    trap 'rm -rf "$shim"' EXIT
    cat > "$shim/sitecustomize.py" <<PY
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
    export PYTHONPATH="$shim:$repo${PYTHONPATH:+:$PYTHONPATH}"
    if importable; then echo "   kdfast imported through $shim/sitecustomize.py" | tee -a "$summary"; fi
fi
importable || { echo "kdfast.kernels does not import; see install.log" | tee -a "$summary"; status=1; }

step pytest_gpu 180 "$python" -m pytest -x -q -p no:cacheprovider -m gpu tests/ --junitxml="$out/pytest_gpu.xml"

step bench_lora_matmul 180 "$python" -u benchmarks/bench_lora_matmul.py --csv "$out/lora_matmul.csv"

if [ -f benchmarks/bench_student.py ]; then
    step bench_student 60 "$python" -u benchmarks/bench_student.py --device cuda
fi

echo "== done: status=$status, results in $out" | tee -a "$summary"
exit "$status"
