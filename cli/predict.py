"""``kdfast predict``: the label and class probabilities of each sentence, from arguments, a file or stdin."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import typer
from rich.console import Console

from kdfast.cli.main import app
from kdfast.errors import KdfastError

if TYPE_CHECKING:
    import numpy as np

FORMATS = ("auto", "table", "jsonl", "csv")
ENGINES = ("local", "ray")
err = Console(stderr=True)


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


def with_progress(items: Iterator[str], show: bool, total: int | None) -> Iterator[str]:
    if not show:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("predict", total=total)
        for i, text in enumerate(items, start=1):
            yield text
            if i % 256 == 0:
                progress.update(task, completed=i)


@app.command("predict")
def predict_command(
    run_dir: Path = typer.Argument(..., help="A teacher or student run folder."),
    texts: list[str] | None = typer.Argument(None, help="Sentences to classify (else --file, else standard input)."),
    file: Path | None = typer.Option(None, "--file", "-f", help="Plain text (one sentence per line), or a .csv, "
                                     ".tsv, .jsonl or .parquet file with --text-column (--engine ray: a folder or a "
                                     "glob of Parquet files)."),
    text_column: str | None = typer.Option(None, help="Column holding the text (default: text, else sentence)."),
    fmt: str = typer.Option("auto", "--format", help="table, jsonl or csv; auto: a table on a terminal, JSON Lines "
                            "otherwise."),
    out: Path | None = typer.Option(None, help="Write the predictions here instead of standard output."),
    runtime: str = typer.Option("auto", help="auto, torch, onnx, onnx-opt or onnx-int8; auto: the fastest ONNX "
                                "variant in RUN/onnx that passed its parity check, else torch."),
    batch_size: int = typer.Option(64, help="Sentences per forward pass (sorted by length)."),
    threads: int | None = typer.Option(None, help="Intra-op threads of ONNX Runtime or torch (default: theirs)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (the torch runtime)."),
    progress: bool = typer.Option(True, help="A progress bar on a terminal, and the speed at the end."),
    engine: str = typer.Option("local", help="local (this process) or ray (Ray Data over --workers actors; Parquet "
                               "in: a file, a folder or a glob; --out a folder, or one file by its suffix)."),
    keep_columns: str | None = typer.Option(None, help="Input columns to keep in a table written to --out, comma-"
                                            "separated (default: all; '' keeps none)."),
    bad_rows: str = typer.Option("error", help="A row whose text is null, not a string or blank: error (stop, "
                                 "naming it) or null (null label and probabilities, the reason in column 'error')."),
    rows_per_batch: int = typer.Option(4096, help="Rows read, scored and written at a time (a Ray batch)."),
    workers: int = typer.Option(1, help="--engine ray: actors, each with its own model and --threads threads."),
    address: str | None = typer.Option(None, help="--engine ray: a cluster to join (auto, or ray://HOST:10001); "
                                       "default: start Ray on this machine for the run."),
) -> None:
    """Classify sentences: each one's label and the probability of every class, in the input's order.

    A table file (Parquet, CSV, TSV, JSON Lines) or plain text with --out FILE.parquet/.csv/.tsv/.jsonl is scored
    in record batches: the input's columns kept, then label and p_<class> for each class."""
    if fmt not in FORMATS:
        raise KdfastError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if engine not in ENGINES:
        raise KdfastError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "ray" or (file is not None and out is not None and fmt == "auto" and columnar_out(out)):
        if texts:
            raise KdfastError("give sentences as arguments or --file, not both")
        if file is None or out is None:
            raise KdfastError("--engine ray needs --file and --out")
        predict_table(run_dir, str(file), out, engine, text_column, keep_columns, bad_rows, rows_per_batch,
                      runtime, batch_size, threads, device, workers, address, progress)
        return
    if engine != "local" or keep_columns is not None or bad_rows != "error" or workers != 1 or address is not None:
        raise KdfastError("--keep-columns, --bad-rows, --workers and --address apply to a file scored into a table "
                          "(--file and --out FILE.parquet/.csv/.tsv/.jsonl)")
    from kdfast.serve.inputs import Skipped, iter_texts
    from kdfast.serve.predict import CHUNK, Classifier

    start = time.perf_counter()
    clf = Classifier(run_dir, runtime, batch_size=batch_size, threads=threads, device=device)
    loaded = time.perf_counter()
    if progress:
        why = "" if clf.requested != "auto" else " (auto)"
        err.print(f"runtime {clf.runtime}{why}: {clf.backend.description}", highlight=False, soft_wrap=True)
    skipped = Skipped()
    items = iter_texts(texts, file, text_column, skipped=skipped)
    total = len(texts) if texts else None
    n = 0
    with ExitStack() as stack:
        stream = stack.enter_context(out.open("w", encoding="utf-8", newline="")) if out is not None else sys.stdout
        chosen = fmt if fmt != "auto" else ("table" if out is None and sys.stdout.isatty() else "jsonl")
        writer = Writer(chosen, clf.labels, stream)
        shown = progress and err.is_terminal
        for text, probs in clf.stream(with_progress(items, shown, total), chunk=max(batch_size * 16, CHUNK)):
            writer.write(text, probs)
            n += 1
        if n == 0:
            raise KdfastError(f"no sentences to classify{' in ' + str(file) if file else ''}"
                              + (f" ({skipped.blank} blank lines)" if skipped.blank else ""))
        writer.close()
    seconds = time.perf_counter() - loaded  # reading, predicting and writing; loading the model is apart
    if skipped.blank:
        err.print(f"[yellow]note[/]: skipped {skipped.blank} blank line(s) (line {', '.join(map(str, skipped.lines))}"
                  f"{', ...' if skipped.blank > len(skipped.lines) else ''})", highlight=False)
    if progress:
        err.print(f"{n} sentences in {seconds:.3f} s: {n / seconds:.1f} sentences/s (model loaded in "
                  f"{loaded - start:.3f} s)", highlight=False)
    if out is not None:
        err.print(f"wrote {out}", highlight=False)


