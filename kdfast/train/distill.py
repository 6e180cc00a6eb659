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

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdfast.configs import (
    BATCH_SIZE,
    DEVICE,
    GRAD_ACCUM,
    LR,
    MAX_TRAIN_SAMPLES,
    OVERWRITE,
    PRECISION,
    PROGRESS,
    REPORT_TO_HELP,
    SELECT_BY,
    DataOptions,
    report_to_check,
)
from kdfast.errors import KdfastError, first_line, require
from kdfast.options import option

if TYPE_CHECKING:
    from kdfast.train.student import StudentConfig

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

PART_LINES = 4096  # --transfer-part-lines: texts per labelled part of --transfer (kdfast.train.transfer)


@dataclass
class ScratchConfig(DataOptions):
    """The student and its training: all of ``kdfast train rnn``, and the shared part of ``kdfast distill``."""

    select_by: str = option("mcc", SELECT_BY)
    out: Path = option(Path("runs/rnn"), "Run folder to write.")
    epochs: int = option(10)
    lr: float = option(2e-3, LR)
    cell: str = option("lstm", "lstm or gru.")
    embed_dim: int = option(128, "Word embedding width.")
    hidden: int = option(256, "Hidden size of each direction.")
    layers: int = option(1)
    bidirectional: bool = option(True, "A second RNN reads each sentence backwards.")
    dropout: float = option(0.2)
    pooling: str = option("max", "mean, max or last (valid steps only).")
    # (which is how <unk> gets trained)
    min_freq: int = option(2, "Rarer training words map to <unk>.")
    max_length: int = 64  # words; CoLA's longest sentence has 44
    batch_size: int = option(32, BATCH_SIZE)
    seed: int = option(0)
    max_train_samples: int | None = option(None, MAX_TRAIN_SAMPLES)
    device: str = option("auto", DEVICE)
    # for training and dev scoring
    compile: bool = option(False, "torch.compile the cell-loop student.", "--compile")
    grad_accum: int = option(1, GRAD_ACCUM)
    precision: str = option("fp32", PRECISION)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    overwrite: bool = option(False, OVERWRITE)
    progress: bool = option(True, PROGRESS)
    report_to: str = option("none", REPORT_TO_HELP)

    def validate(self) -> None:
        from kdfast.train.training import common_checks

        require([
            *common_checks(self),
            (self.max_length >= 1, f"--max-length must be at least 1, got {self.max_length}"),
            (self.min_freq >= 1, f"--min-freq must be at least 1, got {self.min_freq}"),
            report_to_check(self.report_to),
        ])
        self.student_config(vocab_size=3, num_labels=2).validate()

    def student_config(self, vocab_size: int, num_labels: int) -> StudentConfig:
        from kdfast.train.student import StudentConfig, WordVocab

        names = {f.name for f in fields(StudentConfig)} - {"vocab_size", "pad_id", "num_labels"}
        return StudentConfig(vocab_size=vocab_size, pad_id=WordVocab.pad_id, num_labels=num_labels,
                             **{n: getattr(self, n) for n in names})


