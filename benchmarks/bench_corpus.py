"""Corpus-scale scoring: a million sentences through the ONNX student, ``kdfast predict`` local against
``--engine ray`` with 1 and 2 workers, side by side in one run; and what starting Ray costs.

    python benchmarks/bench_corpus.py --student RUN [--rows 1000000] [--corpus /tmp/corpus-1m.parquet]
        [--configs local,ray1,ray2] [--json benchmarks/results/corpus.json]

The corpus (written once, outside the repository, never committed): CoLA's bundled training and dev sentences,
shuffled and repeated to ``--rows`` rows, with an ``id`` column, in Parquet row groups of 65,536 rows. Each
configuration runs the real command in a fresh process::

    kdfast predict RUN --file CORPUS --out OUT.parquet                                  (local: one process)
    kdfast predict RUN --file CORPUS --out OUT/ --engine ray --workers N --threads 1   (Ray started for the run)

and is timed end to end (process start to exit: Python, the model, Ray's start and shutdown, reading, scoring,
writing); the command's own report gives the rows/s after loading (local) or after Ray started (ray). Peak memory is
sampled every 0.1 s over the whole process tree (the command, and under Ray the raylet, GCS, agents and actors it
started): the largest sum of resident set sizes. The output's row count is checked against the corpus.

Ray's start-up cost: ``ray.init()`` and ``ray.shutdown()`` alone, in a fresh process, timed apart.

Numbers hold for this machine in this run: the load average is recorded before and after each configuration.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from kdfast.bench.harness import git_commit, load_avg, machine, markdown_table, write_json

ROW_GROUP = 65_536
KDFAST = [sys.executable, "-m", "kdfast"]


def make_corpus(path: Path, rows: int, seed: int = 0) -> None:
    """CoLA's sentences (train and dev), shuffled and repeated to ``rows`` rows, with an id."""
    from kdfast.data.cola import BUNDLED

    sentences: list[str] = []
    for name in ("in_domain_train.tsv", "in_domain_dev.tsv", "out_of_domain_dev.tsv"):
        with (BUNDLED / name).open(encoding="utf-8", newline="") as f:
            sentences += [row[3] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    rng = random.Random(seed)
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, pa.schema([("id", pa.int64()), ("text", pa.string())])) as w:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            texts = [rng.choice(sentences) for _ in range(n)]
            w.write_table(pa.table({"id": pa.array(range(start, start + n), pa.int64()), "text": texts}))
    tmp.replace(path)


class TreeMemory:
    """The peak of the summed RSS of a process and all its descendants, sampled every ``period`` s."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        self.root, self.period, self.peak, self.peak_root = psutil.Process(pid), period, 0, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if p.pid == self.root.pid:
                    self.peak_root = max(self.peak_root, rss)
            self.peak = max(self.peak, total)
            self.done.wait(self.period)

    def stop(self) -> tuple[float, float]:
        self.done.set()
        self.thread.join()
        return self.peak / 2**20, self.peak_root / 2**20


def run_config(name: str, student: Path, corpus: Path, rows: int, out_dir: Path, threads: int) -> dict[str, Any]:
    if name == "local":
        out = out_dir / "local.parquet"
        cmd = [*KDFAST, "predict", str(student), "--file", str(corpus), "--out", str(out), "--threads", str(threads)]
    else:
        workers = int(name.removeprefix("ray"))
        out = out_dir / name
        cmd = [*KDFAST, "predict", str(student), "--file", str(corpus), "--out", str(out), "--engine", "ray",
               "--workers", str(workers), "--threads", str(threads)]
    before = load_avg()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mem = TreeMemory(proc.pid)
    _, stderr = proc.communicate(timeout=7200)
    seconds = time.perf_counter() - t
    peak_mb, peak_root_mb = mem.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{stderr}")
    written = (pq.ParquetFile(out).metadata.num_rows if out.is_file()
               else sum(pq.ParquetFile(f).metadata.num_rows for f in out.glob("*.parquet")))
    assert written == rows, (name, written, rows)
    report = re.search(r"([\d.]+) sentences/s", stderr)
    started = re.search(r"Ray started\s+in ([\d.]+) s", stderr)  # the line may be wrapped
    shutil.rmtree(out) if out.is_dir() else out.unlink()
    return {"config": name, "rows": rows, "seconds_end_to_end": round(seconds, 2),
            "sentences_per_s_end_to_end": round(rows / seconds, 1),
            "sentences_per_s_reported": float(report.group(1)) if report else None,
            "ray_start_s": float(started.group(1)) if started else None,
            "peak_rss_mb_tree": round(peak_mb, 1), "peak_rss_mb_command": round(peak_root_mb, 1),
            "load_before": before, "load_after": load_avg(), "stderr": stderr.strip().splitlines()[-3:]}


def ray_start_cost(cpus: int) -> dict[str, Any]:
    code = ("import time; t=time.perf_counter(); import ray; i=time.perf_counter(); "
            f"ray.init(num_cpus={cpus}, include_dashboard=False, logging_level='ERROR'); s=time.perf_counter(); "
            "ray.shutdown(); e=time.perf_counter(); print(i-t, s-i, e-s)")
    before = load_avg()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    imp, init, shut = (float(x) for x in out.stdout.split())
    return {"import_ray_s": round(imp, 2), "ray_init_s": round(init, 2), "ray_shutdown_s": round(shut, 2),
            "load_before": before, "load_after": load_avg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True, help="A student run exported with kdfast export --onnx.")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "corpus-1m.parquet")
    parser.add_argument("--configs", default="local,ray1,ray2")
    parser.add_argument("--threads", type=int, default=1, help="Intra-op threads of the process (local) or actor.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    if not args.corpus.exists() or pq.ParquetFile(args.corpus).metadata.num_rows != args.rows:
        print(f"writing {args.rows} sentences to {args.corpus} ...", flush=True)
        make_corpus(args.corpus, args.rows)
    report: dict[str, Any] = {"commit": git_commit(), "machine": machine(), "args": {k: str(v) for k, v in
                                                                                     vars(args).items()},
                              "ray_start": None, "runs": []}
    import ray

    report["versions"] = {"ray": ray.__version__, "pyarrow": pa.__version__, "python": sys.version.split()[0]}
    print("Ray start-up alone ...", flush=True)
    report["ray_start"] = ray_start_cost(os.cpu_count() or 1)
    print(f"  {report['ray_start']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            print(f"{name} ...", flush=True)
            row = run_config(name, args.student, args.corpus, args.rows, Path(tmp), args.threads)
            report["runs"].append(row)
            print(f"  {json.dumps(row)}", flush=True)
    columns = ["config", "s end to end", "sentences/s end to end", "sentences/s reported", "peak RSS MB (tree)", "load"]
    print("", *markdown_table(columns, ([r["config"], r["seconds_end_to_end"], r["sentences_per_s_end_to_end"],
                                         r["sentences_per_s_reported"], r["peak_rss_mb_tree"],
                                         f"{r['load_before']}-{r['load_after']}"] for r in report["runs"])), sep="\n")
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
