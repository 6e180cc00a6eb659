"""Predictions from a run folder, the one code path behind ``kdfast predict``, ``kdfast.load`` and ``kdfast serve``.

    texts ─ encode (teacher: its tokenizer; student: its word vocabulary) ─ batches sorted by length
          ─ model (PyTorch, or an ONNX Runtime session on RUN/onnx/model*.onnx) ─ logits (N, C) ─ softmax

A runtime is ``torch`` (the run's own model) or one of the ONNX files ``kdfast export --onnx`` wrote. ``auto``
takes, of the exported variants whose parity check passed, the one the export measured fastest at batch 1 (both
recorded in ``RUN/onnx/manifest.json``), else PyTorch.

Start-up matters for a command called once per file: nothing here imports torch or transformers at the top. An
ONNX student needs only its ``vocab.json`` and ONNX Runtime; an ONNX teacher adds its tokenizer (transformers);
the ``torch`` runtime imports the training code.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdfast.errors import KdfastError
from kdfast.runs import METRICS_FILE, read_json, read_run_info, run_labels

RUNTIMES = ("auto", "torch", "onnx", "onnx-opt", "onnx-int8")
# runtime name -> manifest variant. ``auto`` takes the variant the export measured fastest at batch 1 (the manifest's
# "latency"); an export written before kdfast recorded that falls back to this order, the optimized (fused-attention)
# teacher first, then fp32, then int8.
ONNX_RUNTIMES = {"onnx-opt": "optimized", "onnx": "fp32", "onnx-int8": "int8"}
ONNX_FOLDER, MANIFEST = "onnx", "manifest.json"
CHUNK = 4096  # sentences read, sorted by length and predicted at a time when streaming: memory stays constant


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (N, C) of logits (N, C), in float64 for a stable sum of 1."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def length_sorted(seqs: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by length (as kdfast.batching does it, without torch): little padding, same logits."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 (B, T), right-padded to the longest."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return ids, mask


# --- backends: encode(texts) -> ids, forward(input_ids, attention_mask) -> logits (B, C)


@dataclass
class Backend:
    encode: Callable[[list[str]], list[list[int]]]
    forward: Callable[[np.ndarray, np.ndarray], np.ndarray]
    pad_id: int
    description: str  # what was loaded, for stderr and /metadata


def manifest_of(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / ONNX_FOLDER / MANIFEST
    return read_json(path) if path.exists() else None


def passed_variants(manifest: dict[str, Any]) -> set[str]:
    """Variants whose parity check ran and passed (an export with --no-check has none)."""
    return {v["variant"] for v in manifest.get("parity", {}).get("variants", []) if v.get("checked") and v["passed"]}


def choose_runtime(run_dir: Path, runtime: str) -> str:
    """The concrete runtime for ``runtime``: ``auto`` is the exported variant that passed parity and was measured
    fastest at export (an older export, without timings: the first in ONNX_RUNTIMES' order), else torch."""
    if runtime not in RUNTIMES:
        raise KdfastError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    manifest = manifest_of(run_dir)
    if manifest is None:
        return "torch"
    passed = passed_variants(manifest)
    usable = [name for name, variant in ONNX_RUNTIMES.items()
              if variant in passed and (Path(run_dir) / ONNX_FOLDER / variant_file(manifest, variant)).exists()]
    if not usable:
        return "torch"
    ms = (manifest.get("latency") or {}).get("ms") or {}
    if all(isinstance(ms.get(ONNX_RUNTIMES[name]), int | float) for name in usable):
        return min(usable, key=lambda name: ms[ONNX_RUNTIMES[name]])  # a tie keeps the order above
    return usable[0]


def variant_file(manifest: dict[str, Any], variant: str) -> str:
    for v in manifest.get("variants", []):
        if v["variant"] == variant:
            return str(v["file"])
    raise KdfastError(f"the export has no {variant} model (its variants: "
                      f"{', '.join(v['variant'] for v in manifest.get('variants', [])) or 'none'}); "
                      f"export it, e.g. kdfast export --onnx RUN{' --optimize' if variant == 'optimized' else ''}"
                      f"{' --int8' if variant == 'int8' else ''}")


def onnx_backend(run_dir: Path, runtime: str, threads: int | None, spin: bool = True) -> Backend:
    import onnxruntime as ort

    folder = Path(run_dir) / ONNX_FOLDER
    manifest = manifest_of(run_dir)
    if manifest is None:
        raise KdfastError(f"{run_dir}: no ONNX export ({folder / MANIFEST} missing); run kdfast export --onnx "
                          f"{run_dir}, or use --runtime torch")
    variant = ONNX_RUNTIMES[runtime]
    path = folder / variant_file(manifest, variant)
    if not path.exists():
        raise KdfastError(f"{path}: missing")
    pre = manifest["source_run"]["preprocessing"]
    if "tokenizer" in pre:  # a teacher: its own tokenizer, truncated as in training
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder / pre["tokenizer"]))
        max_length = int(pre["max_length"])

        def encode(texts: list[str]) -> list[list[int]]:
            return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    else:  # a student: its word vocabulary (torch-free)
        from kdfast.train.vocab import WordVocab

        vocab = WordVocab.load(folder / pre["vocab"])
        config = folder / "student_config.json"
        max_length = int(read_json(config).get("max_length", 64)) if config.exists() else 64

        def encode(texts: list[str]) -> list[list[int]]:
            return [vocab.encode(t, max_length) for t in texts]

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:  # a server: idle ONNX Runtime threads sleep instead of spinning on the cores HTTP needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask}
        return session.run(["logits"], {n: feeds[n] for n in names})[0]

    return Backend(encode, forward, int(pre["pad_id"]), f"ONNX Runtime {ort.__version__}, {path}")


