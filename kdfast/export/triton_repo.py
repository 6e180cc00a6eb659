"""A model repository for NVIDIA Triton Inference Server (https://github.com/triton-inference-server/server).

Triton serves ``REPO/<name>/<version>/model.onnx`` with ONNX Runtime, described by ``REPO/<name>/config.pbtxt``::

    name: "<name>"                        # must equal the folder's name
    platform: "onnxruntime_onnx"
    max_batch_size: 64                    # > 0: Triton owns the first axis, so dims below leave it out
    input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }, ... ]   # -1: the dynamic seq axis
    output [ { name: "logits" data_type: TYPE_FP32 dims: [ 2 ] } ]
    dynamic_batching { preferred_batch_size: [ 8, 16, 32, 64 ] max_queue_delay_microseconds: 1000 }
    instance_group [ { count: 2 kind: KIND_AUTO } ]   # two copies of the model per GPU, or on the CPU without one

Dynamic batching merges requests that arrive within the queue delay (1 ms) into one batch of up to max_batch_size,
preferring the sizes listed; two instances let one batch run while the next is gathered. Untested against a live
``tritonserver`` here (none runs on these machines): the README shows the command and a ``tritonclient`` call.

Everything in the config is read off the ONNX graph itself, then the written file is parsed back and checked
against the graph again, so a config that disagrees with its model is never left in place.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from kdfast.errors import KdfastError
from kdfast.runs import staged_dir

CONFIG_FILE = "config.pbtxt"
QUEUE_DELAY_US = 1000  # how long Triton holds a request to batch it with others
INSTANCES = 2  # model copies per device
# ONNX TensorProto element types -> Triton data types (the ones a classifier's inputs and outputs can have).
TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL"}


def graph_io(onnx_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX graph: name, element type and shape (a str for a dynamic axis, else an int)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)

    def describe(values: Any) -> list[dict[str, Any]]:
        rows = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                     for d in t.shape.dim]
            rows.append({"name": v.name, "elem_type": t.elem_type, "dtype": onnx.TensorProto.DataType.Name(
                t.elem_type).lower(), "shape": shape})
        return rows

    initializers = {i.name for i in model.graph.initializer}
    return {"inputs": describe(i for i in model.graph.input if i.name not in initializers),
            "outputs": describe(model.graph.output)}


def triton_tensors(io: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Triton's view of graph tensors: the batch axis dropped, dynamic axes as -1."""
    out = []
    for t in io:
        if not t["shape"] or not isinstance(t["shape"][0], str):
            raise KdfastError(f"ONNX tensor {t['name']}: batch axis not dynamic ({t['shape']}); Triton cannot batch it")
        if t["elem_type"] not in TRITON_TYPES:
            raise KdfastError(f"ONNX tensor {t['name']}: no Triton type for {t['dtype']}")
        dims = [-1 if isinstance(d, str) else int(d) for d in t["shape"][1:]]
        out.append({"name": t["name"], "data_type": TRITON_TYPES[t["elem_type"]], "dims": dims})
    return out


def config_text(name: str, io: dict[str, list[dict[str, Any]]], max_batch_size: int) -> str:
    def block(kind: str, tensors: list[dict[str, Any]]) -> str:
        items = ",\n".join(
            f'  {{\n    name: "{t["name"]}"\n    data_type: {t["data_type"]}\n'
            f'    dims: [ {", ".join(map(str, t["dims"]))} ]\n  }}'
            for t in tensors)
        return f"{kind} [\n{items}\n]\n"

    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            + block("input", triton_tensors(io["inputs"])) + block("output", triton_tensors(io["outputs"]))
            + dynamic_batching(max_batch_size) + instance_group())


def dynamic_batching(max_batch_size: int) -> str:
    preferred = [b for b in (8, 16, 32, 64, 128) if b <= max_batch_size] or [max_batch_size]
    return (f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
            f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n")


def instance_group() -> str:
    return f"instance_group [\n  {{\n    count: {INSTANCES}\n    kind: KIND_AUTO\n  }}\n]\n"


_TENSOR = re.compile(r'\{\s*name:\s*"([^"]+)"\s*data_type:\s*(\w+)\s*dims:\s*\[([^\]]*)\]\s*\}')


def parse_config(text: str) -> dict[str, Any]:
    """The fields of a config.pbtxt that :func:`config_text` writes (a reader for our own output, not all of pbtxt)."""

    def field(pattern: str) -> str | None:
        m = re.search(pattern, text, re.MULTILINE)
        return m.group(1) if m else None

    def tensors(kind: str) -> list[dict[str, Any]]:
        m = re.search(rf"^{kind}\s*\[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
        if not m:
            return []
        return [{"name": n, "data_type": t, "dims": [int(d) for d in dims.replace(",", " ").split()]}
                for n, t, dims in _TENSOR.findall(m.group(1))]

    mbs = field(r"^max_batch_size:\s*(\d+)")
    return {"name": field(r'^name:\s*"([^"]+)"'), "platform": field(r'^platform:\s*"([^"]+)"'),
            "max_batch_size": int(mbs) if mbs else None, "input": tensors("input"), "output": tensors("output"),
            "dynamic_batching": re.search(r"^dynamic_batching\s*\{", text, re.MULTILINE) is not None}


def check_config(model_dir: Path, name: str | None = None) -> None:
    """``model_dir/config.pbtxt`` describes ``model_dir/1/model.onnx`` exactly, or a KdfastError says where not.
    ``name`` is the model's name, the folder's own unless given (a staged folder is renamed only once checked)."""
    name = name or model_dir.name
    config = parse_config((model_dir / CONFIG_FILE).read_text())
    io = graph_io(model_dir / "1" / "model.onnx")
    problems = []
    if config["name"] != name:
        problems.append(f"name {config['name']!r} is not the model folder's name {name!r}")
    if config["platform"] != "onnxruntime_onnx":
        problems.append(f"platform {config['platform']!r}")
    if not config["max_batch_size"]:
        problems.append("max_batch_size must be > 0 for dynamic batching")
    for kind, key in (("input", "inputs"), ("output", "outputs")):
        if config[kind] != triton_tensors(io[key]):
            problems.append(f"{kind} {config[kind]} does not match the model's {triton_tensors(io[key])}")
    if not config["dynamic_batching"]:
        problems.append("no dynamic_batching")
    if problems:
        raise KdfastError(f"{model_dir / CONFIG_FILE}: " + "; ".join(problems))


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise KdfastError(f"--triton-name {name!r}: use letters, digits, '_', '.' and '-'")
    return name


def write_repo(repo: Path, name: str, onnx_path: Path, max_batch_size: int = 64) -> Path:
    """Write (or atomically replace) ``repo/name``: config.pbtxt and 1/model.onnx; returns that folder."""
    model_dir = Path(repo) / check_name(name)
    if model_dir.is_dir() and any(model_dir.iterdir()) and not (model_dir / CONFIG_FILE).exists():
        raise KdfastError(f"--triton-repo: {model_dir} exists and is not a Triton model folder; not replacing it")
    with staged_dir(model_dir, overwrite=True) as tmp:
        (tmp / "1").mkdir()
        shutil.copyfile(onnx_path, tmp / "1" / "model.onnx")
        (tmp / CONFIG_FILE).write_text(config_text(name, graph_io(onnx_path), max_batch_size))
        check_config(tmp, name)
    return model_dir

