from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("KDFAST_NO_PROGRESS", "1")
# Triton's interpreter runs the real kernels on CPU tensors; it must be switched on before anything imports triton
# (transformers' GPT-2 does, through torch._dynamo), so it is set here, before any test module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import save_tiny_gpt2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cola_dir() -> Path:
    """The copy of CoLA's public release that ships inside the package (what ``--data cola`` reads)."""
    from kdfast.data.cola import BUNDLED

    return BUNDLED


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a random 2-layer GPT-2 classifier and the real GPT-2 tokenizer."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2: Path, cola_dir: Path) -> Path:
    """A teacher run folder: the tiny GPT-2, one epoch on 256 CoLA sentences, through the library."""
    from kdfast.train.teacher import TeacherConfig, run

    out = tmp_path_factory.mktemp("runs") / "teacher"
    run(TeacherConfig(model=str(tiny_gpt2), data=str(cola_dir), out=out, epochs=1, max_train_samples=256,
                      batch_size=32, rank=4, alpha=8, progress=False))
    return out
