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

Importing this module needs neither triton nor CUDA: without them ``lora_matmul`` runs ``lora_matmul_ref``. On CPU
tensors the kernels run under Triton's interpreter when ``TRITON_INTERPRET=1`` is set (that is how the tests run).
"""

import functools
import importlib.util
import os
import time
from types import SimpleNamespace

import torch

__all__ = ["fused_lora_supported", "is_available", "lora_matmul", "lora_matmul_ref"]

WEIGHT_LAYOUTS = ("linear", "conv1d")

# Located, not imported: importing kdfast must not import triton (see _kernels).
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
# Triton kernels
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


def _wall_clock_bench(fn, quantiles: tuple | None = None, **_: object) -> float | list[float]:
    """The autotuner's timer under the interpreter, which has no GPU to time: one call's wall-clock ms. Its picks
    mean nothing; it lets the autotuner run every configuration of a group as it does on a GPU."""
    start = time.perf_counter()
    fn()
    ms = (time.perf_counter() - start) * 1e3
    return [ms] * len(quantiles) if quantiles else ms


@functools.cache
def _kernels() -> SimpleNamespace:
    """Builds the Triton kernels on first use rather than at import: kdfast imports without triton, and Triton's
    CPU interpreter only takes effect if TRITON_INTERPRET=1 is set before triton is imported (pytest imports
    every test module, and so possibly this one, before the kernel tests set it)."""
    import triton
    import triton.language as tl

    interpret, tune, production = _interpreting(), _autotuning(), _production_tiles_interpreted()

    def mm_config(bm: int, bn: int, bk: int, warps: int, stages: int) -> triton.Config:
        return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, warps, stages)

    def used(tiles: tuple, interpreter_tile: tuple) -> tuple:
        if interpret and not production:
            return (interpreter_tile,)
        return tiles if tune else tiles[:1]

    mm_groups = {group: [mm_config(*t) for t in used(tiles, INTERPRETER_TILE)] for group, tiles in MM_TILES.items()}
    grad_configs = [
        triton.Config({"BLOCK_P": bp, "BLOCK_M": bm}, w, s) for bp, bm, w, s in used(GRAD_TILES, GRAD_INTERPRETER_TILE)
    ]

    def prune_mm_configs(configs: list, named_args: dict, **kwargs) -> list:
        """The configs of this call's group: M regime (M_BUCKET <= 64 is small) and dot dtype."""
        return mm_groups[_mm_group(named_args["M_BUCKET"], kwargs["DOT_DTYPE"] == tl.float32)]

    @triton.jit(do_not_specialize=["M", "M_BUCKET"])  # one binary for every M (masks only), fewer compiles
    def lora_mm_kernel(
        # pointers
        x_ptr,  # (M, K)
        w_ptr,  # (K, N) logical view, any strides
        a_ptr,  # (K, R) logical view of lora_a [r, K]
        b_ptr,  # (R, N) logical view of lora_b [N, r]
        bias_ptr,  # (N,) or a dummy when HAS_BIAS is False
        y_ptr,  # (M, N) output
        xa_ptr,  # (M, R) fp32 output, written when STORE_XA
        # sizes
        M,
        N,
        K,
        R,
        M_BUCKET,  # autotune key only
        scale,
        # strides
        stride_xm,
        stride_xk,
        stride_wk,
        stride_wn,
        stride_ak,
        stride_ar,
        stride_br,
        stride_bn,
        stride_ym,
        stride_yn,
        stride_xam,
        stride_xar,
        # meta-parameters
        BLOCK_R: tl.constexpr,  # r padded to a power of two >= 16 (tl.dot's minimum)
        HAS_BIAS: tl.constexpr,
        STORE_XA: tl.constexpr,  # write the unscaled fp32 x·A (for the backward)
        XA_ONLY: tl.constexpr,  # compute and store x·A only: no W, no y (grid has one program per M tile)
        DOT_DTYPE: tl.constexpr,  # tiles are cast to this on chip: x's dtype (fp32 for bf16 under the interpreter)
        PRECISION: tl.constexpr,  # input_precision of fp32 dots: "ieee" or "tf32"
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        # Grouped ordering (Triton matmul tutorial): GROUP_M consecutive M tiles share each W tile in L2.
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = 1 if XA_ONLY else tl.cdiv(N, BLOCK_N)
        num_pid_in_group = GROUP_M * num_pid_n
        group_id = pid // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
        pid_n = (pid % num_pid_in_group) // group_size_m

        # int64 row and column offsets: M·stride and N·stride can pass 2**31 on large inputs.
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_r = tl.arange(0, BLOCK_R)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N
        mask_r = offs_r < R

        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk  # (BLOCK_M, BLOCK_K)
        w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn  # (BLOCK_K, BLOCK_N)
        a_ptrs = a_ptr + offs_k[:, None] * stride_ak + offs_r[None, :] * stride_ar  # (BLOCK_K, BLOCK_R)

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        xa = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            mask_k = offs_k < K - k * BLOCK_K
            x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(DOT_DTYPE)
            a = tl.load(a_ptrs, mask=mask_k[:, None] & mask_r[None, :], other=0.0).to(DOT_DTYPE)
            xa = tl.dot(x, a, xa, input_precision=PRECISION)
            if not XA_ONLY:
                w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0).to(DOT_DTYPE)
                acc = tl.dot(x, w, acc, input_precision=PRECISION)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
            a_ptrs += BLOCK_K * stride_ak

        if STORE_XA:  # noqa: SIM102 (a constexpr test, then a runtime one)
            if pid_n == 0:  # one program per M tile writes it, unscaled
                xa_ptrs = xa_ptr + offs_m[:, None] * stride_xam + offs_r[None, :] * stride_xar
                tl.store(xa_ptrs, xa, mask=mask_m[:, None] & mask_r[None, :])

        if not XA_ONLY:
            b_ptrs = b_ptr + offs_r[:, None] * stride_br + offs_n[None, :] * stride_bn
            b = tl.load(b_ptrs, mask=mask_r[:, None] & mask_n[None, :], other=0.0).to(DOT_DTYPE)  # (BLOCK_R, BLOCK_N)
            xa = xa * scale
            if DOT_DTYPE == tl.float32:  # noqa: SIM300 (a constexpr, not a constant)
                acc = tl.dot(xa, b, acc, input_precision=PRECISION)
            else:
                # xa stays fp32: it goes through the tensor cores as hi + lo in DOT_DTYPE (two dots of depth
                # BLOCK_R), each row first divided by a power of two near its max so that fp16 neither
                # underflows (u = dy·B in the backward holds gradients) nor overflows.
                row_max = tl.max(tl.abs(xa), axis=1)
                p2 = (row_max.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
                p2 = tl.where(p2 == 0.0, 1.0, p2)
                xa = xa / p2[:, None]
                xa_hi = xa.to(DOT_DTYPE)
                xa_lo = (xa - xa_hi.to(tl.float32)).to(DOT_DTYPE)
                lora = tl.dot(xa_hi, b)
                lora = tl.dot(xa_lo, b, lora)
                acc += lora * p2[:, None]
            if HAS_BIAS:
                bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
                acc += bias[None, :]
            y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
            tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    @triton.jit(do_not_specialize=["M", "M_BUCKET", "M_PER_SPLIT"])
    def lora_grad_kernel(
        # pointers
        g_ptr,  # (M, P) dy or x, any float dtype
        h_ptr,  # (M, R) fp32: xa or u
        out_ptr,  # (SPLITS, P, R) fp32 partial sums, scaled
        # sizes
        M,
        P,
        R,
        M_BUCKET,  # autotune key only
        M_PER_SPLIT,
        scale,
        # strides
        stride_gm,
        stride_gp,
        stride_hm,
        stride_hr,
        stride_os,
        stride_op,
        stride_or,
        # meta-parameters
        BLOCK_R: tl.constexpr,
        PRECISION: tl.constexpr,  # "tf32x3" for fp16/bf16 g (fp32-accurate, still memory-bound), else as forward
        BLOCK_P: tl.constexpr,
        BLOCK_M: tl.constexpr,
    ):
        """out[s, p, :] = scale · Σ_{m in split s} g[m, p] · h[m, :]: dB = s·dyᵀ·xa and dAᵀ = s·xᵀ·u."""
        pid_p = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_r = tl.arange(0, BLOCK_R)
        mask_p = offs_p < P
        mask_r = offs_r < R
        m_start = pid_s.to(tl.int64) * M_PER_SPLIT
        m_end = tl.minimum(m_start + M_PER_SPLIT, M)

        acc = tl.zeros((BLOCK_P, BLOCK_R), dtype=tl.float32)
        for m0 in range(m_start, m_end, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            mask_m = offs_m < m_end
            g_ptrs = g_ptr + offs_p[:, None] * stride_gp + offs_m[None, :] * stride_gm  # (BLOCK_P, BLOCK_M) = gᵀ
            h_ptrs = h_ptr + offs_m[:, None] * stride_hm + offs_r[None, :] * stride_hr  # (BLOCK_M, BLOCK_R)
            g = tl.load(g_ptrs, mask=mask_p[:, None] & mask_m[None, :], other=0.0).to(tl.float32)
            h = tl.load(h_ptrs, mask=mask_m[:, None] & mask_r[None, :], other=0.0)
            acc = tl.dot(g, h, acc, input_precision=PRECISION)

        out_ptrs = out_ptr + pid_s * stride_os + offs_p[:, None] * stride_op + offs_r[None, :] * stride_or
        tl.store(out_ptrs, acc * scale, mask=mask_p[:, None] & mask_r[None, :])

    # Autotuners only over groups with a choice: a group of one config is launched directly. (triton 3.6's
    # autotuner benchmarks even the one config a prune leaves, which under the interpreter fails: it has no driver.)
    bench = _wall_clock_bench if interpret else None  # None: triton's do_bench on the GPU
    tuned_mm = [c for group in mm_groups.values() if len(group) > 1 for c in group]
    lora_mm_tuned = triton.autotune(
        configs=tuned_mm,
        key=["M_BUCKET", "N", "K", "R", "stride_wk"],  # stride_wk: Linear and Conv1D weights read differently
        prune_configs_by={"early_config_prune": prune_mm_configs},
        do_bench=bench,
    )(lora_mm_kernel) if tuned_mm else None
    lora_grad_tuned = triton.autotune(configs=grad_configs, key=["M_BUCKET", "P", "R"], do_bench=bench)(
        lora_grad_kernel
    )
    return SimpleNamespace(
        triton=triton,
        tl=tl,
        lora_mm=lora_mm_kernel,
        lora_mm_groups=mm_groups,
        lora_mm_tuned=lora_mm_tuned,
        lora_grad=lora_grad_kernel,
        lora_grad_configs=grad_configs,
        lora_grad_tuned=lora_grad_tuned if len(grad_configs) > 1 else None,
    )


def _mm_group(m_bucket: int, fp32: bool) -> tuple[str, str]:
    """MM_TILES's key for a launch: M regime (M_BUCKET <= 64 is small) and dot dtype."""
    return ("small" if m_bucket <= 64 else "large", "fp32" if fp32 else "half")


def _pick(kernel, configs: list, tuned):
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


def _dot_dtype(dtype: torch.dtype):
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
