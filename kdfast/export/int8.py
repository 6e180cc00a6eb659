"""Accuracy-aware int8 for ``kdfast export --onnx --int8``: several quantization recipes, each judged by how far it
moves the model's labels from fp32's on training sentences, and the fastest one that holds the rule is kept.

Why not one recipe: on the MiniLM teacher (CoLA, many sentences close to the decision boundary) ONNX Runtime's
dynamic per-channel int8, like Optimum's, flips 2-4% of dev labels, so the ≥ 99% rule refused every real teacher.
The idea is Intel Neural Compressor's accuracy-driven tuning (https://github.com/intel/neural-compressor,
``docs/source/tuning_strategies.md``): quantize, measure against an accuracy criterion, and when it is not met put
the most sensitive ops back to fp32 one at a time, in the order of a per-op ranking (its ``mse_v2`` strategy: the
MSE of the model's output with that op alone put back to fp32), stopping at the first configuration that meets it.
It is written here (the loop is short) rather than imported: INC 3's ONNX support moved to the separate
``onnx-neural-compressor`` (1.0, validated with onnxruntime 1.18), and what matters here, calibrating on
unpadded tokens, judging on held-out training sentences and timing on this machine, is ours to decide anyway.

Candidates (``RECIPES``), each optionally with its k most sensitive nodes kept fp32 (``+fp32:k``):

- ``dynamic``: ONNX Runtime's dynamic quantization (int8 weights per output channel, activations scaled per call,
  padding included), on the optimized model when there is one: what ``--int8`` did before.
- ``static-minmax`` / ``static-percentile``: QDQ, int8 weights per channel and uint8 activations whose ranges are
  calibrated once on training sentences (min/max, or the 99.999th percentile of |x|). Only weight products
  (MatMul/Gemm with an initializer) are quantized, on the plain fp32 graph: QDQ has no form for the optimizer's
  fused ``Attention``, whose projections would stay fp32. Ranges are fixed, so the labels no longer depend on how
  sentences are batched.

Calibration reads training sentences only: ``calibration`` of them set the ranges and rank the nodes, ``held_out``
others judge the rule; every sentence read goes through one hash, recorded in the manifest. Each calibration
sentence is fed alone and unpadded (:class:`UnpaddedReader`), so padding never enters a range.

"Held-out" training sentences are held out of calibration, not of the teacher's training: the teacher fitted them,
so their logit margins are wider than on unseen text and int8 flips fewer of them (MiniLM teacher, dynamic int8 of
the optimized model: 98.6% of 1,000 held-out training sentences agree, 96.4% of dev; benchmarks/bench_int8.py). The
rule's agreement is therefore judged on the held-out sentences together with one perturbed copy of each
(``perturbed``: Tang et al.'s masking, swaps and n-gram cuts, ``kdfast.train.distill.augment``, seeded), sentences the
teacher never saw, on which int8 flips more (94.0%): the two together (96.3%) track dev for dynamic quantization
(static QDQ does worse on dev than on either). MCC, which needs labels, is judged on the held-out originals.

Everything here needs onnx and onnxruntime, imported inside the functions.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdfast.batching import length_sorted_batches, pad_batch
from kdfast.data import Example
from kdfast.errors import KdfastError, require
from kdfast.metrics import mcc

RECIPES = ("dynamic", "static-minmax", "static-percentile")
# Op types each recipe quantizes. Dynamic: ONNX Runtime's defaults (its IntegerOps registry; Gemm is not in it).
DYNAMIC_OPS = ("MatMul", "Attention", "LSTM", "Gather", "EmbedLayerNormalization", "Conv")
STATIC_OPS = ("MatMul", "Gemm")
TIMING_SENTENCES = 8  # batch-1 calls per round of the speed measurement


@dataclass
class Int8Config:
    min_agreement: float = 0.99  # share of held-out sentences whose label must equal fp32's (then of dev)
    max_drop: float = 0.01  # max |MCC(int8) - MCC(fp32)| on the held-out sentences (then on dev)
    calibration: int = 300  # training sentences that set the activation ranges and rank the nodes
    held_out: int = 1000  # other training sentences the rule is judged on while tuning
    perturbed: bool = True  # judge agreement on a perturbed copy of each held-out sentence too (see above)
    max_fp32_nodes: int | None = None  # most nodes a candidate may keep in fp32; None: 3/4 of the recipe's nodes
    rank_sentences: int = 300  # calibration sentences the sensitivity ranking is measured on
    percentile: float = 99.999  # static-percentile's clipping point
    recipes: tuple[str, ...] = RECIPES
    threads: int = 1  # ONNX Runtime threads for the speed measurement
    timing_rounds: int = 5  # rounds of TIMING_SENTENCES batch-1 calls per candidate, interleaved
    batch_size: int = 64  # sentences per batch when scoring (as the parity check batches)
    seed: int = 0

    def validate(self) -> None:
        require([
            (0 < self.min_agreement <= 1, f"--int8-min-agreement must be in (0, 1], got {self.min_agreement}"),
            (self.max_drop >= 0, f"--int8-max-drop must be at least 0, got {self.max_drop}"),
            (self.calibration >= 1, f"--int8-calibration must be at least 1, got {self.calibration}"),
            (self.held_out >= 1, f"int8 held-out sentences must be at least 1, got {self.held_out}"),
            (self.max_fp32_nodes is None or self.max_fp32_nodes >= 0,
             f"max fp32 nodes must be at least 0, got {self.max_fp32_nodes}"),
            (set(self.recipes) <= set(RECIPES) and bool(self.recipes), f"recipes must be among {RECIPES}"),
        ])


@dataclass
class Candidate:
    """One quantized model and how it did on the held-out training sentences."""

    name: str  # e.g. static-minmax+fp32:2
    recipe: str  # one of RECIPES
    source: str  # the fp32 file it was quantized from
    kept_fp32: list[str] = field(default_factory=list)  # node names left unquantized
    agreement: float = float("nan")  # labels equal to fp32's: held-out sentences and their perturbed copies
    agreement_held_out: float = float("nan")  # on the held-out originals alone
    agreement_perturbed: float = float("nan")  # on their perturbed copies alone
    mcc: float = float("nan")  # its MCC on the held-out sentences' labels
    mcc_drop: float = float("nan")  # fp32's MCC minus its MCC (negative: better than fp32)
    mse: float = float("nan")  # mean squared logit difference from fp32
    passed: bool = False
    p50_b1_ms: float = float("nan")  # batch-1 p50 latency
    speedup_b1: float = float("nan")  # fp32 p50 / its p50, same run
    mb: float = float("nan")  # file size, 10^6 bytes
    error: str = ""  # the quantizer or ONNX Runtime failed on it


# --- training sentences only


@dataclass
class CalibrationSet:
    """Seeded, disjoint draws from the training split: ``calibration`` (ranges, ranking) and ``held_out`` (rule)."""

    calibration: list[Example]
    held_out: list[Example]
    perturbed: list[str] = field(default_factory=list)  # one perturbed copy of each held-out sentence (no label)

    @classmethod
    def draw(cls, train: Sequence[Example], calibration: int, held_out: int, seed: int,
             perturbed: bool = False) -> CalibrationSet:
        from kdfast.train.distill import augment

        if len(train) < 2:
            raise KdfastError(f"int8 tuning needs training sentences; the training split has {len(train)}")
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_cal = min(calibration, len(train) // 2)
        cal, rest = order[:n_cal], order[n_cal:]
        held = [train[i] for i in rest[:held_out]]
        copies = augment([e.text for e in held], 1, seed) if perturbed else []
        return cls([train[i] for i in cal], held, copies)


def sentences_sha256(sentences: Sequence[str]) -> str:
    """The hash the manifest records of the sentences tuning read, in the order it read them."""
    h = hashlib.sha256()
    for s in sentences:
        h.update(s.encode("utf-8") + b"\n")
    return h.hexdigest()


class ReadLog:
    """``encode`` that remembers every sentence it was given: the manifest's proof of what tuning read."""

    def __init__(self, encode: Callable[[list[str]], list[list[int]]]) -> None:
        self._encode = encode
        self.sentences: list[str] = []

    def __call__(self, sentences: list[str]) -> list[list[int]]:
        self.sentences.extend(sentences)
        return self._encode(sentences)

    def sha256(self) -> str:
        return sentences_sha256(self.sentences)


