"""CoLA, the Corpus of Linguistic Acceptability (Warstadt, Singh and Bowman, 2018; https://nyu-mll.github.io/CoLA/).

Its public release 1.1 ships inside kdfast (``kdfast/data/bundled/cola``, 0.5 MB, with its README and source note):
``--data cola`` reads that copy, offline. A folder given with ``--data`` may hold the same release
(``in_domain_train.tsv``, ``in_domain_dev.tsv``, ``out_of_domain_dev.tsv``) or GLUE's ``train.tsv`` and ``dev.tsv``:
four tab-separated columns, no header (source code, label 0/1, the original author's mark, sentence).

"dev" is GLUE's CoLA dev set: in-domain dev followed by out-of-domain dev, 1,043 sentences. Every example keeps
its domain so that both halves can be scored on their own.
"""

from __future__ import annotations

from pathlib import Path

from kdfast.data.dataset import Dataset, Example
from kdfast.errors import KdfastError

BUNDLED = Path(__file__).resolve().parent / "bundled" / "cola"
LABELS = ["unacceptable", "acceptable"]  # GLUE's ClassLabel names: 0 and 1
RELEASE_FILES = ("in_domain_train.tsv", "in_domain_dev.tsv", "out_of_domain_dev.tsv")
N_IN_DOMAIN_DEV = 527  # GLUE's dev.tsv (and the Hub's validation split): in-domain dev, then out-of-domain dev


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


def is_glue_tsv(path: Path) -> bool:
    """GLUE's CoLA ``train.tsv``: no header, four tab-separated columns, 0/1 in the second."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            cols = f.readline().rstrip("\r\n").split("\t")
    except OSError:
        return False
    return len(cols) == 4 and cols[1] in ("0", "1")


def is_cola_folder(folder: Path) -> bool:
    return (folder / RELEASE_FILES[0]).exists() or (
        (folder / "train.tsv").exists() and (folder / "dev.tsv").exists() and is_glue_tsv(folder / "train.tsv"))


def load_cola_folder(folder: Path, source: str | None = None) -> Dataset:
    """The public release, or GLUE's ``train.tsv``/``dev.tsv`` (domain told apart by the sentence's source code)."""
    source = source or str(folder)
    if (folder / RELEASE_FILES[0]).exists():
        missing = [n for n in RELEASE_FILES if not (folder / n).exists()]
        if missing:
            raise KdfastError(f"{folder}: missing {', '.join(missing)} (CoLA's public release has all three)")
        train = _examples(read_tsv(folder / RELEASE_FILES[0]), True)
        dev = _examples(read_tsv(folder / RELEASE_FILES[1]), True) + _examples(read_tsv(folder / RELEASE_FILES[2]),
                                                                               False)
        return Dataset(train, dev, list(LABELS), source, halves=True)
    train_rows = read_tsv(folder / "train.tsv")
    # Out-of-domain sentences come from sources (books, papers) that never occur in train.
    train_sources = {code for code, _, _ in train_rows}
    dev = [Example(s, label, code in train_sources) for code, label, s in read_tsv(folder / "dev.tsv")]
    return Dataset(_examples(train_rows, True), dev, list(LABELS), source, halves=True)


def load_bundled() -> Dataset:
    """The copy of CoLA's public release that ships with kdfast: 8,551 train and 1,043 dev sentences."""
    return load_cola_folder(BUNDLED, source="cola")
