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

The teacher is run once over the transfer set, before the first epoch, and its logits are cached in the run folder
(``teacher_logits.safetensors``, with its sentence representations, keyed by a hash of the teacher run and of
the exact sentences it scored); a later run with the same teacher, data, seed and ``--augment`` into the same
``--out`` (or with ``--reuse-logits RUN``) reads them back instead of loading the teacher at all.

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

import hashlib
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from kdfast.batching import pad_batch, shuffled_batches
from kdfast.data import load_dataset, subsample
from kdfast.errors import KdfastError, first_line, require
from kdfast.metrics import best_summary, improves
from kdfast.plots import plot_curves
from kdfast.runs import (
    METRICS_FILE,
    RUN_FILE,
    check_out_dir,
    read_json,
    read_run_info,
    run_labels,
    staged_dir,
    write_json,
    write_run_info,
)
from kdfast.train.distributed import Context, setup
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
from kdfast.train.teacher import encode, load_teacher, score_dev, teacher_outputs
from kdfast.train.training import (
    adamw_with_warmup,
    check_finite,
    common_checks,
    optimizer_step,
    progress_bar,
    seed_everything,
)
from kdfast.verdict import against_majority

CACHE_FILE = "teacher_logits.safetensors"
NEIGHBOURS = 10  # swap candidates per word: its nearest training words in the teacher's embedding space
EMBEDDING_NAMES = ("word_embeddings.weight", "wte.weight", "embed_tokens.weight", "shared.weight")
P_MASK, P_SWAP, P_NGRAM, MAX_NGRAM = 0.1, 0.1, 0.25, 5  # Tang et al.'s values
DEFAULT_RECIPE = (4, 1.0)  # (--augment, --feature-weight): the recipe measured best (README), the default
PLAIN_RECIPE = (0, 0.0)  # --plain: Hinton's loss alone


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
    # The default recipe is the one measured best (README: dev MCC 0.173 against 0.147 from scratch, 5 seeds):
    # a transfer set of 4 synthetic sentences per training sentence and the teacher's representation at weight 1.
    # ``plain`` is Hinton's loss alone (no transfer set, no representation term); explicit values win over both.
    augment: int | None = None  # synthetic sentences per training sentence, labelled by the teacher (default 4)
    feature_weight: float | None = None  # beta: weight of fitting the teacher's representation (default 1; 0: off)
    plain: bool = False  # --plain: augment 0 and feature weight 0 unless given
    reuse_logits: Path | None = None  # another student run whose cached teacher logits may be reused
    teacher_batch_size: int = 64

    def __post_init__(self) -> None:
        augment, feature_weight = PLAIN_RECIPE if self.plain else DEFAULT_RECIPE
        if self.augment is None:
            self.augment = augment
        if self.feature_weight is None:
            self.feature_weight = feature_weight

    def validate(self) -> None:
        super().validate()
        assert self.augment is not None and self.feature_weight is not None  # set by __post_init__
        checks = [
            (self.temperature > 0, f"--temperature must be positive, got {self.temperature}"),
            (0 <= self.alpha <= 1, f"--alpha must be in [0, 1], got {self.alpha}"),
            (self.augment >= 0, f"--augment must be at least 0, got {self.augment}"),
            (self.feature_weight >= 0, f"--feature-weight must be at least 0, got {self.feature_weight}"),
        ]
        require(checks)


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
    from transformers import AutoTokenizer

    merged = Path(teacher) / "merged"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(merged))
    except Exception as e:
        raise KdfastError(f"{merged}: could not load the teacher's tokenizer ({first_line(e)})") from None
    return word_neighbours(sentences, tokenizer, teacher_embeddings(teacher))


# --- the teacher's logits, once


def teacher_fingerprint(teacher: Path) -> str:
    """Identifies a teacher run: its run.json (with its creation time) and metrics.json."""
    h = hashlib.sha256()
    for name in (RUN_FILE, METRICS_FILE):
        h.update((Path(teacher) / name).read_bytes())
    return h.hexdigest()


def cache_key(fingerprint: str, texts: list[str]) -> str:
    h = hashlib.sha256(fingerprint.encode())
    for s in texts:
        h.update(b"\0" + s.encode())
    return h.hexdigest()


def read_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The cached ``logits`` (N, C) and, when present, ``features`` (N, d) at ``path`` when its key matches, else
    None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            names = f.keys()  # a safetensors handle is not iterable
            return {k: f.get_tensor(k).float() for k in names if k in ("logits", "features")}
    except Exception:  # an unreadable cache is only a cache: score again
        return None


