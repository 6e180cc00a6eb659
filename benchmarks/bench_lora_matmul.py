"""The fused LoRA matmul against merged and unfused torch, on GPT-2's projections (needs a CUDA GPU).

    python benchmarks/bench_lora_matmul.py                          # bound from an H100 SXM's 3.35 TB/s
    python benchmarks/bench_lora_matmul.py --bandwidth-tbps 2.0     # another card's HBM bandwidth
    python benchmarks/bench_lora_matmul.py --m 1 64 --dtype bf16 --csv /tmp/lora.csv

Providers, each computing y = x·W + bias + s·(x·A)·B for x [M, K]:
    merged   x·W′ + bias with W′ = W + s·B·A folded in beforehand: one cuBLAS GEMM, the floor to come close to
    unfused  three torch ops, the LoRA matmuls of PEFT: y = x·W + bias; xa = x·A; y += s·xa·B (torch.addmm with
             alpha, so the scale and the add ride the last GEMM; PEFT itself issues two more elementwise kernels)
    fused    kdfast.kernels.lora_matmul: one Triton kernel
Each point is the median of triton.testing.do_bench (which flushes L2 between runs), after a call that runs the
autotuner and checks every provider against an fp32 reference (fused must meet the tests' criterion, else the run
exits 1). Printed: µs, TFLOP/s, GB/s and how close each point comes to its memory-bandwidth bound (the bytes it
must move ÷ the card's bandwidth), with fused/merged (goal <= 1.10) and unfused/fused (goal >= 1.5 for M <= 256).
Rows are appended as they are measured, with the GPU's name and the git commit, to
benchmarks/results/lora_matmul.csv.
"""

import argparse
import csv
import importlib.metadata
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "lora_matmul.csv"

# GPT-2 small's projections, K -> N: the four LoRA targets of every block.
GPT2_SHAPES = {
    "attn.c_attn": (768, 2304),
    "attn.c_proj": (768, 768),
    "mlp.c_fc": (768, 3072),
    "mlp.c_proj": (3072, 768),
}
M_VALUES = (1, 8, 64, 256, 1024, 4096)
PROVIDERS = ("merged", "unfused", "fused")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
H100_SXM_TBPS = 3.35

CSV_FIELDS = [
    "date", "gpu", "commit", "torch", "triton", "dtype", "layout", "shape", "m", "k", "n", "r", "provider",
    "us", "tflops", "gbps", "bytes", "bw_bound_us", "pct_of_bw_bound", "fused_over_merged", "unfused_over_fused",
    "max_abs_err", "fused_accurate",
]  # fmt: skip


# -- pure helpers: the cost model and the CSV (unit-tested on the CPU) -----------------------------------------


def flops(provider: str, m: int, k: int, n: int, r: int) -> int:
    """Multiply-adds x 2 that the provider performs (the bias add is negligible and left out)."""
    base = 2 * m * k * n
    return base if provider == "merged" else base + 2 * m * k * r + 2 * m * r * n


def bytes_moved(provider: str, m: int, k: int, n: int, r: int, elem_size: int, bias: bool = True) -> int:
    """The least HBM traffic each provider needs: every operand read once and every result written once per kernel.

    merged   reads x, W′, bias; writes y
    fused    reads x, W, A, B, bias; writes y (xa stays on chip)
    unfused  addmm: x, W, bias -> y; mm: x, A -> xa; addmm: y, xa, B -> y. x is read twice, y three times.
    """
    b = n if bias else 0
    if provider == "merged":
        elems = m * k + k * n + b + m * n
    elif provider == "fused":
        elems = m * k + k * n + r * k + n * r + b + m * n
    elif provider == "unfused":
        elems = (m * k + k * n + b + m * n) + (m * k + r * k + m * r) + (m * r + r * n + 2 * m * n)
    else:
        raise ValueError(f"unknown provider {provider!r}")
    return elems * elem_size


def bandwidth_bound_us(n_bytes: int, tbps: float) -> float:
    """The time moving n_bytes takes at tbps TB/s, in µs."""
    return n_bytes / (tbps * 1e12) * 1e6


def point_metrics(provider: str, m: int, k: int, n: int, r: int, elem_size: int, us: float, tbps: float) -> dict:
    """TFLOP/s, GB/s and the share of the memory-bandwidth bound reached by one measured point."""
    n_bytes = bytes_moved(provider, m, k, n, r, elem_size)
    bound = bandwidth_bound_us(n_bytes, tbps)
    return {
        "us": us,
        "tflops": flops(provider, m, k, n, r) / (us * 1e-6) / 1e12,
        "gbps": n_bytes / (us * 1e-6) / 1e9,
        "bytes": n_bytes,
        "bw_bound_us": bound,
        "pct_of_bw_bound": 100.0 * bound / us,
    }


