"""The fused LoRA matmul against merged and unfused torch, on GPT-2's projections (needs a CUDA GPU).

The logic of benchmarks/bench_lora_matmul.py, whose docstring shows the commands.

Providers, each computing y = x·W + bias + s·(x·A)·B for x [M, K]:
    merged   x·W′ + bias with W′ = W + s·B·A folded in beforehand: one cuBLAS GEMM, the floor to come close to
    unfused  three torch ops, the LoRA matmuls of PEFT: y = x·W + bias; xa = x·A; y += s·xa·B (torch.addmm with
             alpha, so the scale and the add ride the last GEMM; PEFT itself issues two more elementwise kernels)
    fused    kdfast.kernels.lora_matmul: one Triton kernel
for both weight layouts (GPT-2's Conv1D [K, N] and nn.Linear [N, K]). Each forward point is the median of
triton.testing.do_bench (which flushes L2 between runs) and, for M <= --cudagraph-max-m, also of do_bench_cudagraph
(the launches replayed from a CUDA graph: what is left once the CPU's launch overhead is gone, which at small M is
most of the difference between one kernel and three). Backward points (--backward-m) time forward + backward with
x, A and B trainable (merged: x only, its floor). Every point first runs once: that call autotunes (the config the
autotuner picked is logged in the CSV) and is checked against an fp32 reference (fused must meet the tests'
criterion, else the run exits 1). Printed: µs, TFLOP/s, GB/s and how close each forward point comes to its
memory-bandwidth bound (the bytes it must move ÷ the card's bandwidth, looked up from the GPU's name), with
fused/merged (goal <= 1.10) and unfused/fused (goal >= 1.5 for M <= 256). Rows are appended as they are measured,
with the GPU's name and the git commit (KDFAST_COMMIT when set, as gpu_check.sh does), to
benchmarks/results/lora_matmul.csv.

--device cpu is the dry run of benchmarks/gpu_check.sh: the same loop with the kernels under Triton's interpreter
(TRITON_INTERPRET=1), timed by the CPU's clock; the calls to do_bench and do_bench_cudagraph are only checked
against the installed triton's signatures.

The script runs :func:`main`; the logic lives in the package so that the tests (tests/test_bench_lora_matmul.py)
import it from here, never from benchmarks/.
"""

import argparse
import inspect
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from kdfast.bench.harness import append_csv, git_commit, now, time_calls, version

# In a checkout of the repository: benchmarks/results/lora_matmul.csv.
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "lora_matmul.csv"

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
LAYOUTS = ("conv1d", "linear")  # GPT-2's Conv1D stores W [K, N]; nn.Linear [N, K]
# HBM bandwidth in TB/s (vendor datasheets) by a piece of torch.cuda.get_device_name(), first match wins:
# "NVIDIA H200", "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB", ...
HBM_TBPS = (
    ("GH200", None),  # 4.0 (HBM3) or 4.9 (HBM3e): the name does not tell
    ("H200", 4.8),
    ("H100 NVL", 3.9),
    ("H100 PCIe", 2.0),
    ("H100", 3.35),
    ("A100-SXM4-80GB", 2.039),
    ("A100 80GB PCIe", 1.935),
    ("A100", 1.555),
)
CUDAGRAPH_MAX_M = 64  # below this, launch overhead is a large part of a point: time it from a CUDA graph too

