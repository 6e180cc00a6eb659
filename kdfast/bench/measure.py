"""``kdfast bench``: latency and accuracy of every way to run the teacher and the students, side by side.

One stage, shaped setup → measure → save (``run``). For a teacher run and any number of student runs it measures
every variant that applies, in this order::

    teacher-unmerged    PyTorch, LoRA adapters unmerged (y = x·Wᵀ + s·x·Aᵀ·Bᵀ in every projection)
    teacher-merged      PyTorch, LoRA merged into W: "teacher eager", the baseline of every ``speedup``
    teacher-fused       PyTorch, unmerged through the fused Triton LoRA kernel (CUDA only)
    teacher-onnx-fp32   ONNX Runtime, RUN/onnx/model.onnx
    teacher-onnx-opt    ONNX Runtime, RUN/onnx/model.opt.onnx (ONNX Runtime's transformer optimizer)
    teacher-onnx-int8   ONNX Runtime, RUN/onnx/model.int8.onnx, the int8 model export tuned (CPU only)
    student-eager       PyTorch, nn.LSTM / nn.GRU
    student-compiled    PyTorch, the cell-loop student through torch.compile
    student-onnx-fp32   ONNX Runtime, RUN/onnx/model.onnx
    student-onnx-int8   ONNX Runtime, RUN/onnx/model.int8.onnx (CPU only)

A variant that cannot run here (no CUDA, no triton, no onnxruntime, no optimizer for the architecture, a compile
that fails) is skipped with its reason in ``skipped``.

**Teacher eager** is ``teacher-merged``: fp32 PyTorch running the very model that is exported to ONNX, so that
``teacher-onnx-* / teacher eager`` measures the runtime and nothing else (the unmerged teacher does extra LoRA
matmuls and would flatter every other variant).

**ONNX files.** A run without ``RUN/onnx/manifest.json`` is exported first, through ``kdfast.export.onnx`` with its
parity checks: fp32, and ``--optimize`` for the teacher when ONNX Runtime has an optimizer for it; never ``--int8``,
whose tuning builds and judges many candidate models (minutes for a small teacher, half an hour and more for GPT-2 on
two cores): bench says so, and the int8 rows are then skipped with the command that makes them (``kdfast export
--onnx RUN --int8``). The int8 rows time the exported ``model.int8.onnx``, the candidate ``kdfast.export.int8`` tuned
and export checked on dev (its ``note`` names the candidate): an unchecked model is never timed or written.
``agreement`` is the measured share of dev labels equal to PyTorch's. An existing export is used as it is (never
replaced); one made from an earlier run at the same path is skipped, with a note.

**Method.** Inputs are real CoLA dev sentences: a seeded sample of ``timed_sentences`` of them (order kept), cut
into consecutive batches of each batch size and right-padded to the longest sentence in the batch. The same
tokenized batches serve every variant of one model (the students' word ids differ from the teacher's tokens, the
sentences do not). For each variant and batch size: ``warmup`` calls are made and not timed (the compiled student
also runs every distinct batch once first, so that no compile happens on the clock); then calls are timed one by
one, cycling through the batches, until both ``iters`` calls and ``min_time`` seconds are done. Threads are fixed
for both runtimes: ``torch.set_num_threads(threads)`` and ONNX Runtime's ``intra_op_num_threads = threads``
(``inter_op_num_threads = 1``, sequential execution). On CUDA the device is synchronised around every timed call
and ONNX Runtime runs through IO binding with inputs and outputs on the GPU (that path is not exercised on the CPU
machines this was written on). Accuracy and MCC are scored separately from the timing, over the whole dev set
batched exactly as ``kdfast eval`` batches it (by length, 64 at a time), with the same ``score_dev``: for
``teacher-merged`` and ``student-eager`` they are ``kdfast eval``'s numbers.

**Output** (``run`` returns it; ``--json`` writes it as is)::

    {"meta": {"date", "machine": {"host", "cpu", "cpus", "platform"}, "versions": {"python", "kdfast", "torch",
              "transformers", "onnxruntime", "onnx", "numpy"}, "commit", "threads", "device", "device_name",
              "teacher_eager": "teacher-merged", "data", "dev_sentences", "timed_sentences", "batch_sizes",
              "warmup", "iters", "min_time", "load_avg": {"start", "end"} (1-minute, os.getloadavg),
              "warnings": [str, ...] (e.g. a machine too busy for the thread count)},
     "results": [row, ...],          # one per (model, variant, batch_size), in the order above
     "skipped": [{"model", "variant", "reason"}, ...],
     "ratios": [{"name", "batch_size", "fast", "fast_p50_ms", "slow", "slow_p50_ms", "ratio" (slow p50 / fast p50),
                 "target", "mcc_drop" (slow MCC - fast MCC, int8 only), "mcc_drop_max", "met"}, ...]}

Each row (``kdfast.bench.report.ROW_FIELDS``; the CSV and Markdown files have these columns in this order):

    model        run folder name          variant      as above               batch_size   sentences per call
    p50_ms, p90_ms, p99_ms, mean_ms       latency of one call (one batch), milliseconds
    cv           std / mean of the latencies (population std)
    throughput   sentences/s = batch_size / mean latency
    acc, mcc     over the whole dev set (the same in every batch-size row of a variant)
    agreement    share of dev labels equal to the model's PyTorch reference (teacher-merged, student-eager)
    params       parameters of the model (the ONNX models: of the PyTorch model they were exported from)
    file_mb      size of the weights it loads from disk, 10⁶ bytes (null when built in memory)
    speedup      teacher-merged p50 / this p50 at the same batch size (null without a teacher)
    seq_len      mean padded length of the timed batches, tokens (teacher) or words (student)
    calls        timed calls;  setup_s  untimed load (+ export, quantize, compile) and dev scoring
    load_1m      1-minute load average when the row's timing started (bench's own threads count in it)
    runtime      pytorch | onnxruntime;  note  anything the reader must know about the row

``ratios`` are the three the project set itself (on a 2-core CPU): student ONNX at least 30x faster than teacher
ONNX at batch 1; teacher ONNX at least 2x faster than teacher eager; teacher int8 at least 1.5x faster than teacher
fp32 ONNX with dev MCC lower by at most 0.02.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from kdfast.batching import in_order, length_sorted_batches, pad_batch
from kdfast.bench.harness import load_avg, stamp, synchronizer, time_calls
from kdfast.bench.report import write_outputs
from kdfast.bench.variants import (
    STUDENT_VARIANTS,
    TEACHER_VARIANTS,
    VARIANTS,
    Loaded,
    ModelInputs,
    Skip,
    student_builders,
    student_inputs,
    teacher_builders,
    teacher_inputs,
)
from kdfast.configs import BenchConfig
from kdfast.data import Dataset, dataset_from_config, subsample
from kdfast.errors import KdfastError, first_line
from kdfast.runs import METRICS_FILE, read_json, read_run_info, run_labels
from kdfast.train.teacher import score_dev
from kdfast.train.training import resolve_device

TEACHER_EAGER = "teacher-merged"  # the baseline of ``speedup``
REFERENCE = {"teacher": "teacher-merged", "student": "student-eager"}  # what ``agreement`` compares with
DEV_BATCH_SIZE = 64  # kdfast eval's batch size for scoring
IDLE_LOAD = 0.5  # a 1-minute load average this far above the CPUs bench leaves free still counts as idle
# The ratios the project set itself, on a 2-core CPU.
TARGET_STUDENT_VS_TEACHER_ONNX = 30.0
TARGET_ONNX_VS_EAGER = 2.0
TARGET_INT8_VS_FP32 = 1.5
MAX_INT8_MCC_DROP = 0.02


def latency_stats(times: list[float], batch_size: int) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": mean,
            "cv": float(ms.std() / mean) if mean else 0.0, "throughput": batch_size / (mean / 1e3)}


def timed_batches(ids: list[list[int]], pad_id: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches of ``batch_size`` (the last one may be short), right-padded: (input_ids, mask)."""
    return [pad_batch(ids[i : i + batch_size], pad_id) for i in range(0, len(ids), batch_size)]


