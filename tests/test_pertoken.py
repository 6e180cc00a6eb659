"""kdfast.export.pertoken: per-token int8 equals its numpy reference, rotated or not, and the rotation spreads an
outlier channel's cost; GPTQ beats plain rounding where inputs are correlated (and is plain rounding where they are
not); that a sentence's answer does not depend on its batch-mates is tested with blockwise's in tests/test_int8.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kdfast.batching import pad_batch
from kdfast.export.int8 import session
from kdfast.export.pertoken import ZERO_POINT, gptq_int8, hadamard, input_moments, quantize_pertoken_file, rotation
from kdfast.export.quantize import UnpaddedReader


def one_product(path: Path, w: np.ndarray, shared: int = 1, opset: int = 17) -> None:
    """y_i = x @ w_i for ``shared`` copies of w reading one input x of shape (B, T, K)."""
    k, n = w.shape
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(shared)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", k])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["B", "T", n])
                               for i in range(shared)],
                              [numpy_helper.from_array(w, f"w{i}") for i in range(shared)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))


def token_quantizers(model: onnx.ModelProto) -> list[int]:
    """The block size of each activation's quantizer (a scale per token: the activation's width)."""
    return [a.i for n in model.graph.node if n.op_type == "QuantizeLinear"
            for a in n.attribute if a.name == "block_size"]


def reference(x: np.ndarray, w: np.ndarray, block: int = 0) -> np.ndarray:
    """Per-token symmetric int8 activations times per-column int8 weights, in numpy, step by step as documented;
    with ``block``, x rotated by the block-diagonal Hadamard first and w the other way."""
    x = x.astype(np.float32)
    if block and x.shape[-1] % block == 0:
        h = hadamard(block).astype(np.float32)
        x = (x.reshape(-1, block) @ h).reshape(x.shape)
        w = (np.kron(np.eye(w.shape[0] // block), hadamard(block)).T @ w).astype(np.float32)
    m = np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(1e-12))  # the token's absmax
    scale = m * np.float32(1 / 127)
    q = np.clip(np.round(x / scale) + ZERO_POINT, 0, 255).astype(np.int64) - ZERO_POINT
    wscale = (np.abs(w).max(0) / 127).astype(np.float32)
    codes = np.clip(np.round(w / wscale), -127, 127).astype(np.int64)
    return (q @ codes).astype(np.float32) * wscale * scale


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMax's axes: an attribute, then an input
def test_pertoken_equals_its_reference(opset: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 48)).astype(np.float32)
    x = rng.normal(size=(3, 5, 64)).astype(np.float32)
    x[0, 1, 7] = 40.0  # one outlier: it coarsens its own token's scale only
    x[2, 4] = 0.0  # an all-zero token stays zero
    x[1, 2] = np.abs(x[1, 2])  # a one-signed token
    one_product(tmp_path / "fp32.onnx", w, shared=2, opset=opset)
    assert quantize_pertoken_file(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", [], None) == 2
    model = onnx.load(str(tmp_path / "int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 and token_quantizers(model) == [64]  # x quantized once for both
    assert next(o.version for o in model.opset_import if o.domain == "") == 21  # converted: blocked QuantizeLinear
    assert not model.graph.value_info  # the converter's shapes dropped: ONNX Runtime would fuse a slower LayerNorm
    y0, y1 = session(tmp_path / "int8.onnx").run(["y0", "y1"], {"x": x})
    want = reference(x, w)
    np.testing.assert_allclose(y0, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y0, y1)
    assert np.all(y0[2, 4] == 0)
    exact = x @ w  # and int8 is close to fp32, token by token, the outlier's token included
    err = np.abs(y0 - exact).max(-1) / np.abs(exact).max(-1).clip(1e-6)
    assert err[np.abs(exact).max(-1) > 0].max() < 0.05


@pytest.mark.parametrize("opset", [17, 18])
def test_rotated_pertoken_equals_its_reference(opset: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    w = rng.normal(size=(64, 48)).astype(np.float32)
    x = rng.normal(size=(3, 5, 64)).astype(np.float32)
    x[..., 7] *= 30  # an outlier channel in every token
    x[2, 4] = 0.0
    one_product(tmp_path / "fp32.onnx", w, shared=2, opset=opset)
    assert quantize_pertoken_file(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", [], None, block=16) == 2
    model = onnx.load(str(tmp_path / "int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 1 and token_quantizers(model) == [64]  # rotated once, for both products
    y0, y1 = session(tmp_path / "int8.onnx").run(["y0", "y1"], {"x": x})
    np.testing.assert_allclose(y0, reference(x, w, 16), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(y0, y1)
    assert np.all(y0[2, 4] == 0)
    # the rotation spreads channel 7 over its block: every token's int8 step is finer, the product closer to fp32
    quantize_pertoken_file(tmp_path / "fp32.onnx", tmp_path / "plain.onnx", [], None)
    plain = session(tmp_path / "plain.onnx").run(["y0"], {"x": x})[0]
    exact = x @ w
    assert np.square(y0 - exact).mean() < 0.25 * np.square(plain - exact).mean()


def test_hadamard_blocks() -> None:
    for n in (1, 2, 16, 64):
        h = hadamard(n)
        np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-12)
        np.testing.assert_allclose(h, h.T)
    with pytest.raises(ValueError, match="power of two"):
        hadamard(24)
    r = rotation(48, 16)
    assert r is not None and r.shape == (48, 48)
    np.testing.assert_allclose(r @ r.T, np.eye(48), atol=1e-12)
    assert rotation(40, 16) is None and rotation(48, 0) is None  # a width the block does not divide stays as it is


def test_rotation_of_any_rank_and_one_memo_across_blocks(tmp_path: Path) -> None:
    """A 2-D activation (a classifier head's), and one whose rank shape inference cannot tell (the Shape op's path),
    both equal the reference; one memo shared by builds with blocks 0, 16 and 0 again keeps each block's codes apart."""
    rng = np.random.default_rng(6)
    w = rng.normal(size=(32, 8)).astype(np.float32)
    x2 = rng.normal(size=(4, 32)).astype(np.float32)
    for name, dims in (("two-d", [4, 32]), ("unknown", None)):
        node = helper.make_node("MatMul", ["x", "w0"], ["y0"], name="mm0")
        x_info = (helper.make_tensor_value_info("x", TensorProto.FLOAT, dims) if dims else
                  helper.make_tensor_value_info("x", TensorProto.FLOAT, None))
        graph = helper.make_graph([node], "g", [x_info], [helper.make_tensor_value_info("y0", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w, "w0")])
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        memo: dict = {}
        for block in (0, 16, 0):
            quantize_pertoken_file(path, tmp_path / f"{name}-{block}.onnx", [], None, memo, block=block)
            ops = [n.op_type for n in onnx.load(str(tmp_path / f"{name}-{block}.onnx")).graph.node]
            assert ("Shape" in ops) == (block > 0 and dims is None), (name, block)
            y = session(tmp_path / f"{name}-{block}.onnx").run(["y0"], {"x": x2})[0]
            np.testing.assert_allclose(y, reference(x2, w, block), rtol=1e-4, atol=1e-4, err_msg=f"{name} {block}")
        assert sorted(k[2] for k in memo) == [0, 16]


