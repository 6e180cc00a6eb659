"""``kdfast pipeline``: train lora → distill (+ the scratch baseline) → export --onnx → bench, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from kdfast.cli import options
from kdfast.cli.main import app
from kdfast.cli.output import console


@app.command("pipeline")
def pipeline_command(
    model: str = typer.Option("gpt2", help="The teacher's backbone: Hugging Face name or local folder."),
    data: str = options.DATA,
    dev_data: str | None = options.DEV_DATA,
    text_column: str | None = options.TEXT_COLUMN,
    label_column: str | None = options.LABEL_COLUMN,
    out: Path = typer.Option(Path("runs"), help="Folder for every stage's run folder and the bench results."),
    preset: str = typer.Option("quick", help="quick: minutes on a CPU with a small backbone; full: docs/results.md's "
                                             "results."),
    device: str = options.DEVICE,
    seed: int = options.SEED,
    progress: bool = typer.Option(True, help="Show the progress display."),
) -> None:
    """Everything, once: teacher, students, ONNX export (fp32 and int8) and the benchmark. Re-running resumes:
    stages whose outputs exist and were made with the same configuration are skipped."""
    fields = dict(locals())  # every option is a field of the config
    from kdfast.pipeline import PipelineConfig
    from kdfast.pipeline import run as run_pipeline

    result = run_pipeline(PipelineConfig(**fields))
    if result["bench_json"] is None:  # under torchrun, a rank other than 0: it trained, rank 0 reports
        return
    from kdfast.cli.bench import results_table, wide_console
    from kdfast.runs import read_json

    wide_console().print(results_table(read_json(Path(result["bench_json"]))))
    console.print(f"ran: {', '.join(result['ran']) or 'nothing'}; skipped: {', '.join(result['skipped']) or 'nothing'}")
    for name, path in result["artifacts"].items():
        console.print(f"  {name:15s} {path}")
