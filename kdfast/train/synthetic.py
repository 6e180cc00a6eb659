"""The transfer set's synthetic sentences (Tang et al. 2019, https://arxiv.org/abs/1903.12136, §3.2): masking, swaps
with the teacher's embedding neighbours and n-gram cuts; ``kdfast.train.distill`` describes them."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from kdfast.errors import KdfastError, first_line
from kdfast.runs import read_json
from kdfast.train.distill import EMBEDDING_NAMES, MAX_NGRAM, NEIGHBOURS, P_MASK, P_NGRAM, P_SWAP
from kdfast.train.student import MASK


def synthesize(words: list[str], pool: list[str], rng: random.Random,
               neighbours: dict[str, list[str]] | None = None) -> list[str]:
    """One synthetic sentence from ``words`` (Tang et al. 2019, §3.2: masking, swaps, n-gram sampling); a swapped
    word becomes one of its ``neighbours`` when it has some, else a word of ``pool``."""
    nearest = neighbours or {}
    out = []
    for w in words:
        u = rng.random()
        out.append(MASK if u < P_MASK else rng.choice(nearest.get(w) or pool) if u < P_MASK + P_SWAP else w)
    if rng.random() < P_NGRAM:
        n = min(rng.randint(1, MAX_NGRAM), len(out))
        start = rng.randrange(len(out) - n + 1)
        out = out[start : start + n]
    return out


def augment(sentences: list[str], n: int, seed: int, neighbours: dict[str, list[str]] | None = None,
            max_tries: int = 10) -> list[str]:
    """``n`` synthetic sentences per sentence, in order (all of sentence 0's first), reproducible from ``seed``."""
    rng = random.Random(seed)
    pool = [w for s in sentences for w in s.split()]
    out = []
    for s in sentences:
        words = s.split()
        for _ in range(n):
            new = words
            for _ in range(max_tries):
                new = synthesize(words, pool, rng, neighbours)
                if new != words:
                    break
            out.append(" ".join(new))
    return out


def teacher_embeddings(teacher: Path) -> torch.Tensor:
    """The teacher's token-embedding table (vocab, d), read from ``merged/model.safetensors`` without building the
    model: the 2-D tensor with one row per entry of the config's vocabulary (BERT's word_embeddings, GPT-2's wte)."""
    merged = Path(teacher) / "merged"
    try:
        vocab_size = read_json(merged / "config.json")["vocab_size"]
        with safe_open(str(merged / "model.safetensors"), framework="pt") as f:
            keys = f.keys()  # a safetensors handle is not iterable
            shapes = {k: f.get_slice(k).get_shape() for k in keys}
            names = [k for k, shape in shapes.items() if len(shape) == 2 and shape[0] == vocab_size]
            names.sort(key=lambda k: (not k.endswith(EMBEDDING_NAMES), "embed" not in k and "wte" not in k))
            if names:
                return f.get_tensor(names[0]).float()
    except (OSError, KeyError, ValueError, SafetensorError) as e:
        raise KdfastError(f"{merged}: could not read the teacher's token embeddings ({first_line(e)})") from None
    raise KdfastError(f"{merged}: no token-embedding table ({vocab_size} rows) in model.safetensors")


def word_neighbours(sentences: list[str], tokenizer: Any, table: torch.Tensor, k: int = NEIGHBOURS,
                    min_count: int = 2) -> dict[str, list[str]]:
    """For each whitespace-separated word seen ``min_count`` times or more, the ``k`` such words nearest to it by
    cosine between their embeddings in ``table`` (the mean row of a word's tokens, as ``tokenizer`` splits it
    after a space)."""
    counts = Counter(w for s in sentences for w in s.split())
    words, rows = [], []
    for w in (w for w, c in counts.items() if c >= min_count):
        ids = [i for i in tokenizer(" " + w, add_special_tokens=False)["input_ids"] if i < len(table)]
        if ids:  # a word without tokens has no place in the space: its swaps come from the pool
            words.append(w)
            rows.append(table[ids].mean(0))
    if len(words) <= 1:
        return {}
    x = F.normalize(torch.stack(rows), dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-2.0)  # a word is not its own neighbour
    top = sim.topk(min(k, len(words) - 1), dim=1).indices.tolist()
    return {w: [words[j] for j in top[i]] for i, w in enumerate(words)}


def teacher_word_neighbours(teacher: Path, sentences: list[str]) -> dict[str, list[str]]:
    return word_neighbours(sentences, teacher_tokenizer(teacher), teacher_embeddings(teacher))


def teacher_tokenizer(teacher: Path) -> Any:
    from transformers import AutoTokenizer

    merged = Path(teacher) / "merged"
    try:
        return AutoTokenizer.from_pretrained(str(merged))
    except Exception as e:
        raise KdfastError(f"{merged}: could not load the teacher's tokenizer ({first_line(e)})") from None
