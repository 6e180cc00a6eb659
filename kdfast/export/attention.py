"""Fuse the attention of transformers 5 exports into ONNX Runtime's ``MultiHeadAttention`` (com.microsoft).

ONNX Runtime's transformer optimizer fuses attention by matching the graphs older transformers exported; transformers
5 builds its attention mask once, as a 4-D additive tensor (batch, 1, query, key) shared by every layer, and its
GPT-2 and BERT optimizers then fuse nothing. Exported with eager attention, each layer still holds the plain chain

    q, k, v (B, S, D) ─ Reshape (B, S, N, H) ─ Transpose: q (B, N, S, H), k (B, N, H, S), v (B, N, S, H)
    MatMul(q, k) ─ Mul(scale) ─ Add(mask) ─ Softmax [─ Cast to float] ─ MatMul(·, v) ─ Transpose (B, S, N, H)
    ─ Reshape (B, S, D)

which is exactly ``MultiHeadAttention(q, k, v, attention_bias=mask, num_heads=N, scale=scale)``: one node in place
of about twenty small ones per layer. ``fuse_attention`` rewrites every chain that matches this shape exactly
(permutations, a constant scalar scale, Softmax on the last axis, single consumers along the chain, except the
``Shape`` reads of a raw export whose results only make the final Reshape's target) and leaves any other graph alone;
export's parity check then holds the fused model to the same tolerance as the unfused one. The int8 recipes that
quantize weight products one by one (blockwise, per-token) quantize the fused graph too
(:func:`kdfast.export.quantize.matmul_graph`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Q_PERM, K_PERM, OUT_PERM = [0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]
FLOAT = 1  # onnx.TensorProto.FLOAT
SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Mul", "Div", "Add", "Sub"}


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fuse_attention(model: Any, num_heads: int) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``) in place; returns the number of attention layers fused."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer if int(np.prod(i.dims)) == 1}
    for n in graph.node:
        if n.op_type == "Constant" and _attr(n, "value") is not None and int(np.prod(_attr(n, "value").dims)) == 1:
            constants[n.output[0]] = numpy_helper.to_array(_attr(n, "value"))
    graph_outputs = {o.name for o in graph.output}

    def only(name: str, op: str) -> Any | None:
        """The producer of ``name`` when it is an ``op`` whose output feeds one node and no graph output."""
        node = producer.get(name)
        if node is None or node.op_type != op or len(consumers.get(node.output[0], [])) != 1:
            return None
        return None if node.output[0] in graph_outputs else node

    def head_split(name: str, perm: list[int]) -> tuple[Any, Any, str] | None:
        """Transpose(perm) of Reshape(x3d): (transpose, reshape, x3d)."""
        t = only(name, "Transpose")
        r = only(t.input[0], "Reshape") if t is not None and list(_attr(t, "perm", [])) == perm else None
        return (t, r, r.input[0]) if r is not None else None

    def only_shape_of(shape: Any, reshape: Any) -> bool:
        """Whether everything computed from ``shape``'s output ends in ``reshape``'s target shape (so it goes
        with it)."""
        todo, seen = [shape], set()
        while todo:
            node = todo.pop()
            for out in node.output:
                if out in graph_outputs:
                    return False
                for reader in consumers.get(out, []):
                    if reader is reshape and out == reshape.input[1]:
                        continue
                    if reader is reshape or id(reader) in seen or reader.op_type not in SHAPE_OPS:
                        return False
                    seen.add(id(reader))
                    todo.append(reader)
        return True

    fused, dead = 0, []
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        if _attr(softmax, "axis", -1) not in (-1, 3):
            continue
        add = only(softmax.input[0], "Add")
        if add is None:
            continue
        scaled = [i for i in add.input if (p := producer.get(i)) is not None and p.op_type == "Mul"]
        if len(scaled) != 1:
            continue
        mask = add.input[1] if add.input[0] == scaled[0] else add.input[0]
        mul = only(scaled[0], "Mul")
        if mul is None:
            continue
        scale_in = [i for i in mul.input if i in constants and np.asarray(constants[i]).size == 1]
        if len(scale_in) != 1:
            continue
        qk = only(mul.input[1] if mul.input[0] == scale_in[0] else mul.input[0], "MatMul")
        probs, after = softmax.output[0], consumers.get(softmax.output[0], [])
        cast = after[0] if len(after) == 1 and after[0].op_type == "Cast" and _attr(after[0], "to") == FLOAT else None
        if cast is not None:  # GPT-2's probabilities cast to the values' type: float to float, nothing
            probs, after = cast.output[0], consumers.get(cast.output[0], [])
        if qk is None or len(after) != 1 or after[0].op_type != "MatMul" or after[0].input[0] != probs:
            continue
        av = after[0]
        q, k, v = head_split(qk.input[0], Q_PERM), head_split(qk.input[1], K_PERM), head_split(av.input[1], Q_PERM)
        out_t = consumers.get(av.output[0], [])
        if q is None or k is None or v is None or len(out_t) != 1 or out_t[0].op_type != "Transpose":
            continue
        if {softmax.output[0], probs, av.output[0], out_t[0].output[0]} & graph_outputs:  # probabilities kept
            continue
        readers = consumers.get(out_t[0].output[0], [])
        out_r = [n for n in readers if n.op_type == "Reshape"]
        shapes = [n for n in readers if n.op_type == "Shape"]  # the raw export's target shape, read off it
        if (list(_attr(out_t[0], "perm", [])) != OUT_PERM or len(out_r) != 1 or len(out_r) + len(shapes) != len(readers)
                or not all(only_shape_of(s, out_r[0]) for s in shapes)):
            continue
        scale = float(np.asarray(constants[scale_in[0]]).reshape(()))
        graph.node.append(helper.make_node(
            "MultiHeadAttention", [q[2], k[2], v[2], "", "", mask], [out_r[0].output[0]],
            name=f"{softmax.name}/MultiHeadAttention", domain="com.microsoft", num_heads=num_heads, scale=scale))
        dead += [add, mul, qk, softmax, av, out_t[0], out_r[0], *q[:2], *k[:2], *v[:2], *([cast] if cast else [])]
        fused += 1
    if not fused:
        return 0
    gone = {id(n) for n in dead}
    kept = [n for n in graph.node if id(n) not in gone]
    del graph.node[:]
    graph.node.extend(topological(kept, {i.name for i in graph.input} | {i.name for i in graph.initializer}))
    _drop_unused(graph)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused


def topological(nodes: list[Any], available: set[str]) -> list[Any]:
    """``nodes`` in an order where every input is produced before it is read (``available``: the graph's inputs and
    initializers): in waves, each the nodes whose inputs are ready, in their original order. The fused nodes were
    appended; the per-token quantizer places its nodes, and shares its zero points, by this order. (Before, only
    scalar initializers counted as available, so every node reading a weight kept its place, the fused attentions
    last, after the products that read them: ONNX Runtime sorts a graph itself, so it ran.)"""
    ready, order, pending = set(available) | {""}, [], list(nodes)
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        if len(rest) == len(pending):  # inputs no node produces (outer-scope names): keep the original order
            return order + rest
        order += [n for n in pending if all(i in ready for i in n.input)]
        ready |= {o for n in order for o in n.output}
        pending = rest
    return order


def _drop_unused(graph: Any) -> None:
    """Remove nodes (shape arithmetic of the old chains) whose outputs nothing reads, and unread initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        unused = [n for n in graph.node if not any(o in read for o in n.output)]
        if not unused:
            break
        for n in unused:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)