CSV_FIELDS = [
    "date", "gpu", "commit", "torch", "triton", "pass", "dtype", "layout", "shape", "m", "k", "n", "r", "provider",
    "us", "us_cudagraph", "tflops", "gbps", "bytes", "bw_bound_us", "pct_of_bw_bound", "fused_over_merged",
    "unfused_over_fused", "max_abs_err", "fused_accurate", "fused_config",
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


def hbm_tbps(gpu_name: str) -> float | None:
    """The card's HBM bandwidth in TB/s from its name (HBM_TBPS), or None when the name does not tell."""
    for piece, tbps in HBM_TBPS:
        if piece.lower() in gpu_name.lower():
            return tbps
    return None


def bandwidth_bound_us(n_bytes: int, tbps: float) -> float:
    """The time moving n_bytes takes at tbps TB/s, in µs."""
    return n_bytes / (tbps * 1e12) * 1e6


def point_metrics(
    provider: str, m: int, k: int, n: int, r: int, elem_size: int, us: float, tbps: float | None
) -> dict:
    """TFLOP/s, GB/s and the share of the memory-bandwidth bound reached by one measured forward point (the bound
    left empty when the bandwidth is unknown)."""
    n_bytes = bytes_moved(provider, m, k, n, r, elem_size)
    bound = bandwidth_bound_us(n_bytes, tbps) if tbps else None
    return {
        "us": us,
        "tflops": flops(provider, m, k, n, r) / (us * 1e-6) / 1e12,
        "gbps": n_bytes / (us * 1e-6) / 1e9,
        "bytes": n_bytes,
        "bw_bound_us": bound if bound is not None else "",
        "pct_of_bw_bound": 100.0 * bound / us if bound is not None else "",
    }


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows (CSV_FIELDS keys; floats to 6 significant digits) to path, the header when the file is new."""
    append_csv(path, rows, CSV_FIELDS, float_format=".6g")


# -- the measurement (CUDA; on the CPU under Triton's interpreter for the dry run) ----------------------------


def make_inputs(
    m: int, k: int, n: int, r: int, dtype: torch.dtype, layout: str, scale: float, device: str = "cuda"
) -> dict[str, torch.Tensor]:
    """Random x, weight (as the layout stores it), lora_a, lora_b, bias, the merged weight W + s·B·A and a
    grad_output dy, seeded, scaled so that x·W and the LoRA term are both O(1)."""
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, device=device, generator=g) * std).to(dtype)

    x = randn(m, k, std=1.0)
    weight = randn(n, k, std=k**-0.5) if layout == "linear" else randn(k, n, std=k**-0.5)
    lora_a, lora_b, bias = randn(r, k, std=k**-0.5), randn(n, r, std=r**-0.5), randn(n, std=1.0)
    delta = scale * lora_b.float() @ lora_a.float()  # (N, K)
    merged = (weight.float() + (delta if layout == "linear" else delta.t())).to(dtype)
    dy = randn(m, n, std=1.0)
    return {"x": x, "weight": weight, "lora_a": lora_a, "lora_b": lora_b, "bias": bias, "merged": merged, "dy": dy}


def make_providers(
    m: int, k: int, n: int, r: int, dtype: torch.dtype, layout: str, scale: float, device: str = "cuda"
) -> dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument closures for the three providers over the same random inputs, and "reference": the same
    function in fp32 (lora_matmul_ref)."""
    from kdfast.kernels.lora_matmul import lora_matmul, lora_matmul_ref

    t = make_inputs(m, k, n, r, dtype, layout, scale, device)
    x, weight, lora_a, lora_b, bias, merged_w = (t[k] for k in ("x", "weight", "lora_a", "lora_b", "bias", "merged"))
    return {
        "merged": lambda: base_matmul(x, merged_w, bias, layout),
        "unfused": lambda: unfused_lora(x, weight, lora_a, lora_b, scale, bias, layout),
        "fused": lambda: lora_matmul(x, weight, lora_a, lora_b, scale, bias, weight_layout=layout),
        "reference": lambda: lora_matmul_ref(x, weight, lora_a, lora_b, scale, bias, weight_layout=layout).float(),
    }


def base_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, layout: str) -> torch.Tensor:
    """x·W + bias as the layer computes it: F.linear for nn.Linear, addmm for transformers' Conv1D ([K, N])."""
    if layout == "linear":
        return torch.nn.functional.linear(x, weight, bias)
    return torch.addmm(bias, x, weight)


def unfused_lora(
    x: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, bias: torch.Tensor,
    layout: str,
) -> torch.Tensor:
    """PEFT's three matmuls, with the scale and the add riding the last one (addmm's alpha)."""
    return torch.addmm(base_matmul(x, weight, bias, layout), x @ a.t(), b.t(), alpha=scale)


