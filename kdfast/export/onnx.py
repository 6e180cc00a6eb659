"""``kdfast export --onnx``: a teacher or student run to ONNX, proven equal to PyTorch on CoLA dev.

One stage, shaped setup → export → variants → check → save (``run``). It writes ``RUN_DIR/onnx`` (or ``--out``)::

    model.onnx          fp32, inputs input_ids [batch, seq] int64 (+ attention_mask for the teacher), logits [batch, C]
    model.opt.onnx      --optimize: ONNX Runtime's transformer optimizer (fused attention, LayerNorm, Gelu, ...)
    model.int8.onnx     --int8: the fastest int8 candidate that keeps fp32's labels and is at least
                        --int8-min-speedup x fp32 at batch 1 and 32 at --threads (``kdfast.export.int8``), for the CPU
    model.fp16.onnx     --fp16: for CUDA; LayerNorm and the inputs/outputs stay fp32
    tokenizer/ or vocab.json   what turns a sentence into input_ids
    manifest.json       source run, label names (``labels[id]``), exporter, opset, inputs/outputs and their
                        dynamic axes, versions, sha256 of every file, parity results, each CPU variant's batch-1
                        latency at --threads (``latency``, what ``--runtime auto`` reads)

The exporter is TorchScript's (``torch.onnx.export(dynamo=False)``), deprecated since torch 2.9 but right for all our
models in torch 2.13: the dynamo exporter's opset-17 graph of GPT-2 fails ONNX Runtime's checker (a ``Split`` with
opset-18 attributes), ONNX Runtime's GPT-2 optimizer crashes on its graph even at opset 18, and it has been reported
to give silently wrong GRU/LSTM results (issue 5). The manifest records which exporter wrote the file.

GPT-2 traps, handled here: transformers 5's GPT-2 takes ``past_key_values`` as its second positional argument, so
the model is exported through a wrapper that passes keywords (and ``use_cache=False``); GPT-2 pads with
``<|endoftext|>`` and pools the last token that is not that pad id, so a client must pad with exactly the
``pad_id`` the manifest gives, on the right; the traced example has padding, so the mask path is the one exported.

Attention is exported in its eager form (``set_attn_implementation("eager")``; SDPA's traced graph fuses nothing):
ONNX Runtime's BERT optimizer then fuses it into ``Attention`` itself, and for GPT-2, whose optimizer matches only
older transformers' graphs, ``kdfast.export.attention`` fuses it into ``MultiHeadAttention``. Both are checked by
the same parity rule as every other fp32 variant.

The export is built in a staged folder and renamed into place only when every check passed: a failed export leaves
nothing behind, and a re-export replaces an earlier one atomically.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from kdfast import __version__
from kdfast.batching import pad_batch
from kdfast.configs import ExportConfig
from kdfast.data import Example, dataset_from_config, subsample
from kdfast.data.dataset import Targets, targets
from kdfast.errors import KdfastError
from kdfast.export.int8 import Int8RuleError, TuneInputs, tune
from kdfast.export.parity import VariantResult, check_variant, reference_row, torch_logits
from kdfast.runs import METRICS_FILE, read_json, read_run_info, run_labels, staged_dir, write_json
from kdfast.train.lora import unwrap_merged
from kdfast.train.teacher import encode, load_teacher

MANIFEST = "manifest.json"
MODEL_FILES = {"fp32": "model.onnx", "optimized": "model.opt.onnx", "int8": "model.int8.onnx",
               "fp16": "model.fp16.onnx"}
# Sentences the model is traced with: two lengths, so the batch has padding and the masked path is what's exported.
EXAMPLE_SENTENCES = ["The book that John wrote was read by everyone.", "Books."]
# Hugging Face model types -> ONNX Runtime transformer optimizer's model_type.
OPTIMIZER_TYPES = {"gpt2": "gpt2", "bert": "bert", "roberta": "bert", "distilbert": "bert", "xlm-roberta": "bert",
                   "electra": "bert"}
FUSED_OPS = ("Attention", "MultiHeadAttention", "Gelu", "FastGelu", "BiasGelu", "LayerNormalization",
             "SkipLayerNormalization", "EmbedLayerNormalization")
# Kept fp32 in the fp16 model: LayerNorm's mean/variance over 384-768 values loses too much in fp16.
FP16_KEEP_FP32 = ["LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                  "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization"]


class ParityError(KdfastError):
    """An exported model disagrees with PyTorch; ``manifest`` holds the results, for the table."""

    def __init__(self, message: str, manifest: dict[str, Any]) -> None:
        super().__init__(message)
        self.manifest = manifest


@dataclass
class ExportSource:
    """What export needs of a run: a module from int64 token ids to logits (B, C), and how to make the ids."""

    kind: str  # teacher | student
    module: nn.Module  # forward(*inputs, in the order of input_names) -> logits (B, C)
    input_names: list[str]
    encode: Callable[[list[str]], list[list[int]]]
    pad_id: int
    save_preprocessing: Callable[[Path], None]  # writes what a client needs to make input_ids
    optimizer_type: str | None = None  # ONNX Runtime's transformer optimizer model_type; None: nothing to fuse
    num_heads: int = 0
    hidden_size: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # for the manifest

    def example(self) -> tuple[torch.Tensor, ...]:
        ids, mask = pad_batch(self.encode(EXAMPLE_SENTENCES), self.pad_id)  # (2, T), padded on the right
        inputs = {"input_ids": ids, "attention_mask": mask}
        return tuple(inputs[n] for n in self.input_names)


# --- what can be exported


class ClassifierLogits(nn.Module):
    """A Hugging Face sequence classifier called with keywords only: logits (B, C) from (input_ids, attention_mask).

    transformers 5's GPT-2 takes ``past_key_values`` second, so a positional mask would land there; no cache either.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.kwargs = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: (B, T) int64 -> logits (B, C)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **self.kwargs).logits


