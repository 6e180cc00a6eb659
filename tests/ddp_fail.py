"""``kdfast`` with a NaN loss injected on rank 1 (tests/test_ddp.py starts it under torchrun): the job must fail,
not hang in a collective."""

import os

import torch

import kdfast.teacher
from kdfast.cli.main import main

if os.environ.get("RANK") == "1":
    check = kdfast.teacher.check_finite
    kdfast.teacher.check_finite = lambda loss, epoch, step: check(torch.tensor(float("nan")), epoch, step)
main()
