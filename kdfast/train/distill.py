"""Knowledge distillation of a teacher run into the RNN student, and the same student trained from scratch.

Hinton, Vinyals and Dean 2015 (https://arxiv.org/abs/1503.02531) for the loss; Tang et al. 2019, "Distilling
Task-Specific Knowledge from BERT into Simple Neural Networks" (https://arxiv.org/abs/1903.12136) for the transfer
set. One stage, shaped setup → train → save (``run``), for both modes:

- ``distill`` (``DistillConfig``): loss = α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·CE(s, y), in fp32. The T²
  keeps the soft term's gradients on the scale of the hard term's as T grows (they shrink as 1/T²).
- ``scratch`` (``ScratchConfig``, ``kdfast train rnn``): the same loop with α = 0 and no teacher, the baseline.

With ``--feature-weight β`` > 0 the distilled loss adds β·MSE(W·z_s + b, ẑ_t): the student's pooled sentence vector
z_s, through a linear map trained with it (and not saved: the student's files and export do not change), fits
the teacher's sentence representation ẑ_t, the vector its classification layer turns into logits (BERT's pooled
[CLS], GPT-2's last real token), standardised per dimension over the transfer set; gradient clipping
(``max_grad_norm``) applies to the student and that map together. Two logits of a two-class teacher carry one
number of knowledge per sentence (their difference); its representation carries hundreds (FitNets, Romero et al.
2015, https://arxiv.org/abs/1412.6550, at the last layer rather than a middle one).

With ``--word-weight γ`` > 0 it also adds γ·mean over words of (1 − cos(W'·h_t + b', ŵ_t)): the student's BiLSTM
output h_t at each word, through another linear map trained with it and then dropped, fits the teacher's contextual
vector ŵ_t of the same word (its hidden state at ``--word-layer``, averaged over the word's sub-word tokens, so
GPT-2's BPE and BERT's WordPiece align alike with the student's words; standardised per dimension). This is where
the teacher's pretrained knowledge of English reaches the student: hundreds of numbers per *word*, on every
sentence of the transfer set, instead of one logit per sentence (as ELMo's contextual vectors lift a BiLSTM on
CoLA, GLUE Table 4; TinyBERT fits hidden states layer by layer). ``--embed-init`` starts the student's embeddings
from the teacher's (``kdfast.train.embed_init``). ``--recipe`` names the defaults of these options (``RECIPES``).

The teacher is run once over the transfer set, before the first epoch, and what it says is cached in the run
folder (``teacher_logits.safetensors``: logits, sentence representations and word vectors, keyed by a hash of the
teacher run and of the exact sentences it scored; ``kdfast.train.teacher_cache`` documents the format); a later
run with the same teacher, data, seed and ``--augment`` into the same ``--out`` (or with ``--reuse-logits RUN``)
reads them back instead of loading the teacher at all. ``--transfer FILE`` adds the user's own text, streamed and
labelled in cached parts (``kdfast.train.transfer``).

**Transfer set** (``--augment N``: N synthetic sentences per training sentence), after Tang et al. §3.2. For each
whitespace-separated word: with probability p_mask it becomes ``[MASK]``; else with probability p_swap it is
replaced by one of its ``NEIGHBOURS`` nearest training words in the teacher's own token-embedding space (cosine
between the mean embeddings of each word's tokens), as TinyBERT (Jiao et al. 2020, §3.4) swaps in embedding
neighbours; a word seen only once is replaced by a word drawn from the training text. Tang et al. swap in a word
of the same part of speech; embedding neighbours come close to that without a tagger ("I" -> "we", "alone" ->
"oneself", "pseudo" -> "pretended") and give near-misses of real sentences rather than word salad. Then, with
probability p_ngram, an n-gram (n uniform in 1..5) of the result replaces it. A synthetic sentence equal to its
source is drawn again. The embedding table is read from the teacher's merged weights (the model is not built).
The teacher sees ``[MASK]`` as its own mask token (BERT-style teachers) or its unknown token (GPT-2:
``<|endoftext|>``); the student sees its ``[MASK]`` id.

Synthetic sentences carry soft targets only: the CE term is averaged over the real sentences of a batch (their
gold labels), the KL term over every sentence. Giving synthetic sentences the teacher's argmax as a hard label
would teach the student the teacher's mistakes at full confidence; Tang et al. likewise use only the teacher's
output on them.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from kdfast.batching import pad_batch, shuffled_batches
from kdfast.data import load_dataset, subsample
from kdfast.errors import KdfastError, first_line, require
from kdfast.metrics import best_summary, improves
from kdfast.plots import plot_curves
from kdfast.runs import (
    METRICS_FILE,
    check_out_dir,
    read_json,
    read_run_info,
    run_labels,
    staged_dir,
    write_json,
    write_run_info,
)
from kdfast.train.distributed import setup
from kdfast.train.embed_init import EMBED_INITS, init_from_teacher_embeddings, init_from_word_states
from kdfast.train.student import (
    MASK,
    DistilRNN,
    StudentConfig,
    WordVocab,
    check_size,
    compile_student,
    pad_for_compile,
    parameter_counts,
    predict_logits,
    save_student,
)
from kdfast.train.teacher import score_dev
from kdfast.train.teacher_cache import (  # noqa: F401  (re-exported)
    CACHE_FILE,
    cache_key,
    column_stats,
    read_cache,
    score_with_teacher,
    standardise,
    teacher_fingerprint,
    teacher_texts,
    write_cache,
)
from kdfast.train.training import (
    adamw_with_warmup,
    check_finite,
    common_checks,
    optimizer_step,
    progress_bar,
    seed_everything,
)
from kdfast.train.transfer import CACHE_DIR as TRANSFER_CACHE_DIR
from kdfast.train.transfer import PART_LINES, TransferSet, label_transfer, proportional, read_part
from kdfast.verdict import against_majority

NEIGHBOURS = 10  # swap candidates per word: its nearest training words in the teacher's embedding space
EMBEDDING_NAMES = ("word_embeddings.weight", "wte.weight", "embed_tokens.weight", "shared.weight")
P_MASK, P_SWAP, P_NGRAM, MAX_NGRAM = 0.1, 0.1, 0.25, 5  # Tang et al.'s values
# --recipe: the values of --augment, --feature-weight, --word-weight and --embed-init that flags left unset take
RECIPES: dict[str, dict[str, Any]] = {
    "plain": {"augment": 0, "feature_weight": 0.0, "word_weight": 0.0, "embed_init": "none"},  # Hinton's loss alone
    "sentence": {"augment": 4, "feature_weight": 1.0, "word_weight": 0.0, "embed_init": "none"},  # the 2nd default
    "words": {"augment": 4, "feature_weight": 1.0, "word_weight": 1.0, "embed_init": "context"},  # the 3rd
}
DEFAULT_RECIPE = "words"  # the recipe measured best (docs/results.md), what the bare command runs
# --word-layer's default, as a share of the teacher's depth: on MiniLM-L6 layer 4 of 6 beat the last (docs/results.md);
# syntax is read best from the middle-upper layers of BERT and GPT-2 alike (Hewitt and Manning 2019, Tenney et al.
# 2019), which is what the student most lacks on CoLA. Assumed, not measured, for GPT-2 (layer 8 of 12).
DEFAULT_WORD_DEPTH = 2 / 3


@dataclass
class ScratchConfig:
    """The student and its training: all of ``kdfast train rnn``, and the shared part of ``kdfast distill``."""

    data: str = "cola"  # "cola" (bundled), a folder, a CSV/TSV/JSON Lines file, or hub:NAME (kdfast.data)
    dev_data: str | None = None  # the dev file when --data is one training file
    text_column: str | None = None  # default: text, else sentence
    label_column: str | None = None  # default: label
    select_by: str = "mcc"  # the dev score that picks the best epoch: mcc | acc | f1
    out: Path = Path("runs/rnn")  # the run folder to write
    epochs: int = 10
    lr: float = 2e-3  # peak AdamW learning rate
    cell: str = "lstm"  # lstm | gru
    embed_dim: int = 128
    hidden: int = 256  # per direction
    layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.2
    pooling: str = "max"  # mean | max | last
    min_freq: int = 2  # rarer training words map to <unk> (which is how <unk> gets trained)
    max_length: int = 64  # words; CoLA's longest sentence has 44
    batch_size: int = 32
    seed: int = 0
    max_train_samples: int | None = None  # a seeded subset of train, for quick runs
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # the cell-loop student through torch.compile, for training and dev scoring
    grad_accum: int = 1  # micro-batches per optimizer step on each process; --batch-size stays the global batch
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast on CUDA (fp16 with a gradient scaler)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    overwrite: bool = False  # replace a non-empty --out
    progress: bool = True

    def validate(self) -> None:
        require([
            *common_checks(self),
            (self.max_length >= 1, f"--max-length must be at least 1, got {self.max_length}"),
            (self.min_freq >= 1, f"--min-freq must be at least 1, got {self.min_freq}"),
        ])
        self.student_config(vocab_size=3, num_labels=2).validate()

    def student_config(self, vocab_size: int, num_labels: int) -> StudentConfig:
        names = {f.name for f in fields(StudentConfig)} - {"vocab_size", "pad_id", "num_labels"}
        return StudentConfig(vocab_size=vocab_size, pad_id=WordVocab.pad_id, num_labels=num_labels,
                             **{n: getattr(self, n) for n in names})


@dataclass
class DistillConfig(ScratchConfig):
    """``kdfast distill``: the student's configuration plus the teacher, the loss and the transfer set."""

    teacher: Path = Path("runs/teacher")  # a teacher run folder (kdfast train lora)
    out: Path = Path("runs/student")
    temperature: float = 2.0  # T: softens both distributions in the KL term
    alpha: float = 0.5  # weight of the soft (KL) term; 1 − alpha on the hard (CE) term
    # ``recipe`` (RECIPES; default DEFAULT_RECIPE, the one measured best in docs/results.md) fills in whichever of
    # these four is left None; ``plain`` is recipe "plain" (Hinton's loss alone). Explicit values win over both.
    recipe: str | None = None
    augment: int | None = None  # synthetic sentences per training sentence, labelled by the teacher
    feature_weight: float | None = None  # beta: weight of fitting the teacher's representation (0: off)
    word_weight: float | None = None  # gamma: weight of fitting the teacher's contextual word vectors (0: off)
    # the teacher's hidden layer whose word vectors are fitted (-1: the last; 0: its input embeddings); None: two
    # thirds of the way up (DEFAULT_WORD_DEPTH: 4 of MiniLM-L6's 6, 8 of GPT-2's 12)
    word_layer: int | None = None
    embed_init: str | None = None  # none | teacher | context: the student's word embeddings from the teacher's
    plain: bool = False  # --plain: --recipe plain
    transfer: Path | None = None  # the user's unlabeled text (kdfast.train.transfer): more transfer set, streamed
    transfer_cache: Path | None = None  # where its labelled parts go (default: OUT/transfer_cache)
    transfer_part_lines: int = PART_LINES  # texts per labelled part
    reuse_logits: Path | None = None  # another student run whose cached teacher logits may be reused
    teacher_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.plain and self.recipe is None:
            self.recipe = "plain"
        if self.recipe is None:
            self.recipe = DEFAULT_RECIPE
        for name, value in RECIPES.get(self.recipe, {}).items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def validate(self) -> None:
        super().validate()
        require([(self.recipe in RECIPES, f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}"),
                 (not (self.plain and self.recipe != "plain"), "--plain is --recipe plain: give one of them")])
        assert self.augment is not None and self.feature_weight is not None and self.word_weight is not None
        checks = [
            (self.temperature > 0, f"--temperature must be positive, got {self.temperature}"),
            (0 <= self.alpha <= 1, f"--alpha must be in [0, 1], got {self.alpha}"),
            (self.augment >= 0, f"--augment must be at least 0, got {self.augment}"),
            (self.feature_weight >= 0, f"--feature-weight must be at least 0, got {self.feature_weight}"),
            (self.word_weight >= 0, f"--word-weight must be at least 0, got {self.word_weight}"),
            (self.transfer_part_lines >= 1, f"--transfer-part-lines must be at least 1, got "
                                            f"{self.transfer_part_lines}"),
            (self.transfer is None or Path(self.transfer).is_file(), f"--transfer {self.transfer}: no such file"),
            (self.embed_init in EMBED_INITS, f"--embed-init must be one of {', '.join(EMBED_INITS)}, "
                                             f"got {self.embed_init!r}"),
        ]
        require(checks)

    @property
    def word_layer_used(self) -> int | None:
        """The teacher layer whose word vectors the run needs (for --word-weight or --embed-init context), or None."""
        if not (self.word_weight or self.embed_init == "context"):
            return None
        return self.word_layer if self.word_layer is not None else default_word_layer(Path(self.teacher))