def load_teacher_for_export(run_dir: Path) -> ExportSource:
    """The teacher's merged model (merging the LoRA adapter first when the run has no ``merged/``)."""
    merged = (run_dir / "merged").is_dir()
    model, tokenizer = load_teacher(run_dir, merged=merged)
    if not merged:
        unwrap_merged(model)
    if hasattr(model, "set_attn_implementation"):  # the plain attention graph, which the optimizer can fuse
        model.set_attn_implementation("eager")
    try:
        max_length = int(read_json(run_dir / METRICS_FILE)["config"]["max_length"])
    except (KeyError, TypeError, ValueError):
        raise KdfastError(f"{run_dir / METRICS_FILE}: no config.max_length") from None
    config = model.config
    return ExportSource(
        kind="teacher",
        module=ClassifierLogits(model).eval(),
        input_names=["input_ids", "attention_mask"],
        encode=lambda sentences: encode(tokenizer, sentences, max_length),
        pad_id=int(tokenizer.pad_token_id),
        save_preprocessing=lambda folder: tokenizer.save_pretrained(folder / "tokenizer"),
        optimizer_type=OPTIMIZER_TYPES.get(config.model_type),
        num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
        hidden_size=int(getattr(config, "hidden_size", 0) or 0),
        meta={"architecture": type(model).__name__, "model_type": config.model_type,
              "parameters": sum(p.numel() for p in model.parameters()), "merged_from_adapter": not merged,
              "preprocessing": {"tokenizer": "tokenizer/", "max_length": max_length, "pad_id": int(
                  tokenizer.pad_token_id), "padding_side": "right", "truncation": True}},
    )


