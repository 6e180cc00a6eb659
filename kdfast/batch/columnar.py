"""Tables in, tables out: a file's rows scored in record batches, the input's columns kept, memory bounded.

    file (Parquet / CSV / TSV / JSON Lines / plain text) ─ record batches of ``rows`` rows ─ score_table ─ writer
    (Parquet / CSV / TSV / JSON Lines by --out's suffix), one batch at a time, in the input's order

:func:`score_table` is the one function that turns a batch of rows into predictions: ``kdfast predict`` on a file
and Ray Data's actors (:mod:`kdfast.batch.ray_engine`) both call it with the same :class:`Classifier`, so their
answers cannot drift apart. The output is the kept input columns, then ``label`` (the class name) and one
``p_<class>`` column (float64) per class, in the run's label order; with ``bad_rows="null"`` also ``error``: null for a
scored row, the reason for a row that could not be (its label and probabilities are null).

A bad row is one whose text is null, not a string, or blank. ``bad_rows="error"`` (the default) stops at the first
with an error naming it (its row number locally; its other columns under Ray, which has no global row number).
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdfast.configs import BAD_ROWS
from kdfast.errors import KdfastError

if TYPE_CHECKING:
    import pyarrow as pa

    from kdfast.serve.predict import Classifier

ROWS = 4096  # rows read, scored and written at a time: memory stays constant whatever the file's size
TEXT_COLUMNS = ("text", "sentence")  # tried in this order when --text-column is not given (as kdfast.data does)
PARQUET = (".parquet", ".pq")
OUT_SUFFIXES = (*PARQUET, ".csv", ".tsv", ".jsonl")
IN_SUFFIXES = (*PARQUET, ".csv", ".tsv", ".jsonl", ".json")
ERROR_COLUMN = "error"


def probability_columns(labels: list[str]) -> list[str]:
    return [f"p_{name}" for name in labels]


def output_columns(labels: list[str], bad_rows: str) -> list[str]:
    """The columns predictions add to a row (the kept input columns come first)."""
    return ["label", *probability_columns(labels), *([ERROR_COLUMN] if bad_rows == "null" else [])]


# --- one batch


def bad_reasons(column: pa.ChunkedArray | pa.Array, given: list[str | None] | None = None) -> list[str | None]:
    """For each value of a text column: None when it can be scored, else why not."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if given is not None:
        return given
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        kind = "null" if pa.types.is_null(column.type) else f"not a string ({column.type})"
        return [kind if v is not None else "null" for v in column.to_pylist()]
    blank = pc.equal(pc.utf8_trim_whitespace(column), "").to_pylist()
    return ["null" if b is None else ("empty text" if b else None) for b in blank]


def describe_row(table: pa.Table, i: int, text_column: str, first_row: int | None) -> str:
    if first_row is not None:
        return f"row {first_row + i}"
    values = {name: table.column(name)[i].as_py() for name in table.column_names[:4]}
    return f"the row {json.dumps(values, default=str, ensure_ascii=False)[:200]}"


def score_table(clf: Classifier, table: pa.Table, text_column: str, keep: list[str] | None = None,
                bad_rows: str = "error", first_row: int | None = None,
                reasons: list[str | None] | None = None, where: str = "") -> pa.Table:
    """``table``'s kept columns (all when ``keep`` is None), plus ``label`` and ``p_<class>`` for each row, in order.

    ``first_row``: the 1-based number of the table's first row in its file, to name a bad row by; ``reasons``: bad
    rows a reader already found (JSON Lines values that are not strings, nulled in ``table``)."""
    import numpy as np
    import pyarrow as pa

    if bad_rows not in BAD_ROWS:
        raise KdfastError(f"--bad-rows {bad_rows!r}: choose error or null")
    if text_column not in table.column_names:
        raise KdfastError(f"{where or 'the input'}: no column {text_column!r} (its columns: "
                          f"{', '.join(map(repr, table.column_names))}); name the right one with --text-column")
    column = table.column(text_column)
    why = bad_reasons(column, reasons)
    good = [i for i, r in enumerate(why) if r is None]
    if bad_rows == "error" and len(good) < len(why):
        i = next(i for i, r in enumerate(why) if r is not None)
        raise KdfastError(f"{where + ': ' if where else ''}{describe_row(table, i, text_column, first_row)}: "
                          f"{why[i]} in column {text_column!r}; --bad-rows null scores it as null with the reason")
    texts = column.to_pylist() if len(good) == len(why) else [column[i].as_py() for i in good]
    probs = clf.predict_proba(texts) if texts else np.zeros((0, len(clf.labels)))  # (G, C)
    mask = np.ones(len(why), dtype=bool)
    mask[good] = False  # True where the row is bad: null in every prediction column
    label_ids = np.zeros(len(why), dtype=np.int64)
    full = np.zeros((len(why), len(clf.labels)))  # (N, C)
    if good:
        label_ids[good] = probs.argmax(axis=1)
        full[good] = probs
    out = table if keep is None else table.select(keep)
    out = out.append_column("label", pa.array([clf.labels[i] for i in label_ids], pa.string(), mask=mask))
    for j, name in enumerate(probability_columns(clf.labels)):
        out = out.append_column(name, pa.array(full[:, j], pa.float64(), mask=mask))
    if bad_rows == "null":
        out = out.append_column(ERROR_COLUMN, pa.array(why, pa.string()))
    return out


