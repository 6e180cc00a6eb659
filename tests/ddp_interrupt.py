"""``kdfast`` whose rank 0 stops inside the save of its run folder (tests/test_ddp.py starts it under torchrun): the
staging folder exists, the file named by KDFAST_TEST_SAVING says so, and the test's Ctrl-C lands there."""

import os
import time
from pathlib import Path

import kdfast.train.teacher
from kdfast.cli.main import main

save_adapter = kdfast.train.teacher.save_adapter


def save_adapter_then_wait(*args: object, **kwargs: object) -> None:
    save_adapter(*args, **kwargs)
    Path(os.environ["KDFAST_TEST_SAVING"]).write_text(str(args[1]))  # the adapter folder, inside the staging folder
    time.sleep(600)


kdfast.train.teacher.save_adapter = save_adapter_then_wait
main()
