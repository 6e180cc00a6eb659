"""The student's training stage, shaped setup → train → save (``run``): distilled from a teacher run
(``DistillConfig``) or from the labels alone (``ScratchConfig``); ``kdfast.train.distill`` describes the method."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdfast.batching import pad_batch, shuffled_batches
from kdfast.data import load_dataset, subsample
from kdfast.errors import KdfastError
from kdfast.metrics import best_summary, improves
from kdfast.options import CONFIG_FILE, plain, write_config
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
from kdfast.train.distill import DistillConfig, ScratchConfig
from kdfast.train.distributed import setup
from kdfast.train.embed_init import init_from_teacher_embeddings, init_from_word_states
from kdfast.train.kd_loss import kd_loss, word_loss
from kdfast.train.loggers import epoch_metrics, metric_logger
from kdfast.train.student import (
    DistilRNN,
    WordVocab,
    check_size,
    compile_student,
    pad_for_compile,
    parameter_counts,
    predict_logits,
    save_student,
)
from kdfast.train.synthetic import augment, teacher_embeddings, teacher_tokenizer, teacher_word_neighbours
from kdfast.train.teacher import score_dev
from kdfast.train.teacher_cache import CACHE_FILE, column_stats, score_with_teacher, standardise, write_cache
from kdfast.train.training import (
    adamw_with_warmup,
    check_finite,
    optimizer_step,
    progress_bar,
    seed_everything,
)
from kdfast.train.transfer import CACHE_DIR as TRANSFER_CACHE_DIR
from kdfast.train.transfer import TransferSet, label_transfer, proportional, read_part
from kdfast.verdict import against_majority

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


def only_transfer_cache(out: Path) -> bool:
    """``out`` is a folder with nothing but a transfer cache in it (a run interrupted after labelling began)."""
    return out.is_dir() and {p.name for p in out.iterdir()} <= {TRANSFER_CACHE_DIR}


# --- what the student learns from: the labels alone, or a teacher too


class FromLabels:
    """``kdfast train rnn``: the student learns from the gold labels alone. The loop is the one distillation runs,
    with its KL, feature and word terms weighted 0; ``FromTeacher`` adds what a teacher teaches."""

    mode = "scratch"
    alpha, temperature, beta, gamma = 0.0, 1.0, 0.0, 0.0

    def __init__(self, cfg: ScratchConfig) -> None:
        self.cfg = cfg
        self.synthetic: list[str] = []  # sentences the teacher labelled, added to the training set
        self.scores: dict[str, torch.Tensor] = {}  # the teacher's pass over the training set (teacher_cache)
        self.cache: dict[str, Any] = {}  # where those scores came from, for metrics.json

    def replace_out(self) -> bool:
        """May the run folder be replaced: --overwrite."""
        return self.cfg.overwrite

    def check(self) -> None:
        """What must hold before anything is loaded or trained."""

    def label_order(self) -> list[str] | None:
        """The label names the student's ids must follow (None: the data's own)."""
        return None

    def prepare(self, model: DistilRNN, vocab: WordVocab, sentences: list[str], ctx: Any, bar: Any) -> None:
        """The teacher's part of the setup: synthetic sentences, its scores, the student's embeddings."""

    def stream(self, vocab: WordVocab, feature_stats: tuple[Any, Any], ctx: Any, bar: Any) -> Stream | None:
        """The ``--transfer`` file's batches, or None."""
        return None

    def describe(self) -> str:
        return "scratch"

    def report(self, best: dict[str, Any]) -> dict[str, Any]:
        """What metrics.json says of the teacher."""
        return {}

    def save(self, tmp: Path, train_size: int) -> None:
        """The teacher's share of the run folder."""


