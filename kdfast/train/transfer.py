"""``kdfast distill --transfer FILE``: the user's own unlabeled text as transfer set, any size, streamed.

**Reading.** ``FILE`` is plain text, one sentence a line (blank lines skipped), unless its suffix says CSV (``.csv``),
TSV (``.tsv``) or JSON Lines (``.jsonl``/``.json``), whose text is the ``--text-column`` column (default ``text``,
else ``sentence``; ``kdfast.data.tabular``). It is read ``PART_LINES`` texts at a time and never held whole.

**Labelling and the cache.** Each part of ``PART_LINES`` consecutive texts (the last one shorter) is labelled by the
teacher in batches and written to its own file in the cache folder (``transfer_cache/`` in ``--out``, or
``--transfer-cache DIR``), ``part-NNNNNN.safetensors`` (N: the part's index from 0), holding:

- ``logits`` (n, C) float32 and ``features`` (n, d) float16: the teacher's logits and sentence representation
  (``kdfast.train.teacher_cache``), one row per text;
- ``text`` (bytes,) uint8 and ``text_offsets`` (n + 1,) int64: the n texts in UTF-8, text i being
  ``text[text_offsets[i]:text_offsets[i + 1]]``, so that training reads the parts alone, not the file again;
- metadata ``format`` (``kdfast-transfer-v1``), ``key`` (``teacher_cache.cache_key`` of the teacher run and of the
  part's texts as the teacher read them), ``index`` and ``lines``.

A teacher-labels file (``kdfast label TEACHER --file FILE --out labels.parquet``, :mod:`kdfast.batch.label`: the
expensive pass done apart, on as many Ray workers as there are) is a transfer file whose parts are written from its
logits and features, once its teacher is checked to be this run: the teacher is not run again.

A part is written to a temporary name and renamed, so a killed run leaves whole parts only; a run with the same
teacher and file (or any file with the same texts in the same parts) keeps every part whose key matches and labels
the others: it resumes. Any program that writes parts in this format (the teacher need not be kdfast's) fills the
cache as well. Under ``torchrun`` rank r labels parts r, r + N, r + 2N, ... and then every rank reads every part: the
cache, and so training, equal one process's.

**Training** reads one part at a time (memory bounded by a part, not by the file): each epoch visits the parts in
a seeded random order, each part's texts in a seeded random order, and interleaves those batches with the
in-memory training set's in proportion to their sizes. Transfer texts carry soft targets only (no gold label).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kdfast.data.tabular import is_table, iter_rows
from kdfast.errors import KdfastError, first_line
from kdfast.runs import METRICS_FILE, read_json
from kdfast.train.distill import PART_LINES
from kdfast.train.distributed import Context, barrier
from kdfast.train.teacher_cache import cache_key, teacher_fingerprint, teacher_pass, teacher_texts

FORMAT = "kdfast-transfer-v1"
CACHE_DIR = "transfer_cache"


def read_texts(path: Path, text_column: str | None = None) -> Iterator[str]:
    """The texts of a transfer file, in order, streamed (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise KdfastError(f"--transfer {path}: no such file")
    if is_table(path):
        for text, _ in iter_rows(path, text_column, None):
            yield text
        return
    try:
        with path.open(encoding="utf-8-sig") as f:
            for line in f:
                text = line.strip()
                if text:
                    yield text
    except UnicodeDecodeError as e:
        raise KdfastError(f"{path}: not valid UTF-8 ({e.reason})") from None
    except OSError as e:
        raise KdfastError(f"cannot read {path}: {e.strerror}") from None


def read_parts(path: Path, text_column: str | None, lines: int = PART_LINES) -> Iterator[list[str]]:
    """The texts of ``path`` ``lines`` at a time; an error when there is none."""
    part: list[str] = []
    any_text = False
    for text in read_texts(path, text_column):
        part.append(text)
        any_text = True
        if len(part) == lines:
            yield part
            part = []
    if part:
        yield part
    if not any_text:
        raise KdfastError(f"--transfer {path}: no text in it")


def part_file(folder: Path, index: int) -> Path:
    return Path(folder) / f"part-{index:06d}.safetensors"


def encode_texts(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts as (UTF-8 bytes (uint8), offsets (n + 1,) int64)."""
    blobs = [t.encode("utf-8") for t in texts]
    offsets = torch.zeros(len(blobs) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor([len(b) for b in blobs], dtype=torch.long).cumsum(0)
    joined = b"".join(blobs)
    data = torch.frombuffer(bytearray(joined), dtype=torch.uint8) if joined else torch.zeros(0, dtype=torch.uint8)
    return data, offsets


def decode_texts(data: torch.Tensor, offsets: torch.Tensor) -> list[str]:
    raw = data.numpy().tobytes()
    bounds = offsets.tolist()
    return [raw[a:b].decode("utf-8") for a, b in itertools.pairwise(bounds)]


def part_key(path: Path) -> str | None:
    """The key of a cached part, or None when it is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return meta.get("key") if meta.get("format") == FORMAT else None
    except Exception:  # an unreadable part is only a cache: label it again
        return None


def write_part(path: Path, texts: list[str], scores: dict[str, torch.Tensor], key: str, index: int) -> None:
    """One part, written to a temporary name then renamed (a killed run leaves no half part)."""
    data, offsets = encode_texts(texts)
    tensors = {"logits": scores["logits"].float().contiguous(), "features": scores["features"].half().contiguous(),
               "text": data, "text_offsets": offsets}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "key": key, "index": str(index), "lines": str(len(texts))})
    os.replace(tmp, path)


