"""``kdfast`` that records, on rank 0, the gradient each optimizer step is given (tests/test_ddp.py starts it in one
process and under torchrun). Adam undoes a constant scale of the loss, so the trained weights barely show a wrong
data-parallel loss weight; the gradients show it whole. KDFAST_TEST_GRADS names a folder: step N's gradients (after
DDP's average over the ranks, before clipping) go to N.pt, in the order of the parameters the step updates."""

import os
from collections.abc import Iterable
from pathlib import Path

import torch

import kdfast.train.student_stage
import kdfast.train.teacher
from kdfast.cli.main import main

folder = Path(os.environ["KDFAST_TEST_GRADS"])
step = kdfast.train.teacher.optimizer_step
taken = 0


def record_then_step(optimizer: object, scheduler: object, scaler: object, params: Iterable[torch.nn.Parameter],
                     max_grad_norm: float) -> None:
    global taken
    params = list(params)
    if os.environ.get("RANK", "0") == "0":
        folder.mkdir(parents=True, exist_ok=True)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        torch.save(grads, folder / f"{taken}.pt")
    taken += 1
    step(optimizer, scheduler, scaler, params, max_grad_norm)


kdfast.train.teacher.optimizer_step = record_then_step
kdfast.train.student_stage.optimizer_step = record_then_step  # the student's loop
main()
