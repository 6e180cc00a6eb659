"""``kdfast serve`` under load: requests/s, p50/p99 latency, dynamic batching on and off; ``kdfast predict`` on a file.

    python benchmarks/bench_serve.py --student RUN --teacher RUN [--concurrency 1,8,32,64] [--seconds 4]
        [--predict-lines 100000] [--data DATA] [--json benchmarks/results/serve.json]

For each run (exported with ``kdfast export --onnx``; served with ``--runtime auto``) and each of batching on
(``--max-batch-size 64 --batch-timeout-ms 5``) and off (``--max-batch-size 1``), ``kdfast serve`` starts on a free
loopback port; an asynchronous HTTP client (aiohttp) then keeps ``c`` requests in flight for ``--seconds`` after a
one-second warm-up, each request one CoLA dev sentence (cycled), and reports requests/s (= sentences/s) and p50/p99
latency. The goal (issue 13): the teacher at concurrency 32 answers >= 1.5x the sentences/s with batching on than off,
at a p99 no worse than 2x the unbatched one. Reported without a goal: the student's requests/s over HTTP (batching
off, concurrency 1) against in-process ``Classifier.predict`` at batch 1, i.e. what HTTP costs. Last, ``kdfast
predict`` on a ``--predict-lines`` file of dev sentences: sentences/s end to end and the process's peak memory.

The client runs on the same machine as the server and takes CPU from it; numbers are for one machine, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from kdfast.bench.harness import git_commit, machine, time_calls, write_json

BATCHING = {"on": ["--max-batch-size", "64", "--batch-timeout-ms", "5"], "off": ["--max-batch-size", "1"]}


def dev_sentences(run_dir: Path, data: str | None, n: int = 1000) -> list[str]:
    from kdfast.data import dataset_from_config
    from kdfast.runs import METRICS_FILE, read_json, run_labels

    config = read_json(run_dir / METRICS_FILE)["config"]
    return [e.text for e in dataset_from_config(config, data, run_labels(run_dir)).dev][:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(run_dir: Path, extra: list[str], threads: int | None) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "kdfast", "serve", str(run_dir), "--port", str(port), *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in the finally below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to 120 s
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"kdfast serve exited:\n{log.read().decode()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("kdfast serve not healthy after 120 s")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()


async def load(url: str, sentences: list[str], concurrency: int, seconds: float, warmup: float = 1.0
               ) -> dict[str, Any]:
    """Keep ``concurrency`` one-sentence requests in flight; latencies of those that start after the warm-up."""
    latencies: list[float] = []
    batch_sizes: list[int] = []  # requests in the server's batch, as each answer reports it
    errors = 0
    # aiohttp, not httpx: httpx's connection pool slows down as connections are added (measured here: 680 req/s at
    # 8 in flight, 156 at 32, against the same server), which made the client the bottleneck at high concurrency
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        start = time.perf_counter()
        measure_from, stop = start + warmup, start + warmup + seconds

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while (t0 := time.perf_counter()) < stop:
                async with client.post(url + "/predict", json={"texts": [sentences[i % len(sentences)]]}) as r:
                    body = await r.json() if r.status == 200 else None
                i += concurrency
                if body is None:
                    errors += 1
                elif t0 >= measure_from:
                    latencies.append(time.perf_counter() - t0)
                    batch_sizes.append(body["batch"]["requests"])

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    lat = sorted(latencies)
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors,
            "requests_per_s": round(len(lat) / seconds, 1),
            "p50_ms": round(1000 * lat[len(lat) // 2], 2) if lat else None,
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
            # a request's-eye view: the mean size of the batch each request was answered in
            "mean_batch": round(sum(batch_sizes) / len(batch_sizes), 2) if batch_sizes else None}


def in_process(run_dir: Path, sentences: list[str], seconds: float, threads: int | None) -> dict[str, Any]:
    from kdfast.serve.predict import Classifier

    clf = Classifier(run_dir, "auto", threads=threads)

    def predict(sentence: str) -> None:
        clf.predict([sentence])

    calls = [(s,) for s in sentences]
    time_calls(predict, calls, warmup=50, iters=0)  # the warm-up alone
    t = time.perf_counter()
    lat = sorted(time_calls(predict, calls, iters=0, min_time=seconds))
    return {"runtime": clf.runtime, "requests_per_s": round(len(lat) / (time.perf_counter() - t), 1),
            "p50_ms": round(1000 * lat[len(lat) // 2], 3), "p99_ms": round(1000 * lat[int(0.99 * len(lat))], 3)}


def predict_file(run_dir: Path, sentences: list[str], lines: int, threads: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "sentences.txt", Path(tmp) / "predictions.jsonl"
        with path.open("w") as f:
            for i in range(lines):
                f.write(sentences[i % len(sentences)] + "\n")
        cmd = [sys.executable, "-m", "kdfast", "predict", str(run_dir), "--file", str(path), "--out", str(out),
               "--batch-size", "64"]
        if threads:
            cmd += ["--threads", str(threads)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, timeout=3600)
        seconds = time.perf_counter() - t
        assert sum(1 for _ in out.open()) == lines
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    return {"lines": lines, "seconds": round(seconds, 2), "sentences_per_s": round(lines / seconds, 1),
            "peak_rss_mb_children": round(peak_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=4.0, help="Measured seconds per concurrency level.")
    parser.add_argument("--threads", type=int, default=None, help="Intra-op threads of each server worker.")
    parser.add_argument("--predict-lines", type=int, default=100_000)
    parser.add_argument("--data", help="Data whose dev sentences to send (as --data of train); default: the student's.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the servers (their finally blocks)
    levels = [int(c) for c in args.concurrency.split(",")]
    sentences = dev_sentences(args.student, args.data)

    report: dict[str, Any] = {"serve": [], "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"predict: {args.predict_lines} lines through kdfast predict (student) ...", flush=True)
    report["predict_file"] = predict_file(args.student, sentences, args.predict_lines, args.threads)
    print(f"  {report['predict_file']}", flush=True)
    report["in_process_batch1"] = in_process(args.student, sentences, args.seconds, args.threads)
    print(f"student in-process predict, batch 1: {report['in_process_batch1']}", flush=True)
    for model, run_dir in (("student", args.student), ("teacher", args.teacher)):
        for batching, extra in BATCHING.items():
            with server(run_dir, extra, args.threads) as url:
                runtime = httpx.get(url + "/metadata").json()["runtime"]
                for c in levels:
                    row = {"model": model, "runtime": runtime, "batching": batching,
                           **asyncio.run(load(url, sentences, c, args.seconds))}
                    report["serve"].append(row)
                    print(f"{model:8s} {runtime:9s} batching {batching:3s} c={c:3d}: {row['requests_per_s']:8.1f} "
                          f"req/s  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  mean batch {row['mean_batch']}  "
                          f"errors {row['errors']}",
                          flush=True)

    def row(model: str, batching: str, c: int) -> dict[str, Any]:
        return next(r for r in report["serve"] if (r["model"], r["batching"], r["concurrency"]) == (model, batching, c))

    if 32 in levels:
        on, off = row("teacher", "on", 32), row("teacher", "off", 32)
        speedup, p99 = on["requests_per_s"] / off["requests_per_s"], on["p99_ms"] / off["p99_ms"]
        met = speedup >= 1.5 and p99 <= 2.0
        report["goal"] = {"teacher_c32_speedup": round(speedup, 2), "teacher_c32_p99_ratio": round(p99, 2),
                          "met": met}
        print(f"teacher, concurrency 32: batching on / off = {speedup:.2f}x sentences/s (goal >= 1.5), p99 "
              f"{p99:.2f}x (goal <= 2): {'met' if met else 'NOT MET'}")
    if 1 in levels:
        http = row("student", "off", 1)["requests_per_s"]
        local = report["in_process_batch1"]["requests_per_s"]
        report["http_cost"] = {"student_http_c1_req_s": http, "student_in_process_req_s": local,
                               "ratio": round(local / http, 2)}
        print(f"student at batch 1: {local:.0f}/s in process, {http:.0f}/s over HTTP (c=1, no batching): HTTP costs "
              f"{local / http:.1f}x")
    if args.json:
        report.update(machine=machine(), commit=git_commit())
        write_json(args.json, report)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
