"""How ``kdfast bench`` loads each variant: PyTorch modules and ONNX Runtime sessions behind one call signature,
and the run's ONNX files (exported with export's checks when missing). See ``kdfast.bench.measure`` for the method."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdfast.errors import KdfastError, first_line
from kdfast.runs import METRICS_FILE, read_json, read_run_info

TEACHER_VARIANTS = ("teacher-unmerged", "teacher-merged", "teacher-fused", "teacher-onnx-fp32", "teacher-onnx-opt",
                    "teacher-onnx-int8")
STUDENT_VARIANTS = ("student-eager", "student-compiled", "student-onnx-fp32", "student-onnx-int8")
VARIANTS = TEACHER_VARIANTS + STUDENT_VARIANTS


class Skip(Exception):
    """A variant that cannot run here; the message says why."""


@dataclass
class Loaded:
    """One variant, ready to call: ``forward(*prepare(ids, mask))`` -> logits, ``fetch`` turns them into numpy."""

    forward: Callable[..., Any]
    prepare: Callable[[torch.Tensor, torch.Tensor], tuple[Any, ...]]
    fetch: Callable[[Any], np.ndarray]
    runtime: str  # pytorch | onnxruntime
    params: int
    file_mb: float | None
    note: str = ""
    warm_every_batch: bool = False  # run each distinct batch once before timing (compiled models)


@dataclass
class ModelInputs:
    """One model's token ids: the timed sample and the whole dev set, and its pad id."""

    name: str  # the run folder's name
    kind: str  # teacher | student
    pad_id: int
    timed: list[list[int]]
    dev: list[list[int]]



# --- PyTorch and ONNX Runtime variants


