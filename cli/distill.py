"""``kdfast distill`` and ``kdfast train rnn``: the RNN student, distilled from a teacher run or trained from scratch;
``kdfast compare``: their best dev scores side by side, and dev MCC per epoch in one plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from kdfast.cli.main import app, train_app
from kdfast.cli.output import console, dev_table, print_verdict
from kdfast.options import command
from kdfast.runs import METRICS_FILE, read_json, read_run_info
from kdfast.train.distill import DistillConfig, ScratchConfig


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
@command(DistillConfig)
def distill(cfg: DistillConfig) -> None:
    """Distil a teacher run into the RNN student. Writes metrics.json, student.safetensors, student_config.json,
    vocab.json, teacher_logits.safetensors, curves.png and config.yaml."""
    from kdfast.train.student_stage import run

    _report(run(cfg), "distilled student", cfg.out)


@train_app.command("rnn")
@command(ScratchConfig)
def train_rnn(cfg: ScratchConfig) -> None:
    """Train the RNN student on the labels alone: the baseline for distillation. Same files as distill, less the
    teacher's logits."""
    from kdfast.train.student_stage import run

    _report(run(cfg), "student from scratch", cfg.out)


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
