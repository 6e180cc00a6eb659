"""Fused LoRA matmul: ``y = x·W + bias + scale·(x·A)·B`` in one Triton kernel launch.

LoRA (Hu et al., https://arxiv.org/abs/2106.09685) adds a rank-r update ``scale·B·A`` to a frozen weight ``W``. Kept
unmerged (adapter swapping, several adapters over one base, training), it usually costs three kernels: the base
GEMM, the "shrink" ``x·A`` and the "expand" ``(x·A)·B`` (PEFT; vLLM and S-LoRA/Punica run shrink and expand beside
the base GEMM). At small batch each of them re-reads x and writes an [M, N] or [M, r] intermediate to HBM.
LoRAFusion (Zhu et al., https://arxiv.org/abs/2510.00206) instead seeds the GEMM's accumulator with the LoRA term.
This kernel follows that design:

    x [M, K] ──┬─────────────────────► x·W ──────────────┐
               │  (the same x tiles)                     + ──► + bias ──► y [M, N]
               └──► x·A [M, r] (fp32, on chip) ─► ·s ·B ─┘

    one program owns the tile y[m:m+BLOCK_M, n:n+BLOCK_N]:
        for each K tile k:
            x_k  = load x[m, k]                 read once, used by both dots
            acc += x_k · W[k, n]                (BLOCK_M, BLOCK_N) fp32
            xa  += x_k · A[k, :]                (BLOCK_M, R)       fp32, the shrink rides the GEMM's K loop
        acc += (s·xa) · B[:, n]                 the expand runs in the epilogue: xa never leaves the chip
        y[m, n] = acc + bias[n]

Every N tile recomputes the xa of its rows; that costs R/BLOCK_N extra tensor-core work (R = r padded to 16, the
smallest tl.dot) and no memory traffic, which is what matters at the small M of online inference.

Shapes follow PEFT: ``weight`` [N, K] for ``weight_layout="linear"`` (nn.Linear) or [K, N] for ``"conv1d"``
(GPT-2's transformers Conv1D), read through its strides, never copied or transposed; ``lora_a`` [r, K];
``lora_b`` [N, r]; ``bias`` [N] or None. fp32, fp16 and bf16; accumulation is fp32. In the epilogue the fp32 xa
goes through the fp16/bf16 tensor cores as a hi + lo pair (after scaling each row by a power of two), which keeps
about 22 (fp16) or 16 (bf16) bits of it rather than rounding it to the input dtype.

Backward (W and bias are frozen). With W the logical [K, N] weight, A = lora_aᵀ [K, r], B = lora_bᵀ [r, N]:
    u  = dy·Bᵀ                  [M, r]  fp32
    dx = dy·Wᵀ + s·u·Aᵀ         [M, K]  the same fused kernel over transposed views (B is the shrink, A the
                                        expand); it also writes u
    d lora_a = s·uᵀ·x           [r, K]  a reduction over M (``lora_grad_kernel``, split over M for parallelism)
    d lora_b = s·dyᵀ·xa         [N, r]  the same kernel, with xa = x·A saved in fp32 by the forward

Layout, as Liger-Kernel orders an op: the ``@triton.jit`` kernels (in ``_lora_matmul_triton.py``), their
configurations and autotuners, the launchers, the custom op with its autograd, the public functions.

Importing this module needs neither triton nor CUDA (the kernels' module is imported on first use): without them
``lora_matmul`` runs ``lora_matmul_ref``. On CPU tensors the kernels run under Triton's interpreter when
``TRITON_INTERPRET=1`` is set (that is how the tests run).
"""

import functools
import importlib.util
import os
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

__all__ = ["fused_lora_supported", "is_available", "lora_matmul", "lora_matmul_ref"]

WEIGHT_LAYOUTS = ("linear", "conv1d")

# Located, not imported: importing kdfast must not import triton (see _kernels and _lora_matmul_triton).
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    """Whether Triton's CPU interpreter is switched on (triton reads this variable when it is asked)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _interpreter_ready() -> bool:
    """Whether the kernels can run on CPU tensors: TRITON_INTERPRET=1 is set and was already set when triton was
    imported (triton's own @jit helpers, such as tl.cdiv, are built for the GPU or for the interpreter then)."""
    if not (_HAS_TRITON and _interpreting()):
        return False
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.cdiv, InterpretedFunction)