# --- calibration without padding


class UnpaddedReader:
    """ONNX Runtime's calibration data reader: every sentence alone, at batch 1, cut to its attention mask.

    Given padded batches, it strips each row's padding before it reaches the model, so the activation ranges are
    those of real tokens only: a padded position's hidden states (GPT-2 runs its pad token through every layer)
    would otherwise widen the ranges and coarsen every real activation's int8 step."""

    def __init__(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], input_names: Sequence[str]) -> None:
        self.rows = [(ids[i, : int(mask[i].sum())], mask[i, : int(mask[i].sum())])
                     for ids, mask in batches for i in range(ids.shape[0])]
        self.input_names = list(input_names)
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        for ids, mask in self.rows:
            tensors = {"input_ids": ids[None], "attention_mask": mask[None]}  # (1, T), no padding
            yield {n: tensors[n].numpy() for n in self.input_names}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._feeds()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


class _One:
    """A reader of one feed."""

    def __init__(self, feeds: dict[str, np.ndarray]) -> None:
        self.feeds: dict[str, np.ndarray] | None = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        feeds, self.feeds = self.feeds, None
        return feeds


@contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer warns through the root logger to run its pre-processing (symbolic shape inference),
    which cannot complete on transformers 5 graphs (the results are checked instead), and its histogram calibrators
    print their progress on stdout, where the CLI's tables go."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def calibrate(model: Path, reader: UnpaddedReader, method: str, percentile: float, workdir: Path) -> Any:
    """Activation ranges (ORT ``TensorsData``) of every MatMul/Gemm input and output, from ``reader``'s sentences.

    ``method`` is ``minmax`` or ``percentile`` (symmetric, |x| clipped at ``percentile``)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    methods = {"minmax": (CalibrationMethod.MinMax, {}),
               "percentile": (CalibrationMethod.Percentile, {"percentile": percentile})}
    calib_method, options = methods[method]
    reader.rewind()
    with _quiet():
        calibrator = create_calibrator(model, list(STATIC_OPS), augmented_model_path=str(
            workdir / f"augmented-{method}.onnx"), calibrate_method=calib_method, extra_options=options)
        if method == "minmax":
            calibrator.collect_data(reader)
        else:  # the histogram collector stacks one call's outputs, so sentences of unequal length go one by one
            while (feeds := reader.get_next()) is not None:
                calibrator.collect_data(_One(feeds))
        ranges = calibrator.compute_data()
    del calibrator
    return ranges


# --- the quantizers


def weight_nodes(model: Path, op_types: Sequence[str]) -> list[str]:
    """Names of the nodes of ``op_types`` that read a float initializer of rank ≥ 2: the weight products (and
    embedding tables, LSTM weights) that quantization turns int8, in graph order."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2}
    return [n.name for n in graph.node if n.op_type in op_types and any(i in weights for i in n.input)]


