"""``kdfast predict``: each sentence's label and class probabilities, in the input's order.

Two paths. Sentences from arguments, a file or standard input go to a stream: a table on a terminal, JSON Lines or
CSV, written as they are answered (``predict_stream``). A table file (Parquet, CSV, TSV, JSON Lines, or plain text)
scored into a table file is read, scored and written in record batches, on this process or on Ray
(``predict_table``; :mod:`kdfast.batch`). What is said along the way (the runtime chosen, notes, the speed) goes to
the console given, on stderr."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rich.console import Console

from kdfast.configs import PredictConfig
from kdfast.errors import KdfastError

if TYPE_CHECKING:
    import numpy as np

    from kdfast.serve.predict import Classifier


class Writer:
    """Rows out as a table (a terminal), JSON Lines or CSV, one at a time (the table is printed at the end)."""

    def __init__(self, fmt: str, labels: list[str], out: TextIO) -> None:
        self.fmt, self.labels, self.out = fmt, labels, out
        self.rows: list[tuple[str, str, np.ndarray]] = []
        if fmt == "csv":
            self.csv = csv.writer(out)
            self.csv.writerow(["text", "label", *(f"p_{name}" for name in labels)])

    def write(self, text: str, probs: np.ndarray) -> None:
        label = self.labels[int(probs.argmax())]
        if self.fmt == "jsonl":
            self.out.write(json.dumps({"text": text, "label": label, "probs": dict(zip(self.labels, map(float, probs),
                                                                                       strict=True))}) + "\n")
        elif self.fmt == "csv":
            self.csv.writerow([text, label, *(f"{p:.6f}" for p in probs)])
        else:
            self.rows.append((text, label, probs))

    def close(self) -> None:
        if self.fmt != "table":
            return
        from rich.table import Table

        table = Table()
        table.add_column("text", overflow="fold")
        table.add_column("label", no_wrap=True)
        for name in self.labels:
            table.add_column(f"p({name})", justify="right")
        for text, label, probs in self.rows:
            table.add_row(text, label, *(f"{p:.4f}" for p in probs))
        Console(file=self.out).print(table)


def with_progress(items: Iterator[str], console: Console | None, total: int | None) -> Iterator[str]:
    """``items``, with a progress bar on ``console`` (none when None)."""
    if console is None:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("predict", total=total)
        for i, text in enumerate(items, start=1):
            yield text
            if i % 256 == 0:
                progress.update(task, completed=i)


def columnar_out(out: Path) -> bool:
    from kdfast.batch.columnar import OUT_SUFFIXES

    return out.suffix.lower() in OUT_SUFFIXES


def run(cfg: PredictConfig, err: Console) -> None:
    """Classify ``cfg``'s sentences; ``err`` is told what happens (the stderr console)."""
    cfg.validate()
    if cfg.engine == "ray" or (cfg.file is not None and cfg.out is not None and cfg.format == "auto"
                               and columnar_out(cfg.out)):
        if cfg.texts:
            raise KdfastError("give sentences as arguments or --file, not both")
        if cfg.file is None or cfg.out is None:
            raise KdfastError("--engine ray needs --file and --out")
        predict_table(cfg, err)
        return
    if cfg.keep_columns is not None or cfg.bad_rows != "error" or cfg.workers != 1 or cfg.address is not None:
        raise KdfastError("--keep-columns, --bad-rows, --workers and --address apply to a file scored into a table "
                          "(--file and --out FILE.parquet/.csv/.tsv/.jsonl)")
    predict_stream(cfg, err)


def say_runtime(clf: Classifier, err: Console) -> None:
    why = "" if clf.requested != "auto" else " (auto)"
    err.print(f"runtime {clf.runtime}{why}: {clf.backend.description}", highlight=False, soft_wrap=True)


def say_blank(err: Console, blank: int, lines: list[int]) -> None:
    more = ", ..." if blank > len(lines) else ""
    err.print(f"[yellow]note[/]: skipped {blank} blank line(s) (line {', '.join(map(str, lines))}{more})",
              highlight=False)


