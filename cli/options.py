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

# Every training command
BATCH_SIZE = typer.Option(32, help="Sentences per optimizer step, over all processes.")
SEED = typer.Option(0)
MAX_TRAIN_SAMPLES = typer.Option(None, help="Train on a seeded subset of this many sentences.")
DEVICE = typer.Option("auto", help="auto, cpu or cuda.")
OVERWRITE = typer.Option(False, help="Replace a non-empty --out.")
PROGRESS = typer.Option(True, help="Show the progress bar.")
LR = "Peak learning rate (AdamW, linear warm-up and decay)."  # the help; each command has its own default

# The RNN student, distilled (kdfast distill) or from the labels alone (kdfast train rnn)
CELL = typer.Option("lstm", help="lstm or gru.")
HIDDEN = typer.Option(256, help="Hidden size of each direction.")
EMBED_DIM = typer.Option(128, help="Word embedding width.")
LAYERS = typer.Option(1)
BIDIRECTIONAL = typer.Option(True, help="A second RNN reads each sentence backwards.")
DROPOUT = typer.Option(0.2)
POOLING = typer.Option("max", help="mean, max or last (valid steps only).")
MIN_FREQ = typer.Option(2, help="Rarer training words map to <unk>.")
COMPILE = typer.Option(False, "--compile", help="torch.compile the cell-loop student.")
STUDENT_EPOCHS = typer.Option(10)
STUDENT_LR = typer.Option(2e-3, help=LR)