def check_keep(columns: list[str], keep: list[str] | None, labels: list[str], bad_rows: str, where: str) -> None:
    """Kept columns must exist and must not be overwritten by a prediction column."""
    missing = [c for c in keep or [] if c not in columns]
    if missing:
        raise KdfastError(f"--keep-columns: {where} has no column {', '.join(map(repr, missing))} (its columns: "
                          f"{', '.join(map(repr, columns))})")
    clash = [c for c in (columns if keep is None else keep) if c in output_columns(labels, bad_rows)]
    if clash:
        raise KdfastError(f"{where}: its column {', '.join(map(repr, clash))} would be overwritten by the "
                          f"prediction's; keep the others with --keep-columns (e.g. --keep-columns "
                          f"{','.join(c for c in columns if c not in clash) or 'NAME'})")


# --- reading


def expand(pattern: str | Path) -> list[Path]:
    """A file, a folder (its Parquet files) or a glob, as a sorted list of files; an error when there are none."""
    p = Path(pattern)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in PARQUET)
        if not files:
            raise KdfastError(f"--file {p}: a folder without Parquet files")
        return files
    if p.is_file():
        return [p]
    if glob.has_magic(str(pattern)):
        files = sorted(Path(f) for f in glob.glob(str(pattern), recursive=True) if Path(f).is_file())
        if not files:
            raise KdfastError(f"--file {pattern}: no file matches")
        return files
    raise KdfastError(f"--file {pattern}: no such file")


def pick_text_column(columns: list[str], wanted: str | None, where: str) -> str:
    for c in (wanted,) if wanted else TEXT_COLUMNS:
        if c in columns:
            return c
    names = " or ".join(repr(c) for c in ((wanted,) if wanted else TEXT_COLUMNS))
    raise KdfastError(f"{where}: no column {names} (its columns: {', '.join(map(repr, columns)) or 'none'}); "
                      "name the right one with --text-column")


@dataclass
class Chunk:
    table: pa.Table
    first_row: int  # 1-based number of its first row in the input
    reasons: list[str | None] | None = None  # bad rows the reader found (JSON Lines)


@dataclass
class Source:
    """An input's columns, its text column and its record batches (read lazily)."""

    name: str  # as the user gave it: a file, a folder or a glob
    files: list[Path]
    columns: list[str]
    text_column: str
    needed: list[str]  # the columns read: the kept ones and the text
    skipped_blank: list[int] = field(default_factory=list)  # plain text: blank lines skipped (line numbers)
    blank: int = 0

    def chunks(self, rows: int = ROWS) -> Iterator[Chunk]:
        first = 1
        for f in self.files:
            for chunk in read_file(f, self, rows, first):
                yield chunk
                first += chunk.table.num_rows