def torch_variant(module: torch.nn.Module, device: torch.device, params: int, file_mb: float | None,
                  note: str = "", pad_to: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
                  warm_every_batch: bool = False) -> Loaded:
    """A module called as ``module(input_ids, attention_mask) -> logits``, inputs moved to ``device`` beforehand."""

    def prepare(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids.to(device), mask.to(device)

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if pad_to is not None:  # the compiled student's shape buckets: part of its cost, so inside the call
            ids, mask = pad_to(ids, mask)
        return module(ids, mask)

    return Loaded(forward=forward, prepare=prepare, fetch=lambda t: t.float().cpu().numpy(), runtime="pytorch",
                  params=params, file_mb=file_mb, note=note, warm_every_batch=warm_every_batch)


def ort_session(path: Path, threads: int, device: torch.device) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise Skip(f"onnxruntime {ort.__version__} has no {provider} (install onnxruntime-gpu)")
    try:
        return ort.InferenceSession(str(path), options, providers=[provider])
    except Exception as e:  # ORT raises its own exception types
        raise Skip(f"ONNX Runtime cannot load {path.name}: {first_line(e)}") from None


def ort_variant(path: Path, input_names: list[str], threads: int, device: torch.device, params: int,
                note: str = "") -> Loaded:
    """An ONNX file in ONNX Runtime; on CUDA through IO binding, inputs and outputs on the GPU."""
    sess = ort_session(path, threads, device)
    file_mb = sum(p.stat().st_size for p in [path, *path.parent.glob(f"{path.name}.data")]) / 1e6

    if device.type == "cuda":
        import onnxruntime as ort

        def prepare_cuda(ids: torch.Tensor, mask: torch.Tensor) -> tuple[Any, ...]:
            tensors = {"input_ids": ids, "attention_mask": mask}
            return tuple(ort.OrtValue.ortvalue_from_numpy(tensors[n].numpy(), "cuda", 0) for n in input_names)

        def forward_cuda(*values: Any) -> Any:
            binding = sess.io_binding()
            for name, value in zip(input_names, values, strict=True):
                binding.bind_ortvalue_input(name, value)
            binding.bind_output("logits", "cuda")
            sess.run_with_iobinding(binding)
            return binding.get_outputs()[0]

        return Loaded(forward=forward_cuda, prepare=prepare_cuda, fetch=lambda v: v.numpy(), runtime="onnxruntime",
                      params=params, file_mb=file_mb, note=note)

    def prepare(ids: torch.Tensor, mask: torch.Tensor) -> tuple[dict[str, np.ndarray]]:
        tensors = {"input_ids": ids, "attention_mask": mask}
        return ({n: tensors[n].numpy() for n in input_names},)

    def forward(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return sess.run(["logits"], feeds)[0]

    return Loaded(forward=forward, prepare=prepare, fetch=np.asarray, runtime="onnxruntime", params=params,
                  file_mb=file_mb, note=note)


def files_mb(*paths: Path) -> float | None:
    """Total size of the weight files in ``paths`` (files, or folders searched for weights), 10⁶ bytes."""
    total = 0
    for path in paths:
        files = [path] if path.is_file() else [*path.glob("*.safetensors"), *path.glob("*.bin")]
        if not files:
            return None
        total += sum(f.stat().st_size for f in files)
    return total / 1e6


# --- ONNX files: the run's checked export, made when missing


@dataclass
class OnnxFiles:
    folder: Path  # RUN/onnx, checked to come from this run
    manifest: dict[str, Any]

    def int8(self) -> tuple[Path, str]:
        """(model.int8.onnx, note): the model export tuned and checked, or Skip when the export holds none."""
        from kdfast.export.onnx import MODEL_FILES

        if "int8" not in {v["variant"] for v in self.manifest.get("variants", [])}:
            raise Skip(f"{self.folder} has no int8 model: it was exported without --int8 (bench never starts the "
                       f"int8 tuning; kdfast export --onnx {self.folder.parent} --int8 runs it and shows the "
                       f"candidates), or no candidate held export's rule")
        int8 = self.manifest.get("int8") or {}
        kept = len(int8.get("kept_fp32", []))
        return self.folder / MODEL_FILES["int8"], (f"exported: {int8['winner']}, {kept} node(s) fp32"
                                                    if int8.get("winner") else "")


def ensure_export(run_dir: Path, data: str | None, optimize: bool, say: Callable[..., None]) -> Path:
    """``RUN/onnx``, exported (with export's parity checks) when it holds no export yet: fp32 (and the optimized
    graph) only. The int8 tuning builds and judges many candidate models (minutes for a small teacher, half an hour
    and more for GPT-2 on two cores), so bench never starts it: it says how to get the int8 row instead."""
    import time

    from kdfast.export.onnx import MANIFEST, ExportConfig, check_onnx_packages
    from kdfast.export.onnx import run as export

    check_onnx_packages()
    folder = run_dir / "onnx"
    if (folder / MANIFEST).exists():
        return folder
    say(f"{run_dir}: no ONNX export yet; exporting it now without int8 tuning (kdfast export --onnx"
        f"{' --optimize' if optimize else ''}, with its parity checks: one pass over dev per exported model). "
        f"For the int8 row: kdfast export --onnx {run_dir} --int8")
    start = time.perf_counter()
    export(ExportConfig(run_dir=run_dir, optimize=optimize, int8=False, data=data, progress=False))
    say(f"{run_dir}: exported in {time.perf_counter() - start:.0f} s")
    return folder


def onnx_files(run_dir: Path, data: str | None, optimize: bool, say: Callable[..., None]) -> OnnxFiles:
    """The run's ONNX export, checked to come from this very run (exported first when missing)."""
    from kdfast.export.onnx import MANIFEST

    folder = ensure_export(run_dir, data, optimize, say)
    manifest = read_json(folder / MANIFEST)
    made_from = manifest.get("source_run", {}).get("run")
    if made_from != read_run_info(run_dir):
        raise Skip(f"{folder} was exported from another run at this path (created "
                   f"{(made_from or {}).get('created')}); re-export it: kdfast export --onnx {run_dir}")
    return OnnxFiles(folder, manifest)


def onnx_variants(run_dir: Path, data: str | None, optimize: Callable[[], bool], device: torch.device, threads: int,
                  say: Callable[..., None]) -> Callable[[str], Callable[[], Loaded]]:
    """``variant(name)`` -> build, for a run's ONNX Runtime variants ("fp32", "optimized", "int8"); they share one
    export, found or made (``optimize()`` says whether with --optimize) on the first build, and so does its failure."""
    from kdfast.export.onnx import MODEL_FILES

    onnx: dict[str, OnnxFiles | Skip] = {}

    def files() -> OnnxFiles:
        if not onnx:
            try:
                onnx["files"] = onnx_files(run_dir, data, optimize(), say)
            except (Skip, KdfastError) as e:
                onnx["files"] = Skip(str(e))
        found = onnx["files"]
        if isinstance(found, Skip):
            raise found
        return found

    def variant(name: str) -> Callable[[], Loaded]:
        def build() -> Loaded:
            f = files()
            params = int(f.manifest["source_run"].get("parameters") or 0)
            names = [i["name"] for i in f.manifest["inputs"]]
            if name == "int8":
                if device.type == "cuda":
                    raise Skip("dynamic int8 quantization is for ONNX Runtime's CPU provider")
                path, note = f.int8()
                return ort_variant(path, names, threads, device, params, note)
            path = f.folder / MODEL_FILES[name]
            if not path.exists():
                raise Skip(f"{f.folder} has no {path.name} (kdfast export --onnx --optimize {run_dir} writes it)")
            return ort_variant(path, names, threads, device, params)

        return build

    return variant


# --- the teacher's variants


def teacher_builders(run_dir: Path, data: str | None, device: torch.device, threads: int,
                     say: Callable[..., None]) -> Iterator[tuple[str, Callable[[], Loaded]]]:
    """(variant, build) for every teacher variant; ``build`` raises Skip when the variant cannot run here."""
    from kdfast.export.onnx import OPTIMIZER_TYPES, ClassifierLogits
    from kdfast.train.lora import set_fused, unwrap_merged
    from kdfast.train.teacher import load_teacher

    run_cfg = read_json(run_dir / METRICS_FILE)["config"]
    base = Path(run_cfg["model"])
    adapter = run_dir / "adapter" / "adapter_model.safetensors"

    def count(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    def unmerged() -> Loaded:
        model, _ = load_teacher(run_dir, merged=False)
        weights = files_mb(base, adapter) if base.is_dir() else None
        return torch_variant(ClassifierLogits(model).to(device), device, count(model), weights)

    def merged() -> Loaded:
        if (run_dir / "merged").is_dir():
            model, _ = load_teacher(run_dir, merged=True)
            return torch_variant(ClassifierLogits(model).to(device), device, count(model),
                                 files_mb(run_dir / "merged"))
        model = unwrap_merged(load_teacher(run_dir, merged=False)[0])
        return torch_variant(ClassifierLogits(model).to(device), device, count(model), None,
                             note="merged in memory (the run has no merged/)")

    def fused() -> Loaded:
        if device.type != "cuda":
            raise Skip("the fused Triton LoRA kernel runs on CUDA only")
        from kdfast.kernels.lora_matmul import fused_lora_supported

        if not fused_lora_supported(torch.zeros(1, device=device)):
            raise Skip("triton is not installed (pip install 'kdfast[triton]')")
        model, _ = load_teacher(run_dir, merged=False)
        set_fused(model, True)
        weights = files_mb(base, adapter) if base.is_dir() else None
        return torch_variant(ClassifierLogits(model).to(device), device, count(model), weights)

    def optimize() -> bool:  # export --optimize refuses a model type it has nothing to fuse in
        config = (run_dir / "merged" if (run_dir / "merged").is_dir() else base) / "config.json"
        return (read_json(config).get("model_type") if config.is_file() else None) in OPTIMIZER_TYPES

    onnx_variant = onnx_variants(run_dir, data, optimize, device, threads, say)

    yield "teacher-unmerged", unmerged
    yield "teacher-merged", merged
    yield "teacher-fused", fused
    yield "teacher-onnx-fp32", onnx_variant("fp32")
    yield "teacher-onnx-opt", onnx_variant("optimized")
    yield "teacher-onnx-int8", onnx_variant("int8")


def teacher_inputs(run_dir: Path, timed: list[str], dev: list[str]) -> ModelInputs:
    from kdfast.train.teacher import encode, load_tokenizer

    run_cfg = read_json(run_dir / METRICS_FILE)["config"]
    source = run_dir / "merged" if (run_dir / "merged").is_dir() else Path(run_cfg["model"])
    tokenizer = load_tokenizer(str(source))
    max_length = int(run_cfg["max_length"])
    return ModelInputs(run_dir.name, "teacher", int(tokenizer.pad_token_id), encode(tokenizer, timed, max_length),
                       encode(tokenizer, dev, max_length))


# --- the students' variants


def student_builders(run_dir: Path, data: str | None, device: torch.device, threads: int,
                     say: Callable[..., None]) -> Iterator[tuple[str, Callable[[], Loaded]]]:
    from kdfast.train.student import STUDENT_FILE, compile_student, load_student, pad_for_compile, parameter_counts

    weights = files_mb(run_dir / STUDENT_FILE)

    def eager() -> Loaded:
        model = load_student(run_dir)[0].to(device)
        return torch_variant(model, device, parameter_counts(model)["total_params"], weights)

    def compiled() -> Loaded:
        import torch._dynamo

        torch._dynamo.reset()  # fresh graphs and recompile budget for this model
        model = load_student(run_dir)[0].to(device)
        pad_id = model.cfg.pad_id
        return torch_variant(compile_student(model), device, parameter_counts(model)["total_params"], weights,
                             note="cell loop through torch.compile; inputs padded to a multiple of 8 steps",
                             pad_to=lambda ids, mask: pad_for_compile(ids, mask, pad_id), warm_every_batch=True)

    onnx_variant = onnx_variants(run_dir, data, lambda: False, device, threads, say)

    yield "student-eager", eager
    yield "student-compiled", compiled
    yield "student-onnx-fp32", onnx_variant("fp32")
    yield "student-onnx-int8", onnx_variant("int8")


def student_inputs(run_dir: Path, timed: list[str], dev: list[str]) -> ModelInputs:
    from kdfast.train.student import load_student

    _, vocab, max_length = load_student(run_dir)
    return ModelInputs(run_dir.name, "student", int(vocab.pad_id), [vocab.encode(s, max_length) for s in timed],
                       [vocab.encode(s, max_length) for s in dev])