# --- the loss


def kd_loss(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, temperature: float,
            alpha: float, rows: int | None = None, labelled_rows: int | None = None) -> torch.Tensor:
    """α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·CE(s, y), in fp32.

    ``student`` and ``teacher`` are logits (B, C); ``labels`` (B,) is −1 on sentences with no gold label, which
    then count in the KL term only (the CE term averages over labelled rows; 0 when there are none). The KL term
    averages over all rows (``batchmean``). ``teacher`` may be None only when ``alpha`` is 0.

    With ``rows`` and ``labelled_rows``, the sums divide by those counts instead (of the *global* batch, when these
    B rows are one slice of it in data-parallel training): the slices' losses then add up to the global batch's.
    """
    s = student.float()
    labelled = labels >= 0
    ce_rows = F.cross_entropy(s, labels.clamp(min=0), reduction="none")  # (B,)
    ce = (ce_rows * labelled).sum() / (labelled.sum().clamp(min=1) if labelled_rows is None else max(labelled_rows, 1))
    if alpha == 0:
        return ce
    assert teacher is not None, "the KL term needs teacher logits"
    t = temperature
    kl = F.kl_div(F.log_softmax(s / t, dim=-1), F.log_softmax(teacher.float() / t, dim=-1), log_target=True,
                  reduction="sum") / (len(s) if rows is None else rows)
    return alpha * t * t * kl + (1 - alpha) * ce