def open_source(pattern: str | Path, text_column: str | None, keep: list[str] | None) -> Source:
    import pyarrow.parquet as pq

    files = expand(pattern)
    kinds = {kind_of(f) for f in files}
    if len(kinds) > 1:
        raise KdfastError(f"--file {pattern}: files of different formats ({', '.join(sorted(kinds))})")
    kind, where = kinds.pop(), str(pattern)
    if kind == "parquet":
        schemas = []
        for f in files:
            try:
                schemas.append(pq.read_schema(f))
            except Exception as e:  # pyarrow's errors: not Parquet, truncated...
                raise KdfastError(f"{f}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        columns = list(schemas[0].names)
        for f, s in zip(files, schemas, strict=True):
            if list(s.names) != columns:
                raise KdfastError(f"{f}: its columns ({', '.join(s.names)}) differ from {files[0]}'s")
    elif kind in ("csv", "tsv"):
        columns = csv_header(files[0], "\t" if kind == "tsv" else ",")
    elif kind == "jsonl":
        columns = jsonl_columns(files[0])
    else:
        if text_column is not None:
            raise KdfastError(f"--text-column: {pattern} is plain text (one sentence per line); --text-column is "
                              "for Parquet, .csv, .tsv and .jsonl files")
        columns = ["text"]
    if len(files) > 1 and kind != "parquet":
        raise KdfastError(f"--file {pattern}: several files are read only when they are Parquet")
    text = pick_text_column(columns, text_column, where)
    needed = columns if keep is None else [c for c in columns if c in keep or c == text]
    return Source(where, files, columns, text, needed)


def kind_of(path: Path) -> str:
    s = path.suffix.lower()
    return {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
            ".json": "jsonl"}.get(s, "text")


def csv_header(path: Path, delimiter: str) -> list[str]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f, delimiter=delimiter), None)
    except UnicodeDecodeError as e:
        raise KdfastError(f"{path}: not valid UTF-8 ({e.reason})") from None
    if not header:
        raise KdfastError(f"{path}: empty file (expected a header line with the column names)")
    return header


def jsonl_columns(path: Path) -> list[str]:
    """The keys of the first JSON object (later rows may add or miss keys: missing values are null)."""
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    row = parse_json_line(line, path, lineno)
                    return list(row)
    except UnicodeDecodeError as e:
        raise KdfastError(f"{path}: not valid UTF-8 ({e.reason})") from None
    raise KdfastError(f"{path}: no rows")


