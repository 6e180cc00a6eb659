"""``kdfast pipeline``: train lora → distill (+ the scratch baseline) → export --onnx → bench, resumable."""

from __future__ import annotations

from pathlib import Path

from kdfast.cli.main import app
from kdfast.cli.output import console
from kdfast.options import command
from kdfast.pipeline import PipelineConfig


@app.command("pipeline")
@command(PipelineConfig)
def pipeline_command(cfg: PipelineConfig) -> None:
    """Everything, once: teacher, students, ONNX export and the benchmark, then one summary (printed and in
    OUT/summary.md). Re-running resumes: stages whose outputs exist and were made with the same configuration are
    skipped."""
    from kdfast.pipeline import run as run_pipeline

    result = run_pipeline(cfg)
    if result["summary"] is None:  # under torchrun, a rank other than 0: it trained, rank 0 reports
        return
    console.print(f"ran: {', '.join(result['ran']) or 'nothing'}; skipped: {', '.join(result['skipped']) or 'nothing'}")
    for name, path in result["artifacts"].items():
        console.print(f"  {name:15s} {path}")
    console.print()
    console.print(Path(result["summary"]).read_text(), markup=False, highlight=False, soft_wrap=True)