def quantize_dynamic_file(src: Path, dst: Path, exclude: Sequence[str]) -> None:
    """Dynamic quantization: int8 weights with a scale per output channel, uint8 activations scaled per batch at
    run time; ``exclude`` left fp32. Per-channel halves the label flips of per-tensor on the MiniLM teacher (40 -> 19
    of 1,043 dev sentences). ONNX's shape inference cannot type the outputs of the optimizer's fused (com.microsoft)
    nodes: those are float, say so."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=list(exclude),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def quantize_static_file(src: Path, dst: Path, cache: Path, method: str, nodes: Sequence[str],
                         exclude: Sequence[str]) -> None:
    """QDQ: int8 per-channel weights, uint8 activations with the ranges in ``cache`` (from :func:`calibrate`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet():
        quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(STATIC_OPS),
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=list(nodes), nodes_to_exclude=list(exclude),
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "percentile": CalibrationMethod.Percentile}[method],
                        calibration_cache_path=str(cache),
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


# --- scoring and timing


def session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def logits(sess: Any, ids: list[list[int]], pad_id: int, batch_size: int) -> np.ndarray:
    """Logits (N, C) of ``ids``, batched by length as the parity check batches them."""
    names = [i.name for i in sess.get_inputs()]
    out: np.ndarray | None = None
    for idx in length_sorted_batches(ids, batch_size):
        input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
        tensors = {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()}
        got = sess.run(["logits"], {n: tensors[n] for n in names})[0]  # (B, C)
        if out is None:
            out = np.zeros((len(ids), got.shape[1]), dtype=np.float32)
        out[idx] = got
    assert out is not None
    return out


