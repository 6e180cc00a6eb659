"""A three-class dataset from real text, as CSV with string labels: which publication a CoLA sentence comes from.

CoLA's training sentences carry the code of the linguistics publication they were taken from. The three largest
sources are Kim & Sells 2008 (``ks08``, 1,745 sentences), Levin 1993 (``l-93``, 1,294) and Ross 1967 (``r-67``,
916): a textbook of English syntax, a catalogue of verb alternations and a thesis on constraints on variables.
Each sentence, acceptable or not, is labelled by its source; a seeded 80/20 split per class gives ``train.csv``
and ``dev.csv`` with the columns ``text`` and ``label``. The README's worked example of ``--data`` on a dataset
that is not CoLA:

    python examples/make_cola_sources.py data/cola-sources
    kdfast train lora --model DIR --data data/cola-sources --out runs/sources-teacher
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from kdfast.data.cola import BUNDLED, read_tsv

SOURCES = {"ks08": "kim-sells-2008", "l-93": "levin-1993", "r-67": "ross-1967"}
DEV_SHARE = 0.2


def make(out: Path, seed: int = 0) -> dict[str, int]:
    """Write ``out/train.csv`` and ``out/dev.csv``; returns the number of rows of each."""
    rows = [(sentence, SOURCES[code]) for code, _, sentence in read_tsv(BUNDLED / "in_domain_train.tsv")
            if code in SOURCES]
    rng = random.Random(seed)
    train, dev = [], []
    for name in sorted(SOURCES.values()):
        part = [r for r in rows if r[1] == name]
        rng.shuffle(part)
        cut = round(len(part) * DEV_SHARE)
        dev += part[:cut]
        train += part[cut:]
    rng.shuffle(train)
    rng.shuffle(dev)
    out.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", train), ("dev", dev)):
        with (out / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    return {"train": len(train), "dev": len(dev)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="Folder to write train.csv and dev.csv into.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = make(args.out, args.seed)
    print(f"wrote {args.out}/train.csv ({counts['train']} rows) and dev.csv ({counts['dev']} rows)")


if __name__ == "__main__":
    main()
