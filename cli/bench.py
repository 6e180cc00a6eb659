"""``kdfast bench``: latency and accuracy of every variant, as a table and files; ``--compare`` of two reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from kdfast.cli.main import app
from kdfast.cli.output import console
from kdfast.configs import BenchConfig
from kdfast.options import command

COLUMNS = [("model", "model"), ("variant", "variant"), ("batch", "batch_size"), ("p50 ms", "p50_ms"),
           ("p90 ms", "p90_ms"), ("p99 ms", "p99_ms"), ("mean ms", "mean_ms"), ("cv", "cv"),
           ("sent/s", "throughput"), ("acc", "acc"), ("MCC", "mcc"), ("agree", "agreement"), ("params", "params"),
           ("MB", "file_mb"), ("speedup", "speedup")]


def results_table(report: dict[str, Any]) -> Table:
    from kdfast.bench.report import cell

    table = Table(title="kdfast bench")
    for title, key in COLUMNS:
        table.add_column(title, justify="left" if key in ("model", "variant") else "right")
    for row in report["results"]:
        table.add_row(*(cell(row, key) for _, key in COLUMNS))
    return table


def compare_table(rows: list[dict[str, Any]], a: Path, b: Path) -> Table:
    table = Table(title=f"A = {a}, B = {b}; ratio = A p50 / B p50 (above 1: B is faster)")
    for col in ("variant", "batch", "model A", "model B", "A p50 ms", "B p50 ms", "ratio", "A MCC", "B MCC"):
        table.add_column(col, justify="left" if col in ("variant", "model A", "model B") else "right")

    def num(value: float | None, fmt: str) -> str:
        return "" if value is None else fmt.format(value)

    for r in rows:
        table.add_row(r["variant"], str(r["batch_size"]), r["model_a"] or "-", r["model_b"] or "-",
                      num(r["p50_ms_a"], "{:.3f}"), num(r["p50_ms_b"], "{:.3f}"), num(r["ratio"], "{:.2f}x"),
                      num(r["mcc_a"], "{:.4f}"), num(r["mcc_b"], "{:.4f}"))
    return table


def wide_console() -> Console:
    """The terminal's console; in a log or a pipe (where Rich assumes 80 columns) one wide enough for 15 columns."""
    return console if console.is_terminal else Console(width=max(console.width, 170))


@app.command("bench")
@command(BenchConfig, extra={"compare_files": (tuple[Path, Path] | None, typer.Option(
    None, "--compare", help="Two JSON reports A B: print A p50 / B p50 per variant; measures nothing."))})
def bench_command(cfg: BenchConfig, compare_files: tuple[Path, Path] | None) -> None:
    """Latency (p50/p90/p99/mean, cv, sentences/s) and dev accuracy/MCC of every variant of a teacher and its
    students: PyTorch unmerged/merged/fused, ONNX Runtime fp32/optimized/int8, student eager/compiled/ONNX."""
    from kdfast.bench.report import compare, load_report, meta_differences, meta_line, ratio_line

    if compare_files is not None and all(p is not None for p in compare_files):
        a, b = compare_files
        ra, rb = load_report(a), load_report(b)
        wide_console().print(compare_table(compare(ra, rb), a, b))
        for diff in meta_differences(ra, rb):
            console.print(f"[yellow]note[/]: the two runs differ in {diff}")
        return
    from kdfast.bench.measure import run

    report = run(cfg)
    wide_console().print(results_table(report))
    console.print(meta_line(report["meta"]))
    for row in report["results"]:
        if row["note"] and row["batch_size"] == cfg.batch_sizes[0]:
            console.print(f"[yellow]note[/]: {row['variant']} ({row['model']}): {row['note']}")
    for s in report["skipped"]:
        console.print(f"[yellow]skipped[/] {s['variant']} ({s['model']}): {s['reason']}")
    for w in report["meta"]["warnings"]:
        console.print(f"[bold yellow]warning[/]: {w}")
    for r in report["ratios"]:
        console.print(("[green]" if r["met"] else "[red]") + ratio_line(r) + "[/]")
    written = [str(p) for p in (cfg.json, cfg.csv, cfg.md, cfg.plot) if p is not None]
    if written:
        console.print("wrote " + ", ".join(written))