@dataclass
class DistillConfig(ScratchConfig):
    """``kdfast distill``: the student's configuration plus the teacher, the loss and the transfer set."""

    teacher: Path = option(Path("runs/teacher"), "Teacher run folder (kdfast train lora).")
    out: Path = option(Path("runs/student"), "Run folder to write.")
    # T: softens both distributions in the KL term
    temperature: float = option(2.0, "Softmax temperature T of the KL term.")
    alpha: float = option(0.5, "Weight of the KL term; 1 - alpha on cross-entropy with the labels.")
    # ``recipe`` (RECIPES; default DEFAULT_RECIPE, the one measured best in docs/results.md) fills in whichever of
    # these four is left None; ``plain`` is recipe "plain" (Hinton's loss alone). Explicit values win over both.
    recipe: str | None = option(None, "Defaults for --augment, --feature-weight, --word-weight and --embed-init: "
                                "'words' (the default: 4, 1, 1, context), 'sentence' (the previous default: 4, 1, 0, "
                                "none) or 'plain' (0, 0, 0, none). Options given explicitly win.")
    augment: int | None = option(None, "Synthetic sentences per training sentence, labelled by the teacher (mask, "
                                 "swap with a teacher-embedding neighbour, n-gram). Default 4 (0 with --plain).")
    feature_weight: float | None = option(None, "Weight beta of fitting the teacher's sentence representation "
                                          "(mean-squared error through a linear map; 0: off). Default 1 (0 with "
                                          "--plain).")
    word_weight: float | None = option(None, "Weight gamma of fitting the teacher's contextual word vectors (each "
                                       "word's sub-word states averaged) with the student's per-step states (cosine "
                                       "through a linear map; 0: off).")
    # None: two thirds of the way up (DEFAULT_WORD_DEPTH: 4 of MiniLM-L6's 6, 8 of GPT-2's 12)
    word_layer: int | None = option(None, "The teacher's hidden layer fitted by --word-weight and averaged by "
                                    "--embed-init context (-1: the last, 0: its input embeddings). Default: two "
                                    "thirds of the way up (4 of MiniLM-L6's 6, measured better than the last; 8 of "
                                    "GPT-2's 12, assumed).")
    embed_init: str | None = option(None, "Initialise the student's word embeddings from the teacher: 'teacher' (its "
                                    "input embeddings, sub-words averaged), 'context' (its word vectors averaged "
                                    "over the transfer set) or 'none'; PCA to --embed-dim.")
    plain: bool = option(False, "--recipe plain: Hinton's loss alone, no transfer set, no representation terms (the "
                         "first default).", "--plain")
    transfer: Path | None = option(None, "Your unlabeled text, more transfer set: plain text (a sentence a line), or "
                                   "CSV/TSV/JSON Lines (--text-column); any size: streamed, labelled by the teacher "
                                   "in parts, cached, resumed after an interruption.")
    transfer_cache: Path | None = option(None, "Folder of --transfer's labelled parts (default: OUT/transfer_cache); "
                                         "a rerun keeps the parts already there.")
    transfer_part_lines: int = option(PART_LINES, "Lines per labelled part of --transfer.")
    reuse_logits: Path | None = option(None, "A student run whose cached teacher logits to reuse.")
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
        from kdfast.train.embed_init import EMBED_INITS

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



def default_word_layer(teacher: Path) -> int:
    """``--word-layer``'s default for ``teacher``: its hidden layer ``DEFAULT_WORD_DEPTH`` of the way up (rounded),
    from the depth in ``merged/config.json`` (``num_hidden_layers``, GPT-2's ``n_layer``)."""
    from kdfast.runs import read_json

    merged = Path(teacher) / "merged"
    try:
        config = read_json(merged / "config.json")
        depth = int(config.get("num_hidden_layers", config.get("n_layer")))
    except (OSError, ValueError, TypeError) as e:
        raise KdfastError(f"{merged}: could not read the teacher's number of layers ({first_line(e)}); give "
                          f"--word-layer") from None
    return max(1, round(DEFAULT_WORD_DEPTH * depth))

# What this module held before the split, by its old names: the stage, the loss, the synthesis, the teacher's cache.
_MOVED = {
    "kdfast.train.student_stage": ("run", "WithProjection", "WordTargets", "Batch", "Memory", "Stream",
                                   "epoch_batches", "only_transfer_cache"),
    "kdfast.train.kd_loss": ("kd_loss", "word_loss"),
    "kdfast.train.synthetic": ("synthesize", "augment", "teacher_embeddings", "word_neighbours",
                               "teacher_word_neighbours", "teacher_tokenizer"),
    "kdfast.train.teacher_cache": ("CACHE_FILE", "cache_key", "column_stats", "read_cache", "score_with_teacher",
                                   "standardise", "teacher_fingerprint", "teacher_texts", "write_cache"),
}


def __getattr__(name: str) -> Any:
    """The old names, imported on first use (this module stays light: ``kdfast --help`` reads its configurations)."""
    import importlib

    for module, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
