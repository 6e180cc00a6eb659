"""How the way latencies are taken moves int8's speed-up: ONNX models of one teacher (fp32 first) timed four ways in
one run, at batch 1 and batch 32, with ONNX Runtime's intra-op threads spinning between runs (its default,
``kdfast predict``'s) or not (``kdfast serve``'s), each session alone through its batches (what
``kdfast.export.int8.p50_ms`` does) or call by call beside the others (what it did before issue 25's third session).

    python benchmarks/bench_timing_methods.py --teacher RUN fp32=RUN/onnx/model.onnx int8=RUN/onnx/model.int8.onnx \
        [optimum=...]

Sentences: the first 32 of CoLA's training split at batch 1, the first 128 as 4 batches of 32, right-padded; 6
rounds; p50 of each. Writes ``results/timing-methods-<stem>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from kdfast.bench.harness import git_commit, load_avg, machine, now, write_json, write_text
from kdfast.data import load_dataset
from kdfast.export.int8 import p50_ms, session, timing_feeds
from kdfast.export.onnx import load_teacher_for_export

RESULTS = Path(__file__).parent / "results"
DATE = "%Y-%m-%d %H:%M UTC"  # as bench_int8.py's results
METHODS = ("alone, spin on", "call by call, spin on", "call by call, spin off", "alone, spin off")


def p50s(method: str, files: dict[str, str], batches: list[dict[str, Any]], rounds: int) -> dict[str, float]:
    """p50 ms of each file's session over ``batches`` taken the way ``method`` names: "alone" is the speed rule's
    ``p50_ms``; "call by call" runs every session on each batch in turn, as it did before."""
    sess = {name: session(Path(path), spin=method.endswith("spin on")) for name, path in files.items()}
    if method.startswith("alone"):
        return p50_ms(sess, batches, rounds)
    for s in sess.values():
        for feeds in batches:
            s.run(["logits"], feeds)
    times: dict[str, list[float]] = {k: [] for k in sess}
    for _ in range(rounds):
        for feeds in batches:
            for name, s in sess.items():
                t = time.perf_counter()
                s.run(["logits"], feeds)
                times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True, help="The run whose tokenizer encodes the sentences.")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--stem", default="timing-methods")
    parser.add_argument("files", nargs="+", metavar="NAME=PATH", help="ONNX models, the fp32 reference first.")
    args = parser.parse_args()
    files = dict(f.split("=", 1) for f in args.files)
    reference = next(iter(files))
    source = load_teacher_for_export(args.teacher)
    ids = source.encode([e.text for e in load_dataset("cola").train[:128]])
    load = load_avg()
    rows = []
    for batch, n in ((1, 32), (32, 4)):
        feeds = timing_feeds(ids, source.pad_id, source.input_names, batch, n)
        for method in METHODS:
            p50 = p50s(method, files, feeds, args.rounds)
            rows.append({"batch": batch, "method": method, "p50_ms": p50,
                         "speedup": {k: p50[reference] / v for k, v in p50.items()}})
            print(batch, method, {k: f"{v:.2f} ms ({rows[-1]['speedup'][k]:.2f}x)" for k, v in p50.items()},
                  flush=True)
    host = machine()
    meta = {"date": now(DATE, utc=True), "commit": git_commit(), "machine": f"{host['cpu']} ({host['cpus']} CPUs)"}
    result = {"teacher": str(args.teacher), "files": files, "rounds": args.rounds, "rows": rows,
              "load_before": load, "load_after": load_avg(), **meta}
    write_json(RESULTS / f"{args.stem}.json", result)
    lines = [f"# Timing methods: {args.teacher}", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['machine']}; load average {load} before, "
             f"{result['load_after']} after; {args.rounds} rounds; p50 ms (speed-up against {reference}).", "",
             "| batch | method | " + " | ".join(files) + " |",
             "| --- | --- | " + " | ".join("---" for _ in files) + " |"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['method']} | " + " | ".join(
            f"{r['p50_ms'][k]:.2f} ({r['speedup'][k]:.2f}x)" for k in files) + " |")
    write_text(RESULTS / f"{args.stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