class StudentLogits(nn.Module):
    """The student with input_ids alone: its mask is ``input_ids != pad_id`` (a word is never the pad id)."""

    def __init__(self, model: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.model, self.pad_id = model, pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: (B, T) int64, right-padded with pad_id -> logits (B, C)
        return self.model(input_ids, (input_ids != self.pad_id).long())


def load_student_for_export(run_dir: Path) -> tuple[nn.Module, Callable[[list[str]], list[list[int]]], int]:
    """(module taking input_ids (B, T) int64 -> logits (B, C), encode(sentences) -> ids, pad id) of a student run.

    The one place that knows ``kdfast.train.student`` (branch ``student``): ``load_student(run_dir) -> (DistilRNN on the
    CPU in eval mode, WordVocab, max_length)``, ``DistilRNN(input_ids, attention_mask) -> logits``,
    ``WordVocab.encode(sentence, max_length) -> ids`` and ``WordVocab.pad_id``.
    """
    try:
        from kdfast.train.student import load_student
    except ImportError:
        raise KdfastError(f"{run_dir}: a student run, but this kdfast has no kdfast.train.student to load it") from None
    model, vocab, max_length = load_student(run_dir)
    pad_id = int(vocab.pad_id)
    return (StudentLogits(model, pad_id).eval(), lambda sentences: [vocab.encode(s, max_length) for s in sentences],
            pad_id)


def student_source(run_dir: Path) -> ExportSource:
    module, encode_fn, pad_id = load_student_for_export(run_dir)

    def save_vocab(folder: Path) -> None:
        for name in ("vocab.json", "student_config.json"):
            if (run_dir / name).exists():
                shutil.copyfile(run_dir / name, folder / name)

    inner = getattr(module, "model", module)
    return ExportSource(kind="student", module=module, input_names=["input_ids"], encode=encode_fn, pad_id=pad_id,
                        save_preprocessing=save_vocab,
                        meta={"architecture": type(inner).__name__,
                              "parameters": sum(p.numel() for p in module.parameters()),
                              "preprocessing": {"vocab": "vocab.json", "config": "student_config.json (max_length)",
                                                "pad_id": pad_id, "padding_side": "right"}})


# --- ONNX files


def check_onnx_packages() -> dict[str, str]:
    """Versions of the ONNX packages; a KdfastError when one is missing or both onnxruntime builds are installed.

    ``onnxruntime`` and ``onnxruntime-gpu`` install the same ``onnxruntime`` module into the same folder: together,
    whichever was installed last wins file by file, and the result may not load or may lack the CUDA provider.
    """
    versions = {}
    for dist in ("onnx", "onnxruntime", "onnxruntime-gpu"):
        if (version := _version(dist)) is not None:
            versions[dist] = version
    if "onnxruntime" in versions and "onnxruntime-gpu" in versions:
        raise KdfastError(
            f"both onnxruntime {versions['onnxruntime']} and onnxruntime-gpu {versions['onnxruntime-gpu']} are "
            "installed; they overwrite each other's files. Keep one: pip uninstall -y onnxruntime onnxruntime-gpu, "
            "then pip install 'kdfast[onnx]' (CPU) or 'kdfast[gpu]' (CUDA)")
    if "onnx" not in versions or not {"onnxruntime", "onnxruntime-gpu"} & versions.keys():
        raise KdfastError("export needs onnx and onnxruntime: pip install 'kdfast[onnx]'")
    return versions


def export_onnx(source: ExportSource, path: Path, opset: int) -> None:
    """Trace ``source.module`` with TorchScript's exporter; batch and seq dynamic on every input, batch on logits."""
    axes = {name: {0: "batch", 1: "seq"} for name in source.input_names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():
        # The exporter's own deprecation notice (see the module docstring), the tracer's notes on Python booleans
        # read from tensors (transformers keeps the mask when it sees a trace, and the example has padding), and
        # aten::index's warning about negative indices (GPT-2's pooled index is an argmax, never negative), and the
        # RNNs' warning that a batch size other than 1 may freeze into the initial state (the shape checks run
        # batches of 1, 3 and 8 and would catch it).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*(LSTM|GRU)")
        torch.onnx.export(source.module, source.example(), str(path), dynamo=False, opset_version=opset,
                          input_names=source.input_names, output_names=["logits"], dynamic_axes=axes,
                          do_constant_folding=True)


def check_graph(path: Path, input_names: list[str], num_labels: int) -> dict[str, list[dict[str, Any]]]:
    """The ONNX graph is valid and has the interface we promise: inputs (batch, seq) int64, logits (batch, C)."""
    import onnx

    from kdfast.export.triton_repo import graph_io

    onnx.checker.check_model(str(path))
    io = graph_io(path)
    problems = []
    if [i["name"] for i in io["inputs"]] != input_names:
        problems.append(f"inputs {[i['name'] for i in io['inputs']]}, expected {input_names}")
    for i in io["inputs"]:
        if i["dtype"] != "int64" or len(i["shape"]) != 2 or not all(isinstance(d, str) for d in i["shape"]):
            problems.append(f"input {i['name']} is {i['dtype']} {i['shape']}, expected int64 [batch, seq]")
    outs = io["outputs"]
    if len(outs) != 1 or outs[0]["name"] != "logits" or outs[0]["dtype"] != "float" or \
            len(outs[0]["shape"]) != 2 or not isinstance(outs[0]["shape"][0], str) or outs[0]["shape"][1] != num_labels:
        problems.append(f"outputs {[(o['name'], o['dtype'], o['shape']) for o in outs]}, expected logits "
                        f"float [batch, {num_labels}]")
    if problems:
        raise KdfastError(f"exported graph {path.name}: " + "; ".join(problems) + " (a frozen axis?)")
    return {k: [{n: v for n, v in t.items() if n != "elem_type"} for t in ts] for k, ts in io.items()}


def optimize(src: Path, dst: Path, source: ExportSource) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer, then, where it fused no attention (GPT-2 on transformers 5),
    ``kdfast.export.attention``'s MultiHeadAttention fusion; returns how many of each fused node there are."""
    from onnxruntime.transformers import optimizer

    from kdfast.export.attention import fuse_attention

    opt = optimizer.optimize_model(str(src), model_type=source.optimizer_type, num_heads=source.num_heads,
                                   hidden_size=source.hidden_size)
    stats = opt.get_fused_operator_statistics()
    if not stats.get("Attention") and not stats.get("MultiHeadAttention") and source.num_heads:
        stats["MultiHeadAttention"] = fuse_attention(opt.model, source.num_heads)
    opt.save_model_to_file(str(dst))
    return {op: int(stats.get(op, 0)) for op in FUSED_OPS}


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and activations, except LayerNorm (and ORT's default fp32 list); inputs and outputs unchanged.

    Through ORT's ``OnnxModel``, whose symbolic shape inference types the optimizer's fused nodes: plain
    ``float16.convert_float_to_float16`` leaves a fused MatMul with one fp32 and one fp16 input, a graph ORT rejects."""
    import onnx
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True, op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32])
    model.save_model_to_file(str(dst))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the stage


def check_out(out: Path, run_dir: Path) -> None:
    """``out`` may be replaced: new, empty, or an earlier export; never the run folder or a folder around it."""
    if out.exists() and not out.is_dir():
        raise KdfastError(f"--out {out} is a file, not a folder")
    if out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents:
        raise KdfastError(f"--out {out} would replace the run folder {run_dir}")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise KdfastError(f"--out {out} is not empty and holds no earlier export ({MANIFEST}); not replacing it")


def load_source(run_dir: Path, kind: str) -> ExportSource:
    return load_teacher_for_export(run_dir) if kind == "teacher" else student_source(run_dir)


def variant_plan(cfg: ExportConfig) -> list[dict[str, Any]]:
    """The files to write, each with the file it is made from: int8 and fp16 start from the optimized model."""
    base = MODEL_FILES["optimized"] if cfg.optimize else MODEL_FILES["fp32"]
    plan = [{"variant": "fp32", "file": MODEL_FILES["fp32"], "from": "pytorch", "fp32": True}]
    if cfg.optimize:
        plan.append({"variant": "optimized", "file": MODEL_FILES["optimized"], "from": MODEL_FILES["fp32"],
                     "fp32": True})
    if cfg.int8:
        plan.append({"variant": "int8", "file": MODEL_FILES["int8"], "from": base, "fp32": False})
    if cfg.fp16:
        plan.append({"variant": "fp16", "file": MODEL_FILES["fp16"], "from": base, "fp32": False})
    return plan


def run(cfg: ExportConfig) -> dict[str, Any]:
    """Export, check and save; returns the contents of ``manifest.json``. Raises ParityError when a check fails."""
    # --- setup
    versions = check_onnx_packages()
    cfg.validate()
    say = Console(stderr=True, quiet=not cfg.progress).print
    run_dir = Path(cfg.run_dir)
    info = read_run_info(run_dir)
    out = Path(cfg.out) if cfg.out is not None else run_dir / "onnx"
    check_out(out, run_dir)
    if cfg.triton_repo is not None:
        from kdfast.export.triton_repo import check_name

        check_name(cfg.triton_name or run_dir.resolve().name)
    source = load_source(run_dir, info["kind"])
    if cfg.optimize and source.optimizer_type is None:
        raise KdfastError(f"--optimize: ONNX Runtime's transformer optimizer has nothing to fuse in a "
                          f"{source.meta.get('model_type') or source.meta['architecture']} model")
    labels = run_labels(run_dir)
    dev: list[str] = []
    dev_targets: Targets = (np.zeros(0, dtype=np.int64), None)
    train: list[Example] = []
    data_source = None
    if cfg.check or cfg.int8:
        config = read_json(run_dir / METRICS_FILE).get("config")
        if not isinstance(config, dict) or (cfg.data is None and "data" not in config):
            raise KdfastError(f"{run_dir / METRICS_FILE}: no config.data; pass --data")
        dataset = dataset_from_config(config, cfg.data, labels)
        examples = subsample(dataset.dev, cfg.max_check_sentences, seed=0)
        dev, dev_targets, data_source = [e.text for e in examples], targets(examples, dataset.halves), dataset.source
        train = dataset.train  # int8 calibration reads this split only
    plan = variant_plan(cfg)

    with staged_dir(out, overwrite=True) as tmp:
        # --- export and variants
        say(f"exporting {run_dir} ({source.meta['architecture']}) to ONNX, opset {cfg.opset}")
        export_onnx(source, tmp / MODEL_FILES["fp32"], cfg.opset)
        io = check_graph(tmp / MODEL_FILES["fp32"], source.input_names, len(labels))
        fused: dict[str, int] | None = None
        int8: dict[str, Any] | None = None
        for v in plan[1:]:
            say(f"writing {v['file']} from {v['from']}")
            src, dst = tmp / v["from"], tmp / v["file"]
            if v["variant"] == "optimized":
                fused = optimize(src, dst, source)
            elif v["variant"] == "int8":
                int8 = tune_int8(cfg, source, tmp, src, dst, train, say)
                v["from"] = int8["from"]
            else:
                convert_fp16(src, dst)
        source.save_preprocessing(tmp)

        # --- check
        parity = check_all(cfg, source, tmp, plan, dev, dev_targets, data_source, say)
        latency = time_variants(source, tmp, plan, say, threads=cfg.threads)

        # --- save
        manifest: dict[str, Any] = {
            "source_run": {"path": str(run_dir.resolve()), "kind": info["kind"], "mode": info.get("mode"),
                           "run": info, **source.meta},
            "labels": labels,
            "exporter": {"name": "torchscript", "call": "torch.onnx.export(dynamo=False)",
                         "why": "torch 2.13's dynamo exporter: GPT-2 at opset 17 fails ORT's checker, ORT's GPT-2 "
                                "optimizer crashes on its graph, GRU/LSTM reported wrong"},
            "opset": cfg.opset,
            "inputs": io["inputs"],
            "outputs": io["outputs"],
            "dynamic_axes": {t["name"]: {str(i): d for i, d in enumerate(t["shape"]) if isinstance(d, str)}
                             for t in io["inputs"] + io["outputs"]},
            "variants": plan,
            "optimizer": {"model_type": source.optimizer_type, "fused": fused} if cfg.optimize else None,
            "int8": int8_with_dev(int8, parity),
            "fp16": {"method": "onnxruntime.transformers OnnxModel.convert_float_to_float16", "keep_io_types": True,
                     "kept_fp32": FP16_KEEP_FP32} if cfg.fp16 else None,
            "versions": {"kdfast": __version__, "torch": torch.__version__, **versions,
                         "transformers": _version("transformers")},
            "parity": parity,
            "latency": latency,
            "triton": None,
        }
        if cfg.check and not parity["passed"]:
            failed = [v["variant"] for v in parity["variants"] if v["checked"] and not v["passed"]]
            raise ParityError(f"ONNX does not match PyTorch: {', '.join(failed)} failed (see the table); nothing "
                              "was written", manifest)
        if cfg.triton_repo is not None:
            from kdfast.export.triton_repo import write_repo

            name = cfg.triton_name or run_dir.resolve().name
            model_dir = write_repo(Path(cfg.triton_repo), name, tmp / MODEL_FILES["fp32"], cfg.triton_max_batch_size)
            manifest["triton"] = {"repo": str(Path(cfg.triton_repo).resolve()), "name": name,
                                  "model": MODEL_FILES["fp32"], "max_batch_size": cfg.triton_max_batch_size,
                                  "config": str(model_dir / "config.pbtxt")}
        manifest["files"] = {str(p.relative_to(tmp)): {"sha256": sha256(p), "bytes": p.stat().st_size}
                             for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json(tmp / MANIFEST, manifest)
    return manifest


def tune_int8(cfg: ExportConfig, source: ExportSource, folder: Path, src: Path, dst: Path, train: list[Example],
              say: Callable[..., None]) -> dict[str, Any]:
    """``kdfast.export.int8.tune`` on the exported files; when no candidate holds the rule, a ParityError whose manifest
    carries every candidate's numbers (and nothing is written)."""
    inputs = TuneInputs(fp32=folder / MODEL_FILES["fp32"], base=src, encode=source.encode, pad_id=source.pad_id,
                        input_names=source.input_names, num_heads=source.num_heads)
    try:
        return tune(inputs, train, dst, replace(cfg.int8_tuning, threads=cfg.threads), say)
    except Int8RuleError as e:
        raise ParityError(str(e), {"int8": e.report, "parity": {"checked": False, "passed": False,
                                                                 "note": "not reached: int8 tuning failed"}}) from None


def int8_with_dev(int8: dict[str, Any] | None, parity: dict[str, Any]) -> dict[str, Any] | None:
    """The tuning report, with the winner's dev agreement and MCC from the parity check (its confirmation)."""
    if int8 is None:
        return None
    row = next((v for v in parity.get("variants", []) if v["variant"] == "int8" and v["checked"]), None)
    if row is None:
        return {**int8, "dev": None}
    ref = parity["pytorch"]["metrics"]["dev_mcc"]
    return {**int8, "dev": {"sentences": parity["sentences"], "agreement": row["agreement"],
                            "mcc": row["metrics"]["dev_mcc"], "fp32_mcc": ref,
                            "mcc_drop": ref - row["metrics"]["dev_mcc"], "passed": row["passed"]}}


def check_all(cfg: ExportConfig, source: ExportSource, folder: Path, plan: list[dict[str, Any]],
              dev: list[str], dev_targets: Targets, data_source: str | None, say: Callable[..., None]
              ) -> dict[str, Any]:
    """Every variant against PyTorch on ``dev``; fp16 on CUDA when ONNX Runtime has it, else on the CPU, said so."""
    if not cfg.check:
        return {"checked": False, "passed": None, "note": "--no-check: nothing was compared with PyTorch"}
    import onnxruntime as ort

    say(f"checking against PyTorch on {len(dev)} dev sentences ({data_source})")
    ids = source.encode(dev)
    want = torch_logits(source.module, ids, source.pad_id, source.input_names, cfg.batch_size)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    rows = []
    for v in plan:
        result = VariantResult(variant=v["variant"], file=v["file"], fp32=v["fp32"])
        if v["variant"] == "int8":  # the rule tuning held on training sentences, now on dev
            result.min_agreement = cfg.int8_tuning.min_agreement
            result.max_mcc_drop = cfg.int8_tuning.max_drop
        if v["variant"] == "fp16":
            result.provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
            if not cuda:
                result.note = "no CUDA here: checked on ONNX Runtime's CPU provider, not the GPU it is meant for"
        try:
            rows.append(check_variant(result, folder / v["file"], source.module, ids, source.pad_id,
                                      source.input_names, want, dev_targets, cfg.atol, cfg.batch_size))
        except KdfastError as e:
            # Only a missing CPU kernel excuses fp16; a graph ORT rejects for any other reason is a failure.
            if v["variant"] != "fp16" or cuda or "NOT_IMPLEMENTED" not in str(e):
                raise
            result.checked, result.passed = False, False
            result.note = f"NOT CHECKED: the CPU provider cannot run it ({e}); check it on a CUDA machine"
            rows.append({**result.__dict__, "rule": result.rule, "shapes": []})
    passed = all(r["passed"] for r in rows if r["checked"])
    return {"checked": True, "passed": passed, "data": data_source, "sentences": len(dev), "atol": cfg.atol,
            "pytorch": reference_row(want, dev_targets), "variants": rows}


LATENCY_SENTENCES = ["The book that John wrote was read by everyone.", "Books.", "Who did you see Mary and?",
                     "She sang, and he danced.", "It is raining cats and dogs.",
                     "The more you read, the more you know."]


def time_variants(source: ExportSource, folder: Path, plan: list[dict[str, Any]], say: Callable[..., None],
                  rounds: int = 15, budget_s: float = 3.0, threads: int = 0) -> dict[str, Any]:
    """Each CPU variant's batch-1 latency, for ``--runtime auto`` to take the fastest that passed its check.

    One sentence at a time (six of them), on ONNX Runtime's CPU provider with ``threads`` intra-op threads (0: its
    default, as ``kdfast predict`` runs without ``--threads``), timed as the int8 speed rule times
    (:func:`kdfast.export.int8.p50_ms`): in each round each variant runs alone through the sentences after one
    untimed call, in an order shuffled from round to round, so neither the previous variant's spinning threads nor a
    busy moment of the machine falls on one more than another; the median of each. At most ``rounds`` rounds, fewer
    once ``budget_s`` is spent (a large teacher)."""
    from kdfast.export.int8 import p50_ms, session
    from kdfast.export.parity import feeds

    timed = [v for v in plan if v["variant"] in ("fp32", "optimized", "int8")]  # fp16 is for the GPU
    say(f"timing {', '.join(v['variant'] for v in timed)} at batch 1")
    batches = [pad_batch([row], source.pad_id) for row in source.encode(LATENCY_SENTENCES)]  # (1, T) each
    sessions = {v["variant"]: session(folder / v["file"], threads) for v in timed}
    inputs = {k: [feeds(i, m, [x.name for x in s.get_inputs()]) for i, m in batches] for k, s in sessions.items()}
    ms = p50_ms(sessions, inputs, rounds, budget_s) if sessions else {}
    return {"batch": 1, "provider": "CPUExecutionProvider", "threads": threads, "sentences": len(LATENCY_SENTENCES),
            "statistic": "p50, taking turns, each alone", "ms": ms}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def logits_from_onnx(folder: Path, sentences: list[str], variant: str = "fp32") -> np.ndarray:
    """Logits (N, C) of an exported model for ``sentences``, preprocessing as the manifest says (teacher exports)."""
    from kdfast.export.parity import onnx_logits, session

    manifest = read_json(Path(folder) / MANIFEST)
    pre = manifest["source_run"]["preprocessing"]
    if "tokenizer" not in pre:
        raise KdfastError(f"{folder}: only teacher exports carry a tokenizer")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(Path(folder) / pre["tokenizer"]))
    ids = encode(tokenizer, sentences, pre["max_length"])
    return onnx_logits(session(Path(folder) / MODEL_FILES[variant]), ids, pre["pad_id"])


def run_dropping_failed_int8(cfg: ExportConfig, say: Callable[..., None]) -> dict[str, Any]:
    """``run``, but when the int8 model alone fails its parity check, export again without it (and say so).

    An int8 model can flip more than 1% of the labels of a teacher with many low-margin sentences whatever the
    recipe; the fp32 and optimized models are still exact. For the stages
    that consume an export (bench, pipeline), that is a note, not a reason to stop."""
    try:
        return run(cfg)
    except ParityError as e:
        if not e.manifest["parity"]["checked"]:  # tuning found no candidate within the rule
            failed = ["int8"] if (e.manifest.get("int8") or {}).get("winner", "") is None else ["?"]
        else:
            failed = [v["variant"] for v in e.manifest["parity"]["variants"] if v["checked"] and not v["passed"]]
        if failed != ["int8"] or not cfg.int8:
            raise
        say(f"{cfg.run_dir}: export refused every int8 candidate ({e}); exporting without it")
        cfg.int8 = False
        return run(cfg)
