"""``kdfast pipeline``: the whole job in one command, resumable.

Stages, in order, each an ordinary kdfast stage called with its own config:

    teacher (train lora) → student (distill) → rnn (train rnn, the scratch baseline)
    → export-teacher, export-student, export-rnn (ONNX fp32 + int8) → bench

Resuming: ``OUT/pipeline.json`` records, for every finished stage, a hash of the configuration it ran with. A stage
is skipped when its record matches the current configuration, its outputs exist and none of the stages it reads
from ran again; otherwise it runs again (and so, in turn, do the stages that read its outputs). Each stage writes
its outputs in a temporary folder and renames them into place when complete, and the record is written only after
that, so a stage interrupted half-way leaves nothing that a later run would take for finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kdfast.errors import KdfastError
from kdfast.runs import read_json, write_json

STATE_FILE = "pipeline.json"
TRAINING = ("teacher", "student", "rnn")  # under torchrun these run on every rank, data-parallel; the rest on rank 0
PRESETS = ("quick", "full")


@dataclass
class PipelineConfig:
    model: str = "gpt2"  # the teacher's backbone: Hub name or local folder
    data: str = "cola"  # "cola" (bundled), a folder, a CSV/TSV/JSON Lines file, or hub:NAME (kdfast.data)
    dev_data: str | None = None  # the dev file when --data is one training file
    text_column: str | None = None  # default: text, else sentence
    label_column: str | None = None  # default: label
    out: Path = Path("runs")  # every stage's run folder goes under here
    preset: str = "quick"  # quick: minutes on a laptop CPU with a small backbone; full: the README's results
    device: str = "auto"
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise KdfastError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")


@dataclass
class Stage:
    name: str
    config: Any  # the stage's own config dataclass; its fields are what the resume hash covers
    outputs: list[Path]  # what must exist for the stage to count as done
    run: Callable[[Any], Any]
    needs: list[str] = field(default_factory=list)  # stages whose outputs this one reads


def stage_hash(config: Any) -> str:
    fields = {k: v for k, v in asdict(config).items() if k not in ("overwrite", "progress")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The stages with their configurations for ``cfg.preset``."""
    from kdfast.bench.measure import BenchConfig
    from kdfast.bench.measure import run as run_bench
    from kdfast.export.onnx import ExportConfig, run_dropping_failed_int8
    from kdfast.train.distill import DistillConfig, ScratchConfig
    from kdfast.train.distill import run as run_student
    from kdfast.train.teacher import TeacherConfig
    from kdfast.train.teacher import run as run_teacher

    out = Path(cfg.out)
    quick = cfg.preset == "quick"
    common = {"data": cfg.data, "dev_data": cfg.dev_data, "text_column": cfg.text_column,
              "label_column": cfg.label_column, "device": cfg.device, "seed": cfg.seed, "overwrite": True,
              "progress": False}
    if quick:  # a small subset and few epochs: minutes on a CPU with a small backbone
        teacher = TeacherConfig(model=cfg.model, out=out / "teacher", epochs=1, max_train_samples=1000, **common)
        student_kw: dict[str, Any] = {"epochs": 2, "max_train_samples": 1000}
        bench_kw: dict[str, Any] = {"batch_sizes": [1, 32], "warmup": 2, "iters": 10, "min_time": 0.2,
                                    "timed_sentences": 64}
    else:  # the README's results table
        teacher = TeacherConfig(model=cfg.model, out=out / "teacher", rank=16, alpha=32, lr=5e-4, epochs=10,
                                group_by_length=True, **common)
        student_kw, bench_kw = {"epochs": 8}, {"threads": 2}
    # distill's defaults are the README's recipe: a transfer set, and the teacher's sentence representation fitted
    student = DistillConfig(teacher=teacher.out, out=out / "student", **student_kw, **common)
    rnn = ScratchConfig(out=out / "rnn", **student_kw, **common)
    stages = [
        Stage("teacher", teacher, [teacher.out / "metrics.json"], run_teacher),
        Stage("student", student, [student.out / "metrics.json"], run_student, ["teacher"]),
        Stage("rnn", rnn, [rnn.out / "metrics.json"], run_student),
    ]
    say = Console(stderr=True, quiet=not cfg.progress).print
    for name, run_dir in (("teacher", teacher.out), ("student", student.out), ("rnn", rnn.out)):
        # fp32 and int8 (and the optimized teacher, which bench also times); a refused int8 is a note, not a stop
        # export and bench score each run on the data it was trained on (its config says which)
        export = ExportConfig(run_dir=run_dir, int8=True, optimize=name == "teacher", progress=False)
        stages.append(Stage(f"export-{name}", export, [run_dir / "onnx" / "manifest.json"],
                            lambda c: run_dropping_failed_int8(c, say), [name]))
    bench_dir = out / "bench"
    bench = BenchConfig(teacher=teacher.out, students=[student.out, rnn.out], device=cfg.device,
                        json=bench_dir / "bench.json", md=bench_dir / "bench.md", csv=bench_dir / "bench.csv",
                        plot=bench_dir / "bench.png",
                        progress=False, **bench_kw)
    stages.append(Stage("bench", bench, [bench_dir / "bench.json"], run_bench, [s.name for s in stages]))
    return stages


def read_state(out: Path) -> dict[str, str]:
    path = out / STATE_FILE
    if not path.exists():
        return {}
    state = read_json(path)
    return state.get("stages", {}) if isinstance(state, dict) else {}


def run(cfg: PipelineConfig, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) every stage; returns ``{"ran": [...], "skipped": [...], "artifacts": {...}, "bench_json":
    path}``. Started under torchrun, every rank runs the training stages data-parallel (a barrier after each) and
    rank 0 alone the export and bench stages; the other ranks get ``bench_json`` None."""
    from kdfast.train.distributed import barrier, env_world

    cfg.validate()
    rank, _, world = env_world()
    master = rank == 0  # under torchrun rank 0 alone prints, exports, benchmarks and writes pipeline.json
    console = console or Console(stderr=True, quiet=not master)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = build_stages(cfg)
    state = read_state(out)
    ran: list[str] = []
    skipped: list[str] = []
    with Progress(TextColumn("[bold]pipeline"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, disable=not cfg.progress) as bar:
        task = bar.add_task("", total=len(stages))
        for stage in stages:
            if not master and stage.name not in TRAINING:
                continue
            digest = stage_hash(stage.config)
            done = state.get(stage.name) == digest and all(p.exists() for p in stage.outputs)
            if done and not set(stage.needs) & set(ran):
                skipped.append(stage.name)
                bar.console.print(f"[dim]{stage.name}: up to date, skipped[/dim]")
                bar.advance(task)
                continue
            bar.update(task, description=stage.name)
            state.pop(stage.name, None)  # not done until it finishes again
            if master:
                write_json(out / STATE_FILE, {"stages": state})
            stage.run(stage.config)
            if world > 1 and stage.name in TRAINING:
                barrier()  # rank 0 has written the run folder before any rank's next stage reads it
            state[stage.name] = digest
            if master:
                write_json(out / STATE_FILE, {"stages": state})
            ran.append(stage.name)
            bar.console.print(f"{stage.name}: done")
            bar.advance(task)
    artifacts = {s.name: str(s.outputs[0].parent) for s in stages}
    bench_stage = stages[-1]
    return {"ran": ran, "skipped": skipped, "artifacts": artifacts,
            "bench_json": str(bench_stage.outputs[0]) if master else None}
