from __future__ import annotations

from pathlib import Path

import pytest

from kdfast.data import load_cola, read_tsv, subsample
from kdfast.errors import KdfastError
from kdfast.metrics import accuracy, dev_report, mcc


def test_public_release_counts(cola_dir: Path) -> None:
    cola = load_cola(cola_dir)
    assert len(cola.train) == 8551
    assert len(cola.dev) == 1043
    assert len(cola.dev_in_domain) == 527 and len(cola.dev_out_of_domain) == 516
    assert sum(e.label for e in cola.train) == 6023
    assert sum(e.label for e in cola.dev_in_domain) == 365


def test_glue_files_split_domains_by_source(cola_dir: Path, tmp_path: Path) -> None:
    # GLUE's dev.tsv is in-domain dev followed by out-of-domain dev, same four columns.
    (tmp_path / "train.tsv").write_bytes((cola_dir / "in_domain_train.tsv").read_bytes())
    dev = (cola_dir / "in_domain_dev.tsv").read_text() + (cola_dir / "out_of_domain_dev.tsv").read_text() + "\n"
    (tmp_path / "dev.tsv").write_text(dev)
    glue, public = load_cola(tmp_path), load_cola(cola_dir)
    assert glue.dev == public.dev


def test_majority_class_scores_zero_mcc(cola_dir: Path) -> None:
    import numpy as np

    cola = load_cola(cola_dir)
    labels = np.array([e.label for e in cola.dev])
    report = dev_report(np.ones_like(labels), labels, np.array([e.in_domain for e in cola.dev]))
    assert report["dev_acc"] == pytest.approx(719 / 1043)
    assert report["dev_in_domain_acc"] == pytest.approx(365 / 527)
    assert report["dev_mcc"] == 0.0


def test_mcc_matches_hand_computation() -> None:
    preds, labels = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    assert mcc(preds, labels) == pytest.approx(expected)
    assert mcc(labels, labels) == pytest.approx(1.0)
    assert mcc([1 - y for y in labels], labels) == pytest.approx(-1.0)
    assert accuracy(preds, labels) == pytest.approx(4 / 6)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"gj04\t1\t\tFine.\ngj04\t1\tOnly three\n", "bad.tsv:2: expected 4 tab-separated columns, found 3"),
        (b"gj04\t2\t\tBad label.\n", "bad.tsv:1: label must be 0 or 1"),
        (b"gj04\t1\t\tok\ngj04\t1\t\t\xff\xfe\n", "bad.tsv:2: not valid UTF-8"),
        (b"", "bad.tsv: no rows"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(content)
    with pytest.raises(KdfastError, match=message.replace(".", r"\.")):
        read_tsv(path)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(KdfastError, match="no CoLA files"):
        load_cola(tmp_path)
    (tmp_path / "in_domain_train.tsv").write_text("gj04\t1\t\tA.\n")
    with pytest.raises(KdfastError, match=r"missing in_domain_dev\.tsv, out_of_domain_dev\.tsv"):
        load_cola(tmp_path)
    with pytest.raises(KdfastError, match="no such folder"):
        load_cola(tmp_path / "nope")


def test_subsample_is_seeded(cola_dir: Path) -> None:
    train = load_cola(cola_dir).train
    a, b, c = subsample(train, 100, 0), subsample(train, 100, 0), subsample(train, 100, 1)
    assert a == b and a != c and len(a) == 100
    assert subsample(train, None, 0) == train


def test_length_grouped_batches_cover_every_index_once() -> None:
    import torch

    from kdfast.batching import length_grouped_batches

    lengths = [(i * 7) % 23 + 1 for i in range(1000)]
    batches = list(length_grouped_batches(lengths, 32, torch.Generator().manual_seed(0), chunk=4))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 6  # similar lengths together (random batches span about 22)
    again = list(length_grouped_batches(lengths, 32, torch.Generator().manual_seed(0), chunk=4))
    assert again == batches
