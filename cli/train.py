"""``kdfast train lora``: the teacher."""

from __future__ import annotations

from kdfast.cli.main import train_app
from kdfast.cli.output import console, dev_table, print_verdict
from kdfast.configs import TeacherConfig
from kdfast.options import command


@train_app.command("lora")
@command(TeacherConfig)
def train_lora(cfg: TeacherConfig) -> None:
    """Fine-tune a classifier with LoRA on CoLA or your data: the teacher. Writes metrics.json, adapter/, merged/,
    curves.png, config.yaml.

    The defaults (rank 16, alpha 32, lr 5e-4, 10 epochs, length-grouped batches)
    are the recipe measured best on MiniLM-L6 and CoLA, beside full fine-tuning
    and PEFT's LoRA (docs/results.md); for GPT-2 they are assumed, not measured."""
    from kdfast.train.teacher import run as run_teacher

    model = cfg.model  # as given (run() records the folder a short name resolves to)
    metrics = run_teacher(cfg)
    best = metrics["best"]
    console.print(dev_table(f"teacher, best epoch {best['epoch']}", [(model, best)]))
    console.print(f"trainable parameters {metrics['trainable_params']:,} of {metrics['total_params']:,}")
    print_verdict(metrics)
    console.print(f"wrote {cfg.out}")