# ---------------------------------------------------------------------------------------------------------------
# Kernel configurations and autotuners. The @triton.jit kernels themselves are in _lora_matmul_triton.py, which
# imports triton: _kernels() imports it on first use.
# ---------------------------------------------------------------------------------------------------------------

# Autotuning configurations, (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), by M regime and dot dtype. All
# compile for sm_90 without register spills at r <= 64 (benchmarks/compile_lora_matmul.py checks that without a
# GPU). With KDFAST_AUTOTUNE=0 only the first of each is used: no tuning runs, and far fewer compiles.
MM_TILES = {
    # Small M (online inference, M_BUCKET <= 64) is memory-bound: skinny tiles so that many programs stream W.
    ("small", "half"): ((16, 64, 128, 4, 4), (16, 32, 128, 4, 4), (64, 64, 64, 4, 4)),
    # Large M is compute-bound: wgmma tiles (128 x 256 spills once the xa accumulator and epilogue are added).
    ("large", "half"): ((128, 128, 64, 8, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 4)),
    # fp32 runs "ieee" dots on the FMA units (exact, like torch's default): register-bound, so one small tile.
    ("small", "fp32"): ((32, 64, 32, 8, 3),),
    ("large", "fp32"): ((32, 64, 32, 8, 3),),
}
INTERPRETER_TILE = (32, 64, 64, 4, 1)  # each program is numpy there: one config, big tiles
# The gradient reduction: (BLOCK_P, BLOCK_M, num_warps, num_stages).
GRAD_TILES = ((64, 64, 4, 3), (128, 32, 4, 3))
GRAD_INTERPRETER_TILE = (64, 64, 4, 1)


def _autotuning() -> bool:
    return os.environ.get("KDFAST_AUTOTUNE", "1") != "0"


def _production_tiles_interpreted() -> bool:
    """KDFAST_INTERPRETER_TILES=production: under the interpreter, the production tiles as a GPU runs them (every
    configuration of a group through the autotuner, or the first with KDFAST_AUTOTUNE=0) instead of
    INTERPRETER_TILE, so that their numbers and the autotuned launch path are checked too."""
    return os.environ.get("KDFAST_INTERPRETER_TILES", "") == "production"


def _used_tiles(tiles: tuple[tuple[int, ...], ...], interpreter_tile: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The tiles this environment launches: INTERPRETER_TILE's kind under the interpreter (unless production tiles
    are asked for), else all of ``tiles`` when autotuning, or the first."""
    if _interpreting() and not _production_tiles_interpreted():
        return (interpreter_tile,)
    return tiles if _autotuning() else tiles[:1]


def _wall_clock_bench(fn: Callable[[], object], quantiles: tuple | None = None, **_: object) -> float | list[float]:
    """The autotuner's timer under the interpreter, which has no GPU to time: one call's wall-clock ms. Its picks
    mean nothing; it lets the autotuner run every configuration of a group as it does on a GPU."""
    start = time.perf_counter()
    fn()
    ms = (time.perf_counter() - start) * 1e3
    return [ms] * len(quantiles) if quantiles else ms


def _mm_group(m_bucket: int, fp32: bool) -> tuple[str, str]:
    """MM_TILES's key for a launch: M regime (M_BUCKET <= 64 is small) and dot dtype."""
    return ("small" if m_bucket <= 64 else "large", "fp32" if fp32 else "half")


def _prune_mm_configs(mm_groups: dict[tuple[str, str], list], configs: list, named_args: dict, **kwargs: Any) -> list:
    """The lora_mm autotuner's early prune: of all its configs, those of this call's group (M regime, dot dtype)."""
    import triton.language as tl

    return mm_groups[_mm_group(named_args["M_BUCKET"], kwargs["DOT_DTYPE"] == tl.float32)]


