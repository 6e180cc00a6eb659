"""The student's word embeddings initialised from its teacher (``--embed-init``), instead of at random.

- ``teacher``: each student word's sub-word tokens, as the teacher's tokenizer splits the word after a space (GPT-2's
  BPE, BERT's WordPiece alike), their rows of the teacher's input embedding table (GPT-2's ``wte``, BERT's
  ``word_embeddings``) averaged; ``<unk>`` and ``[MASK]`` take the teacher's unknown and mask (GPT-2: unknown) token's
  row, ``<pad>`` stays zero.
- ``context``: each student word's mean contextual vector: the teacher's hidden state for the word (the cached word
  vectors of ``--word-weight``, ``kdfast.train.teacher_cache``) averaged over all its occurrences in the transfer
  set; a word without any keeps its random row. Contextual vectors averaged over occurrences make better static
  word vectors than input embeddings do (Bommasani et al. 2020, https://aclanthology.org/2020.acl-main.431).

Either way the vectors (teacher width: 384 for MiniLM, 768 for GPT-2) are reduced to the student's width by PCA
(the top principal components of the student's words' vectors) and scaled so that the rows' mean squared norm is the
width, as for PyTorch's default N(0, 1) initialisation: the student's optimiser, learning rate and dropout were tuned
at that scale, and a table 10x smaller or larger trains differently.
"""

from __future__ import annotations

from typing import Any

import torch

from kdfast.train.vocab import MASK, PAD, UNK, WordVocab, split_words

EMBED_INITS = ("none", "teacher", "context")


def word_pieces(words: list[str], tokenizer: Any) -> list[list[int]]:
    """The teacher's token ids of each word, as its tokenizer splits the word after a space; the specials map to the
    teacher's unknown and mask tokens (``<pad>`` to none)."""
    unk = tokenizer.unk_token_id
    mask = getattr(tokenizer, "mask_token_id", None)
    out = []
    for w in words:
        if w == PAD:
            out.append([])
        elif w == UNK:
            out.append([unk] if unk is not None else [])
        elif w == MASK:
            out.append([mask] if mask is not None else [unk] if unk is not None else [])
        else:
            out.append([int(i) for i in tokenizer(" " + w, add_special_tokens=False)["input_ids"]])
    return out


def pca_scaled(x: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of ``x`` (n, d) on their top ``width`` principal components (zero-padded when d < width), scaled so that
    the mean squared row norm is ``width``."""
    x = x.double()
    centred = x - x.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)  # v: (min(n, d), d), rows by decreasing variance
    k = min(width, v.shape[0])
    y = centred @ v[:k].T  # (n, k)
    if k < width:
        y = torch.cat([y, y.new_zeros(len(y), width - k)], dim=1)
    scale = (width / y.pow(2).sum(1).mean().clamp(min=1e-12)).sqrt()
    return (y * scale).float()


def set_rows(embedding: torch.nn.Embedding, vectors: torch.Tensor, rows: torch.Tensor) -> None:
    """Put ``vectors`` (n, d_teacher), reduced by ``pca_scaled``, into ``embedding``'s rows ``rows`` (n,)."""
    with torch.no_grad():
        embedding.weight[rows] = pca_scaled(vectors, embedding.weight.shape[1]).to(embedding.weight)


def init_from_teacher_embeddings(embedding: torch.nn.Embedding, vocab: WordVocab, tokenizer: Any,
                                 table: torch.Tensor) -> int:
    """``--embed-init teacher``: rows of every student word with at least one token; returns how many."""
    pieces = word_pieces(vocab.words, tokenizer)
    rows, vectors = [], []
    for i, ids in enumerate(pieces):
        ids = [j for j in ids if 0 <= j < len(table)]
        if ids:
            rows.append(i)
            vectors.append(table[ids].float().mean(0))
    if len(rows) > 1:
        set_rows(embedding, torch.stack(vectors), torch.tensor(rows))
    return len(rows)


def init_from_word_states(embedding: torch.nn.Embedding, vocab: WordVocab, sentences: list[str],
                          scores: dict[str, torch.Tensor]) -> int:
    """``--embed-init context``: rows of every student word seen in ``sentences`` with a teacher vector (the cached
    ``word_states``, ``word_offsets``, ``word_valid`` of those sentences); returns how many."""
    states, offsets, valid = scores["word_states"], scores["word_offsets"], scores["word_valid"]
    total = torch.zeros(len(vocab), states.shape[1], dtype=torch.float64)
    count = torch.zeros(len(vocab), dtype=torch.float64)
    chunk = 4096
    for c in range(0, len(sentences), chunk):
        part = sentences[c : c + chunk]
        ids = torch.tensor([vocab.index.get(w, vocab.unk_id) for s in part for w in split_words(s)], dtype=torch.long)
        a, b = int(offsets[c]), int(offsets[c + len(part)])
        keep = valid[a:b]
        total.index_add_(0, ids[keep], states[a:b][keep].double())
        count.index_add_(0, ids[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
    rows = torch.nonzero(count > 0).flatten()
    rows = rows[rows != vocab.pad_id]
    if len(rows) > 1:
        set_rows(embedding, (total[rows] / count[rows].unsqueeze(1)).float(), rows)
    return len(rows)
