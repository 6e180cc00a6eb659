"""The two Triton kernels of ``kdfast.kernels.lora_matmul``, at module level: ``lora_mm_kernel`` (the fused forward,
also the backward's dx) and ``lora_grad_kernel`` (the reduction over M that gives d lora_a and d lora_b).

Importing this module imports triton, so only ``lora_matmul._kernels()`` imports it, the first time a kernel runs:
kdfast imports without triton, and Triton's CPU interpreter only takes effect if TRITON_INTERPRET=1 is set before
triton is imported (pytest imports every test module, and so possibly lora_matmul, before the kernel tests set it).
The configurations, the autotuners over these kernels and the launchers live in ``lora_matmul``; the maths, the
picture and the shapes are in its docstring.
"""

import triton
import triton.language as tl

__all__ = ["lora_grad_kernel", "lora_mm_kernel"]


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
