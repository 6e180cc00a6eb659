"""Per-token int8 (``pertoken``, issue 25): activations quantized at run time with a scale per token, weights per
output channel with GPTQ's error compensation, the products on ONNX Runtime's integer kernels.

Why: dynamic int8 (one activation scale for the whole batch) is fast but flips 3-4% of the MiniLM teacher's dev
labels; blockwise int8 (``MatMulNBits``, a scale per 32 values of each token) keeps them but is slower than fp32 at
batch 32 on x86, where ``MatMulNBits``' block loop loses to MLAS's fp32 GEMM. Per-token scales sit between: the int8
product is one ``MatMulIntegerToFloat`` (the same u8 x s8 kernel as dynamic's, VNNI/AMX), and a token's scale no
longer depends on its batch-mates or on the largest activation anywhere in the batch. The recipe is ZeroQuant's
(Yao et al. 2022: per-token activations, fine-grained weights) with GPTQ (Frantar et al. 2023) for the weights:
rounding one input row's weights at a time and spreading its error over the rows not yet rounded, weighted by the
inverse of the layer's input second moments ``H = X^T X`` measured on calibration sentences.

Each activation ``X`` read by weight products ``W_k`` becomes, once (shared by every product reading it)::

    Z = X @ R                                          # R: block-diagonal Hadamard (recipe pertoken-hB)
    m = max(ReduceMax(Z), -ReduceMin(Z), eps)          # per token absmax: shape (..., 1)
    q = QuantizeLinear(Z, m / 127, 128, block_size=K)  # uint8, zero point 128: symmetric int8, a scale per token
    Y_k = MatMulIntegerToFloat(q, Wq_k, m, w_scale_k / 127, 128, 0)  # Wq_k: int8 codes of R^T W_k

so ``Y_k = (m / 127) * (q - 128) @ (Wq_k * w_scale_k) ~ Z @ R^T W_k = X @ W_k``. The token's absmax goes in as the
product's ``a_scale`` (shape (..., 1)): ONNX Runtime scales the output by it inside the op, one pass fewer than a
``Mul`` after it; the 1/127 rides on the weights' scales. The quantizer is opset 21's blocked ``QuantizeLinear``,
one block of ``K`` values (a token) per scale, so the graph is converted to opset 21: 1.7-3x faster at batch 32
than a division followed by a per-tensor quantizer (a pass less), and its zero point, which must have the scale's
shape, is quantized from ``m`` itself (``round(m / FLT_MAX) + 128``: one small op), once for all the activations
whose leading dimensions ONNX Runtime's symbolic shape inference proves equal (a BERT's or GPT-2's token activations
all share one: 24 ops fewer per call on the 6-layer MiniLM, about 2% at batch 1). (Signed int8 activations would
need no zero point, but ONNX Runtime's s8 x s8 integer product is 4-9x slower than u8 x s8 here.)

The rotation (QuaRot, Ashkboos et al. 2024; here online and block-diagonal, ``block`` values per Hadamard block,
applied to every activation whose width it divides): ``R`` is orthogonal, so the product is unchanged in exact
arithmetic, but a token's few large channels are spread over their block, so its absmax, which sets its int8 step,
falls towards its RMS and every other channel keeps more of its bits. The weights are rotated the other way (and
GPTQ weighs their rounding by the rotated input's second moments ``R^T H R``). ``block`` 0 is no rotation (recipe
``pertoken``). The rotation is one fp32 ``MatMul`` of each token's blocks with a ``block x block`` matrix: 16 costs
about what the output scaling it saves did. A fused attention's output needs none: where a block fits in a head, V's
weights are rotated instead (:func:`folded_rotations`; 1.42 -> 1.37 ms at batch 1, 30.2 -> 29.2 ms at 32 on
MiniLM).

Measured on the MiniLM CoLA teachers (docs/export.md): per-token alone leaves a logit MSE of 0.004 against fp32 and
keeps 98.7% of the tuning labels (the tuner then kept 9 and 19 of 38 products fp32); rotated in blocks of 16 the MSE
falls to 0.0005 and 99.4-99.65% of the labels stay, in blocks of 64 to 0.0003-0.0004.

Everything here needs onnx and onnxruntime, imported inside the functions.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdfast.export.attention import topological
from kdfast.export.quantize import UnpaddedReader, probe

OPSET = 21  # QuantizeLinear with a scale per block of values (here a token's): the quantized graph's opset
ZERO_POINT = 128  # uint8 activations centred: symmetric int8 in the form MLAS's u8 x s8 kernel takes
GPTQ_DAMP = 0.01  # share of H's mean diagonal added to it (GPTQ's dampening)
GPTQ_BLOCK = 128  # rows rounded per lazy update (GPTQ's block; changes speed, not the result)


def hadamard(n: int) -> np.ndarray:
    """The orthonormal Hadamard matrix of order ``n`` (a power of two; Sylvester's construction): symmetric, its own
    inverse."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Hadamard block must be a power of two, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def rotation(k: int, block: int) -> np.ndarray | None:
    """The K x K block-diagonal Hadamard that ``pertoken-h<block>`` applies to an activation of width ``k``; None
    when there is none (``block`` 0, or one that does not divide ``k``)."""
    if not block or k % block:
        return None
    return np.kron(np.eye(k // block), hadamard(block))


def weight_products(model: Any) -> dict[str, list[Any]]:
    """Activation tensor -> the ``MatMul`` nodes reading it with a constant 2-D float weight as input 1."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[0] in inits:
            continue
        w = inits.get(node.input[1])
        if w is not None and len(w.dims) == 2 and w.data_type == onnx.TensorProto.FLOAT:
            groups.setdefault(node.input[0], []).append(node)
    return groups


def input_moments(model_path: Path, reader: UnpaddedReader) -> dict[str, np.ndarray]:
    """``H = X^T X`` (float64, K x K) of every weight product's input over ``reader``'s sentences, each fed alone and
    unpadded: what GPTQ weighs rounding errors by."""
    import onnx

    model = onnx.load(str(model_path))
    acts = sorted(weight_products(model))
    sess = probe(model, acts)
    moments: dict[str, torch.Tensor] = {}
    reader.rewind()
    while (feeds := reader.get_next()) is not None:
        for name, value in zip(acts, sess.run(acts, feeds), strict=True):
            x = torch.from_numpy(value.reshape(-1, value.shape[-1])).double()
            moments[name] = moments[name] + x.T @ x if name in moments else x.T @ x
    return {name: h.numpy() for name, h in moments.items()}


def normalized_activations(model: Any) -> list[str]:
    """The weight products' inputs that a ``LayerNormalization`` writes (directly, or reshaped: GPT-2's products
    read their tokens flattened to 2-D): every token normalized, so that, rotated, one scale fits them all (the
    static part of ``pertoken-hB-lnS``)."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def normalized(name: str) -> bool:
        node = producer.get(name)
        while node is not None and node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            node = producer.get(node.input[0])
        return node is not None and node.op_type == "LayerNormalization"

    return [act for act in weight_products(model) if normalized(act)]


def rotated_absmax(model_path: Path, reader: UnpaddedReader, block: int) -> dict[str, float]:
    """The largest ``|x R|`` over ``reader``'s sentences (each fed alone, unpadded) of each of
    :func:`normalized_activations`, ``R`` the block-diagonal Hadamard of ``block`` (none where it does not divide the
    width): the static scale of each, times 127."""
    import onnx

    model = onnx.load(str(model_path))
    acts = normalized_activations(model)
    if not acts:
        return {}
    sess = probe(model, acts)
    top = dict.fromkeys(acts, 0.0)
    reader.rewind()
    while (feeds := reader.get_next()) is not None:
        for name, value in zip(acts, sess.run(acts, feeds), strict=True):
            x = value.reshape(-1, value.shape[-1]).astype(np.float64)
            if (rot := rotation(x.shape[1], block)) is not None:
                x = x @ rot
            top[name] = max(top[name], float(np.abs(x).max()))
    return top


def gptq_int8(w: np.ndarray, h: np.ndarray, damp: float = GPTQ_DAMP, block: int = GPTQ_BLOCK
              ) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ for ``x @ w`` (``w``: K x N): int8 codes (K x N, in [-127, 127]) and one scale per output column
    (absmax / 127, fixed before rounding), each input row rounded in turn and its error compensated on the rows not
    yet rounded through the inverse of ``h`` (K x K, the input's second moments). With ``h`` the identity this is
    plain rounding."""
    W = torch.from_numpy(w.T.astype(np.float64)).clone()  # N x K: GPTQ's layout, a row per output
    H = torch.from_numpy(np.asarray(h, np.float64)).clone()
    k = W.shape[1]
    scale = W.abs().amax(dim=1).clamp_min(1e-12) / 127
    dead = torch.diag(H) == 0  # an input never nonzero: its weights cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k, dtype=H.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros_like(W)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, err1, h1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1, dtype=W.dtype), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            q = torch.clamp(torch.round(col / scale), -127, 127)
            codes[:, i1 + i] = q
            err = (col - q * scale) / h1[i, i]
            w1[:, i:] -= err[:, None] * h1[i, i:][None, :]
            err1[:, i] = err
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return codes.T.numpy().astype(np.int8), scale.numpy().astype(np.float32)


def load_source(path: Path) -> tuple[Any, dict[str, int], dict[str, tuple[str, ...]]]:
    """``path``'s model at :data:`OPSET`, the rank of each of its tensors that ONNX's shape inference can tell
    (dimensions may stay symbolic), and for each tensor whose leading dimensions ONNX Runtime's symbolic shape
    inference proves, those dimensions (all but the last) as names: two tensors with the same names have the same
    leading shape at run time, so their per-token quantizers can share one zero point. Its nodes in computing order
    (:func:`kdfast.export.attention.topological`). Read, sorted, inferred and converted once per file
    (:func:`_source`): the tuner builds many candidates from one, and the conversion alone is half a build."""
    import onnx

    st = path.stat()
    data, ranks, leads = _source(str(path), st.st_mtime_ns, st.st_size)
    return onnx.load_from_string(data), ranks, leads


@functools.lru_cache(maxsize=1)
def _source(path: str, mtime_ns: int, size: int) -> tuple[bytes, dict[str, int], dict[str, tuple[str, ...]]]:
    import onnx
    from onnx import version_converter

    model = onnx.load(path)
    ordered = topological(list(model.graph.node), {i.name for i in [*model.graph.input, *model.graph.initializer]})
    del model.graph.node[:]
    model.graph.node.extend(ordered)  # the quantizers go right after their activation's producer: computing order
    ranks, leads = tensor_shapes(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset < OPSET:  # QuantizeLinear's scale per block of values: opset 21
        model = version_converter.convert_version(model, OPSET)
        # the converter leaves its inferred shapes in the graph; with them ONNX Runtime fuses each bias + residual +
        # LayerNorm into SkipLayerNormalization, 3x slower on CPU than the three ops it replaces (MiniLM, batch 32)
        del model.graph.value_info[:]
    return model.SerializeToString(), ranks, leads


def tensor_shapes(model: Any) -> tuple[dict[str, int], dict[str, tuple[str, ...]]]:
    """The rank of each tensor shape inference can tell, and the leading dimensions (all but the last, each a symbol
    or a number; equal names: equal sizes at run time) of each whose dimensions it names all. ONNX Runtime's symbolic
    shape inference, which knows its own operators (a fused ``MultiHeadAttention``) and proves dimensions equal;
    ONNX's where it fails (then no zero point is shared, nothing else changes)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # an operator it does not know
        inferred, symbolic = onnx.shape_inference.infer_shapes(model), False
    else:
        symbolic = True
    ranks, leads = {}, {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if not v.type.tensor_type.HasField("shape"):
            continue
        dims = v.type.tensor_type.shape.dim
        ranks[v.name] = len(dims)
        if symbolic and dims and all(d.dim_param or d.HasField("dim_value") for d in dims):
            leads[v.name] = tuple(d.dim_param or str(d.dim_value) for d in dims[:-1])
    return ranks, leads


def folded_rotations(graph: Any, groups: dict[str, list[Any]], block: int) -> dict[str, tuple[str, str | None]]:
    """Attention outputs whose rotation can ride on the value projection's weights instead of running online:
    activation -> (the value product's weight, its bias or None). ``MultiHeadAttention`` mixes tokens, never
    channels, and keeps each head's channels together, so when a Hadamard block fits in a head (``head % block ==
    0``) rotating V's columns (``W_v R``, ``b_v R``) rotates the attention's output the same way: one rotation (three
    nodes) fewer per layer, the same products. Only where nothing else reads what changes: V, its weight and bias,
    and the output, read by the quantized products alone."""
    if not block:
        return {}
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    folds: dict[str, tuple[str, str | None]] = {}
    for act, nodes in groups.items():
        mha = producer.get(act)
        if (mha is None or mha.op_type != "MultiHeadAttention" or mha.output[0] != act or len(mha.input) < 3
                or not mha.input[2] or (len(mha.input) > 3 and mha.input[3]) or act in outputs
                or {id(n) for n in readers.get(act, [])} != {id(n) for n in nodes}):
            continue
        heads = next((a.i for a in mha.attribute if a.name == "num_heads"), 0)
        k = inits[nodes[0].input[1]].dims[0]
        v = mha.input[2]
        if not heads or k % heads or (k // heads) % block or len(readers.get(v, [])) != 1 or v in outputs:
            continue
        add, bias = producer.get(v), None
        if add is not None and add.op_type == "Add":
            bias = next((i for i in add.input if i in inits and list(inits[i].dims) == [k]), None)
            product = producer.get(next((i for i in add.input if i != bias), "")) if bias else None
            if product is None or len(readers.get(product.output[0], [])) != 1 or len(readers[bias]) != 1:
                continue
        else:
            product = add
        weight = inits.get(product.input[1]) if product is not None and product.op_type == "MatMul" else None
        if weight is None or list(weight.dims)[1:] != [k] or len(readers[weight.name]) != 1:
            continue
        folds[act] = (weight.name, bias)
    return folds


def quantize_pertoken_file(src: Path, dst: Path, exclude: Sequence[str], moments: dict[str, np.ndarray] | None,
                           memo: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] | None = None,
                           block: int = 0, static: dict[str, float] | None = None, static_block: int = 0) -> int:
    """Every ``MatMul`` with a constant 2-D weight but ``exclude`` turned per-token int8 (the module's docstring),
    each activation first rotated by :func:`rotation` (``block``, 0: none); weights by GPTQ over ``moments``
    (:func:`input_moments` of ``src``), or plainly rounded when None. ``memo`` keeps each weight's codes between
    calls on the same ``src`` (the tuner builds many candidates). Returns how many products were quantized.

    ``static``: activations quantized with one scale instead (their absmax over calibration, rotated in blocks of
    ``static_block``: :func:`rotated_absmax`): a ``QuantizeLinear`` with constant scale and zero point in place of
    the per-token ops, and their products' ``a_scale`` a scalar, so that ONNX Runtime scales inside its GEMM and adds
    a product's bias in it (a following ``Add`` of a constant vector moves into the product)."""
    import onnx
    from onnx import helper, numpy_helper

    model, ranks, leads = load_source(src)
    graph = model.graph
    produced = {out: i for i, node in enumerate(graph.node) for out in node.output}
    groups = {act: kept for act, nodes in sorted(weight_products(model).items(), key=lambda g: produced.get(g[0], -1))
              if (kept := [n for n in nodes if n.name not in exclude])}  # in the order they are computed
    inits = {i.name: i for i in graph.initializer}
    consts = [numpy_helper.from_array(np.array(v, dtype), name) for name, v, dtype in (
        ("pertoken_eps", 1e-12, np.float32), ("pertoken_step", 1 / 127, np.float32),
        ("pertoken_huge", np.finfo(np.float32).max, np.float32), ("pertoken_axes", [-1], np.int64),
        ("pertoken_zp", ZERO_POINT, np.uint8), ("pertoken_wzp", 0, np.int8))]
    static = static or {}
    for size in {block, *([static_block] if static else [])} - {0}:
        consts.append(numpy_helper.from_array(hadamard(size).astype(np.float32), f"pertoken_hadamard{size}"))
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    outputs = {o.name for o in graph.output}

    def reduce(op: str, x: str, y: str) -> Any:
        return helper.make_node(op, [x, "pertoken_axes"], [y], name=y, keepdims=1)

    folds = folded_rotations(graph, groups, block)
    folded = {name for pair in folds.values() for name in pair if name}  # weights and biases carrying a rotation
    for act, (weight, bias) in folds.items():
        rot = rotation(inits[groups[act][0].input[1]].dims[0], block)
        for name in (weight, bias):
            if name:
                inits[name].CopyFrom(numpy_helper.from_array(
                    (numpy_helper.to_array(inits[name]).astype(np.float64) @ rot).astype(np.float32), name))
    after: dict[str, list[Any]] = {}  # activation -> the nodes quantizing it, placed right after its producer
    replaced: dict[str, list[Any]] = {}  # product's name -> the nodes computing it
    zero_points: dict[tuple[str, ...], str] = {}  # leading dimensions -> the zero point quantized for them
    memo = {} if memo is None else memo
    for act, nodes in groups.items():
        p = f"{act}_pertoken"
        k = inits[nodes[0].input[1]].dims[0]
        fixed = static.get(act)  # its static absmax, or None: per token
        size = static_block if fixed is not None else block
        rot = rotation(k, size)
        x, rotate = act, []
        if rot is not None and act not in folds:  # (..., K) -> (..., K/block, block) @ H -> (..., K)
            x = f"{p}_rotated"
            lead = [0] * (ranks[act] - 1) if act in ranks else None  # Reshape's 0: that dimension as it was
            if lead is None:  # rank unknown: the shape back from a Shape op
                consts.append(numpy_helper.from_array(np.array([-1, size], np.int64), f"{p}_split"))
                rotate = [helper.make_node("Shape", [act], [f"{p}_shape"], name=f"{p}_shape")]
                back = f"{p}_shape"
            else:
                consts += [numpy_helper.from_array(np.array([*lead, -1, size], np.int64), f"{p}_split"),
                           numpy_helper.from_array(np.array([*lead, k], np.int64), f"{p}_join")]
                back = f"{p}_join"
            rotate += [helper.make_node("Reshape", [act, f"{p}_split"], [f"{p}_blocks"], name=f"{p}_blocks"),
                       helper.make_node("MatMul", [f"{p}_blocks", f"pertoken_hadamard{size}"], [f"{p}_blocks_rotated"],
                                        name=f"{p}_blocks_rotated"),
                       helper.make_node("Reshape", [f"{p}_blocks_rotated", back], [x], name=x)]
        if fixed is not None:  # one scale: the calibrated absmax over 127, the scalar zero point
            m = max(fixed, 1e-12)
            consts += [numpy_helper.from_array(np.array(m / 127, np.float32), f"{p}_fixed_step"),
                       numpy_helper.from_array(np.array(m, np.float32), f"{p}_fixed_absmax")]
            after[act] = [*rotate, helper.make_node("QuantizeLinear", [x, f"{p}_fixed_step", "pertoken_zp"],
                                                    [f"{p}_q"], name=f"{p}_q")]
            a_scale = f"{p}_fixed_absmax"
        else:
            # a blocked zero point has the scale's shape: round(m / FLT_MAX) + 128 = 128, quantized once for all the
            # activations whose leading dimensions are provably equal (the first of them computed makes it)
            lead = leads.get(act)
            zp = zero_points.get(lead) if lead is not None else None
            quantize_zp = [] if zp is not None else [helper.make_node(
                "QuantizeLinear", [f"{p}_absmax", "pertoken_huge", "pertoken_zp"], [f"{p}_zp"], name=f"{p}_zp")]
            if zp is None:
                zp = f"{p}_zp"
                if lead is not None:
                    zero_points[lead] = zp
            after[act] = [  # m: the token's absmax; q = round(x / (m / 127)) + 128, one scale per block of k values
                *rotate,    # (a token); the product's a_scale m, its weights' scales over 127
                reduce("ReduceMax", x, f"{p}_max"),
                reduce("ReduceMin", x, f"{p}_min"),
                helper.make_node("Neg", [f"{p}_min"], [f"{p}_neg"], name=f"{p}_neg"),
                helper.make_node("Max", [f"{p}_max", f"{p}_neg", "pertoken_eps"], [f"{p}_absmax"],
                                 name=f"{p}_absmax"),
                helper.make_node("Mul", [f"{p}_absmax", "pertoken_step"], [f"{p}_step"], name=f"{p}_step"),
                *quantize_zp,
                helper.make_node("QuantizeLinear", [x, f"{p}_step", zp], [f"{p}_q"], name=f"{p}_q",
                                 axis=-1, block_size=k)]
            a_scale = f"{p}_absmax"
        for node in nodes:
            weight = node.input[1] + ("@rotated" if node.input[1] in folded else "")
            key = (str(src), weight, size if fixed is None else -size)  # a static activation's own rotation
            if key not in memo:
                w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
                h = moments[act] if moments is not None else np.eye(k)
                if rot is not None:  # an input never nonzero: its weights cannot matter, and rotated they would
                    w[np.diag(h) == 0] = 0  # widen their block's columns' scales
                    w, h = rot.T @ w, rot.T @ h @ rot
                memo[key] = gptq_int8(w, h)
            codes, scale = memo[key]
            n = node.name
            consts += [numpy_helper.from_array(codes, f"{n}_codes"),
                       numpy_helper.from_array(scale / np.float32(127), f"{n}_wscale")]
            out, bias = node.output[0], ""
            if fixed is not None:  # a scalar a_scale: ONNX Runtime adds the bias right, after scaling
                add = readers.get(out, [])
                if len(add) == 1 and add[0].op_type == "Add" and out not in outputs:
                    b = next((i for i in add[0].input if i != out and i in inits
                              and list(inits[i].dims) == [inits[node.input[1]].dims[1]]), None)
                    if b is not None:
                        out, bias = add[0].output[0], b
                        replaced[add[0].name or f"{out}_bias_add"] = []
                        add[0].name = add[0].name or f"{out}_bias_add"
            replaced[n] = [helper.make_node(  # a_scale of shape (..., 1): the output scaled per token in the op
                "MatMulIntegerToFloat", [f"{p}_q", f"{n}_codes", a_scale, f"{n}_wscale", "pertoken_zp",
                                         "pertoken_wzp", *([bias] if bias else [])], [out], name=n,
                domain="com.microsoft")]
    nodes_out = [x for i in graph.input if i.name in after for x in after.pop(i.name)]
    for node in graph.node:
        nodes_out.extend(replaced.get(node.name, [node]))
        for out in node.output:
            nodes_out.extend(after.pop(out, []))
    used = {i for node in nodes_out for i in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + [c for c in consts if c.name in used])
    del graph.node[:]
    graph.node.extend(nodes_out)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    return sum(1 for nodes in replaced.values() if nodes)  # the products (a bias moved inside one: removed)
