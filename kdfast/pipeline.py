"""``kdfast pipeline``: the whole job in one command, resumable.

Stages, in order, each an ordinary kdfast stage called with its own config:

    teacher (train lora) → student (distill) → rnn (train rnn, the scratch baseline)
    → export-teacher, export-student, export-rnn (ONNX fp32 + int8) → bench → summary (OUT/summary.md)

Two presets: ``quick`` (the default: a first run that learns, minutes on two CPU cores with MiniLM-L6; its teacher is
exported without int8, whose tuning alone would take longer than the rest) and ``full`` (docs/results.md's recipe).

Resuming: ``OUT/pipeline.json`` records, for every finished stage, a hash of the configuration it ran with. A stage
is skipped when its record matches the current configuration, its outputs exist and none of the stages it reads
from ran again; otherwise it runs again (and so, in turn, do the stages that read its outputs). Each stage writes
its outputs in a temporary folder and renames them into place when complete, and the record is written only after
that, so a stage interrupted half-way leaves nothing that a later run would take for finished.

One configuration file: ``OUT/config.yaml`` holds the pipeline's options and a section per stage (``teacher``,
``student``, ``rnn``, ``export_teacher``, ``export_student``, ``export_rnn``, ``bench``) with every option that
stage ran with; ``kdfast pipeline --config FILE`` reads such a file back, each section's options over the preset's
(a section may hold only the options to change). The pipeline's own options (the data, device, seed, report-to)
are set once at the top; the run folders each stage reads and writes follow from ``--out``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kdfast.configs import DEVICE, MINILM, REPORT_TO_HELP, DataOptions, report_to_check
from kdfast.errors import KdfastError, require
from kdfast.models import resolve_model
from kdfast.options import CONFIG_FILE, coerce, instantiate, option, plain, write_config
from kdfast.runs import read_json, write_json

STATE_FILE = "pipeline.json"
TRAINING = ("teacher", "student", "rnn")  # under torchrun these run on every rank, data-parallel; the rest on rank 0
PRESETS = ("quick", "full")
SUMMARY_FILE = "summary.md"

# The quick preset: a first run on two CPU cores that shows the whole job working, about six minutes with
# MiniLM-L6 (--model minilm) on CoLA. Every value the result depends on is given here, not taken from the stages'
# defaults, so that a change of those defaults does not silently change what the quick run measures.
# The teacher: all of CoLA (at most 10,000 sentences), 4 epochs at lr 5e-4 with r=16 (about 1,070 steps, 50 s an
# epoch on two free cores). The same recipe under a 10-epoch schedule stood at dev MCC 0.23-0.27 after epoch 4 in
# three runs (0.16-0.23 after epoch 3); lr 1e-3 was still at MCC 0 after 2 epochs (docs/reference.md, "Pipeline").
QUICK_TEACHER: dict[str, Any] = {
    "max_train_samples": 10_000, "epochs": 4, "lr": 5e-4, "rank": 16, "alpha": 32.0, "lora_dropout": 0.1,
    "batch_size": 32, "max_length": 64, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_grad_norm": 1.0,
    "group_by_length": True,
}
QUICK_STUDENT: dict[str, Any] = {"max_train_samples": 4000, "epochs": 4, "lr": 2e-3, "batch_size": 32}
# the distilled student: distill's words recipe (the teacher's word vectors fitted, embeddings from them) with the
# teacher's last layer and words seen twice. On the quick teacher (4 epochs, 4,000 sentences, seeds 0-4) this beat the
# scratch student on every seed, and beat the sentence recipe and the full default's layer 4 + words seen once
# (docs/reference.md, "Pipeline").
QUICK_DISTILL: dict[str, Any] = {"recipe": "words", "augment": 4, "feature_weight": 1.0, "word_weight": 1.0,
                                 "embed_init": "context", "min_freq": 2, "word_layer": -1, "temperature": 2.0,
                                 "alpha": 0.5}
# bench: a few calls per variant (the full bench is kdfast bench), and no torch.compile (a minute of compiling)
QUICK_BENCH: dict[str, Any] = {
    "batch_sizes": [1, 32], "warmup": 2, "iters": 10, "min_time": 0.2, "timed_sentences": 64,
    "variants": ["teacher-merged", "teacher-onnx-fp32", "teacher-onnx-opt", "teacher-onnx-int8", "student-eager",
                 "student-onnx-fp32", "student-onnx-int8"],
}


@dataclass
class PipelineConfig(DataOptions):
    """``kdfast pipeline``: its own options, and a configuration file's section per stage."""

    model: str = option("gpt2", "The teacher's backbone: Hugging Face name or local folder; " + MINILM)
    out: Path = option(Path("runs"), "Folder for every stage's run folder, the bench results and summary.md.")
    preset: str = option("quick", "quick: a first run that shows the whole job working, about six minutes on two "
                         "free CPU cores with --model minilm on CoLA (teacher: LoRA r=16, lr 5e-4, 4 epochs on all of "
                         "CoLA, exported without int8; students: 4 epochs on 4,000 sentences, distilled with the "
                         "words recipe); full: docs/results.md's recipe (10 teacher epochs, 8 student epochs, int8 "
                         "for every model).")
    device: str = option("auto", DEVICE)
    seed: int = option(0)
    progress: bool = option(True, "Show the progress display.")
    report_to: str = option("none", REPORT_TO_HELP + " For the three training stages.")
    # A configuration file's section per stage: that stage's options over the preset's (SECTIONS; OUT/config.yaml
    # lists every one a run used). Not flags: a stage's options are set in the file.
    teacher: dict[str, Any] = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)
    rnn: dict[str, Any] = field(default_factory=dict)
    export_teacher: dict[str, Any] = field(default_factory=dict)
    export_student: dict[str, Any] = field(default_factory=dict)
    export_rnn: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        require([(self.preset in PRESETS, f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}"),
                 report_to_check(self.report_to)])
        for name in SECTIONS:
            section = getattr(self, name)
            require([(isinstance(section, dict), f"--config: section {name} must be a mapping of option names to "
                                                 f"values, got {section!r}")])
        resolve_model(self.model)  # a short name whose package is missing fails here, before any stage runs