def test_weights_of_a_dead_input_do_not_enter_the_rotation(tmp_path: Path) -> None:
    """An input channel never nonzero in calibration (H's diagonal 0) whose weights are huge: rotated in, they would
    set every column's int8 step of their block; zeroed first, the product stays as close as without them."""
    rng = np.random.default_rng(7)
    w = rng.normal(size=(32, 8)).astype(np.float32)
    w[3] = 1000.0
    x = rng.normal(size=(2, 5, 32)).astype(np.float32)
    x[..., 3] = 0.0
    one_product(tmp_path / "fp32.onnx", w)
    flat = x.reshape(-1, 32).astype(np.float64)
    quantize_pertoken_file(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", [], {"x": flat.T @ flat}, block=16)
    y = session(tmp_path / "int8.onnx").run(["y0"], {"x": x})[0]
    exact = x @ w
    assert np.abs(y - exact).max() < 0.05 * np.abs(exact).max()


def test_a_width_the_block_does_not_divide_is_not_rotated(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    w = rng.normal(size=(40, 8)).astype(np.float32)
    x = rng.normal(size=(2, 3, 40)).astype(np.float32)
    one_product(tmp_path / "fp32.onnx", w)
    quantize_pertoken_file(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", [], None, block=16)
    y = session(tmp_path / "int8.onnx").run(["y0"], {"x": x})[0]
    np.testing.assert_allclose(y, reference(x, w), rtol=1e-5, atol=1e-5)


def test_excluded_products_stay_fp32(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(32, 16)).astype(np.float32)
    one_product(tmp_path / "fp32.onnx", w, shared=2)
    assert quantize_pertoken_file(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", ["mm1"], None) == 1
    x = rng.normal(size=(2, 3, 32)).astype(np.float32)
    y0, y1 = session(tmp_path / "int8.onnx").run(["y0", "y1"], {"x": x})
    np.testing.assert_allclose(y1, x @ w, rtol=1e-5, atol=1e-5)  # fp32, exactly the product
    np.testing.assert_allclose(y0, reference(x, w), rtol=1e-5, atol=1e-5)


def test_gptq_is_plain_rounding_for_uncorrelated_inputs_and_beats_it_for_correlated_ones() -> None:
    rng = np.random.default_rng(2)
    k, n = 96, 40
    w = rng.normal(size=(k, n))
    plain_codes, plain_scale = gptq_int8(w, np.eye(k), damp=0.0)
    np.testing.assert_array_equal(plain_codes, np.clip(np.round(w / (np.abs(w).max(0) / 127)), -127, 127))
    np.testing.assert_allclose(plain_scale, np.abs(w).max(0) / 127, rtol=1e-6)
    # inputs with a few strong shared directions, as a transformer's hidden states have
    x = rng.normal(size=(4000, 8)) @ rng.normal(size=(8, k)) + 0.1 * rng.normal(size=(4000, k))
    codes, scale = gptq_int8(w, x.T @ x)
    assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= 127
    np.testing.assert_allclose(scale, plain_scale, rtol=1e-6)  # the same grid: only the rounding differs

    def output_error(c: np.ndarray, s: np.ndarray) -> float:
        return float(np.square(x @ w - x @ (c * s)).mean())

    assert output_error(codes, scale) < 0.5 * output_error(plain_codes, plain_scale)


def test_input_moments_are_of_real_tokens_only(tmp_path: Path) -> None:
    """X^T X summed over unpadded sentences: a padded position never enters GPTQ's weighting."""
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(20, 8)).astype(np.float32)
    w = rng.normal(size=(8, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["logits"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", 4])],
                              [numpy_helper.from_array(emb, "table"), numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    rows = [[1, 2, 3], [4, 5], [6]]
    reader = UnpaddedReader([pad_batch(rows, 0)], ["input_ids"])
    h = input_moments(tmp_path / "m.onnx", reader)["h"]
    tokens = emb[[t for r in rows for t in r]].astype(np.float64)
    np.testing.assert_allclose(h, tokens.T @ tokens, rtol=1e-6)


def test_one_zero_point_per_leading_shape(tmp_path: Path) -> None:
    """The blocked quantizer's zero point (the scale's shape: the activation's but the last dimension) is quantized
    once for activations whose leading dimensions symbolic shape inference proves equal, and the products still
    equal the reference: x (B, T, 64) and relu(x @ w0) (B, T, 64) share one; mean(x) over T (B, 64) has its own, and
    so does y, whose leading dimensions inference cannot tell."""
    rng = np.random.default_rng(8)
    w0, w1, w2 = (rng.normal(size=(64, n)).astype(np.float32) for n in (64, 48, 8))
    w3 = rng.normal(size=(8, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
             helper.make_node("Relu", ["h0"], ["r"]),
             helper.make_node("MatMul", ["r", "w1"], ["y1"], name="mm1"),
             helper.make_node("ReduceMean", ["x"], ["p"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["p", "w2"], ["y2"], name="mm2"),
             helper.make_node("Reshape", ["y2", "shape"], ["u"]),  # (B, 8) -> (-1, 8): unknown to inference
             helper.make_node("MatMul", ["u", "w3"], ["y3"], name="mm3")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 64]),
                     helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in ("h0", "y1", "y2", "y3")],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate((w0, w1, w2, w3))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "fp32.onnx"))
    assert quantize_pertoken_file(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", [], None) == 4
    model = onnx.load(str(tmp_path / "int8.onnx"))
    assert len(token_quantizers(model)) == 4  # one quantizer per activation, three zero points among them
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == 4 + 3
    x = rng.normal(size=(3, 5, 64)).astype(np.float32)
    h0, y1, y2, y3 = session(tmp_path / "int8.onnx").run(["h0", "y1", "y2", "y3"],
                                                         {"x": x, "shape": np.array([-1, 8])})
    np.testing.assert_allclose(h0, reference(x, w0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y1, reference(np.maximum(h0, 0), w1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y2, reference(x.mean(1), w2), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y3, reference(y2, w3), rtol=1e-4, atol=1e-4)


def rotations(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The online rotations: products with a Hadamard block."""
    return [n for n in model.graph.node if any(i.startswith("pertoken_hadamard") for i in n.input)]


def attention_graph(path: Path, rng: np.random.Generator, heads: int, ctx_read_twice: bool = False) -> None:
    """x (B, T, 64) -> q, k, v products (v with a bias) -> MultiHeadAttention(heads) -> ctx -> ctx @ wo = y."""
    w = {n: rng.normal(size=(64, 64)).astype(np.float32) / 8 for n in ("wq", "wk", "wv", "wo")}
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="mq"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="mk"),
             helper.make_node("MatMul", ["x", "wv"], ["v0"], name="mv"),
             helper.make_node("Add", ["v0", "bv"], ["v"]),
             helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["ctx"], domain="com.microsoft", num_heads=heads),
             helper.make_node("MatMul", ["ctx", "wo"], ["y"], name="mo")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if ctx_read_twice:
        nodes.append(helper.make_node("Relu", ["ctx"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits.append(numpy_helper.from_array(rng.normal(size=64).astype(np.float32), "bv"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 64])],
                              outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(
        "com.microsoft", 1)]), str(path))


def test_the_attention_outputs_rotation_rides_on_the_value_weights(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 16 inside heads of 32: the attention output is rotated by rotating V's weights and bias (one online
    rotation fewer) and the output projection computes what it computes with the rotation online; heads of 8, or
    an output something else reads too, keep the rotation online."""
    import kdfast.export.pertoken as pertoken

    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 6, 64)).astype(np.float32)
    attention_graph(tmp_path / "fp32.onnx", rng, heads=2)
    exact = session(tmp_path / "fp32.onnx").run(["y"], {"x": x})[0]
    fp32_v = ["mq", "mk", "mv"]  # V's product fp32 (its weights rotated in fp32): only the output projection int8
    assert quantize_pertoken_file(tmp_path / "fp32.onnx", tmp_path / "folded.onnx", fp32_v, None, block=16) == 1
    assert not rotations(onnx.load(str(tmp_path / "folded.onnx")))  # the output's rotation is in V's weights
    with monkeypatch.context() as m:
        m.setattr(pertoken, "folded_rotations", lambda *a: {})
        quantize_pertoken_file(tmp_path / "fp32.onnx", tmp_path / "online.onnx", fp32_v, None, block=16)
    assert len(rotations(onnx.load(str(tmp_path / "online.onnx")))) == 1
    folded = session(tmp_path / "folded.onnx").run(["y"], {"x": x})[0]
    online = session(tmp_path / "online.onnx").run(["y"], {"x": x})[0]
    np.testing.assert_allclose(folded, online, rtol=0, atol=0.02 * np.abs(exact).max())  # a code may round over
    assert np.abs(folded - exact).max() < 0.03 * np.abs(exact).max()
    every = quantize_pertoken_file(tmp_path / "fp32.onnx", tmp_path / "all.onnx", [], None, block=16)
    y = session(tmp_path / "all.onnx").run(["y"], {"x": x})[0]  # V's product int8 too, on the rotated weights
    assert every == 4 and np.abs(y - exact).max() < 0.05 * np.abs(exact).max()
    for heads, twice in ((8, False), (2, True)):  # heads of 8 values; the output also read by a Relu
        attention_graph(tmp_path / "other.onnx", np.random.default_rng(9), heads=heads, ctx_read_twice=twice)
        quantize_pertoken_file(tmp_path / "other.onnx", tmp_path / "other-int8.onnx", fp32_v, None, block=16)
        model = onnx.load(str(tmp_path / "other-int8.onnx"))
        assert len(rotations(model)) == 1, (heads, twice)


class Feeds:
    """A calibration reader over fixed feeds (``rewind``/``get_next``, as ``UnpaddedReader``)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self.i = feeds, 0

    def rewind(self) -> None:
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.i += 1
        return self.feeds[self.i - 1] if self.i <= len(self.feeds) else None


def test_a_layernorm_output_quantized_with_one_calibrated_scale(tmp_path: Path) -> None:
    """``pertoken-hB-lnS``'s static part: a LayerNorm output, rotated in blocks of S, quantized with one scale (its
    calibrated absmax over 127: :func:`rotated_absmax`) by one QuantizeLinear, no per-token ops; its products take a
    scalar a_scale and the bias that followed one moves inside it; the result equals the numpy reference, a token
    beyond the calibrated range saturating; the other activation (after a Relu) stays per token."""
    from kdfast.export.pertoken import normalized_activations, rotated_absmax

    rng = np.random.default_rng(10)
    k = 64
    w0, w1, w2 = (rng.normal(size=(k, n)).astype(np.float32) for n in (48, 16, 8))
    gamma = rng.uniform(0.5, 2, k).astype(np.float32)
    gamma[5] = 12.0  # an outlier channel, as BERT's LayerNorms have
    beta, b0 = rng.normal(size=k).astype(np.float32), rng.normal(size=48).astype(np.float32)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["y", "w0"], ["p0"], name="mm0"),
             helper.make_node("Add", ["p0", "b0"], ["y0"], name="bias0"),
             helper.make_node("MatMul", ["y", "w1"], ["y1"], name="mm1"),
             helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y2"], name="mm2")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", k])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in ("y0", "y1", "y2")],
        [numpy_helper.from_array(v, n) for n, v in (("gamma", gamma), ("beta", beta), ("b0", b0), ("w0", w0),
                                                   ("w1", w1), ("w2", w2))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "fp32.onnx"))
    assert normalized_activations(onnx.load(str(tmp_path / "fp32.onnx"))) == ["y"]
    calibration = [{"x": rng.normal(size=(1, n, k)).astype(np.float32)} for n in (3, 7, 5)]
    absmax = rotated_absmax(tmp_path / "fp32.onnx", Feeds(calibration), 16)  # type: ignore[arg-type]
    assert set(absmax) == {"y"} and absmax["y"] > 0
    assert quantize_pertoken_file(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", [], None, block=16,
                                  static=absmax, static_block=16) == 3
    model = onnx.load(str(tmp_path / "int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ReduceMax") == 1 and token_quantizers(model) == [k]  # only r per token
    assert not any(n.name == "bias0" for n in model.graph.node)  # the bias is inside mm0
    x = rng.normal(size=(2, 6, k)).astype(np.float32)
    x[1, 2] *= 40  # normalized anyway: LayerNorm
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ln = ((x - mean) / np.sqrt(var + 1e-5) * gamma + beta).astype(np.float32)
    h = np.kron(np.eye(k // 16), hadamard(16)).astype(np.float32)
    z = ln @ h
    step = np.float32(absmax["y"] / 127)
    inside = np.abs(z).max(-1) <= absmax["y"]
    assert inside.any() and not inside.all()  # some tokens saturate: the reference clips them as int8 does
    q = np.clip(np.round(z / step) + ZERO_POINT, 0, 255).astype(np.int64) - ZERO_POINT
    got0, got1, got2 = session(tmp_path / "int8.onnx").run(["y0", "y1", "y2"], {"x": x})
    for got, w, b in ((got0, w0, b0), (got1, w1, 0)):
        wr = (h.T @ w).astype(np.float32)
        wscale = (np.abs(wr).max(0) / 127).astype(np.float32)
        codes = np.clip(np.round(wr / wscale), -127, 127).astype(np.int64)
        np.testing.assert_allclose(got, (q @ codes).astype(np.float32) * wscale * step + b, rtol=1e-4, atol=1e-3)
        exact = ln @ w + b  # close to fp32 where the token is inside the calibrated range
        assert np.abs(got - exact)[inside].max() < 0.05 * np.abs(exact).max()
    np.testing.assert_allclose(got2, reference(np.maximum(ln, 0), w2, 16), rtol=1e-4, atol=1e-4)