class FromTeacher(FromLabels):
    """``kdfast distill``: the student learns from a teacher run too: its soft labels (Hinton's KL term, weight
    ``alpha`` at temperature ``T``), its sentence representations (``beta``), its word vectors (``gamma``), its labels
    of synthetic sentences and of the ``--transfer`` file (``kdfast.train.distill`` describes the method)."""

    mode = "distill"

    def __init__(self, cfg: DistillConfig) -> None:
        super().__init__(cfg)
        self.cfg: DistillConfig = cfg
        self.alpha, self.temperature = cfg.alpha, cfg.temperature
        self.beta, self.gamma = cfg.feature_weight or 0.0, cfg.word_weight or 0.0
        cfg.teacher = Path(cfg.teacher)
        # an --out holding only the transfer cache of an interrupted run is resumed, not refused
        self.own_cache = cfg.transfer is not None and cfg.transfer_cache is None

    def replace_out(self) -> bool:
        return self.cfg.overwrite or (self.own_cache and only_transfer_cache(self.cfg.out))

    def check(self) -> None:
        try:
            read_run_info(self.cfg.teacher, "teacher")
        except KdfastError as e:
            raise KdfastError(f"--teacher {e}") from None

    def label_order(self) -> list[str] | None:
        # a distilled student's ids are its teacher's: the teacher's logits are columns in the teacher's label order
        return run_labels(self.cfg.teacher)

    def prepare(self, model: DistilRNN, vocab: WordVocab, sentences: list[str], ctx: Any, bar: Any) -> None:
        cfg = self.cfg
        neighbours = teacher_word_neighbours(cfg.teacher, sentences) if cfg.augment else None
        self.synthetic = augment(sentences, cfg.augment or 0, cfg.seed, neighbours)
        self.scores, key, hit = score_with_teacher(cfg.teacher, sentences + self.synthetic, ctx, bar,
                                                   [cfg.reuse_logits, cfg.out], self.beta > 0, cfg.word_layer_used,
                                                   cfg.teacher_batch_size)
        self.cache = {"key": key, "reused": hit}
        if cfg.embed_init == "teacher":
            init_from_teacher_embeddings(model.embed, vocab, teacher_tokenizer(cfg.teacher),
                                         teacher_embeddings(cfg.teacher))
        elif cfg.embed_init == "context":
            init_from_word_states(model.embed, vocab, sentences + self.synthetic, self.scores)

    def stream(self, vocab: WordVocab, feature_stats: tuple[Any, Any], ctx: Any, bar: Any) -> Stream | None:
        cfg = self.cfg
        if cfg.transfer is None:
            return None
        folder = cfg.transfer_cache or cfg.out / TRANSFER_CACHE_DIR
        transfer = label_transfer(cfg.teacher, cfg.transfer, cfg.text_column, folder, ctx, bar,
                                  cfg.teacher_batch_size, cfg.transfer_part_lines)
        self.cache["transfer"] = {"file": str(cfg.transfer), "cache": str(folder), "lines": len(transfer),
                                  "labelled_now": transfer.labelled}
        return Stream(transfer, vocab, cfg.max_length, *feature_stats)

    def describe(self) -> str:
        return (f"distilled (T={self.temperature:g}, alpha={self.alpha:g}"
                f"{f', beta={self.beta:g}' if self.beta else ''}{f', gamma={self.gamma:g}' if self.gamma else ''}, "
                f"+{len(self.synthetic):,} synthetic)")

    def report(self, best: dict[str, Any]) -> dict[str, Any]:
        teacher_best = read_json(self.cfg.teacher / METRICS_FILE).get("best", {})
        teacher_mcc = teacher_best.get("dev_mcc")
        return {"teacher": {"run": str(self.cfg.teacher), "best": teacher_best, "logits_cache": self.cache,
                            "mcc_kept": best["dev_mcc"] / teacher_mcc if teacher_mcc else None,
                            "word_layer": self.cfg.word_layer_used}}

    def save(self, tmp: Path, train_size: int) -> None:
        if self.own_cache and (self.cfg.out / TRANSFER_CACHE_DIR).is_dir():  # the cache moves into the new run
            os.replace(self.cfg.out / TRANSFER_CACHE_DIR, tmp / TRANSFER_CACHE_DIR)
        write_cache(tmp / CACHE_FILE, self.scores, self.cache["key"], self.cfg.teacher, train_size,
                    self.cfg.word_layer_used)


# --- the stage


def run(cfg: ScratchConfig) -> dict[str, Any]:
    """Train the student, distilled when ``cfg`` is a ``DistillConfig`` (``kdfast distill``), else from the labels
    alone (``kdfast train rnn``), and write its run folder; returns the contents of ``metrics.json``."""
    return train_student(cfg, FromTeacher(cfg) if isinstance(cfg, DistillConfig) else FromLabels(cfg))