# --- the transfer set


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


def default_word_layer(teacher: Path) -> int:
    """``--word-layer``'s default for ``teacher``: its hidden layer ``DEFAULT_WORD_DEPTH`` of the way up (rounded),
    from the depth in ``merged/config.json`` (``num_hidden_layers``, GPT-2's ``n_layer``)."""
    merged = Path(teacher) / "merged"
    try:
        config = read_json(merged / "config.json")
        depth = int(config.get("num_hidden_layers", config.get("n_layer")))
    except (OSError, ValueError, TypeError) as e:
        raise KdfastError(f"{merged}: could not read the teacher's number of layers ({first_line(e)}); give "
                          f"--word-layer") from None
    return max(1, round(DEFAULT_WORD_DEPTH * depth))


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


# --- the student with its training-only maps


class WithProjection(nn.Module):
    """The student and the linear maps of its sentence vector (``--feature-weight``) and of its per-step states
    (``--word-weight``) onto the teacher's, as one module, so that one DistributedDataParallel synchronises them
    all: (logits (B, C), projected features (B, d) or None, projected states (B, T, d) or None)."""

    def __init__(self, student: nn.Module, projection: nn.Module | None, word_projection: nn.Module | None = None
                 ) -> None:
        super().__init__()
        self.student, self.projection, self.word_projection = student, projection, word_projection

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        logits, features, states = self.student(input_ids, mask, return_states=True)
        return (logits, self.projection(features) if self.projection is not None else None,
                self.word_projection(states) if self.word_projection is not None else None)


