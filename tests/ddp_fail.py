"""``kdfast`` with a NaN loss injected on rank 1 (tests/test_ddp.py starts it under torchrun): the job must fail,
not hang in a collective."""

import os

import torch

import kdfast.train.teacher
from kdfast.cli.main import main

if os.environ.get("RANK") == "1":
    check = kdfast.train.teacher.check_finite
    kdfast.train.teacher.check_finite = lambda loss, epoch, step: check(torch.tensor(float("nan")), epoch, step)
main()