def git_commit(repo: Path = REPO) -> str:
    """Short HEAD commit, marked -dirty when the tree has changes; "unknown" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True)
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append rows (CSV_FIELDS keys) to path, writing the header when the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({key: _fmt(row.get(key, "")) for key in CSV_FIELDS})


def _fmt(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value


# -- the measurement (CUDA) ------------------------------------------------------------------------------------


def make_providers(
    m: int, k: int, n: int, r: int, dtype: torch.dtype, layout: str, scale: float, device: str = "cuda"
) -> dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument closures for the three providers over the same random inputs, and "reference": the same
    function in fp32 (lora_matmul_ref)."""
    from kdfast.kernels.lora_matmul import lora_matmul, lora_matmul_ref

    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, device=device, generator=g) * std).to(dtype)

    x = randn(m, k, std=1.0)
    weight = randn(n, k, std=k**-0.5) if layout == "linear" else randn(k, n, std=k**-0.5)
    lora_a, lora_b, bias = randn(r, k, std=k**-0.5), randn(n, r, std=r**-0.5), randn(n, std=1.0)
    delta = scale * lora_b.float() @ lora_a.float()  # (N, K)
    merged_w = (weight.float() + (delta if layout == "linear" else delta.t())).to(dtype)
    a_t, b_t = lora_a.t(), lora_b.t()

    if layout == "linear":

        def merged() -> torch.Tensor:
            return torch.nn.functional.linear(x, merged_w, bias)

        def unfused() -> torch.Tensor:
            y = torch.nn.functional.linear(x, weight, bias)
            return torch.addmm(y, x @ a_t, b_t, alpha=scale)

    else:  # transformers' Conv1D computes addmm(bias, x, W) on W [K, N]

        def merged() -> torch.Tensor:
            return torch.addmm(bias, x, merged_w)

        def unfused() -> torch.Tensor:
            y = torch.addmm(bias, x, weight)
            return torch.addmm(y, x @ a_t, b_t, alpha=scale)

    def fused() -> torch.Tensor:
        return lora_matmul(x, weight, lora_a, lora_b, scale, bias, weight_layout=layout)

    def reference() -> torch.Tensor:
        return lora_matmul_ref(x, weight, lora_a, lora_b, scale, bias, weight_layout=layout).float()

    return {"merged": merged, "unfused": unfused, "fused": fused, "reference": reference}


def fused_is_accurate(errors: dict[str, float], ref_max: float, dtype: torch.dtype) -> bool:
    """The tests' criteria: fp32 within 1e-4 of the output's scale; fp16/bf16 as flash-attention judges them,
    fused error <= 2 x unfused torch's own + one ulp of the output."""
    if dtype == torch.float32:
        return errors["fused"] <= 1e-4 * max(1.0, ref_max)
    return errors["fused"] <= 2 * errors["unfused"] + torch.finfo(dtype).eps * ref_max