# The stage sections of a configuration file, and what no section may set: the options every stage shares (set
# once, at the top) and the run folders that wire the stages together (from --out).
SECTIONS = ("teacher", "student", "rnn", "export_teacher", "export_student", "export_rnn", "bench")
SHARED = ("data", "dev_data", "text_column", "label_column", "device", "seed", "report_to", "overwrite", "progress")
WIRED = {"teacher": ("model", "out"), "student": ("teacher", "out"), "rnn": ("out",), "export": ("run_dir", "out"),
         "bench": ("teacher", "students", "json", "md", "csv", "plot")}


def _wired(section: str) -> tuple[str, ...]:
    return WIRED["export" if section.startswith("export_") else section]


def stage_config(cls: type, section: str, values: dict[str, Any], cfg: PipelineConfig) -> Any:
    """``cls`` from the preset's ``values`` with the configuration file's section ``section`` over them."""
    where = f"section {section}"
    own = coerce(cls, getattr(cfg, section), where)
    refused = sorted(set(own) & (set(SHARED) | set(_wired(section))))
    if refused:
        raise KdfastError(f"--config: section {section}: {', '.join(refused)} is set for the whole pipeline (at the "
                          "top of the file, by its flag, or from --out), not per stage")
    return instantiate(cls, {**values, **own})


def resolved_config(cfg: PipelineConfig, stages: list[Stage]) -> dict[str, Any]:
    """What ``OUT/config.yaml`` holds: the pipeline's options, then every stage's as it ran (not the shared and
    wired ones, which follow from the top)."""
    out: dict[str, Any] = {f.name: plain(getattr(cfg, f.name)) for f in fields(cfg) if f.name not in SECTIONS}
    for stage in stages:
        section = stage.name.replace("-", "_")
        if section in SECTIONS:
            skip = set(SHARED) | set(_wired(section))
            out[section] = {k: v for k, v in plain(stage.config).items() if k not in skip}
    return out


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
              "progress": False, "report_to": cfg.report_to}
    if quick:  # QUICK: a first run that learns, in minutes on two CPU cores with MiniLM-L6 (docs/reference.md)
        teacher_kw: dict[str, Any] = dict(QUICK_TEACHER)
        student_kw: dict[str, Any] = dict(QUICK_STUDENT)
        bench_kw: dict[str, Any] = dict(QUICK_BENCH)
    else:  # the README's results table
        teacher_kw = {"rank": 16, "alpha": 32, "lr": 5e-4, "epochs": 10, "group_by_length": True}
        student_kw, bench_kw = {"epochs": 8}, {"threads": 2}
    teacher = stage_config(TeacherConfig, "teacher", {"model": cfg.model, "out": out / "teacher", **teacher_kw,
                                                      **common}, cfg)
    # distill's defaults are the README's recipe: a transfer set, and the teacher's sentence representation fitted
    distill_kw = QUICK_DISTILL if quick else {}
    student = stage_config(DistillConfig, "student", {"teacher": teacher.out, "out": out / "student", **student_kw,
                                                      **distill_kw, **common}, cfg)
    rnn = stage_config(ScratchConfig, "rnn", {"out": out / "rnn", **student_kw, **common}, cfg)
    stages = [
        Stage("teacher", teacher, [teacher.out / "metrics.json"], run_teacher),
        Stage("student", student, [student.out / "metrics.json"], run_student, ["teacher"]),
        Stage("rnn", rnn, [rnn.out / "metrics.json"], run_student),
    ]
    say = Console(stderr=True, quiet=not cfg.progress).print
    for name, run_dir in (("teacher", teacher.out), ("student", student.out), ("rnn", rnn.out)):
        # fp32 (and the optimized teacher, which bench also times) and int8, except the quick preset's teacher:
        # its int8 tuning builds and judges dozens of candidate models, minutes that a first run need not spend.
        # A refused int8 is a note, not a stop. Export and bench score each run on the data it was trained on.
        int8 = not (quick and name == "teacher")
        export = stage_config(ExportConfig, f"export_{name}", {"run_dir": run_dir, "int8": int8,
                                                               "optimize": name == "teacher", "progress": False}, cfg)
        stages.append(Stage(f"export-{name}", export, [run_dir / "onnx" / "manifest.json"],
                            lambda c: run_dropping_failed_int8(c, say), [name]))
    bench_dir = out / "bench"
    bench = stage_config(BenchConfig, "bench", {
        "teacher": teacher.out, "students": [student.out, rnn.out], "device": cfg.device, "json": bench_dir /
        "bench.json", "md": bench_dir / "bench.md", "csv": bench_dir / "bench.csv", "plot": bench_dir / "bench.png",
        "progress": False, **bench_kw}, cfg)
    stages.append(Stage("bench", bench, [bench_dir / "bench.json"], run_bench, [s.name for s in stages]))
    summary = SummaryConfig(teacher=teacher.out, student=student.out, rnn=rnn.out, bench_json=bench.json,
                            out=out / SUMMARY_FILE)
    stages.append(Stage("summary", summary, [summary.out], write_summary, ["teacher", "student", "rnn", "bench"]))
    return stages


