"""CSV, TSV and JSON Lines files with a header, read with the standard library.

A file's format is its suffix: ``.csv`` (comma), ``.tsv`` (tab), ``.jsonl`` or ``.json`` (one JSON object per
line). The text column is ``--text-column`` (default: ``text``, else ``sentence``), the label column
``--label-column`` (default ``label``). Rows are read one at a time (:func:`iter_rows`), so a file of any size
streams; every error names the file and the line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from kdfast.data.labels import RawLabel, parse_label
from kdfast.errors import KdfastError

DELIMITERS = {".csv": ",", ".tsv": "\t"}
JSON_SUFFIXES = (".jsonl", ".json")
SUFFIXES = (*DELIMITERS, *JSON_SUFFIXES)
TEXT_COLUMNS = ("text", "sentence")  # tried in this order when --text-column is not given
LABEL_COLUMN = "label"


def is_table(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def pick_column(columns: list[str], wanted: str | None, defaults: tuple[str, ...], flag: str, path: Path) -> str:
    """The column named ``wanted``, else the first of ``defaults`` the file has; an error listing the columns."""
    candidates = (wanted,) if wanted else defaults
    for c in candidates:
        if c in columns:
            return c
    names = " or ".join(repr(c) for c in candidates)
    raise KdfastError(f"{path}: no column {names} (its columns: {', '.join(map(repr, columns)) or 'none'}); "
                      f"name the right one with {flag}")


def _records(path: Path) -> Iterator[tuple[dict[str, object], list[str], int]]:
    """(row, the file's columns, line number) for every row of a table file."""
    try:
        f = path.open(encoding="utf-8-sig", newline="")
    except OSError as e:
        raise KdfastError(f"cannot read {path}: {e.strerror}") from None
    with f:
        try:
            if path.suffix.lower() in DELIMITERS:
                reader = csv.DictReader(f, delimiter=DELIMITERS[path.suffix.lower()])
                columns = list(reader.fieldnames or [])
                if not columns:
                    raise KdfastError(f"{path}: empty file (expected a header line with the column names)")
                for row in reader:
                    if None in row or any(v is None for v in row.values()):
                        found = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                        raise KdfastError(f"{path}:{reader.line_num}: expected {len(columns)} columns "
                                          f"({', '.join(columns)}), found {found}")
                    yield row, columns, reader.line_num
            else:
                columns = []
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise KdfastError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise KdfastError(f"{path}:{lineno}: expected one JSON object per line, found "
                                          f"{type(row).__name__}")
                    columns = columns or list(row)
                    yield row, columns, lineno
        except UnicodeDecodeError as e:
            raise KdfastError(f"{path}: not valid UTF-8 ({e.reason})") from None
        except csv.Error as e:
            raise KdfastError(f"{path}: {e}") from None


def iter_rows(path: Path, text_column: str | None = None, label_column: str | None = LABEL_COLUMN
              ) -> Iterator[tuple[str, RawLabel | None]]:
    """(text, label) of every row of ``path``, in order; the label is None when ``label_column`` is None.
    A missing column, an empty text or an empty label is an error naming the file and line."""
    path = Path(path)
    text_col = label_col = None
    for row, columns, lineno in _records(path):
        where = f"{path}:{lineno}"
        if text_col is None:
            text_col = pick_column(columns, text_column, TEXT_COLUMNS, "--text-column", path)
            if label_column is not None:
                label_col = pick_column(columns, label_column, (label_column,), "--label-column", path)
        if text_col not in row:
            raise KdfastError(f"{where}: no {text_col!r} field")
        text = row[text_col]
        if not isinstance(text, str) or not text.strip():
            raise KdfastError(f"{where}: empty text" if not text else f"{where}: text must be a string")
        label = None
        if label_col is not None:
            if label_col not in row:
                raise KdfastError(f"{where}: no {label_col!r} field")
            label = parse_label(row[label_col], where)
        yield text, label


def read_table(path: Path, text_column: str | None, label_column: str) -> tuple[list[str], list[RawLabel]]:
    """Every row's text and label; an error when the file has no rows."""
    texts, labels = [], []
    for text, label in iter_rows(path, text_column, label_column):
        assert label is not None
        texts.append(text)
        labels.append(label)
    if not texts:
        raise KdfastError(f"{path}: no rows")
    return texts, labels


def find_split(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first ``NAME.SUFFIX`` in ``folder`` for ``names`` in order, any supported suffix."""
    for name in names:
        for suffix in SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    return None
