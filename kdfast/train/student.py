"""The student: ``DistilRNN``, a word-level LSTM/GRU classifier small enough to be 1/20 of GPT-2 small and more.

    word ids (B, T) ─ embedding ─ RNN (LSTM | GRU, layers, bi-directional) ─ masked pooling ─ linear ─ logits (B, C)

The student after Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"
(https://arxiv.org/abs/1903.12136): a BiLSTM over word embeddings with a small head.

**Tokenizer.** A word vocabulary built from the training sentences (lower-cased words with their apostrophes,
punctuation marks on their own; words seen fewer than ``min_freq`` times map to ``<unk>``), not the teacher's
tokenizer: GPT-2's BPE has 50,257 entries, so even a 128-wide embedding over it is 6.4M parameters, more than the
whole recurrent network, and most of those rows are never seen in CoLA's 8,551 training sentences. CoLA's train
split has 5,526 distinct words (3,590 seen twice or more), so the embedding here is 0.46M parameters
(3,593 x 128), and 93% of dev tokens are in the vocabulary. A student trained on the labels alone and one
distilled from any teacher share the same vocabulary, which ``vocab.json`` in the run folder stores.

**Padding.** Batches are right-padded and no packed sequences are used (so the model exports to ONNX). The forward
direction reads valid steps before any padding. The backward direction reads each sequence reversed *within its
own length* (pads stay at the end), so it too meets padding only after every valid step; pooling then looks at
valid steps only. Padding therefore never changes a logit, whatever the pad ids or the padded width
(tests/test_student.py checks both implementations, bi-directional and stacked).

**Two implementations, same weights.** Each direction of each layer is a one-layer ``nn.LSTM``/``nn.GRU``
(``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, PyTorch's gate order). ``impl="nn"`` runs
those modules (cuDNN / oneDNN kernels; the fast eager path, and opaque to ``torch.compile``); ``impl="loop"``
runs the same weights through a hand-written cell loop: the input projection of all T steps in one matmul
before the loop, then per step one matmul for all gates and the elementwise gate maths, which Inductor fuses
into one kernel when the model goes through ``torch.compile`` (``compile_student``). Compiled inputs are padded
to a multiple of ``COMPILE_LENGTH_MULTIPLE`` steps, so a handful of graphs serve every sentence length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from kdfast.batching import length_sorted_batches, pad_batch
from kdfast.errors import KdfastError, require
from kdfast.runs import read_json, read_run_info, write_json
from kdfast.train.vocab import MASK, PAD, UNK, WordVocab, split_words  # noqa: F401  (re-exported: the student's vocabulary)

CELLS = ("lstm", "gru")
POOLINGS = ("mean", "max", "last")
IMPLS = ("nn", "loop")
GPT2_SMALL_PARAMS = 124_439_808  # GPT2Model("gpt2"); the student must stay at or under 1/20 of it
COMPILE_LENGTH_MULTIPLE = 8

STUDENT_FILE = "student.safetensors"
CONFIG_FILE = "student_config.json"
VOCAB_FILE = "vocab.json"


# --- the model


@dataclass
class StudentConfig:
    vocab_size: int  # rows of the embedding: the word vocabulary, specials included
    cell: str = "lstm"  # lstm | gru
    embed_dim: int = 128  # word embedding width
    hidden: int = 256  # hidden size of each direction
    layers: int = 1  # stacked RNN layers
    bidirectional: bool = True  # a second RNN per layer reads each sentence backwards
    dropout: float = 0.2  # on the embeddings, between layers and before the head
    pooling: str = "max"  # mean | max | last (over valid steps only)
    pad_id: int = 0
    num_labels: int = 2  # classes: the head's outputs

    def validate(self) -> None:
        checks = [
            (self.num_labels >= 2, f"a classifier needs at least two classes, got {self.num_labels}"),
            (self.cell in CELLS, f"--cell must be lstm or gru, got {self.cell!r}"),
            (self.pooling in POOLINGS, f"--pooling must be mean, max or last, got {self.pooling!r}"),
            (self.embed_dim >= 1, f"--embed-dim must be at least 1, got {self.embed_dim}"),
            (self.hidden >= 1, f"--hidden must be at least 1, got {self.hidden}"),
            (self.layers >= 1, f"--layers must be at least 1, got {self.layers}"),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.vocab_size > self.pad_id >= 0, f"bad vocabulary size {self.vocab_size}"),
        ]
        require(checks)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


def lstm_loop(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
              b_hh: torch.Tensor) -> torch.Tensor:
    """``nn.LSTM`` (one layer, one direction, batch first, zero initial state) as a cell loop: (B, T, I) → (B, T, H).

    i, f, g, o = split(x_t W_ihᵀ + b_ih + h W_hhᵀ + b_hh);  c = σ(f)·c + σ(i)·tanh(g);  h = σ(o)·tanh(c)
    """
    batch, steps, _ = x.shape
    hidden = w_hh.shape[1]
    xg = F.linear(x, w_ih, b_ih + b_hh)  # (B, T, 4H): the input half of every gate, all steps in one matmul
    h = x.new_zeros(batch, hidden)
    c = x.new_zeros(batch, hidden)
    out = []
    for t in range(steps):
        gates = torch.addmm(xg[:, t], h, w_hh.t())  # (B, 4H): one matmul for the four gates
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out, dim=1)  # (B, T, H)


def gru_loop(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
             b_hh: torch.Tensor) -> torch.Tensor:
    """``nn.GRU`` (one layer, one direction, batch first, zero initial state) as a cell loop: (B, T, I) → (B, T, H).

    r = σ(x_r + h_r);  z = σ(x_z + h_z);  n = tanh(x_n + r·h_n);  h = (1 − z)·n + z·h
    with x_* = x_t W_i*ᵀ + b_i* and h_* = h W_h*ᵀ + b_h* (b_hn stays inside r·(...), as in PyTorch).
    """
    batch, steps, _ = x.shape
    hidden = w_hh.shape[1]
    xg = F.linear(x, w_ih, b_ih)  # (B, T, 3H), all steps in one matmul
    h = x.new_zeros(batch, hidden)
    out = []
    for t in range(steps):
        hg = torch.addmm(b_hh, h, w_hh.t())  # (B, 3H): one matmul for the three gates
        x_r, x_z, x_n = xg[:, t].chunk(3, dim=1)
        h_r, h_z, h_n = hg.chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = n + z * (h - n)
        out.append(h)
    return torch.stack(out, dim=1)  # (B, T, H)


def reverse_valid(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reorder the steps of ``x`` (B, T, C) by ``index`` (B, T) (see ``valid_reverse_index``)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def valid_reverse_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, T) index that reverses each row's first ``length`` steps and leaves its padding in place (self-inverse)."""
    t = torch.arange(steps, device=lengths.device).unsqueeze(0)  # (1, T)
    n = lengths.unsqueeze(1)  # (B, 1)
    return torch.where(t < n, n - 1 - t, t)


