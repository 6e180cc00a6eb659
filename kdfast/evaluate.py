"""``kdfast eval``: accuracy and MCC of any run folder (teacher or student) on CoLA dev and its two halves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdfast.data import load_cola
from kdfast.runs import METRICS_FILE, read_json, read_run_info
from kdfast.teacher import encode, load_teacher, predict_logits, score_dev
from kdfast.training import resolve_device


def run_logits(run_dir: Path, sentences: list[str], device: torch.device) -> np.ndarray:
    """Logits (N, 2) of a run's model for ``sentences``: the merged teacher, or the student."""
    info = read_run_info(run_dir)
    if info["kind"] == "teacher":
        model, tokenizer = load_teacher(run_dir)
        max_length = read_json(Path(run_dir) / METRICS_FILE)["config"]["max_length"]
        ids = encode(tokenizer, sentences, max_length)
        return predict_logits(model.to(device), ids, tokenizer.pad_token_id, device)
    from kdfast.student import student_logits

    return student_logits(Path(run_dir), sentences, device)


def evaluate_run(run_dir: Path, data: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Dev metrics of a run; ``data`` defaults to the data the run was trained on."""
    info = read_run_info(run_dir)
    if data is None:
        data = read_json(Path(run_dir) / METRICS_FILE)["config"]["data"]
    cola = load_cola(data)
    logits = run_logits(Path(run_dir), [e.sentence for e in cola.dev], resolve_device(device))
    return {"run": str(run_dir), "kind": info["kind"], "mode": info.get("mode"), "data": cola.source,
            "dev": len(cola.dev), **score_dev(logits, cola.dev)}
