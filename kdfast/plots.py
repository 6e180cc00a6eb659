"""Training curves: accuracy and loss per epoch for train and dev, with dev MCC (the report's figures 2-3, 5-7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", label="train accuracy")
    ax_acc.plot(epochs, [h["dev_acc"] for h in history], "o-", label="dev accuracy")
    ax_acc.plot(epochs, [h["dev_mcc"] for h in history], "s--", label="dev MCC")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_title("accuracy and MCC")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax_loss.plot(epochs, [h["dev_loss"] for h in history], "o-", label="dev loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
