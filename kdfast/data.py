"""CoLA, the Corpus of Linguistic Acceptability (Warstadt, Singh and Bowman, 2018; https://nyu-mll.github.io/CoLA/).

Two sources, one result (:class:`Cola`):

- a local folder with the public release (``in_domain_train.tsv``, ``in_domain_dev.tsv``, ``out_of_domain_dev.tsv``)
  or GLUE's files (``train.tsv``, ``dev.tsv``): four tab-separated columns, no header
  (source code, label 0/1, the original author's mark, sentence);
- the Hub dataset ``nyu-mll/glue``, config ``cola`` (columns sentence/label/idx), through ``datasets``.

"dev" is GLUE's CoLA dev set: in-domain dev followed by out-of-domain dev, 1,043 sentences. Every example keeps
its domain so that both halves can be scored on their own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from kdfast.errors import KdfastError, first_line

HUB_DATASET = ("nyu-mll/glue", "cola")
HUB_NAMES = {"cola", "glue/cola", "nyu-mll/glue"}
# GLUE's dev.tsv (and the Hub's validation split) is in_domain_dev.tsv followed by out_of_domain_dev.tsv.
N_IN_DOMAIN_DEV = 527


@dataclass(frozen=True)
class Example:
    sentence: str
    label: int  # 1 = acceptable, 0 = unacceptable
    in_domain: bool = True


@dataclass
class Cola:
    """CoLA's train and dev splits; ``dev`` is in-domain dev followed by out-of-domain dev."""

    train: list[Example]
    dev: list[Example]
    source: str

    @property
    def dev_in_domain(self) -> list[Example]:
        return [e for e in self.dev if e.in_domain]

    @property
    def dev_out_of_domain(self) -> list[Example]:
        return [e for e in self.dev if not e.in_domain]


def read_tsv(path: Path) -> list[tuple[str, int, str]]:
    """Rows of a CoLA tsv as (source code, label, sentence). A malformed row is an error naming file and line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise KdfastError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
    except OSError as e:
        raise KdfastError(f"cannot read {path}: {e.strerror}") from None
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 4:
            raise KdfastError(f"{path}:{lineno}: expected 4 tab-separated columns, found {len(cols)}")
        code, label, _mark, sentence = cols
        if label not in ("0", "1"):
            raise KdfastError(f"{path}:{lineno}: label must be 0 or 1, found {label!r}")
        if not sentence.strip():
            raise KdfastError(f"{path}:{lineno}: empty sentence")
        rows.append((code, int(label), sentence))
    if not rows:
        raise KdfastError(f"{path}: no rows (empty file)")
    return rows


def _examples(rows: list[tuple[str, int, str]], in_domain: bool) -> list[Example]:
    return [Example(sentence, label, in_domain) for _, label, sentence in rows]


def load_folder(folder: Path) -> Cola:
    """The public release, or GLUE's ``train.tsv``/``dev.tsv`` (domain told apart by the sentence's source code)."""
    if (folder / "in_domain_train.tsv").exists():
        names = ["in_domain_train.tsv", "in_domain_dev.tsv", "out_of_domain_dev.tsv"]
        missing = [n for n in names if not (folder / n).exists()]
        if missing:
            raise KdfastError(f"{folder}: missing {', '.join(missing)} (CoLA's public release has all three)")
        train = _examples(read_tsv(folder / names[0]), True)
        dev = _examples(read_tsv(folder / names[1]), True) + _examples(read_tsv(folder / names[2]), False)
        return Cola(train, dev, str(folder))
    if (folder / "train.tsv").exists() and (folder / "dev.tsv").exists():
        train_rows = read_tsv(folder / "train.tsv")
        # Out-of-domain sentences come from sources (books, papers) that never occur in train.
        train_sources = {code for code, _, _ in train_rows}
        dev = [Example(s, label, code in train_sources) for code, label, s in read_tsv(folder / "dev.tsv")]
        return Cola(_examples(train_rows, True), dev, str(folder))
    raise KdfastError(
        f"{folder}: no CoLA files found (expected in_domain_train.tsv, in_domain_dev.tsv and out_of_domain_dev.tsv, "
        "or GLUE's train.tsv and dev.tsv)"
    )


def load_hub() -> Cola:
    """``nyu-mll/glue``/``cola`` through ``datasets`` (needs the ``hub`` extra and a network)."""
    try:
        import datasets
    except ImportError:
        raise KdfastError("--data cola needs the 'datasets' package: pip install 'kdfast[hub]'") from None
    try:
        ds = datasets.load_dataset(*HUB_DATASET)
    except Exception as e:
        raise KdfastError(
            f"could not load {HUB_DATASET[0]}/{HUB_DATASET[1]} from the Hub ({first_line(e)}); "
            "offline, pass a local CoLA folder with --data DIR"
        ) from None
    train = [Example(r["sentence"], int(r["label"]), True) for r in ds["train"]]
    dev = [Example(r["sentence"], int(r["label"]), i < N_IN_DOMAIN_DEV) for i, r in enumerate(ds["validation"])]
    return Cola(train, dev, f"hub:{HUB_DATASET[0]}/{HUB_DATASET[1]}")


def load_cola(source: str | Path) -> Cola:
    """CoLA from a local folder, or from the Hub when ``source`` is ``cola`` (and no such folder exists)."""
    path = Path(source)
    if path.is_dir():
        return load_folder(path)
    if str(source) in HUB_NAMES:
        return load_hub()
    if path.exists():
        raise KdfastError(f"--data {source}: not a folder (give the folder that holds CoLA's .tsv files)")
    raise KdfastError(f"--data {source}: no such folder (and not 'cola', the Hub dataset)")


def subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """A seeded random subset of ``n`` examples (all of them when ``n`` is None or too large), order kept."""
    if n is None or n >= len(examples):
        return list(examples)
    if n <= 0:
        raise KdfastError(f"--max-train-samples must be positive, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]