def write_cache(path: Path, scores: dict[str, torch.Tensor], key: str, teacher: Path, n_real: int) -> None:
    """The teacher's logits and sentence representations, in fp32: a run that reads them back trains on exactly
    what the run that scored them did."""
    n = len(scores["logits"])
    meta = {"key": key, "teacher": str(teacher), "real": str(n_real), "synthetic": str(n - n_real)}
    save_file({k: v.float().contiguous() for k, v in scores.items()}, str(path), metadata=meta)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Each column to mean 0 and standard deviation 1 (a constant column to 0), so that every dimension of the
    teacher's representation weighs the same in the mean-squared error."""
    return (x - x.mean(0)) / x.std(0, unbiased=len(x) > 1).clamp(min=1e-6)


def teacher_texts(sentences: list[str], tokenizer: Any) -> list[str]:
    """What the teacher reads: the augmentation's ``[MASK]`` as the teacher's mask (or unknown) token."""
    mask = getattr(tokenizer, "mask_token", None) or getattr(tokenizer, "unk_token", None) or ""
    return sentences if mask == MASK else [s.replace(MASK, mask) for s in sentences]


def score_with_teacher(cfg: DistillConfig, sentences: list[str], ctx: Context, bar: Any
                       ) -> tuple[dict[str, torch.Tensor], str, bool]:
    """The teacher's ``logits`` (N, C) and ``features`` (N, d) for ``sentences``, from a cache when one matches
    (one without features does when ``--feature-weight`` is 0): (scores, key, from_cache). Under torchrun each rank
    scores its contiguous shard and every rank gets all N rows: N devices take 1/N of the time."""
    from transformers import AutoTokenizer

    merged = Path(cfg.teacher) / "merged"
    try:  # the tokenizer alone decides the texts, hence the key: no need to load the model on a cache hit
        tokenizer = AutoTokenizer.from_pretrained(str(merged))
    except Exception as e:
        raise KdfastError(f"{merged}: could not load the teacher's tokenizer ({e})") from None
    texts = teacher_texts(sentences, tokenizer)
    key = cache_key(teacher_fingerprint(cfg.teacher), texts)
    for candidate in (cfg.reuse_logits, cfg.out):
        cached = read_cache(Path(candidate) / CACHE_FILE, key) if candidate is not None else None
        if cached is not None and ("features" in cached or cfg.feature_weight == 0):
            bar.console.print(f"teacher logits: reusing {Path(candidate) / CACHE_FILE}")
            return cached, key, True
    model, tokenizer = load_teacher(cfg.teacher)
    model.to(ctx.device)
    max_length = read_json(Path(cfg.teacher) / METRICS_FILE)["config"].get("max_length", 64)
    shard = ctx.shard(len(texts)) if len(texts) >= ctx.world else range(len(texts))  # no rank left empty-handed
    mine = texts[shard.start : shard.stop]
    parts: list[dict[str, torch.Tensor]] = []
    task = bar.add_task("teacher logits (once)", total=len(mine), loss=0.0, rate=0.0)
    start, chunk = time.perf_counter(), 2048
    for i in range(0, len(mine), chunk):
        ids = encode(tokenizer, mine[i : i + chunk], max_length)
        parts.append(teacher_outputs(model, ids, tokenizer.pad_token_id, ctx.device, cfg.teacher_batch_size))
        done = min(i + chunk, len(mine))
        bar.update(task, completed=done, rate=done / (time.perf_counter() - start))
    del model
    scores = {k: torch.cat([p[k] for p in parts]) for k in ("logits", "features")}
    if len(mine) < len(texts):  # every rank's shard, in order, on every rank
        scores = {k: ctx.gather_rows(v, len(texts)) for k, v in scores.items()}
    return scores, key, False