class WordTargets:
    """The teacher's cached word vectors (``kdfast.train.teacher_cache``), standardised per dimension, served per
    batch as (B, T, d) targets with a (B, T) mask of the steps that have one."""

    def __init__(self, scores: dict[str, torch.Tensor], lengths: list[int]) -> None:
        self.states, self.offsets, self.valid = scores["word_states"], scores["word_offsets"], scores["word_valid"]
        self.mean, self.std = column_stats(self.states, self.valid)
        self.lengths = lengths  # each sentence's length in the student's ids (its words, cut at --max-length)
        counts = self.offsets.diff()
        # the steps of sentence i with a target: its first min(words, student length) words that the teacher saw
        self.hits = torch.tensor([int(self.valid[int(self.offsets[i]) : int(self.offsets[i]) + min(int(c), n)].sum())
                                  for i, (c, n) in enumerate(zip(counts.tolist(), lengths, strict=True))])

    @property
    def dim(self) -> int:
        return int(self.states.shape[1])

    def none(self, rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets for sentences without word vectors (a transfer file's): all masked."""
        return torch.zeros(rows, width, self.dim), torch.zeros(rows, width, dtype=torch.bool)

    def batch(self, idx: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        target = torch.zeros(len(idx), width, self.dim)
        valid = torch.zeros(len(idx), width, dtype=torch.bool)
        for b, i in enumerate(idx):
            a = int(self.offsets[i])
            n = min(int(self.offsets[i + 1]) - a, self.lengths[i], width)
            target[b, :n] = self.states[a : a + n].float()
            valid[b, :n] = self.valid[a : a + n]
        return (target - self.mean) / self.std, valid


def word_loss(predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, total: int) -> torch.Tensor:
    """Σ over the ``valid`` steps (B, T) of (1 − cos(predicted, target)) (both (B, T, d)), divided by ``total``: the
    number of such steps in the whole global batch, so that data-parallel slices add up to the one-process loss."""
    valid = valid.to(predicted.device)
    cos = F.cosine_similarity(predicted.float()[valid], target.to(predicted.device)[valid], dim=-1)
    return (1 - cos).sum() / max(total, 1)


@dataclass
class Batch:
    """One global batch: the student's ids, gold labels (-1: none), teacher logits and standardised sentence
    representations, and ``rows``: the sentences' indices in the in-memory set (None for a transfer-file batch,
    whose sentences have no cached word vectors)."""

    ids: list[list[int]]
    labels: torch.Tensor
    soft: torch.Tensor | None
    features: torch.Tensor | None
    rows: list[int] | None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Memory:
    """The in-memory training set: real sentences, then synthetic ones."""

    ids: list[list[int]]
    labels: torch.Tensor
    soft: torch.Tensor | None
    features: torch.Tensor | None

    def batch(self, idx: list[int]) -> Batch:
        return Batch([self.ids[i] for i in idx], self.labels[idx], None if self.soft is None else self.soft[idx],
                     None if self.features is None else self.features[idx], idx)


@dataclass
class Stream:
    """The ``--transfer`` file's labelled parts, read one at a time, and how to turn their texts into batches."""

    transfer: TransferSet
    vocab: WordVocab
    max_length: int
    mean: torch.Tensor | None  # the in-memory set's feature statistics: the transfer set is standardised alike
    std: torch.Tensor | None

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        for p in torch.randperm(len(self.transfer.parts), generator=generator).tolist():
            part = read_part(self.transfer.parts[p])
            features = None if self.mean is None else (part["features"] - self.mean) / self.std
            for idx in shuffled_batches(len(part["texts"]), batch_size, generator):
                yield Batch([self.vocab.encode(part["texts"][i], self.max_length) for i in idx],
                            torch.full((len(idx),), -1), part["logits"][idx],
                            None if features is None else features[idx], None)

    def steps(self, batch_size: int) -> int:
        return sum(-(-n // batch_size) for n in self.transfer.sizes)


def epoch_batches(memory: Memory, stream: Stream | None, batch_size: int, generator: torch.Generator
                  ) -> Iterator[Batch]:
    """One epoch: the in-memory set in a seeded random order and, with a transfer file, its parts' batches
    interleaved in proportion (the same order on every rank)."""
    mine = list(shuffled_batches(len(memory.ids), batch_size, generator))
    if stream is None:
        yield from (memory.batch(idx) for idx in mine)
        return
    theirs = stream.batches(batch_size, generator)
    taken = iter(mine)
    for from_memory in proportional(len(mine), stream.steps(batch_size)):
        yield memory.batch(next(taken)) if from_memory else next(theirs)


def teacher_tokenizer(teacher: Path) -> Any:
    from transformers import AutoTokenizer

    merged = Path(teacher) / "merged"
    try:
        return AutoTokenizer.from_pretrained(str(merged))
    except Exception as e:
        raise KdfastError(f"{merged}: could not load the teacher's tokenizer ({first_line(e)})") from None


def only_transfer_cache(out: Path) -> bool:
    """``out`` is a folder with nothing but a transfer cache in it (a run interrupted after labelling began)."""
    return out.is_dir() and {p.name for p in out.iterdir()} <= {TRANSFER_CACHE_DIR}


# --- the stage


def run(cfg: ScratchConfig) -> dict[str, Any]:
    """Train the student (distilled when ``cfg`` is a ``DistillConfig``) and write its run folder; returns the
    contents of ``metrics.json``."""
    # --- setup
    distill = isinstance(cfg, DistillConfig)
    cfg.validate()
    cfg.out = Path(cfg.out)
    # an --out holding only the transfer cache of an interrupted run is resumed, not refused
    own_cache = isinstance(cfg, DistillConfig) and cfg.transfer is not None and cfg.transfer_cache is None
    check_out_dir(cfg.out, cfg.overwrite or (own_cache and only_transfer_cache(cfg.out)))
    if isinstance(cfg, DistillConfig):
        cfg.teacher = Path(cfg.teacher)
        try:
            read_run_info(cfg.teacher, "teacher")
        except KdfastError as e:
            raise KdfastError(f"--teacher {e}") from None
    ctx = setup(cfg.device, cfg.precision, cfg.batch_size, cfg.grad_accum)
    device = ctx.device
    generator = seed_everything(cfg.seed)  # the same on every rank: the same init and the same order
    # A distilled student's ids are its teacher's: the teacher's logits are columns in the teacher's label order.
    teacher_labels = run_labels(cfg.teacher) if isinstance(cfg, DistillConfig) else None
    data = load_dataset(cfg.data, cfg.dev_data, cfg.text_column, cfg.label_column, teacher_labels)
    train = subsample(data.train, cfg.max_train_samples, cfg.seed)
    sentences = [e.text for e in train]
    labels = [e.label for e in train]
    vocab = WordVocab.build(sentences, cfg.min_freq)
    model = DistilRNN(cfg.student_config(len(vocab), data.num_labels))  # right after seeding: same init in both modes
    check_size(model)
    model.to(device)
    counts = parameter_counts(model)
    runner = compile_student(model) if cfg.compile else model
    dev_ids = [vocab.encode(e.text, cfg.max_length) for e in data.dev]
    alpha = cfg.alpha if isinstance(cfg, DistillConfig) else 0.0
    temperature = cfg.temperature if isinstance(cfg, DistillConfig) else 1.0
    soft: torch.Tensor | None = None
    scores: dict[str, torch.Tensor] = {}
    target: torch.Tensor | None = None  # the teacher's standardised sentence representations, for --feature-weight
    projection: nn.Module | None = None  # student features -> teacher features; for training only, not saved
    beta = (cfg.feature_weight or 0.0) if isinstance(cfg, DistillConfig) else 0.0
    gamma = (cfg.word_weight or 0.0) if isinstance(cfg, DistillConfig) else 0.0
    words: WordTargets | None = None  # the teacher's word vectors, for --word-weight
    word_projection: nn.Module | None = None  # student states -> teacher word vectors; for training only
    synthetic: list[str] = []
    cache: dict[str, Any] = {}

    with progress_bar(cfg.progress, ctx.master) as bar:
        if isinstance(cfg, DistillConfig):
            neighbours = teacher_word_neighbours(cfg.teacher, sentences) if cfg.augment else None
            synthetic = augment(sentences, cfg.augment or 0, cfg.seed, neighbours)
            layer = cfg.word_layer_used
            scores, key, hit = score_with_teacher(cfg.teacher, sentences + synthetic, ctx, bar,
                                                  [cfg.reuse_logits, cfg.out], beta > 0, layer, cfg.teacher_batch_size)
            soft = scores["logits"]
            if beta > 0:
                target = standardise(scores["features"])
                projection = nn.Linear(model.head.in_features, target.shape[1]).to(device)
            cache = {"key": key, "reused": hit}
            sentences, labels = sentences + synthetic, labels + [-1] * len(synthetic)
            if cfg.embed_init == "teacher":
                init_from_teacher_embeddings(model.embed, vocab, teacher_tokenizer(cfg.teacher),
                                             teacher_embeddings(cfg.teacher))
            elif cfg.embed_init == "context":
                init_from_word_states(model.embed, vocab, sentences, scores)
        ids = [vocab.encode(s, cfg.max_length) for s in sentences]
        if gamma > 0:
            words = WordTargets(scores, [len(i) for i in ids])
            word_projection = nn.Linear(model.head.in_features, words.dim).to(device)
        feature_stats = (None, None)
        if target is not None:  # standardise's statistics, for the transfer file's features
            raw = scores["features"]
            feature_stats = (raw.mean(0), raw.std(0, unbiased=len(raw) > 1).clamp(min=1e-6))
        memory = Memory(ids, torch.tensor(labels), soft, target)
        stream: Stream | None = None
        if isinstance(cfg, DistillConfig) and cfg.transfer is not None:
            folder = cfg.transfer_cache or cfg.out / TRANSFER_CACHE_DIR
            transfer = label_transfer(cfg.teacher, cfg.transfer, cfg.text_column, folder, ctx, bar,
                                      cfg.teacher_batch_size, cfg.transfer_part_lines)
            stream = Stream(transfer, vocab, cfg.max_length, *feature_stats)
            cache["transfer"] = {"file": str(cfg.transfer), "cache": str(folder), "lines": len(transfer),
                                 "labelled_now": transfer.labelled}
        steps_per_epoch = -(-len(ids) // cfg.batch_size) + (stream.steps(cfg.batch_size) if stream else 0)
        heads = [m for m in (projection, word_projection) if m is not None]
        params = [*model.parameters(), *(p for m in heads for p in m.parameters())]
        optimizer, scheduler = adamw_with_warmup(
            params, cfg.lr, steps_per_epoch * cfg.epochs, cfg.warmup_ratio, cfg.weight_decay
        )
        # DDP over the whole student (and the projection): every parameter trains
        ddp = ctx.wrap(WithProjection(runner, projection, word_projection) if heads else runner)
        scaler = ctx.scaler()

        # --- train
        history: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        best_state: dict[str, torch.Tensor] = {}
        train_start = time.perf_counter()
        for epoch in range(1, cfg.epochs + 1):
            runner.train()
            task = bar.add_task(f"{'distill' if distill else 'scratch'} epoch {epoch}/{cfg.epochs}",
                                total=len(ids) + (len(stream.transfer) if stream else 0), loss=0.0, rate=0.0)
            loss_sum, correct, real, seen, start = 0.0, 0, 0, 0, time.perf_counter()
            batches = epoch_batches(memory, stream, cfg.batch_size, generator)
            for step, batch in enumerate(batches):
                # every rank knows the whole global batch, hence the counts its slices' losses divide by
                rows, labelled_rows = len(batch), int((batch.labels >= 0).sum())
                word_rows = int(words.hits[batch.rows].sum()) if words is not None and batch.rows is not None else 0
                parts = ctx.micro_batches(list(range(rows)), cfg.grad_accum)
                for k, part in enumerate(parts):
                    pos = part or [0]  # an empty slice still runs (every rank joins DDP's sync), at weight 0
                    input_ids, mask = pad_batch([batch.ids[p] for p in pos], vocab.pad_id)
                    if cfg.compile:
                        input_ids, mask = pad_for_compile(input_ids, mask, vocab.pad_id)
                    y = batch.labels[pos].to(device)
                    teacher = batch.soft[pos].to(device) if batch.soft is not None else None
                    with ctx.sync(ddp, last=k == len(parts) - 1), ctx.autocast():
                        # this slice's share of the global batch's mean loss
                        if heads:
                            logits, projected, word_pred = ddp(input_ids.to(device), mask.to(device))
                            loss = kd_loss(logits, teacher, y, temperature, alpha, rows, labelled_rows)
                            if projected is not None and batch.features is not None:
                                fit = F.mse_loss(projected.float(), batch.features[pos].to(device), reduction="sum")
                                loss = loss + beta * fit / (rows * batch.features.shape[1])
                            if word_pred is not None and words is not None:
                                tw, valid = (words.batch([batch.rows[p] for p in pos], word_pred.shape[1])
                                             if batch.rows is not None else words.none(len(pos), word_pred.shape[1]))
                                loss = loss + gamma * word_loss(word_pred, tw, valid, word_rows)
                        else:
                            logits = ddp(input_ids.to(device), mask.to(device))  # (B, C)
                            loss = kd_loss(logits, teacher, y, temperature, alpha, rows, labelled_rows)
                        check_finite(loss, epoch, step)
                        # DDP averages over the N ranks; their shares add up: N × the share
                        scaler.scale(loss * (ctx.world if part else 0.0)).backward()
                    if part:
                        loss_sum += loss.item() * rows
                        labelled = y >= 0
                        correct += int((logits.argmax(-1) == y)[labelled].sum())
                        real += int(labelled.sum())
                        seen += len(part)
                optimizer_step(optimizer, scheduler, scaler, params, cfg.max_grad_norm)
                rate = seen * ctx.world / (time.perf_counter() - start)
                bar.update(task, advance=rows, loss=loss_sum / max(seen, 1), rate=rate)
            loss_sum, correct, real, seen = ctx.all_sum(loss_sum, correct, real, seen)  # over every rank's slices
            seconds = time.perf_counter() - start
            shard = ctx.shard(len(dev_ids))  # each rank scores its shard of dev; all get every row
            local = predict_logits(runner, dev_ids[shard.start : shard.stop], device, vocab.pad_id, bucket=cfg.compile)
            report = score_dev(ctx.gather_rows(torch.from_numpy(local), len(dev_ids)).numpy(), data)
            history.append({"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / max(real, 1),
                            "train_sentences_per_s": seen / seconds, **report})
            bar.console.print(
                f"epoch {epoch}: train loss {loss_sum / seen:.4f}, dev acc {report['dev_acc']:.4f}, "
                f"dev MCC {report['dev_mcc']:.4f}, dev F1 {report['dev_f1']:.4f}"
            )
            if improves(report, best, cfg.select_by):
                best = best_summary(epoch, report)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        train_seconds = time.perf_counter() - train_start
    assert best is not None
    model.load_state_dict(best_state)

    # --- save
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    metrics: dict[str, Any] = {
        "history": history,
        "best": best,
        **counts,
        "config": config,
        "student": asdict(model.cfg),
        "train_seconds": train_seconds,
        "data": {**data.summary(train), "synthetic": len(synthetic), "vocab": len(vocab),
                 "synthetic_examples": synthetic[:5]},
    }
    if isinstance(cfg, DistillConfig):
        teacher_best = read_json(cfg.teacher / METRICS_FILE).get("best", {})
        teacher_mcc = teacher_best.get("dev_mcc")
        metrics["teacher"] = {"run": str(cfg.teacher), "best": teacher_best, "logits_cache": cache,
                              "mcc_kept": best["dev_mcc"] / teacher_mcc if teacher_mcc else None,
                              "word_layer": cfg.word_layer_used}
    metrics["verdict"] = against_majority(best, data.dev_targets()[0], data.labels, "the student",
                                          steps_per_epoch * cfg.epochs, cfg.lr)
    metrics["processes"] = ctx.world
    if not ctx.master:  # rank 0 alone writes the run folder
        return metrics
    mode = "distill" if distill else "scratch"
    with staged_dir(cfg.out, cfg.overwrite or (own_cache and only_transfer_cache(cfg.out))) as tmp:
        if own_cache and (cfg.out / TRANSFER_CACHE_DIR).is_dir():  # the transfer cache moves into the new run folder
            os.replace(cfg.out / TRANSFER_CACHE_DIR, tmp / TRANSFER_CACHE_DIR)
        save_student(model.cpu(), vocab, cfg.max_length, tmp)
        if scores:
            layer = cfg.word_layer_used if isinstance(cfg, DistillConfig) else None
            write_cache(tmp / CACHE_FILE, scores, cache["key"], Path(config["teacher"]), len(train), layer)
        write_json(tmp / METRICS_FILE, metrics)
        s = model.cfg
        arch = f"{'Bi' if s.bidirectional else ''}{s.cell.upper()} {s.layers}x{s.hidden}"
        how = (f"distilled (T={temperature:g}, alpha={alpha:g}{f', beta={beta:g}' if beta else ''}"
               f"{f', gamma={gamma:g}' if gamma else ''}, "
               f"+{len(synthetic):,} synthetic)") if distill else "scratch"
        title = f"{arch} student, {how}, on {data.source}"
        plot_curves(history, tmp / "curves.png", title)
        write_run_info(tmp, "student", mode=mode, labels=data.labels)
    return metrics
