from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdfast.data import load_dataset, subsample
from kdfast.data.cola import read_tsv
from kdfast.errors import KdfastError
from kdfast.metrics import accuracy, dev_report, macro_f1, mcc


def test_bundled_cola_counts() -> None:
    cola = load_dataset("cola")
    assert cola.source == "cola" and cola.labels == ["unacceptable", "acceptable"] and cola.halves
    assert len(cola.train) == 8551
    assert len(cola.dev) == 1043
    assert len(cola.dev_in_domain) == 527 and len(cola.dev_out_of_domain) == 516
    assert sum(e.label for e in cola.train) == 6023
    assert sum(e.label for e in cola.dev_in_domain) == 365


def test_bundled_cola_offline_in_a_fresh_process(tmp_path: Path) -> None:
    """``--data cola`` with networking shut off (the Hub unreachable, HF offline) reads the package's copy."""
    code = ("import socket\n"
            "def refuse(*a, **k):\n    raise OSError('network disabled in this test')\n"
            "socket.socket.connect = refuse\nsocket.create_connection = refuse\nsocket.getaddrinfo = refuse\n"
            "from kdfast.data import load_dataset\n"
            "d = load_dataset('cola')\nprint(len(d.train), len(d.dev))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["8551", "1043"]


def test_glue_files_split_domains_by_source(cola_dir: Path, tmp_path: Path) -> None:
    # GLUE's dev.tsv is in-domain dev followed by out-of-domain dev, same four columns.
    (tmp_path / "train.tsv").write_bytes((cola_dir / "in_domain_train.tsv").read_bytes())
    dev = (cola_dir / "in_domain_dev.tsv").read_text() + (cola_dir / "out_of_domain_dev.tsv").read_text() + "\n"
    (tmp_path / "dev.tsv").write_text(dev)
    glue, public = load_dataset(tmp_path), load_dataset(cola_dir)
    assert glue.dev == public.dev and glue.halves


def test_majority_class_scores_zero_mcc() -> None:
    cola = load_dataset("cola")
    labels, in_domain = cola.dev_targets()
    report = dev_report(np.ones_like(labels), labels, in_domain)
    assert report["dev_acc"] == pytest.approx(719 / 1043)
    assert report["dev_in_domain_acc"] == pytest.approx(365 / 527)
    assert report["dev_mcc"] == 0.0
    # macro-F1 of "always acceptable": F1 of class 1 = 2·719/(1043+719), class 0 scores 0
    assert report["dev_f1"] == pytest.approx((2 * 719 / (1043 + 719)) / 2)


def test_mcc_binary_matches_hand_computation_on_an_asymmetric_case() -> None:
    # TP 3, TN 1, FP 2, FN 1: no symmetry, so a swapped pair in the denominator changes the value
    preds = [1, 1, 1, 1, 1, 0, 0]
    labels = [1, 1, 1, 0, 0, 1, 0]
    tp, tn, fp, fn = 3, 1, 2, 1
    expected = (tp * tn - fp * fn) / ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    assert expected == pytest.approx(1 / 120 ** 0.5)
    assert mcc(preds, labels) == pytest.approx(expected)
    assert mcc(labels, labels) == pytest.approx(1.0)
    assert mcc([1 - y for y in labels], labels) == pytest.approx(-1.0)
    assert accuracy(preds, labels) == pytest.approx(4 / 7)
    assert mcc([1] * 7, labels) == 0.0  # a constant predictor


def test_mcc_and_macro_f1_multiclass_by_hand() -> None:
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 1, 0, 1, 2, 2, 2, 0, 2]
    # confusion (rows true): [[2,1,0],[0,1,1],[1,0,3]]; s=9, c=6, t=(3,2,4), p=(3,2,4)
    s, c, t, p = 9, 6, np.array([3, 2, 4]), np.array([3, 2, 4])
    expected = (c * s - p @ t) / np.sqrt((s * s - p @ p) * (s * s - t @ t))
    assert expected == pytest.approx(25 / 52)
    assert mcc(preds, labels) == pytest.approx(expected)
    f1 = [2 * 2 / (3 + 3), 2 * 1 / (2 + 2), 2 * 3 / (4 + 4)]
    assert macro_f1(preds, labels) == pytest.approx(sum(f1) / 3)
    # with unequal true and predicted counts the two factors of the denominator differ
    preds2 = [0, 0, 0, 0, 0, 1, 2, 2, 2]
    p2 = np.array([5, 1, 3])  # Σp² = 35, Σt² = 29
    c2 = 3 + 0 + 3
    want = (c2 * s - p2 @ t) / np.sqrt((s * s - p2 @ p2) * (s * s - t @ t))
    assert mcc(preds2, labels) == pytest.approx(want)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert mcc(preds2, labels) == pytest.approx(sklearn.matthews_corrcoef(labels, preds2))
    assert macro_f1(preds2, labels) == pytest.approx(sklearn.f1_score(labels, preds2, average="macro"))


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
    with pytest.raises(KdfastError, match="no train file"):
        load_dataset(tmp_path)
    (tmp_path / "in_domain_train.tsv").write_text("gj04\t1\t\tA.\n")
    with pytest.raises(KdfastError, match=r"missing in_domain_dev\.tsv, out_of_domain_dev\.tsv"):
        load_dataset(tmp_path)
    with pytest.raises(KdfastError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")


def test_subsample_is_seeded() -> None:
    train = load_dataset("cola").train
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


# --- any dataset: CSV, TSV, JSON Lines, string or integer labels, N classes


def write_csv(path: Path, rows: list[tuple[str, object]], header: str = "text,label") -> Path:
    import csv

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header.split(","))
        w.writerows(rows)
    return path


