"""The int8 quantizers ``kdfast.export.int8`` tunes between, each a file-to-file step on ONNX Runtime's tools:

- dynamic (:func:`quantize_dynamic_file`): int8 weights per output channel, uint8 activations scaled per call over
  the whole batch (padding included), ONNX Runtime's ``MatMulInteger``/``QAttention``;
- blockwise (:func:`quantize_blockwise_file`): int8 weights in blocks of ``block`` input rows with a scale each, and
  activations quantized to int8 at run time in blocks of ``block`` values of each row (each token), ONNX Runtime's
  ``MatMulNBits`` with ``accuracy_level=4`` (int8 dot products; MLAS ``SQNBitGemm`` with ``CompInt8``). A scale per
  32 or 64 values of one token is what keeps it accurate: dynamic's one scale for a whole batch is set by its largest
  activation, and BERT-style models have a few hidden dimensions far larger than the rest;
- static QDQ (:func:`quantize_static_file`): int8 weights per channel, uint8 activations with ranges calibrated once
  (:func:`calibrate`) on unpadded sentences (:class:`UnpaddedReader`);
- SmoothQuant (:func:`smooth_file`), a step before any of them: each weight product's input divided per channel by
  a scale that its weights' rows take on, so that activation outliers move into the weights (exact in fp32). On the
  10-epoch MiniLM teacher it lets ``blockwise-64`` pass the rule but does not help dynamic or static int8
  (docs/export.md, issue 25).

Everything here needs onnx and onnxruntime, imported inside the functions.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Op types each recipe quantizes. Dynamic: ONNX Runtime's defaults (its IntegerOps registry; Gemm is not in it).
DYNAMIC_OPS = ("MatMul", "Attention", "LSTM", "Gather", "EmbedLayerNormalization", "Conv")
STATIC_OPS = ("MatMul", "Gemm")
BLOCKWISE_OPS = ("MatMul",)  # after :func:`gemm_as_matmul`
BLOCKWISE_ACCURACY_LEVEL = 4  # MatMulNBits' int8 compute: activations quantized per block of each row


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


def weight_nodes(model: Path, op_types: Sequence[str], weight_input: int | None = None) -> list[str]:
    """Names of the nodes of ``op_types`` that read a float initializer of rank ≥ 2 (as input ``weight_input``
    when given; exactly rank 2 then): the weight products (and embedding tables, LSTM weights) that quantization
    turns int8, in graph order."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    floats = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    if weight_input is not None:
        matrices = {i.name for i in floats if len(i.dims) == 2}
        return [n.name for n in graph.node if n.op_type in op_types and len(n.input) > weight_input
                and n.input[weight_input] in matrices]
    weights = {i.name for i in floats if len(i.dims) >= 2}
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


def quantize_blockwise_file(src: Path, dst: Path, block: int, exclude: Sequence[str]) -> None:
    """Blockwise int8 (``MatMulNBits``, 8 bits, symmetric, ``block`` rows a scale) of every MatMul with a constant
    2-D weight but ``exclude``; run on :func:`gemm_as_matmul`'s output so that GPT-2's Conv1D products count."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True,
                                          accuracy_level=BLOCKWISE_ACCURACY_LEVEL, bits=8)
    with _quiet():
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=block, is_symmetric=True,
                                         accuracy_level=BLOCKWISE_ACCURACY_LEVEL, nodes_to_exclude=list(exclude),
                                         algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), False)


def gemm_as_matmul(src: Path, dst: Path) -> int:
    """Rewrite each ``Gemm(A, W, bias)`` with a constant W (alpha = beta = 1, A not transposed) as ``MatMul(A, W')``
    then ``Add(bias)``, the MatMul keeping the Gemm's name; returns how many were rewritten. The same product in
    fp32 (W' is W, transposed when ``transB``): GPT-2's Conv1D and a 2-D ``nn.Linear`` export as Gemm, which
    ``MatMulNBits`` has no form for."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes, rewritten = [], 0
    transposed: dict[str, str] = {}  # weight -> its transposed copy, made once however many Gemms share it
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = inits[node.input[1]]
        if attrs.get("transB", 0):
            if weight.name not in transposed:
                copy = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T),
                                               f"{weight.name}_t")
                graph.initializer.append(copy)
                transposed[weight.name] = copy.name
            weight_name = transposed[weight.name]
        else:
            weight_name = weight.name
        has_bias = len(node.input) > 2 and node.input[2] != ""
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product], name=node.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return rewritten