def make_backward_providers(
    m: int, k: int, n: int, r: int, dtype: torch.dtype, layout: str, scale: float, device: str = "cuda"
) -> tuple[dict[str, Callable[[], tuple[torch.Tensor, ...]]], dict[str, list[torch.Tensor]]]:
    """Closures that run forward + backward with a fixed grad_output and return the gradients: (dx, dA, dB) for
    unfused, fused and "reference" (fp32), (dx,) for merged (frozen merged weight: its floor). Also the trainable
    leaves of each, for do_bench's grad_to_none."""
    from kdfast.kernels.lora_matmul import lora_matmul, lora_matmul_ref

    t = make_inputs(m, k, n, r, dtype, layout, scale, device)
    weight, bias, merged_w, dy = t["weight"], t["bias"], t["merged"], t["dy"]

    def leaves(*names: str, fp32: bool = False) -> list[torch.Tensor]:
        return [(t[name].float() if fp32 else t[name]).detach().clone().requires_grad_() for name in names]

    lora_fns = {
        "unfused": (unfused_lora, leaves("x", "lora_a", "lora_b"), weight, bias, dy),
        "fused": (lambda x, w, a, b, s, bias, lay: lora_matmul(x, w, a, b, s, bias, weight_layout=lay),
                  leaves("x", "lora_a", "lora_b"), weight, bias, dy),
        "reference": (lambda x, w, a, b, s, bias, lay: lora_matmul_ref(x, w, a, b, s, bias, weight_layout=lay),
                      leaves("x", "lora_a", "lora_b", fp32=True), weight.float(), bias.float(), dy.float()),
    }  # fmt: skip
    providers: dict[str, Callable[[], tuple[torch.Tensor, ...]]] = {}
    trainable: dict[str, list[torch.Tensor]] = {}
    for name, (fn, params, w, b_, g) in lora_fns.items():

        def run(fn=fn, params=params, w=w, b_=b_, g=g) -> tuple[torch.Tensor, ...]:
            x, a, b = params
            fn(x, w, a, b, scale, b_, layout).backward(g)
            return tuple(p.grad for p in params)

        providers[name], trainable[name] = run, params
    (x_m,) = trainable["merged"] = leaves("x")

    def merged() -> tuple[torch.Tensor, ...]:
        base_matmul(x_m, merged_w, bias, layout).backward(dy)
        return (x_m.grad,)

    providers["merged"] = merged
    return providers, trainable


def fused_is_accurate(errors: dict[str, float], ref_max: float, dtype: torch.dtype) -> bool:
    """The tests' criteria: fp32 within 1e-4 of the output's scale; fp16/bf16 as flash-attention judges them,
    fused error <= 2 x unfused torch's own + one ulp of the output."""
    if dtype == torch.float32:
        return errors["fused"] <= 1e-4 * max(1.0, ref_max)
    return errors["fused"] <= 2 * errors["unfused"] + torch.finfo(dtype).eps * ref_max


# do_bench's warm-up and measuring time per call, ms (its defaults are 25 and 100): a µs kernel still repeats
# thousands of times, and the 200-odd calls of a run fit the GPU check's budget.
BENCH_WARMUP_MS, BENCH_REP_MS = 10, 50


def median_ms(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=BENCH_WARMUP_MS, rep=BENCH_REP_MS, grad_to_none=grad_to_none, return_mode="median")


def cudagraph_median_ms(fn: Callable[[], object]) -> float:
    """The median of launches replayed from a CUDA graph (no CPU launch overhead; L2 is not flushed)."""
    from triton.testing import do_bench_cudagraph

    return do_bench_cudagraph(fn, return_mode="median")


def cpu_median_ms(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None, repeats: int = 1) -> float:
    """The dry run's timer: wall-clock ms of a call (a number of the interpreter, not of a kernel)."""
    return statistics.median(time_calls(fn, iters=repeats, grad_to_none=grad_to_none)) * 1e3