ROWS = [("A cat sat.", "pets"), ("Stocks fell.", "money"), ("It rained, again.", "weather"), ("Dogs bark.", "pets"),
        ("Rates rose.", "money")]


def test_csv_string_labels_three_classes(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", ROWS)
    write_csv(tmp_path / "dev.csv", [("Sunny.", "weather"), ("A bird.", "pets")])
    data = load_dataset(tmp_path)
    assert data.labels == ["money", "pets", "weather"] and data.num_labels == 3 and not data.halves
    assert [e.label for e in data.train] == [1, 0, 2, 1, 0]
    assert [(e.text, e.label) for e in data.dev] == [("Sunny.", 2), ("A bird.", 1)]
    assert data.dev_targets()[1] is None


def test_files_jsonl_and_tsv_with_named_columns(tmp_path: Path) -> None:
    train = tmp_path / "t.jsonl"
    train.write_text("".join(json.dumps({"sentence": t, "y": i % 3}) + "\n" for i, (t, _) in enumerate(ROWS)))
    dev = tmp_path / "d.tsv"
    dev.write_text("sentence\ty\nOne.\t2\nTwo.\t0\n")
    data = load_dataset(train, dev, label_column="y")
    assert data.labels == ["0", "1", "2"]
    assert [e.label for e in data.train] == [0, 1, 2, 0, 1] and [e.label for e in data.dev] == [2, 0]
    # integer labels keep their numeric order, not the text order ("10" after "9")
    train.write_text("".join(json.dumps({"text": f"s{i}", "label": v}) + "\n" for i, v in enumerate([9, 10, 9])))
    dev.write_text("text\tlabel\nx\t10\n")
    data = load_dataset(train, dev)
    assert data.labels == ["9", "10"] and [e.label for e in data.train] == [0, 1, 0]


def test_a_runs_labels_fix_the_ids(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", ROWS[:2])  # only money and pets
    write_csv(tmp_path / "dev.csv", [("A bird.", "pets")])
    data = load_dataset(tmp_path, labels=["money", "pets", "weather"])
    assert [e.label for e in data.train] == [1, 0] and data.labels == ["money", "pets", "weather"]
    with pytest.raises(KdfastError, match="label 'money' is not one of the run's labels"):
        load_dataset(tmp_path, labels=["pets", "weather"])


@pytest.mark.parametrize(
    ("train", "dev", "message"),
    [
        ("text,label\nA.,x\nB.,y\n", "text,label\nC.,z\n", r"dev\.csv:2: dev label 'z' does not occur in train"),
        ("words,label\nA.,x\n", "text,label\nC.,x\n", r"train\.csv: no column 'text' or 'sentence' \(its columns: "
                                                      r"'words', 'label'\); name the right one with --text-column"),
        ("text,cls\nA.,x\n", "text,cls\nC.,x\n", r"train\.csv: no column 'label'"),
        ("text,label\nA.,x\nB.,x\n", "text,label\nC.,x\n", r"every label is 'x'; a classifier needs at least two"),
        ("text,label\nA.,1\nB.,two\n", "text,label\nC.,1\n", r"train\.csv:3: label 'two' is a string, but the first"),
        ("text,label\nA.,x\n,y\n", "text,label\nC.,x\n", r"train\.csv:3: empty text"),
        ("text,label\nA.,x\nB.,\n", "text,label\nC.,x\n", r"train\.csv:3: empty label"),
        ("text,label\nA.,x\nB.\n", "text,label\nC.,x\n", r"train\.csv:3: expected 2 columns"),
        ("", "text,label\nC.,x\n", r"train\.csv: empty file"),
        ("text,label\n", "text,label\nC.,x\n", r"train\.csv: no rows"),
    ],
)
def test_bad_tables_are_one_error_naming_file_and_line(tmp_path: Path, train: str, dev: str, message: str) -> None:
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "dev.csv").write_text(dev)
    with pytest.raises(KdfastError, match=message):
        load_dataset(tmp_path)


def test_label_errors_read_whole() -> None:
    """The messages a user reads, whole: mixed kinds name both lines; an unknown dev label lists train's labels, the
    first ten and "..." when there are more."""
    from kdfast.data.labels import RawLabel, label_ids, label_names

    mixed = [RawLabel(1, "t.csv:2"), RawLabel("two", "t.csv:3")]
    with pytest.raises(KdfastError) as e:
        label_names(mixed, "t.csv")
    assert str(e.value) == ("t.csv:3: label 'two' is a string, but the first label (t.csv:2: 1) is an integer; labels "
                            "must be all integers or all strings")
    with pytest.raises(KdfastError) as e:
        label_names([RawLabel("a", "t.csv:2"), RawLabel(3, "t.csv:3")], "t.csv")
    assert str(e.value).startswith("t.csv:3: label 3 is an integer, but the first label (t.csv:2: 'a') is a string;")
    with pytest.raises(KdfastError, match=r"^t.csv: no rows$"):
        label_names([], "t.csv")
    ten = "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9"
    for n, shown in ((10, ten), (11, ten + ", ...")):
        names = [f"c{i}" for i in range(n)]
        assert label_ids([RawLabel("c3", "d:1"), RawLabel("c0", "d:2")], names, "dev") == [3, 0]
        with pytest.raises(KdfastError) as e:
            label_ids([RawLabel("c0", "d:1"), RawLabel("zz", "d:2")], names, "dev")
        assert str(e.value) == f"d:2: dev label 'zz' does not occur in train (its labels: {shown})"


def test_table_reading_edge_cases(tmp_path: Path) -> None:
    """A byte-order mark, blank JSON lines, named columns; each error whole, naming the file (and line)."""
    from kdfast.data.tabular import iter_rows, read_table

    def error(path: Path, **kwargs: object) -> str:
        with pytest.raises(KdfastError) as e:
            list(iter_rows(path, **kwargs))  # type: ignore[arg-type]
        return str(e.value)

    bom = tmp_path / "bom.csv"
    bom.write_bytes("text,label\nA.,x\n".encode("utf-8-sig"))
    assert [(t, r.value) for t, r in iter_rows(bom)] == [("A.", "x")]  # type: ignore[union-attr]
    lines = tmp_path / "blank.jsonl"
    lines.write_text('{"text": "A.", "label": 1}\n\n  \n{"text": "B.", "label": 0}\n')
    assert [(t, r.value, r.where) for t, r in iter_rows(lines)] == [  # type: ignore[union-attr]
        ("A.", 1, f"{lines}:1"), ("B.", 0, f"{lines}:4")]
    named = tmp_path / "named.csv"
    named.write_text("text,body,label,y\nno,yes,a,b\n")
    assert [(t, r.value) for t, r in iter_rows(named, "body", "y")] == [("yes", "b")]  # type: ignore[union-attr]
    assert read_table(named, "body", "y")[0] == ["yes"]
    assert error(named, label_column="cls") == (f"{named}: no column 'cls' (its columns: 'text', 'body', 'label', "
                                                "'y'); name the right one with --label-column")
    for row, found in (("B.,y,z,w", 4), ("B.,y,z", 3), ("B.", 1)):  # too many, too few: the count of fields
        uneven = tmp_path / "uneven.csv"
        uneven.write_text(f"text,label\nA.,x\n{row}\n")
        assert error(uneven) == f"{uneven}:3: expected 2 columns (text, label), found {found}"
    assert error(tmp_path) == f"cannot read {tmp_path}: Is a directory"
    listed = tmp_path / "list.jsonl"
    listed.write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    assert error(listed) == f"{listed}:2: expected one JSON object per line, found list"
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"text": "a", "label": 1}\n{"label": 0}\n')
    assert error(missing) == f"{missing}:2: no 'text' field"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 1}\n{"text": \n')
    assert error(broken) == f"{broken}:2: not a JSON object (Expecting value)"
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text,label\nA.,x\n\xe9t\xe9,y\n")
    assert error(latin) == f"{latin}: not valid UTF-8 (invalid continuation byte)"
    huge = tmp_path / "huge.csv"
    huge.write_text("text,label\n" + "a" * 200_000 + ",x\n")
    assert error(huge) == f"{huge}: field larger than field limit (131072)"


@pytest.mark.parametrize(("value", "shown"), [(True, "True"), (False, "False"), (1.0, "1.0"), (0.5, "0.5"),
                                              (None, "None"), ([1], "[1]"), ({"a": 1}, "{'a': 1}")])
def test_a_label_that_is_not_an_integer_or_a_string_is_an_error(value: object, shown: str) -> None:
    from kdfast.data.labels import parse_label

    with pytest.raises(KdfastError, match=re.escape(f"f.jsonl:3: label must be an integer or a string, found {shown}")):
        parse_label(value, "f.jsonl:3")


def test_labels_parse_as_integers_or_stripped_strings() -> None:
    from kdfast.data.labels import RawLabel, parse_label

    assert parse_label(3, "w") == RawLabel(3, "w") and parse_label(" -2 ", "w") == RawLabel(-2, "w")
    assert parse_label("+7", "w") == RawLabel(7, "w") and parse_label(" pets ", "w") == RawLabel("pets", "w")
    assert parse_label("1.5", "w") == RawLabel("1.5", "w") and parse_label("3a", "w") == RawLabel("3a", "w")
    for blank in ("", "  ", "\t"):
        with pytest.raises(KdfastError, match="w: empty label"):
            parse_label(blank, "w")


@pytest.mark.parametrize(("labels", "shown"), [((True, False), "True"), ((1.0, 0.0), "1.0"), ((1, 0.0), "0.0")])
def test_json_lines_true_false_or_float_labels_are_an_error_not_two_classes(tmp_path: Path, labels: tuple,
                                                                           shown: str) -> None:
    """JSON's true/false (Python bools, an int subclass) and 1.0 are not class ids: one error naming the line."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"Sentence {i}.", "label": labels[i % 2]}) + "\n" for i in range(4)))
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"text": "One.", "label": 1}) + "\n")
    line = 1 if shown in ("True", "1.0") else 2
    with pytest.raises(KdfastError, match=re.escape(f"train.jsonl:{line}: label must be an integer or a string, "
                                                    f"found {shown}")):
        load_dataset(train, dev)


def test_bad_sources(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", ROWS)
    with pytest.raises(KdfastError, match="is one file: pass its dev set with --dev-data"):
        load_dataset(path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(KdfastError, match="unknown file type"):
        load_dataset(tmp_path / "notes.txt", path)
    with pytest.raises(KdfastError, match="--dev-data is for a training file"):
        load_dataset("cola", path)
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    with pytest.raises(KdfastError, match=r"bad\.jsonl:2: expected one JSON object per line"):
        load_dataset(tmp_path / "bad.jsonl", path)


def test_hub_dataset_offline_fails_fast_naming_the_local_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, the Hub is not even asked: no connection is tried (fast by construction, not by a clock)."""
    import socket

    import datasets

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was tried")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(KdfastError, match=r"cannot be reached.*--data cola.*--data PATH"):
        load_dataset("hub:glue/sst2")


def test_hub_names() -> None:
    from kdfast.data.hub import parse_hub_name

    assert parse_hub_name("hub:nyu-mll/glue/cola") == ("nyu-mll/glue", "cola")
    assert parse_hub_name("hub:glue/sst2") == ("nyu-mll/glue", "sst2")
    assert parse_hub_name("hub:stanfordnlp/imdb") == ("stanfordnlp/imdb", None)
    assert parse_hub_name("hub:imdb") == ("imdb", None)


def test_hub_dataset_rows_labels_and_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub path on a DatasetDict built here (no network): ClassLabel names kept, columns found, GLUE CoLA's
    validation split cut into its halves."""
    import datasets

    import kdfast.data.hub

    features = datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})

    def split(texts: list[str], labels: list[int]) -> object:
        return datasets.Dataset.from_dict({"sentence": texts, "idx": list(range(len(texts))), "label": labels},
                                          features=features)

    asked = []

    def fake_load(name: str, config: str | None = None) -> object:
        asked.append((name, config))
        n = 600 if config == "cola" else 3
        return datasets.DatasetDict({"train": split(["good", "bad", "fine"], [1, 0, 1]),
                                     "validation": split([f"s{i}" for i in range(n)], [i % 2 for i in range(n)])})

    monkeypatch.setattr(kdfast.data.hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = load_dataset("hub:glue/sst2")
    assert asked[-1] == ("nyu-mll/glue", "sst2") and data.source == "hub:nyu-mll/glue/sst2"
    assert data.labels == ["negative", "positive"] and not data.halves
    assert [(e.text, e.label) for e in data.train] == [("good", 1), ("bad", 0), ("fine", 1)]
    cola = load_dataset("hub:nyu-mll/glue/cola")
    assert cola.halves and len(cola.dev_in_domain) == 527 and len(cola.dev_out_of_domain) == 73
    with pytest.raises(KdfastError, match="no column 'text'"):
        load_dataset("hub:glue/sst2", text_column="text")