def read_part(path: Path) -> dict[str, Any]:
    """A cached part: ``texts`` (list), ``logits`` (n, C) float32, ``features`` (n, d) float32."""
    with safe_open(str(path), framework="pt") as f:
        texts = decode_texts(f.get_tensor("text"), f.get_tensor("text_offsets"))
        return {"texts": texts, "logits": f.get_tensor("logits").float(), "features": f.get_tensor("features").float()}


@dataclass
class TransferSet:
    """The labelled parts of a transfer file: their paths and sizes, in the file's order."""

    parts: list[Path]
    sizes: list[int]
    labelled: int  # lines the teacher labelled in this run (the rest came from the cache)

    def __len__(self) -> int:
        return sum(self.sizes)


def label_transfer(teacher: Path, path: Path, text_column: str | None, folder: Path, ctx: Context, bar: Any,
                   batch_size: int = 64, lines: int = PART_LINES) -> TransferSet:
    """Every part of ``path`` labelled by ``teacher`` into ``folder`` (resuming from the parts there), this rank's
    share by this rank; then every rank knows every part."""
    from transformers import AutoTokenizer

    from kdfast.train.teacher import load_teacher

    merged = Path(teacher) / "merged"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(merged))
    except Exception as e:
        raise KdfastError(f"{merged}: could not load the teacher's tokenizer ({first_line(e)})") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = teacher_fingerprint(teacher)
    max_length = read_json(Path(teacher) / METRICS_FILE)["config"].get("max_length", 64)
    model = None
    parts, sizes, labelled, kept, given = [], [], 0, 0, 0
    task = bar.add_task("transfer set: teacher labels", total=None, loss=0.0, rate=0.0)
    start = time.perf_counter()
    for index, (texts, scores) in enumerate(transfer_parts(path, teacher, text_column, lines)):
        target = part_file(folder, index)
        parts.append(target)
        sizes.append(len(texts))
        if index % ctx.world != ctx.rank:
            continue
        key = cache_key(fingerprint, teacher_texts(texts, tokenizer))
        if part_key(target) == key:
            kept += len(texts)
        elif scores is not None:  # labelled by kdfast label: its logits and features, as the teacher gave them
            write_part(target, texts, scores, key, index)
            given += len(texts)
        else:
            if model is None:
                model, tokenizer = load_teacher(teacher)
                model.to(ctx.device)
            scores = teacher_pass(model, tokenizer, texts, max_length, ctx.device, batch_size)
            write_part(target, texts, scores, key, index)
            labelled += len(texts)
        bar.update(task, completed=kept + given + labelled, rate=labelled / (time.perf_counter() - start))
    barrier()  # every rank's parts are written before any rank reads them
    if ctx.master and (kept or given):
        bar.console.print(f"transfer set: {kept:,} lines from the cache in {folder}, {given:,} from the "
                          f"teacher-labels file, {labelled:,} labelled now")
    return TransferSet(parts, sizes, int(ctx.all_sum(labelled)[0]))


def transfer_parts(path: Path, teacher: Path, text_column: str | None, lines: int
                   ) -> Iterator[tuple[list[str], dict[str, torch.Tensor] | None]]:
    """The transfer file's parts: their texts and, for a teacher-labels file of this teacher (``kdfast label``,
    on this machine or a Ray cluster), their logits and features; None where the teacher must label them."""
    from kdfast.batch.label import is_teacher_labels, teacher_label_parts

    if not is_teacher_labels(path):
        yield from ((texts, None) for texts in read_parts(path, text_column, lines))
        return
    for texts, logits, features in teacher_label_parts(path, teacher, lines):
        yield texts, {"logits": torch.from_numpy(logits), "features": torch.from_numpy(features)}


def proportional(first: int, second: int) -> Iterator[bool]:
    """``first`` Trues and ``second`` Falses, interleaved evenly (True: take from the first stream)."""
    a = b = 0
    while a < first or b < second:
        if b >= second or (a < first and a * second <= b * first):
            a += 1
            yield True
        else:
            b += 1
            yield False
