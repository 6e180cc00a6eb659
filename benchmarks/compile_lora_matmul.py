"""Compile the LoRA kernels for a GPU on a machine without one, and report what each configuration costs.

    python benchmarks/compile_lora_matmul.py              # sm_90 (H100): every autotuning configuration
    python benchmarks/compile_lora_matmul.py --quick      # the first configuration of each group, fp16 only
    python benchmarks/compile_lora_matmul.py --arch 80 --no-spills

Triton lowers to PTX and runs its bundled ptxas without a GPU, so this catches what the CPU interpreter cannot:
code that does not compile for the card, shared memory over the limit, register spills. Each kernel is compiled
with the specialisation a real launch gets on GPT-2-shaped contiguous tensors (16-byte aligned pointers, sizes and
strides divisible by 16, unit strides as constants), for the forward and for the backward's dx launch, r = 16 and
64. Prints shared memory, registers and spill bytes (from ptxas -v); exits 1 if anything fails to compile (or
spills, with --no-spills). Needs TRITON_INTERPRET unset.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

M, K, N = 4096, 768, 2304  # GPT-2's attn.c_attn at 16 x 256 tokens
SMEM_LIMIT_KB = {80: 163, 86: 99, 89: 99, 90: 227}


def compile_kernel(fn, args: dict, constexprs: dict, warps: int, stages: int, arch: int) -> dict:
    """Compile fn for sm_<arch>. args: name -> "*fp16" style pointer type, an int value, or "fp32"."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs, consts = {}, {}, dict(constexprs)
    for i, name in enumerate(fn.arg_names):
        value = constexprs.get(name, args.get(name))
        if name in constexprs:
            signature[name] = "constexpr"
        elif isinstance(value, str):  # a pointer ("*fp16") or a float ("fp32")
            signature[name] = value
            if value.startswith("*"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif value == 1 and name not in fn.do_not_specialize:  # triton makes integer 1 a constant
            signature[name], consts[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if value % 16 == 0 and name not in fn.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
    start = time.perf_counter()
    compiled = triton.compile(
        ASTSource(fn, signature, consts, attrs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": warps, "num_stages": stages},
    )
    seconds = time.perf_counter() - start
    regs, spills = ptxas_usage(compiled.asm["ptx"], arch)
    return {"smem_kb": compiled.metadata.shared // 1024, "regs": regs, "spill_bytes": spills, "seconds": seconds}


def ptxas_usage(ptx: str, arch: int) -> tuple[int | None, int | None]:
    """(registers, spill-store bytes) from ptxas -v with the ptxas triton uses; (None, None) if it cannot tell."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(arch).path
    except (ImportError, AttributeError):
        return None, None
    suffix = "a" if arch >= 90 else ""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        cmd = [ptxas, "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{arch}{suffix}", f.name, "-o", os.devnull]
        log = subprocess.run(cmd, capture_output=True, text=True).stderr
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return (int(regs.group(1)) if regs else None), (int(spills.group(1)) if spills else None)


def mm_args(dtype: str, layout: str, pass_: str, r: int) -> tuple[dict, dict]:
    """Arguments and the pass-dependent constexprs of lora_mm_kernel for the forward or the backward's dx."""
    ptr = "*" + dtype
    if pass_ == "forward":  # x [M, K], W [K, N] logical (nn.Linear stores [N, K]), A [K, r], B [r, N]
        k, n, xa = K, N, False
        w_strides = (1, K) if layout == "linear" else (N, 1)
        a_strides, b_strides = (1, K), (1, r)
    else:  # dx: x = dy [M, N], W [N, K] logical, A = lora_b [N, r], B = lora_a [r, K]
        k, n, xa = N, K, True
        w_strides = (K, 1) if layout == "linear" else (1, N)
        a_strides, b_strides = (r, 1), (K, 1)
    args = {
        "x_ptr": ptr, "w_ptr": ptr, "a_ptr": ptr, "b_ptr": ptr, "bias_ptr": ptr, "y_ptr": ptr, "xa_ptr": "*fp32",
        "M": M, "N": n, "K": k, "R": r, "M_BUCKET": M, "scale": "fp32",
        "stride_xm": k, "stride_xk": 1, "stride_wk": w_strides[0], "stride_wn": w_strides[1],
        "stride_ak": a_strides[0], "stride_ar": a_strides[1], "stride_br": b_strides[0], "stride_bn": b_strides[1],
        "stride_ym": n, "stride_yn": 1, "stride_xam": r, "stride_xar": 1,
    }  # fmt: skip
    return args, {"HAS_BIAS": pass_ == "forward", "STORE_XA": xa, "XA_ONLY": False}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10: 90 for H100, 80 for A100")
    p.add_argument("--quick", action="store_true", help="first configuration of each group, fp16, r = 16")
    p.add_argument("--no-spills", action="store_true", help="exit 1 if any configuration spills registers")
    p.add_argument("--dtypes", nargs="+", choices=["fp16", "bf16", "fp32"], default=["fp16", "bf16", "fp32"])
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("compile_lora_matmul: unset TRITON_INTERPRET (the interpreter compiles nothing)")
    import triton.language as tl

    from kdfast.kernels import lora_matmul as lm

    kernels = lm._kernels()
    dot = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32}
    dtypes = ["fp16"] if args.quick else args.dtypes
    ranks = [16] if args.quick else [16, 64]
    failed, spilled = 0, 0
    smem_limit = SMEM_LIMIT_KB.get(args.arch, 99)

    def report(label: str, run) -> None:
        nonlocal failed, spilled
        try:
            got = run()
        except Exception as e:  # a compile error is the finding
            failed += 1
            print(f"{label:<58} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            return
        over = got["smem_kb"] > smem_limit
        failed += over
        spilled += bool(got["spill_bytes"])
        print(f"{label:<58} smem {got['smem_kb']:>3} KB{' (over the limit)' if over else ''}  regs {got['regs']}  "
              f"spills {got['spill_bytes']} B  ({got['seconds']:.1f} s)", flush=True)  # fmt: skip

    for dtype in dtypes:
        width = "fp32" if dtype == "fp32" else "half"
        for regime in ("small", "large"):
            tiles = lm.MM_TILES[(regime, width)]
            for bm, bn, bk, warps, stages in tiles[:1] if args.quick else tiles:
                for r in ranks:
                    for layout, pass_ in (("conv1d", "forward"), ("linear", "forward"), ("conv1d", "dx")):
                        mm, flags = mm_args(dtype, layout, pass_, r)
                        consts = {"BLOCK_R": max(16, r), "DOT_DTYPE": dot[dtype], "BLOCK_M": bm, "BLOCK_N": bn,
                                  "BLOCK_K": bk, "GROUP_M": 8, "PRECISION": "ieee" if dtype == "fp32" else "tf32",
                                  **flags}  # fmt: skip
                        label = f"lora_mm {dtype} {regime} {bm}x{bn}x{bk} w{warps} s{stages} r{r} {layout} {pass_}"
                        report(label, lambda mm=mm, c=consts, w=warps, s=stages: compile_kernel(
                            kernels.lora_mm, mm, c, w, s, args.arch))
        for bp, bm, warps, stages in lm.GRAD_TILES[:1] if args.quick else lm.GRAD_TILES:
            for r in ranks:
                grad = {"g_ptr": "*" + dtype, "h_ptr": "*fp32", "out_ptr": "*fp32", "M": M, "P": N, "R": r,
                        "M_BUCKET": M, "M_PER_SPLIT": 512, "scale": "fp32", "stride_gm": N, "stride_gp": 1,
                        "stride_hm": r, "stride_hr": 1, "stride_os": N * r, "stride_op": r, "stride_or": 1}  # fmt: skip
                consts = {"BLOCK_R": max(16, r), "PRECISION": "ieee" if dtype == "fp32" else "tf32x3",
                          "BLOCK_P": bp, "BLOCK_M": bm}  # fmt: skip
                label = f"lora_grad {dtype} {bp}x{bm} w{warps} s{stages} r{r}"
                report(label, lambda g=grad, c=consts, w=warps, s=stages: compile_kernel(
                    kernels.lora_grad, g, c, w, s, args.arch))
    print(f"sm_{args.arch}: {failed} failed, {spilled} spilled")
    return 1 if failed or (args.no_spills and spilled) else 0


if __name__ == "__main__":
    sys.exit(main())