def median_ms(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return do_bench(fn, return_mode="median")


def measure(args: argparse.Namespace, device: str = "cuda", time_ms: Callable = median_ms) -> list[dict]:
    """Times every (dtype, shape, M) point for the three providers; prints a table, appends each point's rows to
    args.csv as soon as it is measured (a run cut short keeps what it measured) and returns all rows."""
    gpu = torch.cuda.get_device_name() if device == "cuda" else device
    commit, date, triton_version = git_commit(), time.strftime("%Y-%m-%d %H:%M"), importlib.metadata.version("triton")
    print(f"{gpu}, torch {torch.__version__}, triton {triton_version}, commit {commit}, rank {args.rank}, "
          f"{args.layout} layout; bandwidth bound at {args.bandwidth_tbps} TB/s")  # fmt: skip
    rows: list[dict] = []
    for dtype_name in args.dtype:
        dtype = DTYPES[dtype_name]
        print(f"\n{dtype_name}: median µs per provider; TFLOP/s, GB/s and % of the bandwidth bound for fused")
        print(f"{'shape':<12} {'M':>5} {'merged':>8} {'unfused':>8} {'fused':>8}  {'TFLOP/s':>7} {'GB/s':>6} "
              f"{'%bw':>5}  {'fused/merged':>12} {'unfused/fused':>13}")  # fmt: skip
        for shape in args.shapes:
            k, n = GPT2_SHAPES[shape]
            for m in args.m:
                fns = make_providers(m, k, n, args.rank, dtype, args.layout, args.scale, device)
                ref = fns["reference"]()
                errors = {p: (fns[p]().float() - ref).abs().max().item() for p in PROVIDERS}  # fused: autotunes
                accurate = fused_is_accurate(errors, ref.abs().max().item(), dtype)
                us = {p: time_ms(fns[p]) * 1e3 for p in PROVIDERS}
                fused_over_merged = us["fused"] / us["merged"]
                unfused_over_fused = us["unfused"] / us["fused"]
                common = {"date": date, "gpu": gpu, "commit": commit, "torch": torch.__version__,
                          "triton": triton_version, "dtype": dtype_name, "layout": args.layout, "shape": shape,
                          "m": m, "k": k, "n": n, "r": args.rank, "fused_over_merged": fused_over_merged,
                          "unfused_over_fused": unfused_over_fused, "fused_accurate": accurate}  # fmt: skip
                elem = torch.finfo(dtype).bits // 8
                metrics = {p: point_metrics(p, m, k, n, args.rank, elem, us[p], args.bandwidth_tbps) for p in PROVIDERS}
                point_rows = [{**common, "provider": p, **metrics[p], "max_abs_err": errors[p]} for p in PROVIDERS]
                append_csv(args.csv, point_rows)
                rows += point_rows
                f = metrics["fused"]
                print(f"{shape:<12} {m:>5} {us['merged']:>8.1f} {us['unfused']:>8.1f} {us['fused']:>8.1f}  "
                      f"{f['tflops']:>7.1f} {f['gbps']:>6.0f} {f['pct_of_bw_bound']:>5.0f}  "
                      f"{fused_over_merged:>12.2f} {unfused_over_fused:>13.2f}"
                      f"{'' if accurate else '  INACCURATE: ' + str(errors)}", flush=True)  # fmt: skip
    return rows


def summarize(rows: list[dict]) -> str:
    """The issue's goals: fused <= 1.10x merged everywhere, >= 1.5x faster than unfused for M <= 256."""
    fused = [row for row in rows if row["provider"] == "fused"]
    if not fused:
        return "no points"
    worst_merged = max(fused, key=lambda row: row["fused_over_merged"])
    small = [row for row in fused if row["m"] <= 256]
    lines = [
        f"worst fused/merged: {worst_merged['fused_over_merged']:.2f} ({worst_merged['dtype']} {worst_merged['shape']}"
        f" M={worst_merged['m']}; goal <= 1.10)",
    ]
    if small:
        worst_unfused = min(small, key=lambda row: row["unfused_over_fused"])
        lines.append(
            f"worst unfused/fused for M <= 256: {worst_unfused['unfused_over_fused']:.2f} ({worst_unfused['dtype']} "
            f"{worst_unfused['shape']} M={worst_unfused['m']}; goal >= 1.5)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, nargs="+", default=list(M_VALUES), help="rows of x (batch x tokens)")
    p.add_argument("--shapes", nargs="+", choices=list(GPT2_SHAPES), default=list(GPT2_SHAPES))
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["fp16", "bf16"])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--scale", type=float, default=2.0, help="LoRA alpha / r")
    p.add_argument("--layout", choices=["conv1d", "linear"], default="conv1d", help="GPT-2 stores Conv1D [K, N]")
    p.add_argument("--bandwidth-tbps", type=float, default=H100_SXM_TBPS, help="HBM bandwidth, TB/s")
    p.add_argument("--csv", type=Path, default=RESULTS, help="append the rows here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measures, appends to the CSV, prints the summary; exits 1 without CUDA or if fused results were wrong."""
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_lora_matmul: no CUDA GPU here; the fused kernel is Triton, so nothing was measured")
    from kdfast.kernels.lora_matmul import is_available

    if not is_available():
        raise SystemExit("bench_lora_matmul: triton is not installed (pip install triton)")
    rows = measure(args)
    print(f"\n{summarize(rows)}\n{len(rows)} rows appended to {args.csv}")
    inaccurate = [row for row in rows if row["provider"] == "fused" and not row["fused_accurate"]]
    if inaccurate:
        raise SystemExit(f"bench_lora_matmul: the fused kernel was inaccurate at {len(inaccurate)} points")


if __name__ == "__main__":
    sys.exit(main())
