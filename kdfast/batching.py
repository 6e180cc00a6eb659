"""Token-id batches with right padding, shared by the teacher and the student."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (input_ids, attention_mask), both int64 of shape (B, T)."""
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Indices of one epoch in a seeded random order, ``batch_size`` at a time."""
    order = torch.randperm(n, generator=generator).tolist()
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, chunk: int = 50
) -> Iterator[list[int]]:
    """One epoch in a seeded random order, but with sentences of similar length batched together (Hugging Face
    Trainer's ``group_by_length``): shuffle, sort each run of ``chunk`` batches by length, cut into batches, then
    shuffle the batches. Padding, and so compute, drops by about half on CoLA."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    span = batch_size * chunk
    batches: list[list[int]] = []
    for i in range(0, len(order), span):
        part = sorted(order[i : i + span], key=lambda j: lengths[j], reverse=True)
        batches.extend(part[k : k + batch_size] for k in range(0, len(part), batch_size))
    for b in torch.randperm(len(batches), generator=generator).tolist():
        yield batches[b]


def length_sorted_batches(seqs: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by length, for inference: little padding, same results (the model ignores padding)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def in_order(parts: list[tuple[list[int], np.ndarray]], n: int) -> np.ndarray:
    """Rows (B, C) of batches taken in any order, put back in the order of their indices: (n, C)."""
    width = parts[0][1].shape[1] if parts else 0
    out = np.zeros((n, width), dtype=np.float32)
    for idx, rows in parts:
        out[idx] = rows
    return out
