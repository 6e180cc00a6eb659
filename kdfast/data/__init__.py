"""Datasets: any single-sentence classification data, CoLA bundled as the worked example.

``--data`` takes (:func:`load_dataset`):

- ``cola``: CoLA's public release, bundled with kdfast (offline; dev has in-domain and out-of-domain halves);
- a folder with CoLA's release or GLUE's CoLA files (four columns, no header; see :mod:`kdfast.data.cola`);
- a folder with ``train.EXT`` and ``dev.EXT`` (or ``validation.EXT``), EXT one of csv, tsv, jsonl, json;
- a file (``--data train.csv --dev-data dev.csv``), CSV, TSV or JSON Lines with a header;
- ``hub:OWNER/NAME[/CONFIG]``: a Hugging Face Hub dataset's ``train`` and ``validation`` splits (``kdfast[hub]``).

Labels may be integers or strings, two classes or more; their names are fixed from train (:mod:`kdfast.data.labels`)
unless a run's names are passed in (``labels=``), as every stage that reads an earlier run does. Sentence pairs
(MRPC, MNLI) are not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdfast.data.cola import N_IN_DOMAIN_DEV, is_cola_folder, load_bundled, load_cola_folder
from kdfast.data.dataset import Dataset, Example, subsample
from kdfast.data.labels import RawLabel, label_ids, label_names, parse_label
from kdfast.data.tabular import LABEL_COLUMN, SUFFIXES, TEXT_COLUMNS, find_split, is_table, pick_column, read_table
from kdfast.errors import KdfastError

__all__ = ["Dataset", "Example", "dataset_from_config", "load_dataset", "subsample"]

BUNDLED_NAMES = ("cola",)
DEV_NAMES = ("dev", "validation")


def load_dataset(source: str | Path, dev_data: str | Path | None = None, text_column: str | None = None,
                 label_column: str | None = None, labels: list[str] | None = None) -> Dataset:
    """The dataset ``source`` names (see the module docstring); ``labels``, when given, fixes the id of each label
    name (a run's own mapping), else it is taken from train."""
    source = str(source)
    label_column = label_column or LABEL_COLUMN
    if source.startswith("hub:"):
        data = _from_hub(source, text_column, label_column)
    elif source in BUNDLED_NAMES and not Path(source).exists():
        data = load_bundled()
    else:
        data = _from_path(Path(source), dev_data, text_column, label_column)
    if dev_data is not None and (source.startswith("hub:") or data.halves):
        raise KdfastError(f"--dev-data is for a training file given with --data FILE, not for --data {source}")
    if labels is not None and labels != data.labels:
        data = _relabel(data, labels)
    return data


def dataset_from_config(config: Mapping[str, Any], data: str | None = None,
                        labels: list[str] | None = None) -> Dataset:
    """The dataset a run was trained on, from its recorded config (or ``data`` instead), under the run's labels."""
    source = data if data is not None else config.get("data", "cola")
    dev = config.get("dev_data") if data is None else None
    return load_dataset(source, dev, config.get("text_column"), config.get("label_column"), labels)


def _relabel(data: Dataset, labels: list[str]) -> Dataset:
    """``data`` with ids under a run's ``labels``: every name of the data must be one of them."""
    unknown = [n for n in data.labels if n not in labels]
    if unknown:
        raise KdfastError(f"{data.source}: label {unknown[0]!r} is not one of the run's labels ({', '.join(labels)})")
    remap = [labels.index(n) for n in data.labels]

    def move(examples: list[Example]) -> list[Example]:
        return [Example(e.text, remap[e.label], e.in_domain) for e in examples]

    return Dataset(move(data.train), move(data.dev), list(labels), data.source, data.halves)


def _from_path(path: Path, dev_data: str | Path | None, text_column: str | None, label_column: str) -> Dataset:
    if path.is_dir():
        if dev_data is not None:
            raise KdfastError(f"--dev-data goes with a training file (--data FILE); {path} is a folder")
        if is_cola_folder(path):
            return load_cola_folder(path)
        train, dev = find_split(path, ("train",)), find_split(path, DEV_NAMES)
        if train is None or dev is None:
            wanted = "train" if train is None else "dev (or validation)"
            raise KdfastError(f"--data {path}: no {wanted} file (expected train.EXT and dev.EXT or validation.EXT, "
                              f"EXT one of {', '.join(s[1:] for s in SUFFIXES)}; or CoLA's .tsv files)")
        return _from_files(train, dev, text_column, label_column, str(path))
    if not path.exists():
        bundled = f" or {', '.join(BUNDLED_NAMES)} (bundled)" if str(path) not in BUNDLED_NAMES else ""
        raise KdfastError(f"--data {path}: no such file or folder (give a folder, a CSV/TSV/JSON Lines file with "
                          f"--dev-data, hub:NAME{bundled})")
    if not is_table(path):
        raise KdfastError(f"--data {path}: unknown file type (expected {', '.join(SUFFIXES)})")
    if dev_data is None:
        raise KdfastError(f"--data {path} is one file: pass its dev set with --dev-data FILE")
    dev = Path(dev_data)
    if not dev.is_file() or not is_table(dev):
        raise KdfastError(f"--dev-data {dev}: not a CSV, TSV or JSON Lines file")
    return _from_files(path, dev, text_column, label_column, str(path))


def _from_files(train: Path, dev: Path, text_column: str | None, label_column: str, source: str) -> Dataset:
    train_texts, train_raw = read_table(train, text_column, label_column)
    dev_texts, dev_raw = read_table(dev, text_column, label_column)
    names = label_names(train_raw, str(train))
    train_ids, dev_ids = label_ids(train_raw, names, "train"), label_ids(dev_raw, names, "dev")
    return Dataset([Example(t, y) for t, y in zip(train_texts, train_ids, strict=True)],
                   [Example(t, y) for t, y in zip(dev_texts, dev_ids, strict=True)], names, source)


def _from_hub(spec: str, text_column: str | None, label_column: str) -> Dataset:
    from kdfast.data.hub import load_hub_splits

    splits, class_names, source = load_hub_splits(spec)
    raws: dict[str, tuple[list[str], list[RawLabel]]] = {}
    for split, rows in splits.items():
        if not rows:
            raise KdfastError(f"--data {spec}: its {split} split is empty")
        columns = list(rows[0])
        text_col = pick_column(columns, text_column, TEXT_COLUMNS, "--text-column", Path(spec))
        label_col = pick_column(columns, label_column, (label_column,), "--label-column", Path(spec))
        texts, raw = [], []
        for i, row in enumerate(rows):
            where = f"{spec} {split}[{i}]"
            text = row[text_col]
            if not isinstance(text, str) or not text.strip():
                raise KdfastError(f"{where}: empty text")
            value = row[label_col]
            if class_names is not None and isinstance(value, int):
                if not 0 <= value < len(class_names):  # -1: an unlabelled (test) split
                    raise KdfastError(f"{where}: label {value} is not a class id (0..{len(class_names) - 1})")
                value = class_names[value]
            texts.append(text)
            raw.append(parse_label(value, where))
        raws[split] = (texts, raw)
    names = list(class_names) if class_names is not None else label_names(raws["train"][1], f"{spec} train")
    train = [Example(t, y) for t, y in zip(raws["train"][0], label_ids(raws["train"][1], names, "train"), strict=True)]
    dev_ids = label_ids(raws["dev"][1], names, "dev")
    is_cola = source == "hub:nyu-mll/glue/cola"
    dev = [Example(t, y, (i < N_IN_DOMAIN_DEV) if is_cola else True)
           for i, (t, y) in enumerate(zip(raws["dev"][0], dev_ids, strict=True))]
    return Dataset(train, dev, names, source, halves=is_cola)