def judge(c: Candidate, got: np.ndarray, want: np.ndarray, labels: np.ndarray, cfg: Int8Config) -> None:
    """Agreement (argmax equality, any number of classes) over every judged sentence, MCC and its change against
    fp32 on the first ``len(labels)`` (the labelled held-out originals), and the verdict."""
    same = got.argmax(-1) == want.argmax(-1)
    n = len(labels)
    c.agreement, c.agreement_held_out = float(same.mean()), float(same[:n].mean())
    c.agreement_perturbed = float(same[n:].mean()) if len(same) > n else float("nan")
    got, want = got[:n], want[:n]
    c.mcc = mcc(got.argmax(-1), labels)
    c.mcc_drop = mcc(want.argmax(-1), labels) - c.mcc
    c.mse = float(((got - want) ** 2).mean())
    c.passed = c.agreement >= cfg.min_agreement and abs(c.mcc_drop) <= cfg.max_drop


def p50_ms(sessions: dict[str, Any], batches: list[dict[str, np.ndarray]], rounds: int) -> dict[str, float]:
    """Median latency of each session over ``batches``, the sessions interleaved call by call so that a busy
    moment of a shared machine falls on all of them alike; one untimed warm-up pass each."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for sess in sessions.values():
        for feeds in batches:
            sess.run(["logits"], feeds)
    for _ in range(rounds):
        for feeds in batches:
            for name, sess in sessions.items():
                t = time.perf_counter()
                sess.run(["logits"], feeds)
                times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def timing_feeds(ids: list[list[int]], pad_id: int, input_names: Sequence[str], batch: int, n: int
                 ) -> list[dict[str, np.ndarray]]:
    """``n`` batches of ``batch`` consecutive sentences (cycling), padded as a client pads them."""
    out = []
    for k in range(n):
        rows = [ids[(k * batch + i) % len(ids)] for i in range(batch)]
        input_ids, mask = pad_batch(rows, pad_id)
        tensors = {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()}
        out.append({name: tensors[name] for name in input_names})
    return out


# --- the tuner


@dataclass
class TuneInputs:
    """What tuning needs of the exported model."""

    fp32: Path  # model.onnx, the plain fp32 graph (static recipes start here; the speed reference)
    base: Path  # the file dynamic starts from: model.opt.onnx when exported with --optimize, else model.onnx
    encode: Callable[[list[str]], list[list[int]]]
    pad_id: int
    input_names: list[str]


class Tuner:
    """Builds and scores candidates in ``workdir``; :meth:`run` returns them, the winner and the node rankings."""

    def __init__(self, inputs: TuneInputs, data: CalibrationSet, cfg: Int8Config, workdir: Path,
                 say: Callable[..., None]) -> None:
        self.inputs, self.cfg, self.workdir, self.say = inputs, cfg, workdir, say
        self.read = ReadLog(inputs.encode)
        self.cal_ids = self.read([e.text for e in data.calibration])
        self.held_ids = self.read([e.text for e in data.held_out]) + inputs.encode(data.perturbed)
        self.held_labels = np.array([e.label for e in data.held_out])
        fp32 = session(inputs.fp32)
        self.want_held = logits(fp32, self.held_ids, inputs.pad_id, cfg.batch_size)
        self.rank_ids = self.cal_ids[: cfg.rank_sentences]
        self.want_rank = logits(fp32, self.rank_ids, inputs.pad_id, cfg.batch_size)
        self.caches: dict[str, Path] = {}
        self.files: dict[str, Path] = {}

    # building

    def source(self, recipe: str) -> Path:
        return self.inputs.base if recipe == "dynamic" else self.inputs.fp32

    def nodes(self, recipe: str) -> list[str]:
        return weight_nodes(self.source(recipe), DYNAMIC_OPS if recipe == "dynamic" else STATIC_OPS)

    def cache(self, recipe: str) -> Path:
        """The recipe's activation ranges, calibrated once on the unpadded calibration sentences."""
        from onnxruntime.quantization.calibrate import save_tensors_data

        if recipe not in self.caches:
            method = recipe.removeprefix("static-")
            batches = [pad_batch([self.cal_ids[i] for i in idx], self.inputs.pad_id)
                       for idx in length_sorted_batches(self.cal_ids, self.cfg.batch_size)]
            ranges = calibrate(self.inputs.fp32, UnpaddedReader(batches, self.inputs.input_names), method,
                               self.cfg.percentile, self.workdir)
            path = self.workdir / f"ranges-{method}.json"
            save_tensors_data(ranges, path)
            self.caches[recipe] = path
        return self.caches[recipe]

    def build(self, recipe: str, exclude: Sequence[str], dst: Path) -> None:
        if recipe == "dynamic":
            quantize_dynamic_file(self.source(recipe), dst, exclude)
        else:
            quantize_static_file(self.source(recipe), dst, self.cache(recipe), recipe.removeprefix("static-"),
                                 self.nodes(recipe), exclude)

    def candidate(self, recipe: str, exclude: Sequence[str]) -> Candidate:
        name = recipe + (f"+fp32:{len(exclude)}" if exclude else "")
        c = Candidate(name=name, recipe=recipe, source=self.source(recipe).name, kept_fp32=list(exclude))
        dst = self.workdir / f"{name.replace(':', '-').replace('+', '_')}.onnx"
        try:
            self.build(recipe, exclude, dst)
            got = logits(session(dst), self.held_ids, self.inputs.pad_id, self.cfg.batch_size)
        except Exception as e:  # the quantizer and ONNX Runtime raise their own types; the table shows it
            c.error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return c
        judge(c, got, self.want_held, self.held_labels, self.cfg)
        c.mb = dst.stat().st_size / 1e6
        self.files[name] = dst
        return c

    # sensitivity

    def rank(self, recipe: str) -> list[tuple[str, float]]:
        """Nodes by how much the recipe's logit MSE on calibration sentences falls when that node alone stays
        fp32 (INC's ``mse_v2``), most sensitive first."""
        nodes = self.nodes(recipe)
        tmp = self.workdir / f"rank-{recipe}.onnx"
        self.build(recipe, [], tmp)
        full = float(((logits(session(tmp), self.rank_ids, self.inputs.pad_id, self.cfg.batch_size)
                       - self.want_rank) ** 2).mean())
        gains = []
        for node in nodes:
            self.build(recipe, [node], tmp)
            got = logits(session(tmp), self.rank_ids, self.inputs.pad_id, self.cfg.batch_size)
            gains.append((node, full - float(((got - self.want_rank) ** 2).mean())))
        tmp.unlink(missing_ok=True)
        return sorted(gains, key=lambda g: -g[1])

    # the loop

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        candidates: list[Candidate] = []
        ranking: dict[str, list[dict[str, Any]]] = {}
        for recipe in cfg.recipes:
            self.say(f"int8: {recipe}")
            c = self.candidate(recipe, [])
            candidates.append(c)
            if c.passed or c.error or cfg.max_fp32_nodes == 0:
                continue
            self.say(f"int8: {recipe}: {c.agreement:.2%} agreement, MCC Δ {c.mcc_drop:+.4f}; ranking "
                     f"{len(self.nodes(recipe))} nodes by sensitivity")
            ranked = self.rank(recipe)
            ranking[recipe] = [{"node": n, "mse_gain": g} for n, g in ranked]
            limit = len(ranked) * 3 // 4 if cfg.max_fp32_nodes is None else cfg.max_fp32_nodes
            for k in fallback_steps(min(limit, len(ranked))):
                c = self.candidate(recipe, [n for n, _ in ranked[:k]])
                candidates.append(c)
                self.say(f"int8: {c.name}: {c.agreement:.2%} agreement, MCC Δ {c.mcc_drop:+.4f}")
                if c.passed:
                    break
        self.time(candidates)
        passing = [c for c in candidates if c.passed]
        winner = min(passing, key=lambda c: c.p50_b1_ms) if passing else None
        return {"candidates": candidates, "winner": winner, "ranking": ranking}

    def time(self, candidates: list[Candidate]) -> None:
        """Batch-1 p50 of every candidate that ran, against fp32, interleaved in one measurement."""
        feeds = timing_feeds(self.held_ids, self.inputs.pad_id, self.inputs.input_names, 1, TIMING_SENTENCES)
        sessions = {"fp32": session(self.inputs.fp32, self.cfg.threads)}
        sessions |= {c.name: session(self.files[c.name], self.cfg.threads) for c in candidates if not c.error}
        p50 = p50_ms(sessions, feeds, self.cfg.timing_rounds)
        for c in candidates:
            if c.name in p50:
                c.p50_b1_ms, c.speedup_b1 = p50[c.name], p50["fp32"] / p50[c.name]

    def speed(self, winner: Path) -> dict[str, Any]:
        """The winner against fp32 at batch 1 and 32, measured here."""
        out: dict[str, Any] = {"threads": self.cfg.threads, "reference": self.inputs.fp32.name}
        sessions = {"fp32": session(self.inputs.fp32, self.cfg.threads), "int8": session(winner, self.cfg.threads)}
        for batch, n in ((1, TIMING_SENTENCES), (32, 2)):
            feeds = timing_feeds(self.held_ids, self.inputs.pad_id, self.inputs.input_names, batch, n)
            p50 = p50_ms(sessions, feeds, self.cfg.timing_rounds)
            out[f"batch_{batch}"] = {"fp32_p50_ms": p50["fp32"], "int8_p50_ms": p50["int8"],
                                     "speedup": p50["fp32"] / p50["int8"]}
        return out