class WithProjection(nn.Module):
    """The student and the linear map of its sentence vector onto the teacher's (``--feature-weight``), as one
    module, so that one DistributedDataParallel synchronises both: (logits (B, C), projected features (B, d))."""

    def __init__(self, student: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.student, self.projection = student, projection

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.student(input_ids, mask, return_features=True)
        return logits, self.projection(features)


# --- the stage


def run(cfg: ScratchConfig) -> dict[str, Any]:
    """Train the student (distilled when ``cfg`` is a ``DistillConfig``) and write its run folder; returns the
    contents of ``metrics.json``."""
    # --- setup
    distill = isinstance(cfg, DistillConfig)
    cfg.validate()
    cfg.out = Path(cfg.out)
    check_out_dir(cfg.out, cfg.overwrite)
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
    synthetic: list[str] = []
    cache: dict[str, Any] = {}

    with progress_bar(cfg.progress, ctx.master) as bar:
        if isinstance(cfg, DistillConfig):
            neighbours = teacher_word_neighbours(cfg.teacher, sentences) if cfg.augment else None
            synthetic = augment(sentences, cfg.augment or 0, cfg.seed, neighbours)
            scores, key, hit = score_with_teacher(cfg, sentences + synthetic, ctx, bar)
            soft = scores["logits"]
            if beta > 0:
                target = standardise(scores["features"])
                projection = nn.Linear(model.head.in_features, target.shape[1]).to(device)
            cache = {"key": key, "reused": hit}
            sentences, labels = sentences + synthetic, labels + [-1] * len(synthetic)
        ids = [vocab.encode(s, cfg.max_length) for s in sentences]
        label_t = torch.tensor(labels)
        steps_per_epoch = -(-len(ids) // cfg.batch_size)
        params = [*model.parameters(), *(projection.parameters() if projection is not None else [])]
        optimizer, scheduler = adamw_with_warmup(
            params, cfg.lr, steps_per_epoch * cfg.epochs, cfg.warmup_ratio, cfg.weight_decay
        )
        # DDP over the whole student (and the projection): every parameter trains
        ddp = ctx.wrap(WithProjection(runner, projection) if projection is not None else runner)
        scaler = ctx.scaler()

        # --- train
        history: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        best_state: dict[str, torch.Tensor] = {}
        train_start = time.perf_counter()
        for epoch in range(1, cfg.epochs + 1):
            runner.train()
            task = bar.add_task(f"{'distill' if distill else 'scratch'} epoch {epoch}/{cfg.epochs}", total=len(ids),
                                loss=0.0, rate=0.0)
            loss_sum, correct, real, seen, start = 0.0, 0, 0, 0, time.perf_counter()
            for step, batch in enumerate(shuffled_batches(len(ids), cfg.batch_size, generator)):
                # every rank knows the whole global batch, hence the counts its slices' losses divide by
                rows, labelled_rows = len(batch), int((label_t[batch] >= 0).sum())
                parts = ctx.micro_batches(batch, cfg.grad_accum)
                for k, part in enumerate(parts):
                    idx = part or batch[:1]  # an empty slice still runs (every rank joins DDP's sync), at weight 0
                    input_ids, mask = pad_batch([ids[i] for i in idx], vocab.pad_id)
                    if cfg.compile:
                        input_ids, mask = pad_for_compile(input_ids, mask, vocab.pad_id)
                    y = label_t[idx].to(device)
                    teacher = soft[idx].to(device) if soft is not None else None
                    with ctx.sync(ddp, last=k == len(parts) - 1), ctx.autocast():
                        # this slice's share of the global batch's mean loss
                        if target is not None:
                            logits, projected = ddp(input_ids.to(device), mask.to(device))
                            fit = F.mse_loss(projected.float(), target[idx].to(device), reduction="sum")
                            loss = kd_loss(logits, teacher, y, temperature, alpha, rows, labelled_rows) + beta * fit / (
                                rows * target.shape[1])
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
                bar.update(task, advance=len(batch), loss=loss_sum / max(seen, 1), rate=rate)
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
                              "mcc_kept": best["dev_mcc"] / teacher_mcc if teacher_mcc else None}
    metrics["verdict"] = against_majority(best, data.dev_targets()[0], data.labels, "the student",
                                          steps_per_epoch * cfg.epochs, cfg.lr)
    metrics["processes"] = ctx.world
    if not ctx.master:  # rank 0 alone writes the run folder
        return metrics
    mode = "distill" if distill else "scratch"
    with staged_dir(cfg.out, cfg.overwrite) as tmp:
        save_student(model.cpu(), vocab, cfg.max_length, tmp)
        if scores:
            write_cache(tmp / CACHE_FILE, scores, cache["key"], Path(config["teacher"]), len(train))
        write_json(tmp / METRICS_FILE, metrics)
        s = model.cfg
        arch = f"{'Bi' if s.bidirectional else ''}{s.cell.upper()} {s.layers}x{s.hidden}"
        how = (f"distilled (T={temperature:g}, alpha={alpha:g}{f', beta={beta:g}' if beta else ''}, "
               f"+{len(synthetic):,} synthetic)") if distill else "scratch"
        title = f"{arch} student, {how}, on {data.source}"
        plot_curves(history, tmp / "curves.png", title)
        write_run_info(tmp, "student", mode=mode, labels=data.labels)
    return metrics
