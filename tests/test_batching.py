"""kdfast.batching: padding, the seeded epoch orders, and putting batches back in order."""

from __future__ import annotations

import numpy as np
import torch

from kdfast.batching import in_order, length_grouped_batches, length_sorted_batches, pad_batch, shuffled_batches


def test_pad_batch_pads_right_and_masks_the_padding() -> None:
    ids, mask = pad_batch([[5, 6, 7], [8], [4, 3]], pad_id=9)
    assert ids.dtype == mask.dtype == torch.int64
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9], [4, 3, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    ids, mask = pad_batch([[], []], pad_id=2)  # empty sentences still give one (padded) step
    assert ids.tolist() == [[2], [2]] and mask.tolist() == [[0], [0]]


def test_shuffled_batches_are_a_seeded_permutation() -> None:
    batches = list(shuffled_batches(10, 4, torch.Generator().manual_seed(3)))
    assert [len(b) for b in batches] == [4, 4, 2]
    order = [i for b in batches for i in b]
    assert order == torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert batches == list(shuffled_batches(10, 4, torch.Generator().manual_seed(3)))
    assert batches != list(shuffled_batches(10, 4, torch.Generator().manual_seed(4)))


def test_length_grouped_batches_sort_within_chunks() -> None:
    lengths = [1, 9, 2, 8, 3, 7, 4, 6, 5, 10]
    batches = list(length_grouped_batches(lengths, 2, torch.Generator().manual_seed(0), chunk=2))
    assert sorted(i for b in batches for i in b) == list(range(10)) and all(len(b) == 2 for b in batches)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(10, generator=generator).tolist()
    chunks = [sorted(order[i : i + 4], key=lambda j: lengths[j], reverse=True) for i in range(0, 10, 4)]
    want = [c[k : k + 2] for c in chunks for k in range(0, len(c), 2)]  # longest first within each chunk of 2 batches
    assert batches == [want[b] for b in torch.randperm(len(want), generator=generator).tolist()]
    many = [(i * 37) % 101 for i in range(250)]  # chunk's default is 50 batches: 100 sentences here
    default = list(length_grouped_batches(many, 2, torch.Generator().manual_seed(0)))
    assert default == list(length_grouped_batches(many, 2, torch.Generator().manual_seed(0), chunk=50))
    assert default != list(length_grouped_batches(many, 2, torch.Generator().manual_seed(0), chunk=51))


def test_length_sorted_batches_for_inference() -> None:
    seqs = [[1, 1, 1], [1], [1, 1], [1] * 5, [1] * 4]
    assert list(length_sorted_batches(seqs, 2)) == [[1, 2], [0, 4], [3]]


def test_in_order_puts_rows_back_by_index() -> None:
    parts = [([2, 0], np.array([[2.0, 20.0], [0.0, 0.5]])), ([1], np.array([[1.0, 10.0]]))]
    out = in_order(parts, 3)
    assert out.dtype == np.float32
    assert out.tolist() == [[0.0, 0.5], [1.0, 10.0], [2.0, 20.0]]
    assert in_order([([1, 0], np.array([[1.0], [0.0]]))], 2).tolist() == [[0.0], [1.0]]  # one batch
    assert in_order([], 4).shape == (4, 0)