def predict_stream(cfg: PredictConfig, err: Console) -> None:
    """Sentences from arguments, ``cfg.file`` or standard input, answered as a stream (``cfg.format``)."""
    from kdfast.serve.inputs import Skipped, iter_texts
    from kdfast.serve.predict import CHUNK, Classifier

    start = time.perf_counter()
    clf = Classifier(cfg.run_dir, cfg.runtime, batch_size=cfg.batch_size, threads=cfg.threads, device=cfg.device)
    loaded = time.perf_counter()
    if cfg.progress:
        say_runtime(clf, err)
    skipped = Skipped()
    items = iter_texts(cfg.texts or None, cfg.file, cfg.text_column, skipped=skipped)
    total = len(cfg.texts) if cfg.texts else None
    n = 0
    out = cfg.out
    with ExitStack() as stack:
        stream = stack.enter_context(out.open("w", encoding="utf-8", newline="")) if out is not None else sys.stdout
        chosen = cfg.format if cfg.format != "auto" else ("table" if out is None and sys.stdout.isatty() else "jsonl")
        writer = Writer(chosen, clf.labels, stream)
        bar = err if cfg.progress and err.is_terminal else None
        for text, probs in clf.stream(with_progress(items, bar, total), chunk=max(cfg.batch_size * 16, CHUNK)):
            writer.write(text, probs)
            n += 1
        if n == 0:
            raise KdfastError(f"no sentences to classify{' in ' + str(cfg.file) if cfg.file else ''}"
                              + (f" ({skipped.blank} blank lines)" if skipped.blank else ""))
        writer.close()
    seconds = time.perf_counter() - loaded  # reading, predicting and writing; loading the model is apart
    if skipped.blank:
        say_blank(err, skipped.blank, skipped.lines)
    if cfg.progress:
        err.print(f"{n} sentences in {seconds:.3f} s: {n / seconds:.1f} sentences/s (model loaded in "
                  f"{loaded - start:.3f} s)", highlight=False)
    if out is not None:
        err.print(f"wrote {out}", highlight=False)


def predict_table(cfg: PredictConfig, err: Console) -> None:
    """``cfg.file`` scored into the table file ``cfg.out`` (kdfast.batch): on this process, or on Ray."""
    from kdfast.batch.columnar import parse_keep, predict_file

    assert cfg.file is not None and cfg.out is not None
    keep = parse_keep(cfg.keep_columns)
    start = time.perf_counter()
    if cfg.engine == "ray":
        from kdfast.batch.ray_engine import run_ray

        result = run_ray(cfg.run_dir, str(cfg.file), cfg.out, cfg.runtime, cfg.workers, cfg.rows_per_batch,
                         cfg.batch_size, cfg.threads or 1, cfg.text_column, keep, cfg.bad_rows, cfg.address,
                         progress=cfg.progress and err.is_terminal)
        seconds = time.perf_counter() - start
        if cfg.progress:
            err.print(f"{result.rows} rows in {seconds:.3f} s on Ray ({cfg.workers} worker(s)): "
                      f"{result.rows / seconds:.1f} sentences/s, Ray started in {result.start_s:.2f} s",
                      highlight=False, soft_wrap=True)
            err.print(f"wrote {cfg.out}" + (f" ({result.files} Parquet files)" if result.files > 1 else ""),
                      highlight=False)
        return
    from kdfast.batch.columnar import TableWriter, check_keep, open_source
    from kdfast.runs import run_labels
    from kdfast.serve.predict import Classifier

    src = open_source(str(cfg.file), cfg.text_column, keep)  # a bad input or flag fails before the model loads
    check_keep(src.columns, keep, run_labels(cfg.run_dir), cfg.bad_rows, str(cfg.file))
    TableWriter(cfg.out)
    clf = Classifier(cfg.run_dir, cfg.runtime, batch_size=cfg.batch_size, threads=cfg.threads, device=cfg.device)
    loaded = time.perf_counter()
    if cfg.progress:
        say_runtime(clf, err)
    summary = predict_file(clf, src, cfg.out, cfg.text_column, keep, cfg.bad_rows, cfg.rows_per_batch)
    seconds = time.perf_counter() - loaded
    if summary.blank:
        say_blank(err, summary.blank, summary.blank_lines)
    if summary.bad:
        err.print(f"[yellow]note[/]: {summary.bad} row(s) could not be scored: null, the reason in column 'error'",
                  highlight=False)
    if cfg.progress:
        err.print(f"{summary.rows} rows in {seconds:.3f} s: {summary.rows / seconds:.1f} sentences/s (model loaded in "
                  f"{loaded - start:.3f} s)", highlight=False)
        err.print(f"wrote {cfg.out}", highlight=False)