def read_state(out: Path) -> dict[str, str]:
    path = out / STATE_FILE
    if not path.exists():
        return {}
    state = read_json(path)
    return state.get("stages", {}) if isinstance(state, dict) else {}


def run(cfg: PipelineConfig, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) every stage; returns ``{"ran": [...], "skipped": [...], "artifacts": {...}, "seconds":
    {stage: s}, "bench_json": path, "summary": path}``. Started under torchrun, every rank runs the training stages
    data-parallel (a barrier after each) and rank 0 alone the export, bench and summary stages; the other ranks get
    ``bench_json`` and ``summary`` None."""
    from kdfast.train.distributed import barrier, env_world

    cfg.validate()
    rank, _, world = env_world()
    master = rank == 0  # under torchrun rank 0 alone prints, exports, benchmarks and writes pipeline.json
    console = console or Console(stderr=True, quiet=not master)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = build_stages(cfg)
    if master:
        write_config(out / CONFIG_FILE, resolved_config(cfg, stages))  # what --config reads back: this pipeline
    state = read_state(out)
    ran: list[str] = []
    skipped: list[str] = []
    seconds: dict[str, float] = {}
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
            start = time.perf_counter()
            stage.run(stage.config)
            seconds[stage.name] = time.perf_counter() - start
            if world > 1 and stage.name in TRAINING:
                barrier()  # rank 0 has written the run folder before any rank's next stage reads it
            state[stage.name] = digest
            if master:
                write_json(out / STATE_FILE, {"stages": state})
            ran.append(stage.name)
            bar.console.print(f"{stage.name}: done in {seconds[stage.name]:.0f} s")
            bar.advance(task)
    artifacts = {s.name: str(s.outputs[0].parent) for s in stages}
    outputs = {s.name: s.outputs[0] for s in stages}
    return {"ran": ran, "skipped": skipped, "artifacts": artifacts, "seconds": seconds,
            "bench_json": str(outputs["bench"]) if master and "bench" in outputs else None,
            "summary": str(outputs["summary"]) if master and "summary" in outputs else None}


# --- the summary: what the pipeline made, in one table


@dataclass
class SummaryConfig:
    teacher: Path  # the three run folders
    student: Path
    rnn: Path
    bench_json: Path  # the bench report, for the latencies of the exported forms
    out: Path  # summary.md
    progress: bool = False


def fastest_export(bench: dict[str, Any], run_name: str, batch_size: int = 1) -> dict[str, Any] | None:
    """The bench row of a run's fastest ONNX Runtime variant at ``batch_size``, or None when none was timed."""
    rows = [r for r in bench["results"] if r["model"] == run_name and r["batch_size"] == batch_size
            and r.get("runtime") == "onnxruntime"]
    return min(rows, key=lambda r: r["p50_ms"]) if rows else None


