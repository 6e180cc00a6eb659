"""``kdfast eval``: dev accuracy and MCC of a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kdfast.cli.main import app
from kdfast.cli.output import console, dev_table
from kdfast.configs import DEVICE


@app.command("eval")
def eval_command(
    run_dir: Path = typer.Argument(..., help="A teacher or student run folder."),
    data: str | None = typer.Option(None, help="Data to score on (as --data of train); default: the run's own. "
                                    "Its label names must be the run's."),
    device: str = typer.Option("auto", help=DEVICE),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Accuracy, Matthews correlation and macro-F1 on the dev set (CoLA: 1,043 sentences, and its in- and
    out-of-domain halves)."""
    from kdfast.evaluate import evaluate_run

    report = evaluate_run(run_dir, data, device)
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        console.print(dev_table(f"{report['kind']} run {run_dir} on {report['data']}", [(str(run_dir), report)]))