def columnar_out(out: Path) -> bool:
    from kdfast.batch.columnar import OUT_SUFFIXES

    return out.suffix.lower() in OUT_SUFFIXES


def predict_table(run_dir: Path, file: str, out: Path, engine: str, text_column: str | None, keep_columns: str | None,
                  bad_rows: str, rows: int, runtime: str, batch_size: int, threads: int | None, device: str,
                  workers: int, address: str | None, progress: bool) -> None:
    """A file scored into a table (kdfast.batch): on this process, or on Ray."""
    from kdfast.batch.columnar import BAD_ROWS, parse_keep, predict_file

    if bad_rows not in BAD_ROWS:
        raise KdfastError(f"--bad-rows {bad_rows!r}: choose one of {', '.join(BAD_ROWS)}")
    keep = parse_keep(keep_columns)
    start = time.perf_counter()
    if engine == "ray":
        from kdfast.batch.ray_engine import run_ray

        result = run_ray(run_dir, file, out, runtime, workers, rows, batch_size, threads or 1, text_column, keep,
                         bad_rows, address, progress=progress and err.is_terminal)
        seconds = time.perf_counter() - start
        if progress:
            err.print(f"{result.rows} rows in {seconds:.3f} s on Ray ({workers} worker(s)): "
                      f"{result.rows / seconds:.1f} sentences/s, Ray started in {result.start_s:.2f} s",
                      highlight=False)
            err.print(f"wrote {out}" + (f" ({result.files} Parquet files)" if result.files > 1 else ""),
                      highlight=False)
        return
    from kdfast.batch.columnar import TableWriter, check_keep, open_source
    from kdfast.runs import run_labels
    from kdfast.serve.predict import Classifier

    src = open_source(file, text_column, keep)  # a bad input or flag fails before the model loads
    check_keep(src.columns, keep, run_labels(run_dir), bad_rows, file)
    TableWriter(out)
    clf = Classifier(run_dir, runtime, batch_size=batch_size, threads=threads, device=device)
    loaded = time.perf_counter()
    if progress:
        why = "" if clf.requested != "auto" else " (auto)"
        err.print(f"runtime {clf.runtime}{why}: {clf.backend.description}", highlight=False, soft_wrap=True)
    summary = predict_file(clf, src, out, text_column, keep, bad_rows, rows)
    seconds = time.perf_counter() - loaded
    if summary.blank:
        more = ", ..." if summary.blank > len(summary.blank_lines) else ""
        err.print(f"[yellow]note[/]: skipped {summary.blank} blank line(s) (line "
                  f"{', '.join(map(str, summary.blank_lines))}{more})", highlight=False)
    if summary.bad:
        err.print(f"[yellow]note[/]: {summary.bad} row(s) could not be scored: null, the reason in column 'error'",
                  highlight=False)
    if progress:
        err.print(f"{summary.rows} rows in {seconds:.3f} s: {summary.rows / seconds:.1f} sentences/s (model loaded in "
                  f"{loaded - start:.3f} s)", highlight=False)
        err.print(f"wrote {out}", highlight=False)


@app.command("label")
def label_command(
    teacher: Path = typer.Argument(..., help="A teacher run folder."),
    file: Path = typer.Option(..., "--file", "-f", help="Sentences: plain text (one per line), .parquet, .csv, .tsv "
                              "or .jsonl (--engine ray: plain text or Parquet)."),
    out: Path = typer.Option(..., help="The teacher-labels file to write (.parquet; see docs/batch.md)."),
    text_column: str | None = typer.Option(None, help="Column holding the text (default: text, else sentence)."),
    engine: str = typer.Option("local", help="local (this process) or ray (Ray Data over --workers actors)."),
    workers: int = typer.Option(1, help="--engine ray: actors, each with its own teacher and --threads threads."),
    address: str | None = typer.Option(None, help="--engine ray: a cluster to join (auto, or ray://HOST:10001)."),
    features: bool = typer.Option(True, help="Also the teacher's sentence representations (for distill's "
                                  "--feature-weight)."),
    rows_per_batch: int = typer.Option(4096, help="Rows read, scored and written at a time (a Ray batch)."),
    batch_size: int = typer.Option(64, help="Sentences per forward pass (sorted by length)."),
    threads: int | None = typer.Option(None, help="Intra-op threads per process or actor (default: torch's; 1 "
                                       "per actor)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    progress: bool = typer.Option(True, help="The speed at the end."),
) -> None:
    """The teacher's logits (and sentence representations) for every sentence of a large file, for distillation."""
    from kdfast.batch.label import label_file

    result = label_file(teacher, file, out, engine, workers, rows_per_batch, batch_size, threads, features,
                        text_column, address, device)
    if progress:
        extra = f", Ray started in {result.start_s:.2f} s" if engine == "ray" else ""
        err.print(f"{result.rows} sentences labelled in {result.seconds:.3f} s: "
                  f"{result.rows / max(result.seconds, 1e-9):.1f} sentences/s{extra}", highlight=False)
        err.print(f"wrote {out}", highlight=False)