@functools.cache
def _kernels() -> SimpleNamespace:
    """The Triton kernels with the configurations this environment launches and the autotuners over them, built on
    first use: importing lora_matmul imports no triton (see _lora_matmul_triton). ``_kernels.cache_clear()`` makes
    the next call read KDFAST_AUTOTUNE and KDFAST_INTERPRETER_TILES again."""
    import triton

    from kdfast.kernels import _lora_matmul_triton as jit

    mm_groups = {
        group: [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, warps, stages)
                for bm, bn, bk, warps, stages in _used_tiles(tiles, INTERPRETER_TILE)]
        for group, tiles in MM_TILES.items()
    }  # fmt: skip
    grad_configs = [
        triton.Config({"BLOCK_P": bp, "BLOCK_M": bm}, warps, stages)
        for bp, bm, warps, stages in _used_tiles(GRAD_TILES, GRAD_INTERPRETER_TILE)
    ]
    # Autotuners only over groups with a choice: a group of one config is launched directly. (triton 3.6's
    # autotuner benchmarks even the one config a prune leaves, which under the interpreter fails: it has no driver.)
    bench = _wall_clock_bench if _interpreting() else None  # None: triton's do_bench on the GPU
    tuned_mm = [c for group in mm_groups.values() if len(group) > 1 for c in group]
    lora_mm_tuned = triton.autotune(
        configs=tuned_mm,
        key=["M_BUCKET", "N", "K", "R", "stride_wk"],  # stride_wk: Linear and Conv1D weights read differently
        prune_configs_by={"early_config_prune": functools.partial(_prune_mm_configs, mm_groups)},
        do_bench=bench,
    )(jit.lora_mm_kernel) if tuned_mm else None
    lora_grad_tuned = triton.autotune(configs=grad_configs, key=["M_BUCKET", "P", "R"], do_bench=bench)(
        jit.lora_grad_kernel
    ) if len(grad_configs) > 1 else None
    return SimpleNamespace(
        triton=triton,
        tl=jit.tl,
        lora_mm=jit.lora_mm_kernel,
        lora_mm_groups=mm_groups,
        lora_mm_tuned=lora_mm_tuned,
        lora_grad=jit.lora_grad_kernel,
        lora_grad_configs=grad_configs,
        lora_grad_tuned=lora_grad_tuned,
    )


def _pick(kernel: Any, configs: list, tuned: Any) -> tuple[Any, dict[str, Any]]:
    """(kernel, launch kwargs): the autotuner when there is a choice, else the jit kernel with its one config."""
    if len(configs) > 1:
        return tuned, {}
    return kernel, configs[0].all_kwargs()


# ---------------------------------------------------------------------------------------------------------------
# Launchers: check shapes, flatten, allocate, pick the grid
# ---------------------------------------------------------------------------------------------------------------


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _m_bucket(m: int) -> int:
    """Autotune key for M: powers of two from 16 (the small-M tiles' height) to 8192."""
    return min(max(_next_power_of_2(m), 16), 8192)


def _block_r(r: int) -> int:
    return max(16, _next_power_of_2(r))


def _dot_dtype(dtype: torch.dtype) -> Any:
    tl = _kernels().tl
    if dtype == torch.float16:
        return tl.float16
    if dtype == torch.bfloat16:
        # triton 3.9's interpreter multiplies bf16 tiles as raw uint16; bf16 -> fp32 is exact, so use fp32 there.
        return tl.float32 if _interpreting() else tl.bfloat16
    return tl.float32


