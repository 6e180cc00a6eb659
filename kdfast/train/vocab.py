"""The student's word vocabulary, torch-free: ``kdfast predict`` on an exported student needs it and ONNX Runtime,
nothing more. ``kdfast.train.student`` re-exports everything here.

A word vocabulary built from the training sentences (lower-cased words with their apostrophes, punctuation marks on
their own; words seen fewer than ``min_freq`` times map to ``<unk>``); ``kdfast/train/student.py``'s docstring says why
the student does not use the teacher's tokenizer.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from kdfast.errors import KdfastError
from kdfast.runs import read_json, write_json

PAD, UNK, MASK = "<pad>", "<unk>", "[MASK]"
_WORD = re.compile(r"\[MASK\]|\w+(?:'\w+)*|[^\w\s]")


def split_words(sentence: str) -> list[str]:
    """Lower-cased words (``don't`` and ``John's`` stay whole) and punctuation marks; ``[MASK]`` kept as is."""
    return [w if w == MASK else w.lower() for w in _WORD.findall(sentence)]


def word_spans(sentence: str) -> list[tuple[int, int]]:
    """Where each word of ``split_words(sentence)`` stands in ``sentence``: (start, end) character offsets."""
    return [m.span() for m in _WORD.finditer(sentence)]


class WordVocab:
    """Word → id. Ids 0, 1, 2 are ``<pad>``, ``<unk>`` and ``[MASK]`` (the augmentation's masked word)."""

    FORMAT = "kdfast-words-v1"
    pad_id, unk_id, mask_id = 0, 1, 2

    def __init__(self, words: list[str], min_freq: int = 1) -> None:
        self.words = [PAD, UNK, MASK, *(w for w in words if w not in (PAD, UNK, MASK))]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.min_freq = min_freq

    @classmethod
    def build(cls, sentences: list[str], min_freq: int = 2) -> WordVocab:
        """Words seen at least ``min_freq`` times, most frequent first (ties alphabetical, so builds are stable)."""
        counts = Counter(w for s in sentences for w in split_words(s))
        kept = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        return cls(kept, min_freq)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentence: str, max_length: int | None = None) -> list[int]:
        """Ids of a sentence, at least one (an empty sentence is ``<unk>``), at most ``max_length``."""
        ids = [self.index.get(w, self.unk_id) for w in split_words(sentence)] or [self.unk_id]
        return ids[:max_length] if max_length else ids

    def save(self, path: Path) -> None:
        write_json(path, {"format": self.FORMAT, "min_freq": self.min_freq, "words": self.words})

    @classmethod
    def load(cls, path: Path) -> WordVocab:
        obj = read_json(path)
        if not isinstance(obj, dict) or obj.get("format") != cls.FORMAT or not isinstance(obj.get("words"), list):
            raise KdfastError(f"{path}: not a kdfast word vocabulary")
        return cls(obj["words"], obj.get("min_freq", 1))