class DistilRNN(nn.Module):
    def __init__(self, cfg: StudentConfig, impl: str = "nn") -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.impl = impl
        rnn_cls = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        # rnns[layer * directions + d]: d = 0 reads left to right, d = 1 right to left (within each length)
        self.rnns = nn.ModuleList(
            rnn_cls(cfg.embed_dim if layer == 0 else cfg.hidden * cfg.directions, cfg.hidden, batch_first=True)
            for layer in range(cfg.layers)
            for _ in range(cfg.directions)
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden * cfg.directions, cfg.num_labels)

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {value!r}")
        self._impl = value

    def _recur(self, rnn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "nn":
            return rnn(x)[0]
        loop = lstm_loop if self.cfg.cell == "lstm" else gru_loop
        return loop(x, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_features: bool = False,
                return_states: bool = False) -> Any:
        """Logits (B, C) of right-padded ``input_ids`` (B, T); ``attention_mask`` (B, T) is 1 on valid steps.
        With ``return_features``, also the pooled sentence vector the head reads (B, hidden · directions), which
        distillation's representation term (``--feature-weight``) fits to the teacher's; with ``return_states``,
        (logits, pooled vector, the last layer's output at every step (B, T, hidden · directions)), which the
        word-level term (``--word-weight``) fits to the teacher's contextual word vectors."""
        cfg = self.cfg
        steps = input_ids.shape[1]
        lengths = attention_mask.sum(1).clamp(min=1)  # (B,)
        rev = valid_reverse_index(lengths, steps)  # (B, T)
        x = self.drop(self.embed(input_ids))  # (B, T, E)
        for layer in range(cfg.layers):
            outs = []
            for d in range(cfg.directions):
                rnn = self.rnns[layer * cfg.directions + d]
                if d == 0:
                    outs.append(self._recur(rnn, x))  # (B, T, H)
                else:
                    outs.append(reverse_valid(self._recur(rnn, reverse_valid(x, rev)), rev))
            x = torch.cat(outs, dim=-1)  # (B, T, H · directions)
            if layer < cfg.layers - 1:
                x = self.drop(x)
        z = self.drop(self.pool(x, attention_mask, lengths))  # (B, C)
        if return_states:
            return self.head(z), z, x
        return (self.head(z), z) if return_features else self.head(z)  # (B, C)

    def pool(self, x: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, C) → (B, C) over valid steps only."""
        valid = attention_mask.unsqueeze(-1).bool()  # (B, T, 1)
        if self.cfg.pooling == "mean":
            return (x * valid).sum(1) / lengths.unsqueeze(-1).to(x.dtype)
        if self.cfg.pooling == "max":
            return x.masked_fill(~valid, float("-inf")).amax(1)
        # last: the forward direction's state after the last valid step, the backward one's after the first step
        h = self.cfg.hidden
        last = x.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1)  # (B, C)
        return last if self.cfg.directions == 1 else torch.cat([last[:, :h], x[:, 0, h:]], dim=-1)


def parameter_counts(model: DistilRNN) -> dict[str, int]:
    """Total, trainable and non-embedding parameters (the embedding is the part that scales with the vocabulary)."""
    total = sum(p.numel() for p in model.parameters())
    return {"total_params": total,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "non_embedding_params": total - model.embed.weight.numel()}


def check_size(model: DistilRNN) -> None:
    total = parameter_counts(model)["total_params"]
    if total * 20 > GPT2_SMALL_PARAMS:
        raise KdfastError(f"the student has {total:,} parameters, more than 1/20 of GPT-2 small's "
                          f"{GPT2_SMALL_PARAMS:,}; use a smaller --hidden, --embed-dim or --layers")


# --- compiling and predicting


def compile_student(model: DistilRNN, mode: str | None = None) -> nn.Module:
    """The cell-loop student through ``torch.compile`` (Inductor). Shares its parameters with ``model``.

    Each distinct padded length unrolls into its own graph, hence the bucketing in ``pad_for_compile``; the batch
    dimension is left to dynamo's automatic dynamic shapes. ``mode="reduce-overhead"`` adds CUDA graphs on CUDA.
    """
    import torch._dynamo

    model.impl = "loop"
    limit = 64  # graphs for (padded length, train/eval) pairs; the default 8 would silently fall back to eager
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))
    return torch.compile(model, mode=mode)


def pad_for_compile(input_ids: torch.Tensor, mask: torch.Tensor, pad_id: int,
                    multiple: int = COMPILE_LENGTH_MULTIPLE) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (B, T) to a multiple of ``multiple`` steps: fewer distinct shapes, same logits."""
    extra = -input_ids.shape[1] % multiple
    if not extra:
        return input_ids, mask
    return F.pad(input_ids, (0, extra), value=pad_id), F.pad(mask, (0, extra), value=0)


@torch.no_grad()
def predict_logits(model: nn.Module, ids: list[list[int]], pad_id: int, device: torch.device, batch_size: int = 64,
                   bucket: bool = False) -> np.ndarray:
    """Logits (N, C) in the order of ``ids``, batched by length; ``bucket`` pads lengths for a compiled model.
    The arguments are in the order of the teacher's ``predict_logits`` (``kdfast.train.teacher``)."""
    model.eval()
    out = np.zeros((len(ids), model.cfg.num_labels), dtype=np.float32)  # a compiled model forwards .cfg
    for idx in length_sorted_batches(ids, batch_size):
        input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
        if bucket:
            input_ids, mask = pad_for_compile(input_ids, mask, pad_id)
        out[idx] = model(input_ids.to(device), mask.to(device)).float().cpu().numpy()  # (B, C)
    return out


# --- run folders


def save_student(model: DistilRNN, vocab: WordVocab, max_length: int, folder: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / STUDENT_FILE))
    write_json(folder / CONFIG_FILE, {**asdict(model.cfg), "max_length": max_length})
    vocab.save(folder / VOCAB_FILE)


