"""The run folder: the unit every stage passes along.

``train lora`` writes a teacher run, ``distill`` and ``train rnn`` write student runs; ``export``, ``bench`` and
``eval`` read them. Every run folder holds ``run.json`` (``{"kind": "teacher" | "student", "kdfast_version",
"created", "labels"}``, students add ``"mode": "distill" | "scratch"``; ``labels[i]`` names class id ``i``) and
``metrics.json``; docs/reference.md, "Run folders",
section lists every file of each kind.

A run is built in a hidden temporary folder beside ``--out`` and renamed into place only when complete, so a
failed or interrupted run never leaves a half-written folder that a later stage would take for finished, and
never destroys what was in ``--out`` before.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdfast import __version__
from kdfast.errors import KdfastError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
KINDS = ("teacher", "student")
# Runs written before run.json named the labels were all CoLA runs: their ids are CoLA's classes.
LEGACY_LABELS = ["unacceptable", "acceptable"]


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder without ``--overwrite``, before any work is done."""
    if out.exists() and not out.is_dir():
        raise KdfastError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise KdfastError(f"--out {out} is not empty; pass --overwrite to replace it")


@contextmanager
def staged_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on failure it is removed."""
    out = Path(out)
    check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically: a temporary file beside ``path``, then renamed over it (a killed process leaves
    the old file or the new one, never half of one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (:func:`write_text`)."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_run_info(folder: Path, kind: str, **extra: Any) -> None:
    assert kind in KINDS
    info = {"kind": kind, "kdfast_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    write_json(folder / RUN_FILE, info)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KdfastError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KdfastError(f"{path}: not valid JSON ({e})") from None


def read_run_info(run_dir: Path, kind: str | None = None) -> dict[str, Any]:
    """``run.json`` of a run folder, checked to be of ``kind`` when given."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdfastError(f"{run_dir}: no such run folder")
    if not (run_dir / RUN_FILE).exists():
        raise KdfastError(f"{run_dir}: not a kdfast run folder (no {RUN_FILE})")
    info = read_json(run_dir / RUN_FILE)
    if not isinstance(info, dict) or info.get("kind") not in KINDS:
        kind_found = info.get("kind") if isinstance(info, dict) else info
        raise KdfastError(f"{run_dir / RUN_FILE}: unknown run kind {kind_found!r}")
    if kind is not None and info["kind"] != kind:
        raise KdfastError(f"{run_dir}: a {info['kind']} run, expected a {kind} run")
    return info


def run_labels(run_dir: Path) -> list[str]:
    """The label names of a run (``labels[id]``), as fixed from its training data."""
    info = read_run_info(run_dir)
    labels = info.get("labels", LEGACY_LABELS)
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(n, str) for n in labels):
        raise KdfastError(f"{Path(run_dir) / RUN_FILE}: 'labels' must be a list of two or more names")
    return labels
