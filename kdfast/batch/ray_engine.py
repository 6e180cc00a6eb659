"""Scoring on Ray Data, as its batch-inference guide shapes it:

    ray.data.read_parquet(files) ─ map_batches(ScoreBatches, concurrency=N, batch_size=rows) ─ write_parquet(folder)

``ScoreBatches`` is a callable class: Ray starts N actors (an actor pool), each builds one :class:`Classifier` (the
same class ``kdfast predict`` and ``kdfast serve`` use: one ONNX Runtime session or torch model per actor, loaded
once in ``__init__``) and scores record batches in ``__call__`` with :func:`kdfast.batch.columnar.score_table`, the
function the local engine calls. An actor that dies is restarted by Ray and its unfinished batches run again (Ray
Data's actor pool sets ``max_restarts=-1`` and ``max_task_retries=-1``); a batch's output exists only once its task
finished, so every row comes out exactly once.

Ray is optional (``pip install "kdfast[ray]"``) and imported only here, inside functions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdfast.batch.columnar import (
    BAD_ROWS,
    OUT_SUFFIXES,
    PARQUET,
    ROWS,
    TableWriter,
    check_keep,
    expand,
    kind_of,
    pick_text_column,
    score_table,
)
from kdfast.errors import KdfastError

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data


class ScoreBatches:
    """The callable Ray Data's actors run: a run's model loaded once, then a record batch in, scored rows out."""

    def __init__(self, run_dir: str, runtime: str = "auto", batch_size: int = 64, threads: int | None = 1,
                 text_column: str = "text", keep: list[str] | None = None, bad_rows: str = "error") -> None:
        from kdfast.serve.predict import Classifier

        self.clf = Classifier(run_dir, runtime, batch_size=batch_size, threads=threads, device="cpu")
        self.text_column, self.keep, self.bad_rows = text_column, keep, bad_rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_table(self.clf, batch, self.text_column, self.keep, self.bad_rows)


def ray_required() -> Any:
    try:
        import ray
    except ImportError:
        raise KdfastError('--engine ray needs Ray Data: pip install "kdfast[ray]"') from None
    return ray


def predict_dataset(ds: ray.data.Dataset, run_dir: str | Path, runtime: str = "auto", workers: int = 1,
                    rows: int = ROWS, batch_size: int = 64, threads: int | None = 1, text_column: str = "text",
                    keep: list[str] | None = None, bad_rows: str = "error",
                    callable_class: type[ScoreBatches] = ScoreBatches) -> ray.data.Dataset:
    """``ds`` with ``label`` and ``p_<class>`` columns added to each row (lazily: nothing runs until the dataset is
    consumed or written), scored by ``workers`` actors, ``rows`` rows per batch, ``threads`` each.

    ``runtime`` should name a concrete runtime (the actors resolve ``auto`` the same way, from the same run)."""
    if workers < 1:
        raise KdfastError(f"--workers must be positive, got {workers}")
    if rows < 1:
        raise KdfastError(f"--rows-per-batch must be positive, got {rows}")
    if bad_rows not in BAD_ROWS:
        raise KdfastError(f"--bad-rows {bad_rows!r}: choose error or null")
    return ds.map_batches(
        callable_class,
        fn_constructor_kwargs={"run_dir": str(run_dir), "runtime": runtime, "batch_size": batch_size,
                               "threads": threads, "text_column": text_column, "keep": keep, "bad_rows": bad_rows},
        batch_format="pyarrow", batch_size=rows, concurrency=workers, num_cpus=threads or 1,
    )


# How kdfast joins Ray. The workers' own logs stay in Ray's session folder (/tmp/ray/session_latest/logs) instead of
# this terminal: when a run stops on a bad row, Ray Data's file-listing actor, interrupted by the shutdown, logs a
# traceback of its own that is not the user's error; the actor's exception itself comes back through
# ``raise_original_map_exception`` (below) as one error line.
RAY_INIT: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False, "configure_logging": True}


def local_cpus(workers: int, threads: int | None) -> int:
    """Logical CPUs for a Ray started here: the machine's, or the actors' if more, and one more for Ray Data's read
    and write tasks, which would otherwise wait for a CPU that the actors hold for the whole run."""
    return max(os.cpu_count() or 1, workers * (threads or 1)) + 1


def init_ray(address: str | None, num_cpus: int | None = None, progress: bool = False) -> bool:
    """Connect to Ray: a local instance started here (``address`` None), or a cluster (``auto``, ``ray://...``).
    True when this call started or joined it (and so should shut it down); False when one was already running."""
    ray = ray_required()
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = True  # rows out in the order they came in
    # an actor's own exception (a bad row's KdfastError), not Ray Data's UserCodeException that keeps it as text only
    ctx.raise_original_map_exception = True
    if ray.is_initialized():
        return False
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **RAY_INIT)
        else:
            ray.init(address=address, **RAY_INIT)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise KdfastError(f"--address {address}: cannot reach Ray ({str(e).splitlines()[0]})") from None
    return True


def user_error(e: BaseException) -> KdfastError | None:
    """The KdfastError (a bad row, a missing run) an actor raised, out of the exceptions Ray wraps it in."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, KdfastError):
            cause = getattr(x, "cause", None)  # RayTaskError(KdfastError): the original, without the traceback
            if not isinstance(cause, KdfastError):
                return KdfastError(str(x).strip().splitlines()[-1])
            lines = str(cause).strip().splitlines()  # Ray Data appends its own lines ("Failed to apply UDF ...")
            return cause if len(lines) <= 1 else KdfastError(lines[0])
        stack += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return None


@contextmanager
def ray_session(address: str | None, num_cpus: int | None, progress: bool = False) -> Iterator[tuple[Any, float]]:
    """Ray started (or joined) for one run: yields the ``ray`` module and the seconds it took to start. A
    KdfastError an actor raised comes out as itself (one error line), and Ray is shut down after if this run started
    it."""
    started = time.perf_counter()
    owned = init_ray(address, num_cpus=num_cpus, progress=progress)
    start_s = time.perf_counter() - started
    ray = ray_required()
    try:
        yield ray, start_s
    except Exception as e:
        err = user_error(e)
        if err is not None:
            raise err from None
        raise
    finally:
        if owned:
            ray.shutdown()


@dataclass
class RayRun:
    rows: int  # rows written
    files: int  # files written (a folder) or 1
    start_s: float  # starting or joining Ray


def run_ray(run_dir: Path, file: str, out: Path, runtime: str = "auto", workers: int = 1, rows: int = ROWS,
            batch_size: int = 64, threads: int | None = 1, text_column: str | None = None,
            keep: list[str] | None = None, bad_rows: str = "error", address: str | None = None,
            progress: bool = False) -> RayRun:
    """``kdfast predict --engine ray``: Parquet (a file, a folder or a glob) in; ``out`` a folder (Ray writes one
    Parquet file per block, in parallel) or one file by its suffix (the rows stream back here, in order)."""
    import shutil

    import pyarrow.parquet as pq

    from kdfast.runs import read_run_info, run_labels
    from kdfast.serve.predict import choose_runtime

    files = expand(file)
    if any(kind_of(f) != "parquet" for f in files):
        raise KdfastError(f"--engine ray reads Parquet ({', '.join(PARQUET)}): {file} is not; convert it, or use "
                          "--engine local")
    read_run_info(run_dir)  # a missing run is one error line here, not N actors failing
    labels = run_labels(run_dir)
    resolved = choose_runtime(run_dir, runtime)
    columns = list(pq.read_schema(files[0]).names)
    text = pick_text_column(columns, text_column, str(file))
    check_keep(columns, keep, labels, bad_rows, str(file))
    to_file = out.suffix.lower() in OUT_SUFFIXES
    if not to_file and out.exists() and any(out.iterdir()):
        raise KdfastError(f"--out {out}: a folder that is not empty (Ray writes a folder; name a new one, or a file "
                          f"ending in {', '.join(OUT_SUFFIXES)})")
    writer = TableWriter(out) if to_file else None
    tmp: Path | None = None
    with ray_session(address, local_cpus(workers, threads), progress) as (ray, start_s):
        try:
            ds = ray.data.read_parquet([str(f) for f in files])
            scored = predict_dataset(ds, run_dir, resolved, workers, rows, batch_size, threads, text, keep, bad_rows)
            if writer is not None:
                for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                    writer.write(batch)
                if writer.rows == 0:
                    raise KdfastError(f"no sentences to classify in {file}")
                writer.close()
                return RayRun(writer.rows, 1, start_s)
            tmp = out.with_name(f".{out.name}.tmp")
            scored.write_parquet(str(tmp))
            written = sorted(tmp.glob("*.parquet"))
            n = sum(pq.ParquetFile(f).metadata.num_rows for f in written)
            if out.exists():
                out.rmdir()  # empty, as checked above
            tmp.replace(out)
            return RayRun(n, len(written), start_s)
        except BaseException:  # nothing half-written is left
            if writer is not None:
                writer.abort()
            elif tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