def load_student(run_dir: Path, impl: str = "nn") -> tuple[DistilRNN, WordVocab, int]:
    """A student run's model (CPU, eval mode), vocabulary and maximum length in words."""
    run_dir = Path(run_dir)
    read_run_info(run_dir, "student")
    raw: dict[str, Any] = read_json(run_dir / CONFIG_FILE)
    max_length = int(raw.pop("max_length", 64))
    try:
        cfg = StudentConfig(**raw)
    except TypeError as e:
        raise KdfastError(f"{run_dir / CONFIG_FILE}: {e}") from None
    model = DistilRNN(cfg, impl)
    try:
        model.load_state_dict(load_file(str(run_dir / STUDENT_FILE)))
    except (OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise KdfastError(f"{run_dir / STUDENT_FILE}: {first}") from None
    return model.eval(), WordVocab.load(run_dir / VOCAB_FILE), max_length


def student_logits(run_dir: Path, sentences: list[str], device: torch.device, compile: bool = False) -> np.ndarray:
    """Logits (N, C) of a student run for ``sentences`` (``kdfast eval`` calls this for student runs)."""
    model, vocab, max_length = load_student(run_dir)
    model.to(device)
    ids = [vocab.encode(s, max_length) for s in sentences]
    runner = compile_student(model) if compile else model
    return predict_logits(runner, ids, vocab.pad_id, device, bucket=compile)