def torch_backend(run_dir: Path, device: str, threads: int | None) -> Backend:
    import torch

    from kdfast.train.training import resolve_device

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    info = read_run_info(run_dir)
    if info["kind"] == "teacher":
        if not (Path(run_dir) / "merged").is_dir():
            raise KdfastError(f"{run_dir}: no model (merged/ missing): a teacher run that did not finish?")
        from kdfast.train.teacher import encode as encode_teacher
        from kdfast.train.teacher import load_teacher

        model, tokenizer = load_teacher(run_dir)
        max_length = int(read_json(Path(run_dir) / METRICS_FILE)["config"]["max_length"])
        pad_id = int(tokenizer.pad_token_id)

        def encode(texts: list[str]) -> list[list[int]]:
            return encode_teacher(tokenizer, texts, max_length)

        def call(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return model(input_ids=ids, attention_mask=mask).logits
    else:
        from kdfast.train.student import STUDENT_FILE, load_student

        if not (Path(run_dir) / STUDENT_FILE).exists():
            raise KdfastError(f"{run_dir}: no model ({STUDENT_FILE} missing): a student run that did not finish?")
        model, vocab, max_length = load_student(run_dir)
        pad_id = vocab.pad_id

        def encode(texts: list[str]) -> list[list[int]]:
            return [vocab.encode(t, max_length) for t in texts]

        def call(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return model(ids, mask)

    model.to(dev).eval()

    @torch.no_grad()
    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return call(torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev)).float().cpu().numpy()

    return Backend(encode, forward, pad_id, f"PyTorch {torch.__version__} on {dev}, {run_dir}")


# --- the classifier


class Classifier:
    """A run's model, ready to classify sentences. ``kdfast.load(run_dir)`` makes one.

    >>> clf = kdfast.load("runs/student")
    >>> clf.predict(["The book was read.", "Book the read was."])   # ['acceptable', 'unacceptable']
    """

    def __init__(self, run_dir: str | Path, runtime: str = "auto", batch_size: int = 64, threads: int | None = None,
                 device: str = "auto", spin: bool = True) -> None:
        run_dir = Path(run_dir)
        info = read_run_info(run_dir)
        self.run_dir, self.kind, self.labels = run_dir, str(info["kind"]), run_labels(run_dir)
        if batch_size < 1:
            raise KdfastError(f"--batch-size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.requested = runtime
        self.runtime = choose_runtime(run_dir, runtime)
        if self.runtime == "torch":
            self.backend = torch_backend(run_dir, device, threads)
        else:
            self.backend = onnx_backend(run_dir, self.runtime, threads, spin)
        manifest = Path(run_dir) / ONNX_FOLDER / MANIFEST
        self.manifest_sha256 = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else None

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits (N, C) in the order of ``texts``, batched by length."""
        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        ids = self.backend.encode(texts)
        for idx in length_sorted(ids, self.batch_size):
            out[idx] = self.backend.forward(*pad([ids[i] for i in idx], self.backend.pad_id))  # (B, C)
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probability of every class (N, C); column ``i`` is ``labels[i]``."""
        return softmax(self.logits(texts))

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The label name of each text."""
        return [self.labels[i] for i in self.logits(texts).argmax(axis=1)]

    def stream(self, texts: Iterable[str], chunk: int = CHUNK) -> Iterator[tuple[str, np.ndarray]]:
        """(text, probabilities (C,)) for each text, in order, ``chunk`` texts in memory at a time."""
        it = iter(texts)
        while batch := list(itertools.islice(it, chunk)):
            yield from zip(batch, self.predict_proba(batch), strict=True)

    def predict_dataset(self, ds: Any, **options: Any) -> Any:
        """A Ray Data ``Dataset`` with ``label`` and ``p_<class>`` columns added, scored lazily by an actor pool
        that loads this run's model once per actor (:func:`kdfast.batch.ray_engine.predict_dataset`; options:
        workers, rows, threads, text_column, keep, bad_rows)."""
        from kdfast.batch.ray_engine import predict_dataset

        return predict_dataset(ds, self.run_dir, self.runtime, batch_size=self.batch_size, **options)

    def describe(self) -> dict[str, Any]:
        from kdfast import __version__

        return {"run": str(self.run_dir), "kind": self.kind, "labels": self.labels, "runtime": self.runtime,
                "requested_runtime": self.requested, "model": self.backend.description,
                "manifest_sha256": self.manifest_sha256, "kdfast_version": __version__}


