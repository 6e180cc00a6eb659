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
                                     ".tsv or .jsonl file with --text-column."),
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
) -> None:
    """Classify sentences: each one's label and the probability of every class, in the input's order."""
    if fmt not in FORMATS:
        raise KdfastError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
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
