"""Sentences to classify, read lazily: from the command line, a file or standard input.

A file is plain text (one sentence per line) unless its suffix says CSV, TSV or JSON Lines, which
:func:`kdfast.data.tabular.iter_rows` streams (``--text-column``, default ``text`` else ``sentence``). Blank lines of a
plain-text file are not sentences: they are skipped and counted, so the caller can say how many.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from kdfast.errors import KdfastError


@dataclass
class Skipped:
    blank: int = 0  # blank lines of a plain-text input, skipped
    lines: list[int] = field(default_factory=list)  # their line numbers (the first few)


def lines_of(f: TextIO, skipped: Skipped) -> Iterator[str]:
    for lineno, line in enumerate(f, start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield text
        else:
            skipped.blank += 1
            if len(skipped.lines) < 5:
                skipped.lines.append(lineno)


def iter_texts(texts: list[str] | None, file: Path | None, text_column: str | None = None,
               stdin: TextIO | None = None, skipped: Skipped | None = None) -> Iterator[str]:
    """The sentences of the arguments, else of ``file``, else of standard input, one at a time."""
    skipped = skipped if skipped is not None else Skipped()
    if texts and file is not None:
        raise KdfastError("give sentences as arguments or --file, not both")
    if texts:
        yield from texts
        return
    if file is not None:
        from kdfast.data.tabular import is_table, iter_rows

        if not file.is_file():
            raise KdfastError(f"--file {file}: no such file")
        if is_table(file):
            for text, _ in iter_rows(file, text_column, label_column=None):
                yield text
            return
        if text_column is not None:
            raise KdfastError(f"--text-column: {file} is plain text (one sentence per line); --text-column is for "
                              ".csv, .tsv and .jsonl files")
        try:
            with file.open(encoding="utf-8") as f:
                yield from lines_of(f, skipped)
        except UnicodeDecodeError as e:
            raise KdfastError(f"{file}: not valid UTF-8 ({e.reason})") from None
        return
    yield from lines_of(stdin if stdin is not None else sys.stdin, skipped)