def matmul_graph(src: Path, dst: Path, num_heads: int = 0) -> int:
    """The graph the blockwise and per-token recipes quantize: :func:`gemm_as_matmul`'s, with each attention fused
    into one ``MultiHeadAttention`` node (:func:`kdfast.export.attention.fuse_attention`) when ``num_heads`` is
    given; returns how many were fused. The fusion leaves every weight product a ``MatMul`` (Q, K and V are its
    inputs), so the quantizers see the same products, and removes about twenty small nodes per layer: on the 6-layer
    MiniLM the per-token int8 model runs 1.44 ms instead of 1.55 at batch 1 (2.08 ms fp32), 31.0 ms instead of 31.9
    at batch 32 (docs/export.md)."""
    import onnx

    from kdfast.export.attention import fuse_attention

    gemm_as_matmul(src, dst)
    if not num_heads:
        return 0
    model = onnx.load(str(dst))
    fused = fuse_attention(model, num_heads)
    if fused:
        onnx.save(model, str(dst))
    return fused


# --- SmoothQuant: activation outliers migrated into the weights

SMOOTH_OPS = ("MatMul", "Attention")  # their input 0 is the activation, input 1 a constant 2-D weight


def smooth_groups(model: Any) -> dict[str, list[Any]]:
    """Activation tensor -> the weight products reading it (MatMul, or the fused ``Attention``, with a constant 2-D
    float weight as input 1 that no other node reads): the products whose input channels can be rescaled together."""
    import onnx

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    groups: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.op_type not in SMOOTH_OPS or len(node.input) < 2 or node.input[0] in inits:
            continue
        w = inits.get(node.input[1])
        if w is None or len(w.dims) != 2 or w.data_type != onnx.TensorProto.FLOAT or readers[w.name] != 1:
            continue
        groups.setdefault(node.input[0], []).append(node)
    return groups


def probe(model: Any, tensors: Sequence[str]) -> Any:
    """An ONNX Runtime session of ``model`` (loaded) that also outputs the inner ``tensors``, graph optimizations off
    so that every tensor keeps its name."""
    import onnx
    import onnxruntime as ort

    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in known)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def activation_absmax(model_path: Path, tensors: Sequence[str], reader: UnpaddedReader) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of ``tensors`` over ``reader``'s sentences, each fed alone and unpadded."""
    import onnx

    sess = probe(onnx.load(str(model_path)), tensors)
    out: dict[str, np.ndarray] = {}
    reader.rewind()
    while (feeds := reader.get_next()) is not None:
        for name, value in zip(tensors, sess.run(list(tensors), feeds), strict=True):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            out[name] = m if name not in out else np.maximum(out[name], m)
    return out


def smooth_file(src: Path, dst: Path, reader: UnpaddedReader, alpha: float,
                absmax: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """SmoothQuant (Xiao et al. 2023) on an ONNX graph: for each activation X read by weight products W_k, a scale
    per input channel j, ``s_j = max|X_j|^alpha / max_k max|W_k[j, :]|^(1 - alpha)``; X is divided by s (one
    ``Mul`` inserted after it) and each W_k's row j multiplied by s_j. The same function in exact arithmetic, but the
    few activation channels far larger than the rest (BERT's outlier dimensions) shrink while the weights, easier to
    quantize per channel, take them on. Returns the activations' per-channel max |x| (pass it back as ``absmax``
    to try another ``alpha`` without measuring again)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    groups = smooth_groups(model)
    if absmax is None:
        absmax = activation_absmax(src, list(groups), reader)
    inits = {i.name: i for i in graph.initializer}
    muls: dict[str, Any] = {}
    for act, nodes in groups.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        x_max = absmax[act].astype(np.float64)
        if any(w.shape[0] != x_max.shape[0] for w in weights):
            continue
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0).astype(np.float64)
        s = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
        s = np.clip(s, 1e-4, 1e4)
        for node, w in zip(nodes, weights, strict=True):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1]))
            node.input[0] = f"{act}_smoothed"
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{act}_smooth_scale")
        graph.initializer.append(inv)
        muls[act] = helper.make_node("Mul", [act, inv.name], [f"{act}_smoothed"], name=f"{act}_smooth")
    # each Mul right after its activation's producer (or first, for a graph input): the graph stays sorted
    nodes_out = [muls.pop(i.name) for i in graph.input if i.name in muls]
    for node in graph.node:
        nodes_out.append(node)
        nodes_out.extend(muls.pop(o) for o in node.output if o in muls)
    del graph.node[:]
    graph.node.extend(nodes_out)
    onnx.save(model, str(dst))
    return absmax
