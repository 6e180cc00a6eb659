"""``kdfast distill`` and ``kdfast train rnn``: the RNN student, distilled from a teacher run or trained from scratch;
``kdfast compare``: their best dev scores side by side, and dev MCC per epoch in one plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from kdfast.cli import options
from kdfast.cli.main import app, train_app
from kdfast.cli.output import console, dev_table, print_verdict
from kdfast.runs import METRICS_FILE, read_json, read_run_info


def _report(metrics: dict[str, Any], name: str, out: Path) -> None:
    best = metrics["best"]
    console.print(dev_table(f"{name}, best epoch {best['epoch']}", [(name, best)]))
    console.print(f"parameters {metrics['total_params']:,} ({metrics['non_embedding_params']:,} outside the "
                  f"embedding), vocabulary {metrics['data']['vocab']:,} words")
    kept = metrics.get("teacher", {}).get("mcc_kept")
    if kept is not None:
        console.print(f"dev MCC kept from the teacher: {kept:.1%}")
    print_verdict(metrics)
    console.print(f"wrote {out}")


@app.command("distill")
def distill(
    teacher: Path = typer.Option(Path("runs/teacher"), help="Teacher run folder (kdfast train lora)."),
    data: str = options.DATA,
    dev_data: str | None = options.DEV_DATA,
    text_column: str | None = options.TEXT_COLUMN,
    label_column: str | None = options.LABEL_COLUMN,
    out: Path = typer.Option(Path("runs/student"), help="Run folder to write."),
    epochs: int = options.STUDENT_EPOCHS,
    lr: float = options.STUDENT_LR,
    temperature: float = typer.Option(2.0, help="Softmax temperature T of the KL term."),
    alpha: float = typer.Option(0.5, help="Weight of the KL term; 1 - alpha on cross-entropy with the labels."),
    recipe: str | None = typer.Option(None, help="Defaults for --augment, --feature-weight, --word-weight and "
                                      "--embed-init: 'words' (the default: 4, 1, 1, context), 'sentence' (the "
                                      "previous default: 4, 1, 0, none) or 'plain' (0, 0, 0, none). Options given "
                                      "explicitly win."),
    augment: int | None = typer.Option(None, help="Synthetic sentences per training sentence, labelled by the "
                                       "teacher (mask, swap with a teacher-embedding neighbour, n-gram). Default 4 "
                                       "(0 with --plain)."),
    feature_weight: float | None = typer.Option(None, help="Weight beta of fitting the teacher's sentence "
                                                "representation (mean-squared error through a linear map; 0: off). "
                                                "Default 1 (0 with --plain)."),
    word_weight: float | None = typer.Option(None, help="Weight gamma of fitting the teacher's contextual word "
                                             "vectors (each word's sub-word states averaged) with the student's "
                                             "per-step states (cosine through a linear map; 0: off)."),
    word_layer: int | None = typer.Option(None, help="The teacher's hidden layer fitted by --word-weight and "
                                          "averaged by --embed-init context (-1: the last, 0: its input "
                                          "embeddings). Default: two thirds of the way up (4 of MiniLM-L6's 6, "
                                          "measured better than the last; 8 of GPT-2's 12, assumed)."),
    embed_init: str | None = typer.Option(None, help="Initialise the student's word embeddings from the teacher: "
                                          "'teacher' (its input embeddings, sub-words averaged), 'context' (its "
                                          "word vectors averaged over the transfer set) or 'none'; PCA to "
                                          "--embed-dim."),
    plain: bool = typer.Option(False, "--plain", help="--recipe plain: Hinton's loss alone, no transfer set, no "
                               "representation terms (the first default)."),
    reuse_logits: Path | None = typer.Option(None, help="A student run whose cached teacher logits to reuse."),
    transfer: Path | None = typer.Option(None, help="Your unlabeled text, more transfer set: plain text (a sentence "
                                         "a line), or CSV/TSV/JSON Lines (--text-column); any size: streamed, "
                                         "labelled by the teacher in parts, cached, resumed after an interruption."),
    transfer_cache: Path | None = typer.Option(None, help="Folder of --transfer's labelled parts (default: "
                                               "OUT/transfer_cache); a rerun keeps the parts already there."),
    transfer_part_lines: int = typer.Option(4096, help="Lines per labelled part of --transfer."),
    cell: str = options.CELL,
    hidden: int = options.HIDDEN,
    embed_dim: int = options.EMBED_DIM,
    layers: int = options.LAYERS,
    bidirectional: bool = options.BIDIRECTIONAL,
    dropout: float = options.DROPOUT,
    pooling: str = options.POOLING,
    min_freq: int = options.MIN_FREQ,
    compile: bool = options.COMPILE,
    seed: int = options.SEED,
    select_by: str = options.SELECT_BY,
    max_train_samples: int | None = options.MAX_TRAIN_SAMPLES,
    batch_size: int = options.BATCH_SIZE,
    device: str = options.DEVICE,
    grad_accum: int = options.GRAD_ACCUM,
    precision: str = options.PRECISION,
    overwrite: bool = options.OVERWRITE,
    progress: bool = options.PROGRESS,
) -> None:
    """Distil a teacher run into the RNN student. Writes metrics.json, student.safetensors, student_config.json,
    vocab.json, teacher_logits.safetensors and curves.png."""
    fields = dict(locals())  # every option is a field of the config
    from kdfast.train.distill import DistillConfig, run

    cfg = DistillConfig(**fields)
    _report(run(cfg), "distilled student", out)


@train_app.command("rnn")
def train_rnn(
    data: str = options.DATA,
    dev_data: str | None = options.DEV_DATA,
    text_column: str | None = options.TEXT_COLUMN,
    label_column: str | None = options.LABEL_COLUMN,
    out: Path = typer.Option(Path("runs/rnn"), help="Run folder to write."),
    epochs: int = options.STUDENT_EPOCHS,
    lr: float = options.STUDENT_LR,
    cell: str = options.CELL,
    hidden: int = options.HIDDEN,
    embed_dim: int = options.EMBED_DIM,
    layers: int = options.LAYERS,
    bidirectional: bool = options.BIDIRECTIONAL,
    dropout: float = options.DROPOUT,
    pooling: str = options.POOLING,
    min_freq: int = options.MIN_FREQ,
    compile: bool = options.COMPILE,
    seed: int = options.SEED,
    select_by: str = options.SELECT_BY,
    max_train_samples: int | None = options.MAX_TRAIN_SAMPLES,
    batch_size: int = options.BATCH_SIZE,
    device: str = options.DEVICE,
    grad_accum: int = options.GRAD_ACCUM,
    precision: str = options.PRECISION,
    overwrite: bool = options.OVERWRITE,
    progress: bool = options.PROGRESS,
) -> None:
    """Train the RNN student on the labels alone: the baseline for distillation. Same files as distill, less the
    teacher's logits."""
    fields = dict(locals())  # every option is a field of the config
    from kdfast.train.distill import ScratchConfig, run

    cfg = ScratchConfig(**fields)
    _report(run(cfg), "student from scratch", out)


@app.command("compare")
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders (teacher or student)."),
    plot: Path | None = typer.Option(None, help="Write dev MCC per epoch of every run to this PNG."),
) -> None:
    """Best dev scores of several runs in one table (from their metrics.json), and optionally one plot."""
    rows = []
    for r in runs:
        info = read_run_info(r)
        rows.append((f"{r} ({info.get('mode') or info['kind']})", read_json(r / METRICS_FILE)["best"]))
    console.print(dev_table("best epoch of each run", rows))
    if plot is not None:
        from kdfast.plots import plot_comparison

        plot_comparison(runs, plot)
        console.print(f"wrote {plot}")