@torch.no_grad()
def dev_logits(loaded: Loaded, ids: list[list[int]], pad_id: int) -> np.ndarray:
    """Logits (N, C) over ``ids``, batched as ``kdfast eval`` batches them."""
    parts = []
    for idx in length_sorted_batches(ids, DEV_BATCH_SIZE):
        input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
        parts.append((idx, loaded.fetch(loaded.forward(*loaded.prepare(input_ids, mask)))))
    return in_order(parts, len(ids))


# --- meta


def meta(cfg: BenchConfig, device: torch.device, threads: int, data_source: str, n_dev: int,
         n_timed: int) -> dict[str, Any]:
    env = stamp("torch", "transformers", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy")
    return {
        "date": env["date"],
        "machine": env["machine"],
        "versions": env["versions"],
        "commit": env["commit"],
        "threads": threads,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else env["machine"]["cpu"],
        "teacher_eager": TEACHER_EAGER,
        "data": data_source,
        "dev_sentences": n_dev,
        "timed_sentences": n_timed,
        "batch_sizes": cfg.batch_sizes,
        "warmup": cfg.warmup,
        "iters": cfg.iters,
        "min_time": cfg.min_time,
        "load_avg": {"start": env["load_avg"], "end": None},
        "warnings": busy_warning(threads, device),
    }


def busy_warning(threads: int, device: torch.device) -> list[str]:
    """A warning when other processes already keep the CPUs busy: each parallel region of a multi-threaded op then
    waits for a thread the scheduler has parked (on 2 busy cores, 2 torch threads made MiniLM at batch 1 30x
    slower than 1 thread did). An idle machine's background noise (load ~0.3) is let through: up to
    ``IDLE_LOAD`` above the CPUs that ``threads`` leave free."""
    load, cpus = load_avg(), os.cpu_count() or 1
    if device.type != "cpu" or load is None or load <= max(cpus - threads, 0) + IDLE_LOAD:
        return []
    return [f"the CPUs were busy before bench started (load average {load:.2f} on {cpus} CPUs) and it uses {threads} "
            f"threads: latencies are inflated and uneven, multi-threaded PyTorch most of all; measure on an idle "
            f"machine or with fewer --threads"]


# --- ratios


def headline_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The three ratios the project set itself, from whichever rows exist."""
    def find(variant: str, batch: int, model: str | None = None) -> list[dict[str, Any]]:
        return [r for r in rows if r["variant"] == variant and r["batch_size"] == batch
                and (model is None or r["model"] == model)]

    out: list[dict[str, Any]] = []

    def add(name: str, fast: dict[str, Any], slow: dict[str, Any], target: float, mcc_drop_max: float | None = None
            ) -> None:
        ratio = slow["p50_ms"] / fast["p50_ms"]
        entry: dict[str, Any] = {"name": name, "batch_size": fast["batch_size"],
                                 "fast": f"{fast['variant']} ({fast['model']})", "fast_p50_ms": fast["p50_ms"],
                                 "slow": f"{slow['variant']} ({slow['model']})", "slow_p50_ms": slow["p50_ms"],
                                 "ratio": ratio, "target": target, "mcc_drop": None, "mcc_drop_max": mcc_drop_max}
        met = ratio >= target
        if mcc_drop_max is not None:
            entry["mcc_drop"] = slow["mcc"] - fast["mcc"]
            met = met and entry["mcc_drop"] <= mcc_drop_max
        entry["met"] = met
        out.append(entry)

    batches = sorted({r["batch_size"] for r in rows})
    for t in find("teacher-onnx-fp32", 1):
        for s in find("student-onnx-fp32", 1):
            add("student ONNX vs teacher ONNX", s, t, TARGET_STUDENT_VS_TEACHER_ONNX)
    for b in batches:
        for eager in find(TEACHER_EAGER, b):
            for variant in ("teacher-onnx-fp32", "teacher-onnx-opt"):
                for r in find(variant, b, eager["model"]):
                    add("teacher ONNX vs teacher eager", r, eager, TARGET_ONNX_VS_EAGER)
        for fp32 in find("teacher-onnx-fp32", b):
            for r in find("teacher-onnx-int8", b, fp32["model"]):
                add("teacher int8 vs teacher fp32 ONNX", r, fp32, TARGET_INT8_VS_FP32, MAX_INT8_MCC_DROP)
    return out


# --- the stage


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Measure every variant that applies; returns the report (``meta``, ``results``, ``skipped``, ``ratios``) and
    writes the files ``cfg`` names."""
    # --- setup
    cfg.validate()
    say = Console(stderr=True, quiet=not cfg.progress).print
    device = resolve_device(cfg.device)
    threads = cfg.threads or torch.get_num_threads()
    runs: list[tuple[str, Path]] = []
    if cfg.teacher is not None:
        read_run_info(Path(cfg.teacher), "teacher")
        runs.append(("teacher", Path(cfg.teacher)))
    for student in cfg.students:
        read_run_info(Path(student), "student")
        runs.append(("student", Path(student)))
    names = [p.name for _, p in runs]
    if len(set(names)) != len(names):
        raise KdfastError(f"two runs share a folder name ({', '.join(names)}); rows are named by it")
    labels = run_labels(runs[0][1])
    for _, run_dir in runs[1:]:
        if run_labels(run_dir) != labels:
            raise KdfastError(f"{run_dir} has labels {run_labels(run_dir)}, {runs[0][1]} has {labels}: bench compares "
                              "runs of one dataset")
    data = dataset_from_config(read_json(runs[0][1] / METRICS_FILE)["config"], cfg.data, labels)
    dev = data.dev
    timed = [e.text for e in subsample(dev, cfg.timed_sentences, seed=0)]
    sentences = [e.text for e in dev]
    report: dict[str, Any] = {"meta": meta(cfg, device, threads, data.source, len(dev), len(timed)), "results": [],
                              "skipped": [], "ratios": []}
    wanted = set(cfg.variants or VARIANTS)
    sync = synchronizer(device)

    # --- measure
    todo = sum(len(set(TEACHER_VARIANTS if kind == "teacher" else STUDENT_VARIANTS) & wanted) for kind, _ in runs)
    say(f"bench: up to {todo} variants × {len(cfg.batch_sizes)} batch sizes, each timed for at least "
        f"{cfg.min_time:g} s and {cfg.iters} calls after {cfg.warmup} warm-up calls, each variant scored on "
        f"{len(dev)} dev sentences: about {todo * len(cfg.batch_sizes) * cfg.min_time / 60:.1f} min of timing, plus "
        "loading and scoring (a variant that cannot run here is skipped)")
    bench_start = time.perf_counter()
    with torch_threads(threads):
        for kind, run_dir in runs:
            say(f"[bold]{kind} {run_dir}[/] ({time.perf_counter() - bench_start:.0f} s so far)")
            inputs = (teacher_inputs if kind == "teacher" else student_inputs)(run_dir, timed, sentences)
            builders = (teacher_builders if kind == "teacher" else student_builders)(
                run_dir, cfg.data, device, threads, say)
            labels: dict[str, np.ndarray] = {}  # dev predictions of each variant measured
            for variant, build in builders:
                if variant in wanted:
                    logits = measure_variant(cfg, variant, build, inputs, data, sync, say, report)
                    if logits is not None:
                        labels[variant] = logits.argmax(-1)
            reference = labels.get(REFERENCE[kind])
            for row in report["results"]:
                if row["model"] == inputs.name and reference is not None:
                    row["agreement"] = float((labels[row["variant"]] == reference).mean())
    report["meta"]["load_avg"]["end"] = load_avg()
    add_speedups(report["results"])
    report["ratios"] = headline_ratios(report["results"])

    # --- save
    write_outputs(report, json_path=cfg.json, csv_path=cfg.csv, md_path=cfg.md, plot_path=cfg.plot)
    return report


def measure_variant(cfg: BenchConfig, variant: str, build: Callable[[], Loaded], inputs: ModelInputs,
                    data: Dataset, sync: Callable[[], None], say: Callable[..., None],
                    report: dict[str, Any]) -> np.ndarray | None:
    """Build one variant, score it on dev, time it at every batch size; append its rows (or its skip) to
    ``report``. Returns its dev logits, or None when it was skipped."""
    start = time.perf_counter()
    try:
        loaded = build()
        say(f"  {variant}: scoring the {len(data.dev)} dev sentences")
        logits = dev_logits(loaded, inputs.dev, inputs.pad_id)
    except Skip as e:
        say(f"  [yellow]{variant}: skipped[/] ({e})")
        report["skipped"].append({"model": inputs.name, "variant": variant, "reason": str(e)})
        return None
    except Exception as e:
        if variant != "student-compiled":
            raise
        # torch.compile needs a working C++ toolchain (Inductor on the CPU) or triton (CUDA): a missing one is a
        # property of the machine, not a bug in the student.
        reason = f"torch.compile failed here: {first_line(e)}"
        say(f"  [yellow]{variant}: skipped[/] ({reason})")
        report["skipped"].append({"model": inputs.name, "variant": variant, "reason": reason})
        return None
    scores = score_dev(logits, data)
    setup_s = time.perf_counter() - start
    for batch_size in cfg.batch_sizes:
        batches = timed_batches(inputs.timed, inputs.pad_id, batch_size)
        prepared = [loaded.prepare(ids, mask) for ids, mask in batches]
        load_1m = load_avg()
        t0 = time.perf_counter()
        with torch.no_grad():
            times = time_calls(loaded.forward, prepared, cfg.warmup, cfg.iters, cfg.min_time, sync,
                               loaded.warm_every_batch)
        if loaded.warm_every_batch:  # the first pass over the batches compiled them: count it as setup
            setup_s += time.perf_counter() - t0 - sum(times)
        stats = latency_stats(times, batch_size)
        seen = [batches[i % len(batches)][0].shape[1] for i in range(len(times))]
        row = {"model": inputs.name, "variant": variant, "batch_size": batch_size, **stats,
               "acc": scores["dev_acc"], "mcc": scores["dev_mcc"], "agreement": None, "params": loaded.params,
               "file_mb": loaded.file_mb, "speedup": None, "seq_len": float(np.mean(seen)), "calls": len(times),
               "setup_s": setup_s, "load_1m": load_1m, "runtime": loaded.runtime, "note": loaded.note}
        report["results"].append(row)
        say(f"  {variant} batch {batch_size}: p50 {stats['p50_ms']:.3f} ms, {stats['throughput']:.1f} sentences/s, "
            f"dev MCC {scores['dev_mcc']:.4f} ({len(times)} calls)")
    del loaded
    gc.collect()
    return logits


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup`` = teacher eager's p50 / the row's p50, at the same batch size."""
    base = {r["batch_size"]: r["p50_ms"] for r in rows if r["variant"] == TEACHER_EAGER}
    for r in rows:
        if r["batch_size"] in base:
            r["speedup"] = base[r["batch_size"]] / r["p50_ms"]