def fallback_steps(n: int) -> list[int]:
    """How many of the ranked nodes each fallback candidate keeps fp32: 1, 2, 3, 4, 6, 8, 12, ... up to ``n``."""
    steps, k = [], 1
    while k <= n:
        steps.append(k)
        k = k + 1 if k < 4 else k + k // 2
    return steps if not steps or steps[-1] == n else [*steps, n]


class Int8RuleError(KdfastError):
    """No candidate held the rule; ``report`` holds every candidate's numbers, for the table."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def tune(inputs: TuneInputs, train: Sequence[Example], dst: Path, cfg: Int8Config,
         say: Callable[..., None] = lambda *a: None) -> dict[str, Any]:
    """Write the fastest candidate that holds the rule to ``dst``; returns the manifest's ``int8`` entry.
    Raises :class:`Int8RuleError` (with every candidate's numbers) when none does."""
    import shutil

    cfg.validate()
    data = CalibrationSet.draw(train, cfg.calibration, cfg.held_out, cfg.seed, cfg.perturbed)
    with tempfile.TemporaryDirectory(prefix="kdfast-int8-") as tmp:
        tuner = Tuner(inputs, data, cfg, Path(tmp), say)
        found = tuner.run()
        winner: Candidate | None = found["winner"]
        report: dict[str, Any] = {
            "method": "accuracy-aware: the fastest candidate that holds the rule on held-out training sentences",
            "rule": {"min_agreement": cfg.min_agreement, "max_mcc_drop": cfg.max_drop, "metric": "mcc"},
            "calibration": {"split": "train", "seed": cfg.seed, "sentences": len(data.calibration),
                            "sha256": sentences_sha256([e.text for e in data.calibration]),
                            "held_out": len(data.held_out),
                            "held_out_sha256": sentences_sha256([e.text for e in data.held_out]),
                            "perturbed": len(data.perturbed),
                            "read_sha256": tuner.read.sha256(), "read": len(tuner.read.sentences),
                            "padding": "none: each calibration sentence fed alone, cut to its mask"},
            "candidates": [{k: None if isinstance(v, float) and v != v else v for k, v in asdict(c).items()}
                           for c in found["candidates"]],  # NaN (not measured) as null: strict JSON
            "ranking": found["ranking"],
            "winner": winner.name if winner else None,
        }
        if winner is None:
            raise Int8RuleError(f"int8: no candidate holds the rule (≥ {cfg.min_agreement:.1%} agreement with fp32, "
                                f"|Δ MCC| ≤ {cfg.max_drop}) on {len(data.held_out)} held-out training sentences"
                                f"{' and their perturbed copies' if data.perturbed else ''}; see the table; nothing "
                                "was written", report)
        say(f"int8: {winner.name} wins ({winner.speedup_b1:.2f}x fp32 at batch 1); timing it at batch 1 and 32")
        shutil.copyfile(tuner.files[winner.name], dst)
        report |= {"recipe": winner.recipe, "from": winner.source, "kept_fp32": winner.kept_fp32,
                   "held_out": {"agreement": winner.agreement, "agreement_held_out": winner.agreement_held_out,
                                "agreement_perturbed": winner.agreement_perturbed, "mcc": winner.mcc,
                                "mcc_drop": winner.mcc_drop, "fp32_mcc": winner.mcc + winner.mcc_drop},
                   "speed": tuner.speed(dst)}
    return report
