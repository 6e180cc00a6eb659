"""The LoRA teacher end to end: GPT-2's classifier forward with LoRA unmerged, fused and merged, at batch 1 and 32.

    python benchmarks/bench_teacher_e2e.py                     # CUDA, fp16, GPT2Config() (GPT-2 small), random weights
    python benchmarks/bench_teacher_e2e.py --dtype bf16 --batch-sizes 1 8 32 --csv /tmp/teacher.csv
    TRITON_INTERPRET=1 python benchmarks/bench_teacher_e2e.py --device cpu --tiny   # the dry run, on the CPU

The model is the teacher's: GPT2ForSequenceClassification with our LoRA (rank 8, alpha 16, as `kdfast train lora`)
on every block's attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj. Weights are random (latency does not depend on
them), B too, so that the adapter is not the zero it is at initialisation. Three variants of the same model:
    unmerged  LoRALinear's plain path: the base projection and two LoRA matmuls (PEFT's way)
    fused     the same layers through kdfast.kernels.lora_matmul (set_fused): one kernel per projection
    merged    W + s·B·A folded in (merge_lora): the floor a fused kernel tries to reach
The input is --seq-len random tokens per sentence (64, the teacher's max_length), no padding. Each variant runs
--warmup times first (the fused kernels autotune there), then the median of --repeats forward passes, the device
synchronised around each. The logits are compared with unmerged's; a variant off by more than the dtype's tolerance
fails the run. Rows are appended per batch size to benchmarks/results/teacher_e2e.csv with the machine and commit.
--device cpu needs TRITON_INTERPRET=1 (the fused variant runs the kernels under Triton's interpreter): the dry run
of benchmarks/gpu_check.sh, whose numbers are the interpreter's.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from kdfast.bench.harness import append_csv, git_commit, machine, now, synchronizer, time_calls, version
from kdfast.train.lora import inject_lora, lora_layers, merge_lora, set_fused, unmerge_lora

RESULTS = Path(__file__).resolve().parent / "results" / "teacher_e2e.csv"
FIELDS = ["date", "device", "commit", "torch", "triton", "transformers", "dtype", "model", "batch", "seq_len",
          "variant", "median_ms", "sequences_per_s", "vs_unmerged", "max_abs_diff", "ok"]  # fmt: skip
VARIANTS = ("unmerged", "fused", "merged")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Largest |logits - unmerged logits| allowed, relative to max(1, |logits|): the variants round differently.
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float32: 1e-3}


def build_teacher(tiny: bool, rank: int, alpha: float, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """GPT-2's sequence classifier with LoRA on every projection, random weights and random B."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    sizes = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 128, "vocab_size": 1000, "bos_token_id": 0,
             "eos_token_id": 0} if tiny else {}  # fmt: skip
    config = GPT2Config(**sizes, num_labels=2, pad_token_id=0)  # GPT2Config() is GPT-2 small (124M)
    model = GPT2ForSequenceClassification(config)
    inject_lora(model, rank, alpha)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B, std=0.02)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide GPT-2 (the dry run)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sentence (the teacher's max_length)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--csv", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from kdfast.kernels.lora_matmul import fused_lora_supported

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_teacher_e2e: no CUDA GPU here (--device cpu with TRITON_INTERPRET=1 for a dry run)")
    if not fused_lora_supported(torch.zeros(1, device=device)):
        raise SystemExit("bench_teacher_e2e: the fused kernel cannot run here (triton missing, or on the CPU "
                         "TRITON_INTERPRET=1 was not set before triton was imported)")  # fmt: skip
    sync = synchronizer(device)
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    model = build_teacher(args.tiny, args.rank, args.alpha, device, dtype)
    c = model.config
    shape = f"gpt2 {c.n_layer}x{c.n_embd}, LoRA r={args.rank} on {len(lora_layers(model))} projections"
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({machine()['cpu']})"
    common = {"device": name, "commit": git_commit(), "torch": torch.__version__, "triton": version("triton"),
              "transformers": version("transformers"), "dtype": str(dtype).removeprefix("torch."), "model": shape,
              "seq_len": args.seq_len}  # fmt: skip
    print(f"{shape}; {name}, {common['dtype']}, torch {common['torch']}, triton {common['triton']}, transformers "
          f"{common['transformers']}, commit {common['commit']}")  # fmt: skip

    failed = []
    for batch in args.batch_sizes:
        ids = torch.randint(1, c.vocab_size, (batch, args.seq_len), device=device)  # 0 is the pad token
        mask = torch.ones_like(ids)

        def forward(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> torch.Tensor:
            with torch.no_grad():
                return model(input_ids=ids, attention_mask=mask).logits

        results: dict[str, tuple[float, float]] = {}
        reference = None
        for variant in VARIANTS:  # merged last: merging changes the weights
            set_fused(model, variant == "fused")
            if variant == "merged":
                merge_lora(model)
            logits = forward().float()
            reference = logits if reference is None else reference
            diff = (logits - reference).abs().max().item()
            times = time_calls(forward, warmup=args.warmup, iters=args.repeats, sync=sync)
            results[variant] = (statistics.median(times) * 1e3, diff)
        unmerge_lora(model)
        tol = TOLERANCE[dtype] * max(1.0, reference.abs().max().item())
        rows = []
        for variant, (ms, diff) in results.items():
            ok = diff <= tol
            if not ok:
                failed.append(f"{variant} at batch {batch}: logits off by {diff:.3g} > {tol:.3g}")
            speedup = results["unmerged"][0] / ms
            rows.append({**common, "date": now(), "batch": batch, "variant": variant,
                         "median_ms": round(ms, 4), "sequences_per_s": round(batch / ms * 1e3, 1),
                         "vs_unmerged": round(speedup, 3), "max_abs_diff": f"{diff:.3g}", "ok": ok})  # fmt: skip
            print(f"batch {batch:>3}  {variant:<9} median {ms:9.3f} ms  {batch / ms * 1e3:9.1f} sequences/s  "
                  f"x{speedup:.2f} vs unmerged  max |logits diff| {diff:.2e}{'' if ok else '  TOO FAR'}", flush=True)
        append_csv(args.csv, rows, FIELDS)
    print(f"rows appended to {args.csv}")
    if failed:
        raise SystemExit("bench_teacher_e2e: " + "; ".join(failed))


if __name__ == "__main__":
    main()
