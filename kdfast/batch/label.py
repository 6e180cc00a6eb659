"""The teacher's logits (and sentence representations) over a large unlabeled file, on this machine or Ray: the
expensive step of distillation, done once, apart, by as many workers as there are.

    sentences (plain text, Parquet, CSV, TSV, JSON Lines) ─ record batches ─ TeacherLabeller (the teacher, loaded
    once per worker; kdfast.train.teacher.teacher_outputs, as distill scores) ─ one Parquet file, in input order

**The file** (``kdfast label TEACHER --file corpus.txt --out labels.parquet``), format ``kdfast-teacher-labels/1``:

- column ``text`` (string): the sentence as read (blank lines of a plain-text file are skipped, as everywhere);
- column ``logits`` (fixed-size list of float32, C = the teacher's number of classes);
- column ``features`` (fixed-size list of float32, d), unless ``--no-features``: the vector the teacher's
  classification layer turns into its logits (what ``distill --feature-weight`` fits), not standardised;
- key-value metadata: ``kdfast.format``, ``kdfast.teacher`` (the run's path), ``kdfast.teacher_fingerprint``
  (:func:`kdfast.train.distill.teacher_fingerprint` of the run: it changes when the run is retrained),
  ``kdfast.labels`` (JSON list), ``kdfast.rows``, and ``kdfast.key``: :func:`kdfast.train.distill.cache_key` of the
  fingerprint and the teacher's texts of every row in order (``[MASK]`` as the teacher's own mask token, as
  ``distill`` computes it), so a reader can tell the file scores exactly the sentences it holds.

:func:`read_teacher_labels` reads it back as arrays (N, C) and (N, d) and checks it against a teacher run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdfast.batch.columnar import ROWS, TableWriter, bad_reasons, describe_row, kind_of, open_source
from kdfast.errors import KdfastError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

FORMAT = "kdfast-teacher-labels/1"
META = "kdfast."


class TeacherLabeller:
    """A teacher run loaded once (on ``device``, ``threads`` intra-op threads); a batch of rows in, their text,
    logits and features out. Ray Data's actors run it as they run :class:`kdfast.batch.ray_engine.ScoreBatches`."""

    def __init__(self, teacher: str, batch_size: int = 64, threads: int | None = 1, features: bool = True,
                 text_column: str = "text", device: str = "auto") -> None:
        import torch

        from kdfast.runs import METRICS_FILE, read_json
        from kdfast.train.distill import teacher_texts
        from kdfast.train.teacher import load_teacher
        from kdfast.train.training import resolve_device

        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.model, self.tokenizer = load_teacher(Path(teacher))
        self.model.to(self.device)
        self.max_length = int(read_json(Path(teacher) / METRICS_FILE)["config"].get("max_length", 64))
        self.batch_size, self.features, self.text_column = batch_size, features, text_column
        self.teacher_texts = teacher_texts

    def __call__(self, batch: pa.Table, first_row: int | None = None) -> pa.Table:
        import pyarrow as pa

        from kdfast.train.teacher import encode, teacher_outputs

        column = batch.column(self.text_column)
        why = bad_reasons(column)
        bad = next((i for i, r in enumerate(why) if r is not None), None)
        if bad is not None:  # a transfer set is text, every row of it
            raise KdfastError(f"{describe_row(batch, bad, self.text_column, first_row)}: {why[bad]} in column "
                              f"{self.text_column!r}")
        texts = column.to_pylist()
        ids = encode(self.tokenizer, self.teacher_texts(texts, self.tokenizer), self.max_length)
        out = teacher_outputs(self.model, ids, self.tokenizer.pad_token_id, self.device, self.batch_size,
                              self.features)
        columns = {"text": pa.array(texts, pa.string()), "logits": fixed_lists(out["logits"].numpy())}
        if "features" in out:
            columns["features"] = fixed_lists(out["features"].numpy())
        return pa.table(columns)


def fixed_lists(x: np.ndarray) -> pa.FixedSizeListArray:
    """(N, k) float32 as N fixed-size lists of k: one contiguous buffer, no copy per row."""
    import numpy as np
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