def summarize(cfg: SummaryConfig) -> dict[str, Any]:
    """Each model's best dev accuracy and MCC (PyTorch) beside the majority class's, its size, and the batch-1
    latency of its fastest exported form (from the bench report); the student's speed-up over the teacher (fastest
    exported form against fastest exported form) and the share of the teacher's dev MCC it keeps; the distilled
    student against the scratch one."""
    from kdfast.data import dataset_from_config
    from kdfast.verdict import against_majority

    bench = read_json(Path(cfg.bench_json))
    models: list[dict[str, Any]] = []
    for role, run_dir in (("teacher", cfg.teacher), ("distilled student", cfg.student),
                          ("scratch student", cfg.rnn)):
        run_dir = Path(run_dir)
        metrics = read_json(run_dir / "metrics.json")
        verdict = metrics.get("verdict")
        if verdict is None:  # a run from before metrics.json kept it: judged from its data
            data = dataset_from_config(metrics["config"], labels=metrics["data"]["labels"])
            verdict = against_majority(metrics["best"], data.dev_targets()[0], data.labels, f"the {role}")
        fast = fastest_export(bench, run_dir.name)
        models.append({"role": role, "run": str(run_dir), "acc": metrics["best"]["dev_acc"],
                       "mcc": metrics["best"]["dev_mcc"], "params": metrics.get("total_params"),
                       "form": fast["variant"] if fast else None, "form_mcc": fast["mcc"] if fast else None,
                       "file_mb": fast["file_mb"] if fast else None, "p50_ms": fast["p50_ms"] if fast else None,
                       "verdict": verdict})
    teacher = models[0]
    for m in models[1:]:
        m["speedup"] = teacher["p50_ms"] / m["p50_ms"] if teacher["p50_ms"] and m["p50_ms"] else None
        m["mcc_kept"] = m["mcc"] / teacher["mcc"] if teacher["mcc"] > 0 else None
    distilled, scratch = models[1], models[2]
    return {"models": models, "majority_class": teacher["verdict"]["majority_class"],
            "majority_acc": teacher["verdict"]["majority_acc"],
            "distilled_minus_scratch": distilled["mcc"] - scratch["mcc"],
            "bench": str(cfg.bench_json), "skipped": bench.get("skipped", [])}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: what the pipeline prints and writes to ``summary.md``."""
    def num(value: Any, fmt: str) -> str:
        return "" if value is None else fmt.format(value)

    lines = ["| model | dev acc | dev MCC | params | fastest exported form (its MCC) | file MB | batch-1 p50 ms | "
             "speed-up over the teacher | share of the teacher's MCC |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in summary["models"]:
        form = f"{m['form']} ({m['form_mcc']:.4f})" if m["form"] else "not exported"
        lines.append(f"| {m['role']} `{m['run']}` | {m['acc']:.4f} | {m['mcc']:.4f} | {num(m['params'], '{:,}')} | "
                     f"{form} | {num(m['file_mb'], '{:.1f}')} | {num(m['p50_ms'], '{:.3f}')} | "
                     f"{num(m.get('speedup'), '{:.1f}x')} | {num(m.get('mcc_kept'), '{:.0%}')} |")
    lines.append(f"| majority class ({summary['majority_class']!r} for every sentence) | "
                 f"{summary['majority_acc']:.4f} | 0 | | | | | | |")
    teacher, distilled, scratch = summary["models"]
    gain = summary["distilled_minus_scratch"]
    lines += ["", f"- The distilled student {'beats' if gain > 0 else 'does not beat'} the same student trained from "
                  f"the labels alone: dev MCC {distilled['mcc']:.4f} against {scratch['mcc']:.4f} ({gain:+.4f})."]
    if distilled.get("speedup") is not None:
        kept = distilled.get("mcc_kept")
        lines.append(f"- At batch 1 the distilled student ({distilled['form']}) answers {distilled['speedup']:.1f}x "
                     f"faster than the teacher ({teacher['form']}): {distilled['p50_ms']:.3f} ms against "
                     f"{teacher['p50_ms']:.3f} ms" + (f", and keeps {kept:.0%} of its dev MCC." if kept is not None
                                                      else "; the teacher's dev MCC is not above 0, so no share."))
    for m in summary["models"]:
        for line in m["verdict"]["lines"][1:]:
            lines.append(f"- **Warning**: {line}")
    for s in summary["skipped"]:
        if s["variant"].endswith("int8"):
            lines.append(f"- {s['variant']} ({s['model']}) not timed: {s['reason']}")
    lines.append(f"- Every variant, its latency at each batch size and the ratios: {Path(summary['bench']).parent}"
                 "/bench.md and bench.png.")
    return "\n".join(lines) + "\n"


def write_summary(cfg: SummaryConfig) -> dict[str, Any]:
    """``summarize`` written as Markdown to ``cfg.out`` (through a temporary file, renamed)."""
    summary = summarize(cfg)
    out = Path(cfg.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(summary_markdown(summary))
    tmp.replace(out)
    return summary