def parse_json_line(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise KdfastError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
    if not isinstance(row, dict):
        raise KdfastError(f"{path}:{lineno}: expected one JSON object per line, found {type(row).__name__}")
    return row


def read_file(path: Path, src: Source, rows: int, first: int) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    kind = kind_of(path)
    try:
        if kind == "parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=src.needed):
                yield Chunk(pa.Table.from_batches([batch]), first)
                first += batch.num_rows
        elif kind in ("csv", "tsv"):  # every column read as text, as CSV has no types ("007" stays "007")
            types = {c: pa.string() for c in src.columns}
            reader = pcsv.open_csv(
                path, read_options=pcsv.ReadOptions(block_size=max(1 << 20, rows * 256)),
                parse_options=pcsv.ParseOptions(delimiter="\t" if kind == "tsv" else ",", newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(column_types=types, include_columns=src.needed))
            for batch in reader:
                yield Chunk(pa.Table.from_batches([batch]), first)
                first += batch.num_rows
        elif kind == "jsonl":
            yield from jsonl_chunks(path, src, rows, first)
        else:
            yield from text_chunks(path, src, rows, first)
    except (pa.ArrowInvalid, OSError) as e:
        raise KdfastError(f"{path}: {str(e).splitlines()[0]}") from None


def jsonl_chunks(path: Path, src: Source, rows: int, first: int) -> Iterator[Chunk]:
    """JSON Lines read with the standard library: a text value that is not a string is a bad row (its reason kept),
    not a failure to read the file."""
    import pyarrow as pa

    buf: list[dict[str, Any]] = []
    reasons: list[str | None] = []
    schema: pa.Schema | None = None

    def flush() -> Chunk:
        nonlocal schema
        try:
            table = pa.Table.from_pylist(buf, schema=schema) if schema is not None else pa.Table.from_pylist(buf)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise KdfastError(f"{path}: rows {first}-{first + len(buf) - 1}: a column changes type "
                              f"({str(e).splitlines()[0]})") from None
        if schema is None or any(pa.types.is_null(t) for t in schema.types):
            schema = unify(schema, table.schema)
            table = table.cast(schema)
        return Chunk(table.select(src.needed), first, list(reasons))

    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = parse_json_line(line, path, lineno)
            record = {c: row.get(c) for c in src.columns}
            value = record[src.text_column]
            if value is None:
                reasons.append("null")
            elif isinstance(value, str):
                reasons.append(None if value.strip() else "empty text")
            else:
                reasons.append(f"not a string ({type(value).__name__})")
                record[src.text_column] = None
            buf.append(record)
            if len(buf) == rows:
                yield flush()
                first += len(buf)
                buf, reasons = [], []
    if buf:
        yield flush()


def unify(old: pa.Schema | None, new: pa.Schema) -> pa.Schema:
    """``new``, with ``old``'s type for any column ``new`` only saw nulls in (and the reverse)."""
    import pyarrow as pa

    if old is None:
        return new
    return pa.schema([(o.name, n.type if pa.types.is_null(o.type) else o.type) for o, n in zip(old, new, strict=True)])


def text_chunks(path: Path, src: Source, rows: int, first: int) -> Iterator[Chunk]:
    """Plain text, one sentence per line; blank lines are not sentences: skipped and counted (as predict does)."""
    import pyarrow as pa

    buf: list[str] = []
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                text = line.rstrip("\r\n")
                if not text.strip():
                    src.blank += 1
                    if len(src.skipped_blank) < 5:
                        src.skipped_blank.append(lineno)
                    continue
                buf.append(text)
                if len(buf) == rows:
                    yield Chunk(pa.table({"text": pa.array(buf, pa.string())}), first)
                    first, buf = first + len(buf), []
    except UnicodeDecodeError as e:
        raise KdfastError(f"{path}: not valid UTF-8 ({e.reason})") from None
    if buf:
        yield Chunk(pa.table({"text": pa.array(buf, pa.string())}), first)


# --- writing


class TableWriter:
    """Record batches out to one file, by its suffix: Parquet, CSV, TSV or JSON Lines. Written to a temporary file
    beside ``path`` and renamed by :meth:`close`, so that a failed run leaves no half-written output."""

    def __init__(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if suffix not in OUT_SUFFIXES:
            raise KdfastError(f"--out {path}: the suffix says the format: {', '.join(OUT_SUFFIXES)}")
        if path.parent and not path.parent.exists():
            raise KdfastError(f"--out {path}: no folder {path.parent}")
        self.path, self.kind = path, "parquet" if suffix in PARQUET else suffix[1:]
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.writer: Any = None
        self.file: Any = None
        self.schema: pa.Schema | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        if self.schema is None:
            self.schema = table.schema
            if self.kind == "parquet":
                self.writer = pq.ParquetWriter(self.tmp, self.schema)
            elif self.kind in ("csv", "tsv"):
                options = pcsv.WriteOptions(delimiter="\t" if self.kind == "tsv" else ",")
                self.writer = pcsv.CSVWriter(self.tmp, self.schema, write_options=options)
            else:
                self.file = self.tmp.open("w", encoding="utf-8")
        elif table.schema != self.schema:
            try:
                table = table.cast(self.schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
                raise KdfastError(f"the input's columns change type between rows ({str(e).splitlines()[0]})") from None
        if self.file is not None:
            self.file.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in table.to_pylist())
        else:
            self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()
        if self.schema is not None:
            self.tmp.replace(self.path)

    def abort(self) -> None:
        for closer in (self.writer, self.file):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass
        self.tmp.unlink(missing_ok=True)


# --- the local engine


@dataclass
class Summary:
    rows: int  # rows written
    bad: int  # rows scored as null (bad_rows="null")
    blank: int  # blank lines skipped (plain text)
    blank_lines: list[int]


def predict_file(clf: Classifier, file: str | Path | Source, out: Path, text_column: str | None = None,
                 keep: list[str] | None = None, bad_rows: str = "error", rows: int = ROWS,
                 progress: Any = None) -> Summary:
    """Score every row of ``file`` (a Parquet file, folder or glob, CSV, TSV, JSON Lines or plain text, or a
    :class:`Source` already opened) into ``out`` (Parquet, CSV, TSV or JSON Lines by its suffix), in order,
    ``rows`` rows in memory at a time."""
    if rows < 1:
        raise KdfastError(f"--rows-per-batch must be positive, got {rows}")
    src = file if isinstance(file, Source) else open_source(file, text_column, keep)
    file = src.name
    check_keep(src.columns, keep, clf.labels, bad_rows, file)
    keep_cols = None if keep is None else [c for c in src.needed if c in keep]
    writer = TableWriter(out)
    bad = 0
    try:
        for chunk in src.chunks(rows):
            table = score_table(clf, chunk.table, src.text_column, keep_cols, bad_rows, chunk.first_row,
                                chunk.reasons, where=file)
            if bad_rows == "null":
                bad += table.num_rows - table.column(ERROR_COLUMN).null_count
            writer.write(table)
            if progress is not None:
                progress(writer.rows)
        if writer.rows == 0:
            raise KdfastError(f"no sentences to classify in {file}"
                              + (f" ({src.blank} blank lines)" if src.blank else ""))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return Summary(writer.rows, bad, src.blank, src.skipped_blank)


def parse_keep(value: str | None) -> list[str] | None:
    """``--keep-columns``: None (all), or the comma-separated names ('' keeps none)."""
    if value is None:
        return None
    return [c.strip() for c in value.split(",") if c.strip()]