def train_student(cfg: ScratchConfig, source: FromLabels) -> dict[str, Any]:
    """The student's training, whatever it learns from (``source``): setup → train → save."""
    # --- setup
    cfg.validate()
    cfg.out = Path(cfg.out)
    check_out_dir(cfg.out, source.replace_out())
    source.check()
    ctx = setup(cfg.device, cfg.precision, cfg.batch_size, cfg.grad_accum)
    device = ctx.device
    generator = seed_everything(cfg.seed)  # the same on every rank: the same init and the same order
    data = load_dataset(cfg.data, cfg.dev_data, cfg.text_column, cfg.label_column, source.label_order())
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
    alpha, temperature, beta, gamma = source.alpha, source.temperature, source.beta, source.gamma
    target: torch.Tensor | None = None  # the teacher's standardised sentence representations, for --feature-weight
    projection: nn.Module | None = None  # student features -> teacher features; for training only, not saved
    words: WordTargets | None = None  # the teacher's word vectors, for --word-weight
    word_projection: nn.Module | None = None  # student states -> teacher word vectors; for training only

    step_no = 0  # optimizer steps so far: the x-axis of --report-to
    with progress_bar(cfg.progress, ctx.master) as bar, metric_logger(cfg.report_to, cfg.out, plain(cfg),
                                                                        ctx.master) as log:
        source.prepare(model, vocab, sentences, ctx, bar)
        scores, synthetic = source.scores, source.synthetic
        soft = scores.get("logits")
        if beta > 0:
            target = standardise(scores["features"])
            projection = nn.Linear(model.head.in_features, target.shape[1]).to(device)
        sentences, labels = sentences + synthetic, labels + [-1] * len(synthetic)
        ids = [vocab.encode(s, cfg.max_length) for s in sentences]
        if gamma > 0:
            words = WordTargets(scores, [len(i) for i in ids])
            word_projection = nn.Linear(model.head.in_features, words.dim).to(device)
        feature_stats = (None, None)
        if target is not None:  # standardise's statistics, for the transfer file's features
            raw = scores["features"]
            feature_stats = (raw.mean(0), raw.std(0, unbiased=len(raw) > 1).clamp(min=1e-6))
        memory = Memory(ids, torch.tensor(labels), soft, target)
        stream = source.stream(vocab, feature_stats, ctx, bar)
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
            task = bar.add_task(f"{source.mode} epoch {epoch}/{cfg.epochs}",
                                total=len(ids) + (len(stream.transfer) if stream else 0), loss=0.0, rate=0.0)
            loss_sum, correct, real, seen, start = 0.0, 0, 0, 0, time.perf_counter()
            batches = epoch_batches(memory, stream, cfg.batch_size, generator)
            for step, batch in enumerate(batches):
                # every rank knows the whole global batch, hence the counts its slices' losses divide by
                rows, labelled_rows = len(batch), int((batch.labels >= 0).sum())
                word_rows = int(words.hits[batch.rows].sum()) if words is not None and batch.rows is not None else 0
                parts = ctx.micro_batches(list(range(rows)), cfg.grad_accum)
                step_loss = 0.0  # this rank's share of the global batch's mean loss
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
                        step_loss += loss.item()
                        loss_sum += loss.item() * rows
                        labelled = y >= 0
                        correct += int((logits.argmax(-1) == y)[labelled].sum())
                        real += int(labelled.sum())
                        seen += len(part)
                lr = optimizer.param_groups[0]["lr"]
                optimizer_step(optimizer, scheduler, scaler, params, cfg.max_grad_norm)
                step_no += 1  # the shares of the N ranks add up to the batch's loss: rank 0's, times N, estimates it
                log.log_dict({"train/loss": step_loss * ctx.world, "train/lr": lr}, step_no)
                rate = seen * ctx.world / (time.perf_counter() - start)
                bar.update(task, advance=rows, loss=loss_sum / max(seen, 1), rate=rate)
            loss_sum, correct, real, seen = ctx.all_sum(loss_sum, correct, real, seen)  # over every rank's slices
            seconds = time.perf_counter() - start
            shard = ctx.shard(len(dev_ids))  # each rank scores its shard of dev; all get every row
            local = predict_logits(runner, dev_ids[shard.start : shard.stop], vocab.pad_id, device, bucket=cfg.compile)
            report = score_dev(ctx.gather_rows(torch.from_numpy(local), len(dev_ids)).numpy(), data)
            history.append({"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / max(real, 1),
                            "train_sentences_per_s": seen / seconds, **report})
            log.log_dict(epoch_metrics(history[-1]), step_no)
            bar.console.print(
                f"epoch {epoch}: train loss {loss_sum / seen:.4f}, dev acc {report['dev_acc']:.4f}, "
                f"dev MCC {report['dev_mcc']:.4f}, dev F1 {report['dev_f1']:.4f}"
            )
            if improves(report, best, cfg.select_by):
                best = best_summary(epoch, report)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        train_seconds = time.perf_counter() - train_start
        assert best is not None
        log.set_final({f"best/{k.removeprefix('dev_')}": v for k, v in best.items()})
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
    metrics.update(source.report(best))
    metrics["verdict"] = against_majority(best, data.dev_targets()[0], data.labels, "the student",
                                          steps_per_epoch * cfg.epochs, cfg.lr)
    metrics["processes"] = ctx.world
    if not ctx.master:  # rank 0 alone writes the run folder
        return metrics
    with staged_dir(cfg.out, source.replace_out()) as tmp:
        source.save(tmp, len(train))
        save_student(model.cpu(), vocab, cfg.max_length, tmp)
        write_json(tmp / METRICS_FILE, metrics)
        write_config(tmp / CONFIG_FILE, cfg)  # what --config reads back: the run again
        s = model.cfg
        arch = f"{'Bi' if s.bidirectional else ''}{s.cell.upper()} {s.layers}x{s.hidden}"
        plot_curves(history, tmp / "curves.png", f"{arch} student, {source.describe()}, on {data.source}")
        write_run_info(tmp, "student", mode=source.mode, labels=data.labels)
    return metrics