def check_timer_signatures() -> None:
    """The dry run cannot call do_bench or do_bench_cudagraph (they need a GPU): bind the arguments the GPU run
    passes to the installed triton's signatures instead, so a renamed argument fails here and not on the GPU."""
    from triton.testing import do_bench, do_bench_cudagraph

    inspect.signature(do_bench).bind(print, warmup=1, rep=1, grad_to_none=None, return_mode="median")
    inspect.signature(do_bench_cudagraph).bind(print, return_mode="median")


def fused_config(m: int, dtype: torch.dtype) -> str:
    """The lora_mm configuration the last fused forward at M rows ran: the autotuner's pick, or the group's only
    configuration ("fixed")."""
    from kdfast.kernels import lora_matmul as lm

    kernels = lm._kernels()
    fp32 = lm._dot_dtype(dtype) == kernels.tl.float32
    group = kernels.lora_mm_groups[lm._mm_group(lm._m_bucket(m), fp32)]
    if len(group) == 1:
        return f"fixed {describe_config(group[0])}"
    return f"tuned {describe_config(kernels.lora_mm_tuned.best_config)}"


def describe_config(config: object) -> str:
    """A triton.Config as MM_TILES writes it: BLOCK_MxBLOCK_NxBLOCK_K w<warps> s<stages>."""
    kw = config.kwargs  # type: ignore[attr-defined]
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']} w{config.num_warps} s{config.num_stages}"  # type: ignore[attr-defined]


TABLE_HEADER = (
    f"{'pass':<8} {'shape':<12} {'M':>5} {'merged':>8} {'unfused':>8} {'fused':>8} {'graph f':>8}  "
    f"{'TFLOP/s':>7} {'GB/s':>6} {'%bw':>5}  {'fused/merged':>12} {'unfused/fused':>13}  config"
)


def measure(
    args: argparse.Namespace,
    device: str = "cuda",
    time_ms: Callable[..., float] = median_ms,
    graph_ms: Callable[[Callable[[], object]], float] | None = cudagraph_median_ms,
) -> list[dict]:
    """Times every (dtype, layout, shape, M) point for the three providers, forward and then forward + backward;
    prints a table, appends each point's rows to args.csv as soon as it is measured (a run cut short keeps what it
    measured) and returns all rows. graph_ms (None: not measured) times the forward points with M <=
    args.cudagraph_max_m a second time."""
    gpu = torch.cuda.get_device_name() if device == "cuda" else device
    tbps = args.bandwidth_tbps or (hbm_tbps(gpu) if device == "cuda" else None)
    commit, date, triton_version = git_commit(), now("%Y-%m-%d %H:%M"), version("triton")
    print(f"{gpu}, torch {torch.__version__}, triton {triton_version}, commit {commit}, rank {args.rank}; bandwidth "
          f"bound at {f'{tbps} TB/s' if tbps else 'unknown bandwidth (pass --bandwidth-tbps)'}")  # fmt: skip
    rows: list[dict] = []
    for dtype_name in args.dtype:
        for layout in args.layout:
            print(f"\n{dtype_name} {layout}: median µs per provider (graph f: fused replayed from a CUDA graph); "
                  f"TFLOP/s, GB/s and % of the bandwidth bound for fused\n{TABLE_HEADER}")  # fmt: skip
            common = {"date": date, "gpu": gpu, "commit": commit, "torch": torch.__version__, "triton": triton_version,
                      "dtype": dtype_name, "layout": layout, "r": args.rank}  # fmt: skip
            for shape in args.shapes:
                for m in args.m:
                    graph = graph_ms if m <= args.cudagraph_max_m else None
                    point_rows = measure_forward(args, common, shape, m, device, tbps, time_ms, graph)
                    append_rows(args.csv, point_rows)
                    rows += point_rows
                for m in args.backward_m:
                    point_rows = measure_backward(args, common, shape, m, device, time_ms)
                    append_rows(args.csv, point_rows)
                    rows += point_rows
    return rows


