"""What every training stage shares: device choice, seeding, the optimiser schedule and the progress bar."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kdfast.errors import KdfastError
from kdfast.metrics import SELECT_BY


class TrainingOptions(Protocol):
    """What :func:`common_checks` reads of a training config."""

    epochs: int
    lr: float
    batch_size: int
    select_by: str


def common_checks(cfg: TrainingOptions) -> list[tuple[bool, str]]:
    """The option checks every training command shares (``kdfast.errors.require`` form): its ``epochs``, ``lr``,
    ``batch_size`` and ``select_by``."""
    return [
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.lr > 0, f"--lr must be positive, got {cfg.lr}"),
        (cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}"),
        (cfg.select_by in SELECT_BY, f"--select-by must be one of {', '.join(SELECT_BY)}, got {cfg.select_by!r}"),
    ]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise KdfastError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise KdfastError("--device cuda: no CUDA device is available")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a generator for the data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def adamw_with_warmup(
    params: Iterable[torch.nn.Parameter], lr: float, total_steps: int, warmup_ratio: float, weight_decay: float
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW, linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                   scaler: torch.amp.GradScaler, params: Iterable[torch.nn.Parameter], max_grad_norm: float) -> None:
    """One update from the accumulated (and, under DDP, averaged) gradients: unscale (fp16), clip, step, schedule."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)  # of the averaged gradient
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise KdfastError(f"the loss became {loss.item()} at epoch {epoch}, step {step}; try a lower --lr")


def progress_bar(enabled: bool = True, master: bool = True) -> Progress:
    """A Rich progress bar with the running loss and the speed in sentences/s (fields ``loss`` and ``rate``). On
    ranks other than 0 (``master`` False) it and its console print nothing."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[rate]:.0f} sent/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled or not master or os.environ.get("KDFAST_NO_PROGRESS") == "1",
        transient=False,
        console=None if master else Console(quiet=True),
    )
