"""Options several commands share, declared once (Typer reads a default's OptionInfo; sharing one is safe)."""

from __future__ import annotations

import typer

DATA = typer.Option("cola", help="'cola' (bundled CoLA, offline), a folder (train.* and dev.*, or CoLA's .tsv "
                    "files), a CSV/TSV/JSON Lines file with --dev-data, or hub:OWNER/NAME (optionally /CONFIG).")
DEV_DATA = typer.Option(None, help="The dev file, when --data is one training file.")
TEXT_COLUMN = typer.Option(None, help="Column holding the text (default: text, else sentence).")
LABEL_COLUMN = typer.Option(None, help="Column holding the label, integers or strings (default: label).")
SELECT_BY = typer.Option("mcc", help="Dev score that picks the best epoch: mcc, acc or f1.")
