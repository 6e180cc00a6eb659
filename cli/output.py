"""Printing helpers shared by the commands."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


COLUMNS = {"dev_acc": "dev acc", "dev_mcc": "dev MCC", "dev_f1": "dev F1", "dev_in_domain_acc": "in-domain acc",
           "dev_in_domain_mcc": "in-domain MCC", "dev_out_of_domain_acc": "out-of-domain acc",
           "dev_out_of_domain_mcc": "out-of-domain MCC"}


def dev_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> Table:
    """Accuracy, MCC and macro-F1 on dev (and CoLA's halves), one row per model; a score a row lacks is blank."""
    keys = [k for k in COLUMNS if any(k in r for _, r in rows)]
    table = Table(title=title)
    table.add_column("model")
    for k in keys:
        table.add_column(COLUMNS[k], justify="right")
    for name, r in rows:
        table.add_row(name, *(f"{r[k]:.4f}" if k in r else "" for k in keys))
    return table


def print_verdict(metrics: dict[str, Any]) -> None:
    """A run's best dev scores against the majority class (``kdfast.verdict``); its warning, if any, in yellow."""
    verdict = metrics.get("verdict")
    if not verdict:
        return
    first, *warning = verdict["lines"]
    console.print(first, highlight=False)
    for line in warning:
        console.print(f"[bold yellow]warning[/]: {line}", highlight=False)
