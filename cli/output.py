"""Printing helpers shared by the commands."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def dev_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> Table:
    """Accuracy and MCC on dev and its halves, one row per model."""
    table = Table(title=title)
    table.add_column("model")
    for col in ("dev acc", "dev MCC", "in-domain acc", "in-domain MCC", "out-of-domain acc", "out-of-domain MCC"):
        table.add_column(col, justify="right")
    for name, r in rows:
        table.add_row(name, *(f"{r[k]:.4f}" for k in (
            "dev_acc", "dev_mcc", "dev_in_domain_acc", "dev_in_domain_mcc", "dev_out_of_domain_acc",
            "dev_out_of_domain_mcc")))
    return table
