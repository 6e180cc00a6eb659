"""The plumbing every benchmark shares, written once: ``kdfast bench`` and the scripts of ``benchmarks/`` use it (as
Liger-Kernel's ``benchmark/scripts/utils.py`` serves its benchmarks).

- **Timer**: :func:`time_calls` times calls one by one with ``time.perf_counter``, the device synchronised around each
  (:func:`synchronizer`: ``torch.cuda.synchronize`` on a CUDA device, nothing on the CPU), after untimed warm-up calls,
  until both a number of calls and a number of seconds are done.
- **Environment stamp**: :func:`now`, :func:`git_commit`, :func:`machine`, :func:`versions`, :func:`load_avg`, and
  :func:`stamp` with all of them, for the rows and reports to say when, from which commit and where they were measured.
- **Writers**: :func:`write_json` and :func:`write_text` (atomic: a temporary file, then renamed), :func:`append_csv`
  (a results file that grows run by run) and :func:`markdown_table`.

Light on purpose: it imports no torch (only :func:`synchronizer` does, and only for a CUDA device), so a script that
times subprocesses or ONNX Runtime pays nothing for it.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from kdfast import runs

ISO = "%Y-%m-%dT%H:%M:%S%z"  # the date of a row or report, unless a results file already holds another format


# --- timer


def synchronizer(device: Any = None) -> Callable[[], None]:
    """What to call around a timed call so that the clock sees the device's work: ``torch.cuda.synchronize`` for a CUDA
    ``device`` (a ``torch.device`` or a name such as ``"cuda"``, ``"cuda:1"``), else a call that does nothing."""
    if device is not None and str(getattr(device, "type", device)).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def time_calls(fn: Callable[..., Any], inputs: Sequence[tuple[Any, ...]] = ((),), warmup: int = 0, iters: int = 1,
               min_time: float = 0.0, sync: Callable[[], None] | None = None, warm_every_batch: bool = False,
               grad_to_none: Iterable[Any] | None = None) -> list[float]:
    """Seconds per call of ``fn(*inputs[i % len(inputs)])``, cycling through ``inputs``: ``warmup`` untimed calls (and
    one untimed call per input when ``warm_every_batch``), then timed calls from the first input again until both
    ``iters`` calls and ``min_time`` seconds are done. ``sync`` (see :func:`synchronizer`) runs before the first
    timed call and around each one; ``grad_to_none``: tensors whose ``.grad`` is reset before each call, outside the
    clock (as ``triton.testing.do_bench`` does), for timing a backward pass. Gradients are the caller's: wrap the call
    in ``torch.no_grad()`` to time inference."""
    sync = sync or (lambda: None)
    grads = list(grad_to_none or [])

    def call(i: int) -> None:
        for t in grads:
            t.grad = None
        fn(*inputs[i % len(inputs)])

    for i in range(warmup + (len(inputs) if warm_every_batch else 0)):
        call(i)
    sync()
    times: list[float] = []
    start = time.perf_counter()
    i = 0
    while len(times) < iters or time.perf_counter() - start < min_time:
        for t in grads:
            t.grad = None
        args = inputs[i % len(inputs)]
        sync()
        t0 = time.perf_counter()
        fn(*args)
        sync()
        times.append(time.perf_counter() - t0)
        i += 1
    return times


# --- environment stamp


def now(fmt: str = ISO, utc: bool = False) -> str:
    """The current time as ``fmt`` (local time, or UTC)."""
    return time.strftime(fmt, time.gmtime() if utc else time.localtime())


def git_commit(repo: Path | None = None) -> str:
    """The short commit of the checkout ``repo`` (default: the one kdfast runs from), ``-dirty`` when tracked files
    differ from it (untracked ones do not count: results being written are no change to the code);
    ``unknown`` outside a checkout or without git. ``KDFAST_COMMIT`` overrides it: benchmarks/gpu_check.sh sets it
    from a file written before the tree was copied to a machine without git."""
    if os.environ.get("KDFAST_COMMIT"):
        return os.environ["KDFAST_COMMIT"]
    cwd = Path(repo) if repo is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> dict[str, Any]:
    """``host``, ``cpu`` (the model name from /proc/cpuinfo where there is one), ``cpus`` and ``platform``."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform()}


def version(dist: str) -> str | None:
    """The installed version of the distribution ``dist``, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(*dists: str) -> dict[str, str]:
    """Python's and kdfast's versions and those of ``dists`` that are installed, by name."""
    from kdfast import __version__

    found = {d: version(d) for d in dists}
    return {"python": platform.python_version(), "kdfast": __version__, **{k: v for k, v in found.items() if v}}


def load_avg() -> float | None:
    """The 1-minute load average, rounded to 0.01 (None where the system has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def stamp(*dists: str) -> dict[str, Any]:
    """Where and from what a measurement comes: ``date`` (:data:`ISO`), ``commit``, ``machine``, ``versions`` (Python,
    kdfast and ``dists``) and ``load_avg``."""
    return {"date": now(), "commit": git_commit(), "machine": machine(), "versions": versions(*dists),
            "load_avg": load_avg()}


# --- writers


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`kdfast.runs.write_text`), making its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.write_text(path, text)


def write_json(path: Path, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON (``indent``, a final newline) atomically, making its folder."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def append_csv(path: Path, rows: Iterable[dict[str, Any]], fields: Sequence[str], float_format: str | None = None
               ) -> None:
    """Append ``rows`` to the CSV at ``path`` (columns ``fields``; a missing key writes an empty cell), writing the
    header when the file is new: the benchmark scripts' results files grow run by run, and a run cut short keeps the
    rows it wrote. ``float_format`` (e.g. ``".6g"``) formats the float cells."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            if float_format:
                row = {k: format(v, float_format) if isinstance(v, float) else v for k, v in row.items()}
            writer.writerow(row)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table: a header of ``columns``, then a line per row (cells as ``str``, ``|`` escaped)."""

    def line(cells: Iterable[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(columns), line("---" for _ in columns), *(line(r) for r in rows)]
