"""``kdfast eval``: accuracy, MCC and macro-F1 of any run folder (teacher or student) on its dev set (and, for CoLA,
on its two halves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdfast.data import dataset_from_config
from kdfast.runs import METRICS_FILE, read_json, read_run_info, run_labels
from kdfast.train.teacher import encode, load_teacher, predict_logits, score_dev
from kdfast.train.training import resolve_device


def run_logits(run_dir: Path, sentences: list[str], device: torch.device) -> np.ndarray:
    """Logits (N, C) of a run's model for ``sentences``: the merged teacher, or the student."""
    info = read_run_info(run_dir)
    if info["kind"] == "teacher":
        model, tokenizer = load_teacher(run_dir)
        max_length = read_json(Path(run_dir) / METRICS_FILE)["config"]["max_length"]
        ids = encode(tokenizer, sentences, max_length)
        return predict_logits(model.to(device), ids, tokenizer.pad_token_id, device)
    from kdfast.train.student import student_logits

    return student_logits(Path(run_dir), sentences, device)


def evaluate_run(run_dir: Path, data: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Dev metrics of a run; ``data`` defaults to the data the run was trained on. Label ids are the run's own."""
    info = read_run_info(run_dir)
    config = read_json(Path(run_dir) / METRICS_FILE)["config"]
    dataset = dataset_from_config(config, data, run_labels(run_dir))
    logits = run_logits(Path(run_dir), [e.text for e in dataset.dev], resolve_device(device))
    return {"run": str(run_dir), "kind": info["kind"], "mode": info.get("mode"), "data": dataset.source,
            "labels": dataset.labels, "dev": len(dataset.dev), **score_dev(logits, dataset)}