def measure_forward(
    args: argparse.Namespace, common: dict, shape: str, m: int, device: str, tbps: float | None,
    time_ms: Callable[..., float], graph_ms: Callable[[Callable[[], object]], float] | None,
) -> list[dict]:
    """One forward point: a first call of each provider (fused autotunes there) checked against the fp32
    reference, then timed; prints its line of the table and returns its three rows."""
    k, n = GPT2_SHAPES[shape]
    dtype = DTYPES[common["dtype"]]
    fns = make_providers(m, k, n, args.rank, dtype, common["layout"], args.scale, device)
    ref = fns["reference"]()
    errors = {p: (fns[p]().float() - ref).abs().max().item() for p in PROVIDERS}
    config = fused_config(m, dtype)
    accurate = fused_is_accurate(errors, ref.abs().max().item(), dtype)
    us = {p: time_ms(fns[p]) * 1e3 for p in PROVIDERS}
    graph = {p: graph_ms(fns[p]) * 1e3 for p in PROVIDERS} if graph_ms else {}
    metrics = {p: point_metrics(p, m, k, n, args.rank, torch.finfo(dtype).bits // 8, us[p], tbps) for p in PROVIDERS}
    point = {**common, "pass": "forward", "shape": shape, "m": m, "k": k, "n": n,
             "fused_over_merged": us["fused"] / us["merged"], "unfused_over_fused": us["unfused"] / us["fused"],
             "fused_accurate": accurate}  # fmt: skip
    f = metrics["fused"]
    pct = f"{f['pct_of_bw_bound']:>5.0f}" if f["pct_of_bw_bound"] != "" else f"{'-':>5}"
    graph_fused = f"{graph['fused']:>8.1f}" if graph else f"{'-':>8}"
    print(f"{'forward':<8} {shape:<12} {m:>5} {us['merged']:>8.1f} {us['unfused']:>8.1f} {us['fused']:>8.1f} "
          f"{graph_fused}  {f['tflops']:>7.1f} {f['gbps']:>6.0f} {pct}  {point['fused_over_merged']:>12.2f} "
          f"{point['unfused_over_fused']:>13.2f}  {config}{'' if accurate else '  INACCURATE: ' + str(errors)}",
          flush=True)  # fmt: skip
    return [{**point, "provider": p, **metrics[p], "us_cudagraph": graph.get(p, ""), "max_abs_err": errors[p],
             "fused_config": config if p == "fused" else ""} for p in PROVIDERS]  # fmt: skip


def measure_backward(
    args: argparse.Namespace, common: dict, shape: str, m: int, device: str, time_ms: Callable[..., float]
) -> list[dict]:
    """One forward + backward point: every gradient checked like the forward (fused against unfused's own error),
    then timed with the gradients reset between calls."""
    k, n = GPT2_SHAPES[shape]
    dtype = DTYPES[common["dtype"]]
    fns, trainable = make_backward_providers(m, k, n, args.rank, dtype, common["layout"], args.scale, device)
    refs = fns["reference"]()
    grads = {p: fns[p]() for p in PROVIDERS}
    accurate, errors = True, dict.fromkeys(PROVIDERS, 0.0)
    for i, ref in enumerate(refs):  # dx, dA, dB (merged has dx only)
        errs = {p: (grads[p][i].float() - ref).abs().max().item() for p in PROVIDERS if i < len(grads[p])}
        accurate &= fused_is_accurate(errs, ref.abs().max().item(), dtype)
        errors = {p: max(errors[p], errs.get(p, 0.0)) for p in PROVIDERS}
    us = {p: time_ms(fns[p], grad_to_none=trainable[p]) * 1e3 for p in PROVIDERS}
    point = {**common, "pass": "backward", "shape": shape, "m": m, "k": k, "n": n,
             "fused_over_merged": us["fused"] / us["merged"], "unfused_over_fused": us["unfused"] / us["fused"],
             "fused_accurate": accurate}  # fmt: skip
    print(f"{'fwd+bwd':<8} {shape:<12} {m:>5} {us['merged']:>8.1f} {us['unfused']:>8.1f} {us['fused']:>8.1f} "
          f"{'-':>8}  {'':>7} {'':>6} {'':>5}  {point['fused_over_merged']:>12.2f} "
          f"{point['unfused_over_fused']:>13.2f}{'' if accurate else '  INACCURATE: ' + str(errors)}",
          flush=True)  # fmt: skip
    return [{**point, "provider": p, "us": us[p], "max_abs_err": errors[p]} for p in PROVIDERS]


def summarize(rows: list[dict]) -> str:
    """The issue's goals, on the forward points: fused <= 1.10x merged everywhere, >= 1.5x faster than unfused for
    M <= 256; and the worst forward + backward ratio against unfused."""
    fused = [row for row in rows if row["provider"] == "fused" and row.get("pass", "forward") == "forward"]
    if not fused:
        return "no points"
    worst_merged = max(fused, key=lambda row: row["fused_over_merged"])
    small = [row for row in fused if row["m"] <= 256]
    backward = [row for row in rows if row["provider"] == "fused" and row.get("pass") == "backward"]

    def where(row: dict) -> str:
        return f"{row['dtype']} {row.get('layout', '')} {row['shape']} M={row['m']}".replace("  ", " ")

    lines = [f"worst fused/merged: {worst_merged['fused_over_merged']:.2f} ({where(worst_merged)}; goal <= 1.10)"]
    if small:
        worst = min(small, key=lambda row: row["unfused_over_fused"])
        ratio = worst["unfused_over_fused"]
        lines.append(f"worst unfused/fused for M <= 256: {ratio:.2f} ({where(worst)}; goal >= 1.5)")
    if backward:
        worst = min(backward, key=lambda row: row["unfused_over_fused"])
        lines.append(f"worst unfused/fused, forward + backward: {worst['unfused_over_fused']:.2f} ({where(worst)})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, nargs="+", default=list(M_VALUES), help="rows of x (batch x tokens)")
    p.add_argument("--backward-m", type=int, nargs="*", default=[1024], help="rows of the forward + backward points")
    p.add_argument("--shapes", nargs="+", choices=list(GPT2_SHAPES), default=list(GPT2_SHAPES))
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["fp16", "bf16"])
    p.add_argument("--layout", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--scale", type=float, default=2.0, help="LoRA alpha / r")
    p.add_argument("--bandwidth-tbps", type=float, default=None, help="HBM TB/s (default: from the GPU's name)")
    p.add_argument("--cudagraph-max-m", type=int, default=CUDAGRAPH_MAX_M, help="also time M <= this from a graph")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the dry run, TRITON_INTERPRET=1")
    p.add_argument("--csv", type=Path, default=RESULTS, help="append the rows here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measures, appends to the CSV, prints the summary; exits 1 without CUDA (or, with --device cpu, without the
    interpreter) or if fused results were wrong."""
    args = parse_args(argv)
    from kdfast.kernels.lora_matmul import _interpreter_ready, is_available

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_lora_matmul: no CUDA GPU here; the fused kernel is Triton, so nothing was measured")
    if not is_available():
        raise SystemExit("bench_lora_matmul: triton is not installed (pip install triton)")
    if args.device == "cpu":
        if not _interpreter_ready():
            raise SystemExit("bench_lora_matmul: --device cpu runs the kernels under TRITON_INTERPRET=1; set it")
        check_timer_signatures()
        rows = measure(args, device="cpu", time_ms=cpu_median_ms, graph_ms=cpu_median_ms)
    else:
        rows = measure(args)
    print(f"\n{summarize(rows)}\n{len(rows)} rows appended to {args.csv}")
    inaccurate = [row for row in rows if row["provider"] == "fused" and not row["fused_accurate"]]
    if inaccurate:
        raise SystemExit(f"bench_lora_matmul: the fused kernel was inaccurate at {len(inaccurate)} points")
