"""Training curves: accuracy and loss per epoch for train and dev, with dev MCC (the report's figures 2-3, 5-7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    """matplotlib.pyplot on the file-only backend, imported on first use rather than with this module:
    kdfast.train.teacher (and kdfast.bench.measure through it) import this module, and the benchmarks run where
    matplotlib is not installed (the GPU check's machine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    panels = ((ax_acc, "accuracy and MCC", (("train_acc", "o-", "train accuracy"), ("dev_acc", "o-", "dev accuracy"),
                                             ("dev_mcc", "s--", "dev MCC"))),
              (ax_loss, "loss", (("train_loss", "o-", "train loss"), ("dev_loss", "o-", "dev loss"))))
    for ax, name, curves in panels:
        for key, style, label in curves:
            ax.plot(epochs, [h[key] for h in history], style, label=label)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_comparison(run_dirs: list[Path], path: Path, title: str = "dev MCC per epoch on CoLA") -> None:
    """Dev MCC per epoch of several run folders in one plot (distilled against scratch, the report's figure 8).
    Students are lines (scratch solid, distilled dashed), a teacher is a horizontal line at its best dev MCC; each
    label is the folder name with its best MCC."""
    from kdfast.runs import METRICS_FILE, read_json, read_run_info

    plt = _pyplot()
    styles = {"scratch": "o-", "distill": "s--"}
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        kind = read_run_info(run_dir).get("mode") or "teacher"
        metrics = read_json(run_dir / METRICS_FILE)
        label = f"{run_dir.name} ({kind}, best {metrics['best']['dev_mcc']:.3f})"
        if kind == "teacher":
            ax.axhline(metrics["best"]["dev_mcc"], color="black", linestyle=":", label=label)
            continue
        history = metrics["history"]
        ax.plot([h["epoch"] for h in history], [h["dev_mcc"] for h in history], styles.get(kind, "o-"), label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev MCC")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