def _fp32_precision() -> str:
    """fp32 dots follow torch's matmul setting: exact ("ieee") by default, TF32 after set_float32_matmul_precision."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter: still enough to split M in two on the tests' larger inputs


def _launch_lora_mm(
    x: torch.Tensor,
    w_kn: torch.Tensor,
    a_kr: torch.Tensor,
    b_rn: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None,
    *,
    store_xa: bool,
    xa_only: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """y = x·w_kn + scale·(x·a_kr)·b_rn (+ bias) for 2-D x; also returns x·a_kr in fp32 when store_xa.

    All operands are logical views (w_kn [K, N], a_kr [K, r], b_rn [r, N]) read through their strides, so the
    backward can pass transposed views of the same tensors without copying them.
    """
    M, K = x.shape
    N, R = w_kn.shape[1], a_kr.shape[1]
    assert w_kn.shape[0] == K and a_kr.shape[0] == K and b_rn.shape == (R, N), "shapes checked by lora_matmul"
    y = None if xa_only else torch.empty((M, N), device=x.device, dtype=x.dtype)
    xa = torch.empty((M, R), device=x.device, dtype=torch.float32) if store_xa else None
    if M == 0 or (N == 0 and not xa_only):
        return y, xa

    def grid(meta: dict) -> tuple[int]:
        num_n = 1 if xa_only else _cdiv(N, meta["BLOCK_N"])
        return (_cdiv(M, meta["BLOCK_M"]) * num_n,)

    kernels, dot_dtype = _kernels(), _dot_dtype(x.dtype)
    group = kernels.lora_mm_groups[_mm_group(_m_bucket(M), dot_dtype == kernels.tl.float32)]
    kernel, config = _pick(kernels.lora_mm, group, kernels.lora_mm_tuned)
    kernel[grid](
        x, w_kn, a_kr, b_rn,
        bias if bias is not None else x,
        y if y is not None else x,
        xa if xa is not None else x,
        M, N, K, R, _m_bucket(M), float(scale),
        x.stride(0), x.stride(1),
        w_kn.stride(0), w_kn.stride(1),
        a_kr.stride(0), a_kr.stride(1),
        b_rn.stride(0), b_rn.stride(1),
        y.stride(0) if y is not None else 0, y.stride(1) if y is not None else 0,
        xa.stride(0) if xa is not None else 0, xa.stride(1) if xa is not None else 0,
        BLOCK_R=_block_r(R),
        HAS_BIAS=bias is not None,
        STORE_XA=store_xa,
        XA_ONLY=xa_only,
        DOT_DTYPE=dot_dtype,
        PRECISION=_fp32_precision() if x.dtype == torch.float32 else "tf32",
        **config,
    )  # fmt: skip
    return y, xa


_GRAD_SPLIT_ROWS = 128  # each M split covers a multiple of this many rows


def _launch_lora_grad(g: torch.Tensor, h: torch.Tensor, scale: float, *, transposed: bool = False) -> torch.Tensor:
    """scale · gᵀ·h in fp32: g [M, P] (dy or x), h [M, r] fp32 (xa or u) -> [P, r], or contiguous [r, P] when
    transposed (d lora_a is [r, K]).

    A reduction over M into a thin output, so it is split over M (partial sums summed by torch, deterministic)
    until there are about two programs per SM.
    """
    M, P = g.shape
    R = h.shape[1]
    if M == 0 or P == 0:
        return torch.zeros((R, P) if transposed else (P, R), device=g.device, dtype=torch.float32)
    p_tiles = _cdiv(P, 64)
    max_splits = _cdiv(M, _GRAD_SPLIT_ROWS)
    splits = max(1, min(_cdiv(2 * _num_sms(g.device), p_tiles), max_splits))
    m_per_split = _cdiv(_cdiv(M, splits), _GRAD_SPLIT_ROWS) * _GRAD_SPLIT_ROWS
    splits = _cdiv(M, m_per_split)
    out = torch.empty((splits, R, P) if transposed else (splits, P, R), device=g.device, dtype=torch.float32)
    stride_op, stride_or = (out.stride(2), out.stride(1)) if transposed else (out.stride(1), out.stride(2))

    def grid(meta: dict) -> tuple[int, int]:
        return (_cdiv(P, meta["BLOCK_P"]), splits)

    half = g.dtype in (torch.float16, torch.bfloat16)
    kernels = _kernels()
    kernel, config = _pick(kernels.lora_grad, kernels.lora_grad_configs, kernels.lora_grad_tuned)
    kernel[grid](
        g, h, out,
        M, P, R, _m_bucket(M), m_per_split, float(scale),
        g.stride(0), g.stride(1),
        h.stride(0), h.stride(1),
        out.stride(0), stride_op, stride_or,
        BLOCK_R=_block_r(R),
        PRECISION="tf32x3" if half else _fp32_precision(),
        **config,
    )  # fmt: skip
    return out.sum(0)


def _weight_kn(weight: torch.Tensor, weight_layout: str) -> torch.Tensor:
    """The frozen weight as a logical [K, N] view (no copy): nn.Linear stores [N, K], Conv1D [K, N]."""
    return weight.t() if weight_layout == "linear" else weight


def _lora_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    xa: torch.Tensor,
    scale: float,
    weight_layout: str,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    needs_dx, needs_da, needs_db = needs
    dx = da = db = None
    u = None  # dy·B [M, r] fp32
    w_nk = _weight_kn(weight, weight_layout).t()
    if needs_dx:
        # dx = dy·Wᵀ + s·(dy·B)·A: the forward kernel over the transposed views, with B as the shrink and A as
        # the expand; u = dy·B comes out of the same K loop.
        dx, u = _launch_lora_mm(dy, w_nk, lora_b, lora_a, scale, None, store_xa=needs_da)
    elif needs_da:
        _, u = _launch_lora_mm(dy, w_nk, lora_b, lora_a, scale, None, store_xa=True, xa_only=True)
    if needs_da:
        da = _launch_lora_grad(x, u, scale, transposed=True).to(lora_a.dtype)  # (r, K)
    if needs_db:
        if xa.shape[0] != x.shape[0]:  # not saved by the forward: recompute x·A
            _, xa = _launch_lora_mm(x, w_nk.t(), lora_a.t(), lora_b.t(), scale, None, store_xa=True, xa_only=True)
        db = _launch_lora_grad(dy, xa, scale).to(lora_b.dtype)  # (N, r)
    return dx, da, db


# ---------------------------------------------------------------------------------------------------------------
# torch.library registration: custom ops with fake (meta) implementations and autograd, so torch.compile can trace
# through them (fullgraph) and nothing synchronises with the host.
# ---------------------------------------------------------------------------------------------------------------

if _HAS_TRITON:  # (registered at import so that torch.compile sees the ops; their bodies import triton)

    @torch.library.custom_op("kdfast::lora_matmul", mutates_args=())
    def _lora_matmul_op(
        x: torch.Tensor,
        weight: torch.Tensor,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
        bias: torch.Tensor | None,
        weight_layout: str,
        save_xa: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y [M, N], xa [M, r] fp32, or [0, r] when not save_xa) for 2-D x."""
        y, xa = _launch_lora_mm(
            x, _weight_kn(weight, weight_layout), lora_a.t(), lora_b.t(), scale, bias, store_xa=save_xa
        )
        if xa is None:
            xa = x.new_empty((0, lora_a.shape[0]), dtype=torch.float32)
        return y, xa

    @_lora_matmul_op.register_fake
    def _(x, weight, lora_a, lora_b, scale, bias, weight_layout, save_xa):
        n = weight.shape[0] if weight_layout == "linear" else weight.shape[1]
        y = x.new_empty((x.shape[0], n))
        xa = x.new_empty((x.shape[0] if save_xa else 0, lora_a.shape[0]), dtype=torch.float32)
        return y, xa

    @torch.library.custom_op("kdfast::lora_matmul_backward", mutates_args=())
    def _lora_matmul_backward_op(
        dy: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        xa: torch.Tensor,
        scale: float,
        weight_layout: str,
        needs_dx: bool,
        needs_da: bool,
        needs_db: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dx, dA, dB); a gradient that is not needed comes back as an empty tensor."""
        dx, da, db = _lora_backward(
            dy, x, weight, lora_a, lora_b, xa, scale, weight_layout, (needs_dx, needs_da, needs_db)
        )
        return (
            dx if dx is not None else x.new_empty(0),
            da if da is not None else lora_a.new_empty(0),
            db if db is not None else lora_b.new_empty(0),
        )

    @_lora_matmul_backward_op.register_fake
    def _(dy, x, weight, lora_a, lora_b, xa, scale, weight_layout, needs_dx, needs_da, needs_db):
        # contiguous, like the real ones, whatever the inputs' strides
        return (
            dy.new_empty(x.shape) if needs_dx else x.new_empty(0),
            lora_a.new_empty(lora_a.shape) if needs_da else lora_a.new_empty(0),
            lora_b.new_empty(lora_b.shape) if needs_db else lora_b.new_empty(0),
        )

    def _setup_context(ctx, inputs, output) -> None:
        x, weight, lora_a, lora_b, scale, _bias, weight_layout, _save_xa = inputs
        _y, xa = output
        ctx.save_for_backward(x, weight, lora_a, lora_b, xa)
        ctx.scale = scale
        ctx.weight_layout = weight_layout
        ctx.mark_non_differentiable(xa)

    def _backward(ctx, dy: torch.Tensor, _dxa: torch.Tensor | None):
        x, weight, lora_a, lora_b, xa = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if needs[1] or needs[5]:
            raise RuntimeError("lora_matmul: weight and bias are frozen; it computes no gradient for them")
        needs_dx, needs_da, needs_db = needs[0], needs[2], needs[3]
        dx, da, db = torch.ops.kdfast.lora_matmul_backward(
            dy, x, weight, lora_a, lora_b, xa, ctx.scale, ctx.weight_layout, needs_dx, needs_da, needs_db
        )
        return (
            dx if needs_dx else None,
            None,
            da if needs_da else None,
            db if needs_db else None,
            None,
            None,
            None,
            None,
        )

    _lora_matmul_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


def is_available() -> bool:
    """Whether triton is installed, i.e. whether ``lora_matmul`` can run the fused kernel at all."""
    return _HAS_TRITON


def fused_lora_supported(x: torch.Tensor) -> bool:
    """Whether ``lora_matmul(x, ...)`` runs the fused Triton kernel (its one dispatch test): triton is importable
    and x is on CUDA, or on the CPU under Triton's interpreter."""
    return _HAS_TRITON and (x.is_cuda or (x.device.type == "cpu" and _interpreter_ready()))


