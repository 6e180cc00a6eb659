"""Student inference latency: nn.LSTM/GRU (eager) against the cell loop, eager and through torch.compile.

    python benchmarks/bench_student.py --data /path/to/cola [--run runs/student] [--device cpu|cuda] [--threads 1]
    python benchmarks/bench_student.py --data cola --device cuda --mode reduce-overhead   # as gpu_check.sh runs it

Real CoLA dev sentences, as the model sees them in use: batch 1 is one sentence at a time (the first ``--n-single``
dev sentences), batch 32 is consecutive dev sentences (not length-sorted), right-padded to the longest; the compiled
model's batches are padded further to a multiple of 8 steps (its shape buckets), which is part of its real cost.
Every batch runs once before timing (for the compiled model this compiles every bucket; that time is reported
apart and excluded), the device is synchronised around each call, and the median per-batch latency over
``--repeats`` passes is reported with its ratio to nn.LSTM. Rows are appended to benchmarks/results/student.csv
(``--csv``) after each batch size, with the machine and git commit. Without ``--run`` the model has the default
student shape and random weights (latency does not depend on the weights) over a vocabulary built from CoLA train.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch._dynamo

from kdfast.batching import pad_batch
from kdfast.bench.harness import append_csv, git_commit, machine, now, synchronizer, time_calls
from kdfast.data import load_dataset
from kdfast.train.student import DistilRNN, StudentConfig, WordVocab, compile_student, load_student, pad_for_compile

RESULTS = Path(__file__).resolve().parent / "results" / "student.csv"
FIELDS = ["date", "machine", "processor", "device", "torch", "commit", "threads", "model", "batch", "variant",
          "median_ms", "sentences_per_s", "vs_nn", "compile_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cola", help="CoLA folder, or 'cola': the copy bundled with kdfast.")
    parser.add_argument("--run", type=Path, help="A student run folder; default: the default shape, random weights.")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--n-single", type=int, default=200, help="Sentences timed at batch 1.")
    parser.add_argument("--n-batched", type=int, default=20, help="Batches timed at larger batch sizes.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", default=None, help="torch.compile mode (e.g. reduce-overhead on CUDA).")
    parser.add_argument("--csv", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = synchronizer(device)

    cola = load_dataset(args.data)
    if args.run:
        model, vocab, max_length = load_student(args.run)
    else:
        vocab, max_length = WordVocab.build([e.text for e in cola.train]), 64
        torch.manual_seed(0)
        model = DistilRNN(StudentConfig(vocab_size=len(vocab))).eval()
    model.to(device).eval()
    c = model.cfg
    shape = f"{'bi' if c.bidirectional else ''}{c.cell} {c.layers}x{c.hidden} emb {c.embed_dim} vocab {c.vocab_size}"
    ids = [vocab.encode(e.text, max_length) for e in cola.dev]
    info = machine()
    host, cpu = f"{info['host']} ({info['cpus']} CPUs)", info["cpu"]
    commit = git_commit()
    print(f"{shape}; {args.device} ({cpu if device.type == 'cpu' else torch.cuda.get_device_name()}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, commit {commit}")

    for batch_size in args.batch_sizes:
        n = args.n_single if batch_size == 1 else args.n_batched * batch_size
        chunks = [ids[i : i + batch_size] for i in range(0, min(n, len(ids)), batch_size)]
        plain = [tuple(t.to(device) for t in pad_batch(chunk, vocab.pad_id)) for chunk in chunks]
        bucketed = [pad_for_compile(i, m, vocab.pad_id) for i, m in plain]
        results: dict[str, tuple[list[float], float]] = {}
        for variant in ("nn", "loop", "compiled"):
            model.impl = "nn" if variant == "nn" else "loop"
            fn = compile_student(model, args.mode) if variant == "compiled" else model
            batches = bucketed if variant == "compiled" else plain
            torch._dynamo.reset()
            with torch.no_grad():
                start = time.perf_counter()
                time_calls(fn, batches, iters=len(batches), sync=sync)  # warm-up; compiles every bucket
                warm = time.perf_counter() - start
                results[variant] = (time_calls(fn, batches, iters=args.repeats * len(batches), sync=sync), warm)
        base = statistics.median(results["nn"][0])
        rows = []
        for variant, (times, warm) in results.items():
            median = statistics.median(times)
            compile_s = warm - sum(times) / args.repeats if variant == "compiled" else 0.0
            rows.append({"date": now(), "machine": host, "processor": cpu,
                         "device": args.device, "torch": torch.__version__, "commit": commit,
                         "threads": torch.get_num_threads(), "model": shape, "batch": batch_size, "variant": variant,
                         "median_ms": round(median * 1e3, 4), "sentences_per_s": round(batch_size / median, 1),
                         "vs_nn": round(base / median, 3), "compile_s": round(compile_s, 1)})
            print(f"batch {batch_size:>3}  {variant:<9} median {median * 1e3:8.3f} ms  "
                  f"{batch_size / median:9.1f} sentences/s  x{base / median:.2f} vs nn"
                  + (f"  (compile ~{compile_s:.0f} s, excluded)" if variant == "compiled" else ""), flush=True)
        append_csv(args.csv, rows, FIELDS)  # a run cut short keeps the batch sizes it measured
    print(f"rows appended to {args.csv}")


if __name__ == "__main__":
    main()