class RunningKey:
    """:func:`kdfast.train.distill.cache_key`, computed as the rows stream past (the same bytes, in the same order)."""

    def __init__(self, fingerprint: str) -> None:
        self.h = hashlib.sha256(fingerprint.encode())

    def update(self, texts: list[str]) -> None:
        for s in texts:
            self.h.update(b"\0" + s.encode())

    def hexdigest(self) -> str:
        return self.h.hexdigest()


@dataclass
class Labelled:
    rows: int
    seconds: float  # scoring and writing, after the teacher and (under Ray) Ray started
    start_s: float  # starting or joining Ray (0 locally)


def label_file(teacher: Path, file: str | Path, out: Path, engine: str = "local", workers: int = 1,
               rows: int = ROWS, batch_size: int = 64, threads: int | None = None, features: bool = True,
               text_column: str | None = None, address: str | None = None, device: str = "auto",
               progress: Any = None) -> Labelled:
    """Write the teacher-labels file ``out`` (see the module's docstring) for every sentence of ``file``."""
    from transformers import AutoTokenizer

    from kdfast.runs import read_run_info, run_labels
    from kdfast.train.distill import teacher_fingerprint, teacher_texts

    if engine not in ("local", "ray"):
        raise KdfastError(f"--engine {engine!r}: choose local or ray")
    if rows < 1:
        raise KdfastError(f"--rows-per-batch must be positive, got {rows}")
    read_run_info(teacher, "teacher")
    if kind_of(out) != "parquet":
        raise KdfastError(f"--out {out}: the teacher's labels are written as Parquet (.parquet)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(Path(teacher) / "merged"))
    except Exception as e:
        raise KdfastError(f"{Path(teacher) / 'merged'}: could not load the teacher's tokenizer ({e})") from None
    fingerprint = teacher_fingerprint(teacher)
    key = RunningKey(fingerprint)
    src = open_source(file, text_column, keep=[])
    meta = {"format": FORMAT, "teacher": str(teacher), "teacher_fingerprint": fingerprint,
            "labels": json.dumps(run_labels(teacher))}
    writer = TableWriter(out)
    start_s = 0.0

    def write(table: pa.Table) -> None:
        key.update(teacher_texts(table.column("text").to_pylist(), tokenizer))
        writer.write(table)
        if progress is not None:
            progress(writer.rows)

    started = time.perf_counter()
    try:
        if engine == "local":
            labeller = TeacherLabeller(str(teacher), batch_size, threads, features, src.text_column, device)
            started = time.perf_counter()
            for chunk in src.chunks(rows):
                write(labeller(chunk.table, chunk.first_row))
        else:
            start_s = ray_label(src, str(teacher), workers, rows, batch_size, threads, features, address, device,
                                write)
        if writer.rows == 0:
            raise KdfastError(f"no sentences to label in {file}")
        meta.update(rows=str(writer.rows), key=key.hexdigest())
        writer.writer.add_key_value_metadata({META + k: v for k, v in meta.items()})
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return Labelled(writer.rows, time.perf_counter() - started - start_s, start_s)


def ray_label(src: Any, teacher: str, workers: int, rows: int, batch_size: int, threads: int | None,
              features: bool, address: str | None, device: str, write: Callable[[pa.Table], None]) -> float:
    """The labelling on Ray Data: read (text or Parquet), map_batches(TeacherLabeller) over ``workers`` actors,
    the rows streamed back here in order to ``write``. Returns the seconds Ray took to start."""
    from kdfast.batch.ray_engine import local_cpus, ray_session

    kinds = {kind_of(f) for f in src.files}
    if not kinds <= {"parquet", "text"}:
        raise KdfastError("--engine ray reads plain text or Parquet; convert the file, or use --engine local")
    with ray_session(address, local_cpus(workers, threads)) as (ray, start_s):
        paths = [str(f) for f in src.files]
        ds = ray.data.read_text(paths) if kinds == {"text"} else ray.data.read_parquet(paths, columns=[src.text_column])
        labelled = ds.map_batches(
            TeacherLabeller,
            fn_constructor_kwargs={"teacher": teacher, "batch_size": batch_size, "threads": threads or 1,
                                   "features": features, "text_column": src.text_column, "device": device},
            batch_format="pyarrow", batch_size=rows, concurrency=workers, num_cpus=threads or 1)
        for batch in labelled.iter_batches(batch_size=None, batch_format="pyarrow"):
            write(batch)
    return start_s


@dataclass
class TeacherLabels:
    texts: list[str]
    logits: np.ndarray  # (N, C) float32
    features: np.ndarray | None  # (N, d) float32, or None when labelled with --no-features
    meta: dict[str, str]  # the kdfast.* metadata, without the prefix


def open_teacher_labels(path: str | Path, teacher: str | Path | None = None) -> tuple[Any, dict[str, str]]:
    """A teacher-labels file opened (a ``pyarrow.parquet.ParquetFile``) and its ``kdfast.`` metadata; with
    ``teacher``, an error unless it was written by that very run."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise KdfastError(f"{path}: no such file")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise KdfastError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    raw = pf.metadata.metadata or {}
    meta = {k.decode()[len(META):]: v.decode() for k, v in raw.items() if k.decode().startswith(META)}
    if meta.get("format") != FORMAT:
        raise KdfastError(f"{path}: not a teacher-labels file (format {meta.get('format')!r}, expected {FORMAT!r})")
    if teacher is not None:
        from kdfast.train.distill import teacher_fingerprint

        if teacher_fingerprint(Path(teacher)) != meta["teacher_fingerprint"]:
            raise KdfastError(f"{path}: labelled by another teacher ({meta['teacher']}), not {teacher}")
    return pf, meta


def is_teacher_labels(path: str | Path) -> bool:
    """``path`` is a teacher-labels file (by its suffix and metadata; nothing else is read)."""
    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".pq") or not path.is_file():
        return False
    import pyarrow.parquet as pq  # kdfast[batch]: only a Parquet file needs it

    try:
        raw = pq.ParquetFile(path).metadata.metadata or {}  # the footer alone
    except Exception:
        return False
    return raw.get((META + "format").encode()) == FORMAT.encode()


def matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column of fixed-size lists of k floats as an (N, k) float32 array."""
    import numpy as np
    import pyarrow as pa

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return col.flatten().to_numpy().reshape(len(col), col.type.list_size).astype(np.float32, copy=False)


def read_teacher_labels(path: str | Path, teacher: str | Path | None = None) -> TeacherLabels:
    """A teacher-labels file, read back whole; with ``teacher``, an error unless it was written by that very run."""
    pf, meta = open_teacher_labels(path, teacher)
    table = pf.read()
    return TeacherLabels(table.column("text").to_pylist(), matrix(table.column("logits")),
                         matrix(table.column("features")) if "features" in table.column_names else None, meta)


def teacher_label_parts(path: str | Path, teacher: str | Path, lines: int) -> Iterator[tuple[list[str], np.ndarray,
                                                                                              np.ndarray]]:
    """A teacher-labels file written by ``teacher``, streamed ``lines`` rows at a time (the last part shorter):
    (texts, logits (n, C), features (n, d)). ``distill --transfer`` takes these instead of running the teacher."""
    import numpy as np

    pf, _ = open_teacher_labels(path, teacher)
    if "features" not in pf.schema_arrow.names:
        raise KdfastError(f"--transfer {path}: a teacher-labels file without features (kdfast label --no-features); "
                          "distill needs them: label it again without --no-features")
    texts: list[str] = []
    logits: list[np.ndarray] = []
    features: list[np.ndarray] = []
    for batch in pf.iter_batches(batch_size=lines, columns=["text", "logits", "features"]):
        texts += batch.column(0).to_pylist()
        logits.append(matrix(batch.column(1)))
        features.append(matrix(batch.column(2)))
        while len(texts) >= lines:  # the file's record batches need not fall on part boundaries
            all_logits, all_features = np.concatenate(logits), np.concatenate(features)
            yield texts[:lines], all_logits[:lines], all_features[:lines]
            texts, logits, features = texts[lines:], [all_logits[lines:]], [all_features[lines:]]
    if texts:
        yield texts, np.concatenate(logits), np.concatenate(features)
