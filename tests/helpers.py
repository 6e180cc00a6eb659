"""Builders shared by the tests: tiny random GPT-2s with the real GPT-2 tokenizer (tests/data), tiny students, the
CLI run in-process. What the benchmarks need as well (MiniLM's folder, the tokenizer, a random GPT-2) is in
kdfast.testing, imported here."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kdfast.testing import gpt2_tokenizer, random_gpt2_classifier
from kdfast.testing import minilm_dir as minilm_dir  # re-exported: tests import it from here

REPO = Path(__file__).resolve().parents[1]


def save_tiny_gpt2(folder: Path, n_layer: int = 2, n_embd: int = 32, seed: int = 0, dropout: float = 0.1) -> Path:
    """A random tiny GPT-2 classifier (real GPT-2 structure and tokenizer) saved with save_pretrained; ``dropout``
    on its residual, embedding and attention paths (GPT-2's default 0.1)."""
    tokenizer = gpt2_tokenizer()
    model = random_gpt2_classifier(tokenizer, seed, n_layer=n_layer, n_head=2, n_embd=n_embd, n_positions=128,
                                   resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_gpt2_lm(folder: Path, n_layer: int = 2, n_embd: int = 32, n_positions: int = 128, seed: int = 0) -> Path:
    """A random tiny GPT-2 language model (GPT2LMHeadModel, the real tokenizer) saved with save_pretrained. Its
    next-token distribution is close to uniform over 50,257 tokens, so it rarely emits eos by itself."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tokenizer = gpt2_tokenizer()
    config = GPT2Config(n_layer=n_layer, n_head=2, n_embd=n_embd, n_positions=n_positions,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_module(path: Path) -> ModuleType:
    """A script (examples/: not a package) as a module."""
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the kdfast command in this process: (exit code, stdout, stderr)."""
    from kdfast.cli.main import main

    old_argv = sys.argv
    sys.argv = ["kdfast", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old_argv
    out, err = capsys.readouterr()
    return code, out, err


def train_tiny_student(out: Path, data: Path) -> Path:
    """A tiny student trained from scratch on 48 sentences, on one thread: a run folder in seconds."""
    import torch

    from kdfast.train.distill import ScratchConfig
    from kdfast.train.distill import run as train_student

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_student(ScratchConfig(data=str(data), out=out, hidden=8, embed_dim=8, epochs=1, max_train_samples=48,
                                    batch_size=16, device="cpu", progress=False))
    finally:
        torch.set_num_threads(threads)
    return out


def assert_one_error_line(err: str, message: str = "") -> None:
    """A user's mistake reads as one ``error: ...`` line on stderr that says ``message``: no traceback, nothing else."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def alive_in_group(pgid: int) -> list[str]:
    """The processes of process group ``pgid`` still alive (zombies left out), as 'pid state command' (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            found.append(f"{entry.name} {fields[0]} {cmd[:120]}")
    return found


@contextlib.contextmanager
def count_launches() -> Iterator[Counter]:
    """Counts the Triton kernel launches of kdfast.kernels.lora_matmul inside the block: counts["mm"]
    (lora_mm_kernel) and counts["grad"] (lora_grad_kernel), each a call of its launcher. lora_matmul falls back to
    its torch reference where the kernel cannot run, so a test that compares it with the reference must count."""
    from kdfast.kernels import lora_matmul as lm

    counts: Counter = Counter()

    def counted(name: str, launch: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return launch(*args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm, "_launch_lora_mm", counted("mm", lm._launch_lora_mm))
        mp.setattr(lm, "_launch_lora_grad", counted("grad", lm._launch_lora_grad))
        yield counts


def exported_tiny_student(folder: Path, cola_dir: Path) -> Path:
    """A tiny student trained into ``folder`` and exported to ONNX (fp32) on one thread; its run folder."""
    import torch

    from kdfast.export.onnx import ExportConfig
    from kdfast.export.onnx import run as export

    run_dir = train_tiny_student(folder, cola_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export(ExportConfig(run_dir=run_dir, max_check_sentences=16, progress=False))
    finally:
        torch.set_num_threads(threads)
    return run_dir
