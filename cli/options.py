"""Options several commands share, declared once (Typer reads a default's OptionInfo; sharing one is safe)."""

from __future__ import annotations

import typer

DATA = typer.Option("cola", help="'cola' (bundled CoLA, offline), a folder (train.* and dev.*, or CoLA's .tsv "
                    "files), a CSV/TSV/JSON Lines file with --dev-data, or hub:OWNER/NAME (optionally /CONFIG).")
DEV_DATA = typer.Option(None, help="The dev file, when --data is one training file.")
TEXT_COLUMN = typer.Option(None, help="Column holding the text (default: text, else sentence).")
LABEL_COLUMN = typer.Option(None, help="Column holding the label, integers or strings (default: label).")
SELECT_BY = typer.Option("mcc", help="Dev score that picks the best epoch: mcc, acc or f1.")
GRAD_ACCUM = typer.Option(1, help="Micro-batches per optimizer step on each process (--batch-size stays the global "
                          "batch: it must divide by processes x grad-accum).")
PRECISION = typer.Option("fp32", help="fp32, bf16 or fp16 (autocast on CUDA; fp16 with a gradient scaler). The CPU "
                         "trains in fp32.")
