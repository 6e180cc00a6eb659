"""``--transfer FILE`` at scale: the teacher's labelling throughput, peak memory against the file's size, resuming.

    python benchmarks/bench_transfer.py --teacher runs/minilm-teacher --file /tmp/transfer-1m.txt \
        [--lines 8192 32768] [--threads 1]

Each measurement runs in a fresh process (so its peak resident memory, ``ru_maxrss``, is its own):

- ``read``: every part of the whole ``--file`` read and decoded into the student's word ids (no teacher): the
  streaming reader's memory against the file's size;
- ``label N`` for each ``--lines`` N: the first N lines labelled by the teacher into a fresh cache (lines/s, peak
  memory), then half of its parts deleted (an interruption) and the file labelled again: how many lines the second
  pass labels (the resumed half only) and its time.

Writes ``transfer.json`` and ``transfer.md`` under ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kdfast.bench.harness import git_commit, machine, write_json, write_text

RESULTS = Path(__file__).resolve().parent / "results"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_read(file: Path, teacher: Path) -> dict[str, Any]:
    from kdfast.data import load_dataset
    from kdfast.train.transfer import read_parts
    from kdfast.train.vocab import WordVocab

    vocab = WordVocab.build([e.text for e in load_dataset("cola").train])
    start, lines, words = time.perf_counter(), 0, 0
    for part in read_parts(file, None):
        ids = [vocab.encode(t, 64) for t in part]
        lines += len(part)
        words += sum(map(len, ids))
    return {"lines": lines, "words": words, "seconds": time.perf_counter() - start, "peak_mb": peak_mb()}


def child_label(file: Path, teacher: Path, lines: int, threads: int) -> dict[str, Any]:
    import torch

    from kdfast.train.distributed import Context
    from kdfast.train.training import progress_bar
    from kdfast.train.transfer import label_transfer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "prefix.txt"
        with file.open() as src, prefix.open("w") as dst:
            dst.writelines(itertools.islice(src, lines))
        cache = Path(tmp) / "cache"
        with progress_bar(False) as bar:
            start = time.perf_counter()
            first = label_transfer(teacher, prefix, None, cache, Context(), bar)
            seconds = time.perf_counter() - start
            peak = peak_mb()
            for part in first.parts[::2]:  # an interruption: half the parts never written
                part.unlink()
            start = time.perf_counter()
            second = label_transfer(teacher, prefix, None, cache, Context(), bar)
            resumed_seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in cache.iterdir())
    return {"lines": len(first), "parts": len(first.parts), "seconds": seconds, "lines_per_s": len(first) / seconds,
            "peak_mb": peak, "cache_mb": size / 2**20, "resumed_labelled": second.labelled,
            "resumed_seconds": resumed_seconds}


def in_child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--lines", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        what = args.child[0]
        result = (child_read(args.file, args.teacher) if what == "read" else
                  child_label(args.file, args.teacher, int(args.child[1]), args.threads))
        print(json.dumps(result))
        return
    common = ["--teacher", str(args.teacher), "--file", str(args.file), "--threads", str(args.threads)]
    result: dict[str, Any] = {"file": str(args.file), "teacher": str(args.teacher), "threads": args.threads,
                              "commit": git_commit(), "machine": machine(),
                              "read": in_child([*common, "--child", "read"])}
    result["label"] = [in_child([*common, "--child", "label", str(n)]) for n in args.lines]
    write_json(args.out / "transfer.json", result)
    r = result["read"]
    lines = [f"`{args.file}` ({r['lines']:,} lines), teacher `{args.teacher}`, {args.threads} thread(s).", "",
             f"- read and encoded for the student, whole file: {r['seconds']:.1f} s, peak memory {r['peak_mb']:.0f} MB",
             "", "| lines labelled | parts | lines/s | peak memory | cache on disk | after deleting half the parts: "
             "labelled again, seconds |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {x['lines']:,} | {x['parts']} | {x['lines_per_s']:.0f} | {x['peak_mb']:.0f} MB | "
              f"{x['cache_mb']:.1f} MB | {x['resumed_labelled']:,}, {x['resumed_seconds']:.1f} s |"
              for x in result["label"]]
    write_text(args.out / "transfer.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