def _check_shapes(
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    bias: torch.Tensor | None,
    weight_layout: str,
) -> tuple[int, int, int]:
    if weight_layout not in WEIGHT_LAYOUTS:
        raise ValueError(f"weight_layout must be one of {WEIGHT_LAYOUTS}, got {weight_layout!r}")
    if weight.dim() != 2 or lora_a.dim() != 2 or lora_b.dim() != 2:
        raise ValueError("weight, lora_a and lora_b must be 2-D")
    n, k = weight.shape if weight_layout == "linear" else weight.shape[::-1]
    r = lora_a.shape[0]
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features but the {weight_layout} weight {tuple(weight.shape)} takes {k}")
    if tuple(lora_a.shape) != (r, k) or r < 1:
        raise ValueError(f"lora_a must be [r, K] = [r, {k}] with r >= 1, got {tuple(lora_a.shape)}")
    if tuple(lora_b.shape) != (n, r):
        raise ValueError(f"lora_b must be [N, r] = [{n}, {r}], got {tuple(lora_b.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must be [N] = [{n}], got {tuple(bias.shape)}")
    return n, k, r


def lora_matmul_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None = None,
    *,
    weight_layout: str = "linear",
) -> torch.Tensor:
    """Pure-torch reference with ``lora_matmul``'s semantics: fp32 maths, result cast to x's dtype."""
    _check_shapes(x, weight, lora_a, lora_b, bias, weight_layout)
    xf = x.float()
    w_kn = _weight_kn(weight.float(), weight_layout)  # (K, N)
    y = xf @ w_kn + scale * ((xf @ lora_a.float().t()) @ lora_b.float().t())  # (..., N)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def lora_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None = None,
    *,
    weight_layout: str = "linear",
) -> torch.Tensor:
    """``x·W + bias + scale·(x·A)·B`` in one fused kernel; differentiable in x, lora_a and lora_b.

    Args:
        x: [..., K] activations, fp32, fp16 or bf16; the output has x's dtype.
        weight: frozen base weight, [N, K] for ``weight_layout="linear"`` (nn.Linear) or [K, N] for ``"conv1d"``
            (transformers Conv1D, GPT-2), read in place through its strides.
        lora_a: [r, K]; lora_b: [N, r] (PEFT's shapes); any r >= 1.
        scale: LoRA's alpha / r.
        bias: frozen [N] or None.

    The operands may differ in dtype (fp32 LoRA parameters next to fp16 activations, as under autocast): tiles are
    cast to x's dtype on chip, and each gradient comes back in its tensor's dtype. ``scale`` is a Python float.

    Runs the Triton kernel on CUDA tensors (and on CPU tensors under ``TRITON_INTERPRET=1``); otherwise, or
    without triton, ``lora_matmul_ref``.
    """
    n, k, _ = _check_shapes(x, weight, lora_a, lora_b, bias, weight_layout)
    if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
        raise ValueError("lora_matmul treats weight and bias as frozen: set requires_grad=False on them")
    if not fused_lora_supported(x):
        return lora_matmul_ref(x, weight, lora_a, lora_b, scale, bias, weight_layout=weight_layout)
    save_xa = torch.is_grad_enabled() and lora_b.requires_grad
    y, _ = torch.ops.kdfast.lora_matmul(
        x.reshape(-1, k), weight, lora_a, lora_b, float(scale), bias, weight_layout, save_xa
    )
    return y.reshape(*x.shape[:-1], n)
