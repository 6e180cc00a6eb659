"""kdfast.export.int8: accuracy-aware int8 tuning on the tiny teacher; calibration reads training sentences only and
never padding; a rule nothing meets fails with every candidate's numbers and writes nothing."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # noqa: F401  # needed: a missing onnxruntime fails these tests, it does not skip them
import pytest
import torch

from kdfast.batching import pad_batch
from kdfast.data import Dataset, Example, load_dataset
from kdfast.errors import KdfastError
from kdfast.export.int8 import (
    RECIPES,
    CalibrationSet,
    Candidate,
    Int8Config,
    TuneInputs,
    Tuner,
    fallback_steps,
    p50_ms,
    sentences_sha256,
    session,
    wilson_lower,
)
from kdfast.export.onnx import MANIFEST, ExportConfig, ParityError, load_teacher_for_export, run
from kdfast.export.quantize import (
    UnpaddedReader,
    calibrate,
    gemm_as_matmul,
    matmul_graph,
    quantize_blockwise_file,
    weight_nodes,
)

N_CHECK = 128
# Small enough for a test, large enough that the rule means something. The speed rule off (min_speedup 0): whether
# int8 beats fp32 on a tiny model is the machine's business; the rule is tested below with scripted timings.
TUNING = Int8Config(calibration=64, held_out=300, rank_sentences=32, timing_rounds=2, min_speedup=0.0)


@pytest.fixture(scope="module")
def low_margin_run(teacher_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny teacher with its two class rows made nearly equal: every label sits close to the decision boundary,
    as many of a real CoLA teacher's do, so int8's small errors flip some of them."""
    import shutil

    from safetensors.torch import load_file, save_file

    run_dir = tmp_path_factory.mktemp("low-margin") / "teacher"
    shutil.copytree(teacher_run, run_dir, ignore=shutil.ignore_patterns("onnx"))
    path = run_dir / "merged" / "model.safetensors"
    weights = load_file(path)
    w = weights["score.weight"]  # (2, C)
    torch.manual_seed(0)
    weights["score.weight"] = torch.stack([w[0], w[0] + 0.02 * w[0].abs().mean() * torch.randn_like(w[0])])
    save_file(weights, path, metadata={"format": "pt"})
    return run_dir


@pytest.fixture(scope="module")
def tuned(teacher_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("int8") / "onnx"
    cfg = ExportConfig(run_dir=teacher_run, out=out, optimize=True, int8=True, int8_tuning=TUNING,
                       max_check_sentences=N_CHECK, progress=False)
    return out, run(cfg)


def test_tuning_picks_a_candidate_and_records_it(tuned: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = tuned
    int8 = manifest["int8"]
    names = [c["name"] for c in int8["candidates"]]
    assert set(RECIPES) <= set(names)  # every recipe was tried
    winner = next(c for c in int8["candidates"] if c["name"] == int8["winner"])
    assert winner["passed"] and winner["agreement"] >= 0.99 and abs(winner["mcc_drop"]) <= 0.01
    # the fastest of those that passed
    assert winner["p50_b1_ms"] == min(c["p50_b1_ms"] for c in int8["candidates"] if c["passed"])
    assert int8["kept_fp32"] == winner["kept_fp32"] and int8["recipe"] == winner["recipe"]
    assert int8["rule"] == {"min_agreement": 0.99, "max_mcc_drop": 0.01, "metric": "mcc", "confidence": 0.95}
    assert int8["speed_rule"]["min_speedup"] == 0.0 and int8["speed_rule"]["batches"] == [1, 32]
    assert winner["fast"] and winner["speed"]["batch_32"] == int8["speed"]["batch_32"]
    assert int8["speed"]["verdict"] == "pass" and int8["speed"]["threads"] == manifest["latency"]["threads"] == 0
    assert winner["agreement_lower"] >= 0.99 and winner["agreement_lower"] < winner["agreement"]
    cal = int8["calibration"]
    assert cal["split"] == "train" and cal["sentences"] == 64 and cal["held_out"] == 300
    assert len(cal["sha256"]) == 64 and cal["sha256"] != cal["held_out_sha256"]
    assert int8["held_out"]["agreement"] == winner["agreement"]
    dev = int8["dev"]  # confirmed on dev by the parity check
    row = next(v for v in manifest["parity"]["variants"] if v["variant"] == "int8")
    assert dev["agreement"] == row["agreement"] >= 0.99 and dev["passed"] and row["passed"]
    assert dev["mcc"] == row["metrics"]["dev_mcc"] and abs(dev["mcc_drop"]) <= 0.01
    assert "|Δ MCC| ≤ 0.01" in row["rule"]
    for batch in (1, 32):
        speed = int8["speed"][f"batch_{batch}"]
        assert speed["fp32_p50_ms"] > 0 and speed["int8_p50_ms"] > 0
        assert speed["speedup"] == pytest.approx(speed["fp32_p50_ms"] / speed["int8_p50_ms"])
    plan = {v["variant"]: v for v in manifest["variants"]}
    assert plan["int8"]["from"] == int8["from"] == winner["source"]
    assert (out / "model.int8.onnx").exists() and json.loads((out / MANIFEST).read_text())["int8"]["winner"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(("ranges-", "augmented-"))]


def test_a_sensitivity_ranking_is_measured_when_a_recipe_fails(low_margin_run: Path, tmp_path: Path) -> None:
    """A strict rule makes the plain recipe fail: nodes are ranked and kept fp32 one step at a time."""
    cfg = Int8Config(calibration=32, held_out=200, rank_sentences=16, timing_rounds=1, min_agreement=1.0,
                     max_drop=0.0, recipes=("static-minmax",), max_fp32_nodes=3, min_speedup=0.0)
    try:
        int8 = run(ExportConfig(run_dir=low_margin_run, out=tmp_path / "onnx", int8=True, int8_tuning=cfg,
                                max_check_sentences=16, progress=False))["int8"]
    except ParityError as e:
        int8 = e.manifest["int8"]
    assert not int8["candidates"][0]["passed"]
    ranking = int8["ranking"]["static-minmax"]
    gains = [r["mse_gain"] for r in ranking]
    assert gains == sorted(gains, reverse=True) and len(ranking) >= 3
    kept = [c["kept_fp32"] for c in int8["candidates"][1:]]
    assert kept == [[r["node"] for r in ranking[:k]] for k in range(1, len(kept) + 1)]  # most sensitive first


def test_a_rule_nothing_meets_fails_with_every_candidate(capsys: pytest.CaptureFixture[str], low_margin_run: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """100% agreement and no fallback: every recipe flips some of the 1,000 held-out labels of a low-margin model.
    The export fails, writes nothing, and the table shows every candidate's numbers."""
    from kdfast.cli.export import print_report
    from kdfast.cli.output import console

    monkeypatch.setattr(console, "width", 200)  # one line per candidate
    out = tmp_path / "onnx"
    cfg = Int8Config(calibration=32, held_out=1000, min_agreement=1.0, max_drop=0.0, max_fp32_nodes=0,
                     timing_rounds=1)
    with pytest.raises(ParityError, match="no candidate holds the rule") as failure:
        run(ExportConfig(run_dir=low_margin_run, out=out, int8=True, int8_tuning=cfg, max_check_sentences=16,
                         progress=False))
    assert not out.exists()  # nothing written
    int8 = failure.value.manifest["int8"]
    assert int8["winner"] is None and [c["name"] for c in int8["candidates"]] == list(RECIPES)
    assert all(not c["passed"] and 0 < c["agreement"] < 1 and c["p50_b1_ms"] > 0 for c in int8["candidates"])
    capsys.readouterr()
    print_report(failure.value.manifest)
    table = capsys.readouterr().out
    for c in int8["candidates"]:
        assert c["name"] in table and f"{c['agreement']:.1%}" in table
    assert "fail" in table and "kept" not in table


def test_the_cli_maps_the_rule_flags(monkeypatch: pytest.MonkeyPatch, teacher_run: Path, tmp_path: Path) -> None:
    import kdfast.export.onnx
    from kdfast.cli.main import main

    seen: list[ExportConfig] = []

    def fake_run(cfg: ExportConfig) -> dict[str, Any]:
        seen.append(cfg)
        raise ParityError("stop", {"parity": {"checked": False}})

    monkeypatch.setattr(kdfast.export.onnx, "run", fake_run)  # the command imports it when it runs
    monkeypatch.setattr(sys, "argv", ["kdfast", "export", "--onnx", str(teacher_run), "--out", str(tmp_path / "o"),
                                      "--int8", "--int8-min-agreement", "0.98", "--int8-max-drop", "0.02",
                                      "--int8-calibration", "50", "--int8-min-speedup", "1.6", "--threads", "2"])
    with pytest.raises(SystemExit):
        main()
    tuning = seen[0].int8_tuning
    assert seen[0].int8 and (tuning.min_agreement, tuning.max_drop, tuning.calibration) == (0.98, 0.02, 50)
    assert tuning.min_speedup == 1.6 and seen[0].threads == 2


def test_calibration_reads_training_sentences_only(teacher_run: Path, cola_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Dev is marked: tuning's hash of what it read equals the hash of the training draw, and no dev sentence was
    encoded while tuning."""
    import kdfast.export.int8 as int8_module
    import kdfast.export.onnx as export

    cola = load_dataset(cola_dir)
    marked = Dataset(train=cola.train, dev=[Example(f"DEV {e.text}", e.label, e.in_domain) for e in cola.dev],
                     labels=cola.labels, source=cola.source, halves=cola.halves)
    monkeypatch.setattr(export, "dataset_from_config", lambda *_: marked)
    seen: list[str] = []
    real = int8_module.ReadLog.__call__

    def spy(self: int8_module.ReadLog, sentences: list[str]) -> list[list[int]]:
        seen.extend(sentences)
        return real(self, sentences)

    monkeypatch.setattr(int8_module.ReadLog, "__call__", spy)
    cfg = Int8Config(calibration=40, held_out=100, recipes=("dynamic",), max_fp32_nodes=0, timing_rounds=1,
                     min_agreement=0.5, max_drop=1.0, min_speedup=0.0)
    manifest = run(ExportConfig(run_dir=teacher_run, out=tmp_path / "onnx", int8=True, int8_tuning=cfg,
                                max_check_sentences=16, progress=False))
    draw = CalibrationSet.draw(cola.train, 40, 100, seed=0)
    want = [e.text for e in draw.calibration + draw.held_out]
    cal = manifest["int8"]["calibration"]
    assert cal["read_sha256"] == sentences_sha256(want) == sentences_sha256(seen) and cal["read"] == 140
    assert cal["sha256"] == sentences_sha256([e.text for e in draw.calibration])
    assert not any(s.startswith("DEV ") for s in seen)
    assert manifest["parity"]["sentences"] == 16  # dev was read by the parity check, after tuning


def test_calibration_ranges_ignore_padding(tuned: tuple[Path, dict[str, Any]], teacher_run: Path, cola_dir: Path,
                                           tmp_path: Path) -> None:
    """Batches that are mostly padding calibrate to the same ranges as the sentences alone; fed padded as they are,
    the ranges change (so the check can fail)."""
    from kdfast.train.teacher import encode, load_tokenizer

    out, manifest = tuned
    model = out / "model.onnx"
    pre = manifest["source_run"]["preprocessing"]
    tokenizer = load_tokenizer(str(out / pre["tokenizer"]))
    ids = encode(tokenizer, [e.text for e in load_dataset(cola_dir).train[:12]], 64)
    pad = pre["pad_id"]
    width = 4 * max(map(len, ids))  # about 90% of every batch is padding
    padded = []
    for k in range(0, len(ids), 4):
        input_ids, mask = pad_batch(ids[k:k + 4], pad)
        extra = width - input_ids.shape[1]
        padded.append((torch.nn.functional.pad(input_ids, (0, extra), value=pad),
                       torch.nn.functional.pad(mask, (0, extra), value=0)))
    assert sum(int(m.sum()) for _, m in padded) < 0.3 * sum(m.numel() for _, m in padded)
    alone = [pad_batch([s], pad) for s in ids]
    names = ["input_ids", "attention_mask"]
    a = calibrate(model, UnpaddedReader(padded, names), "minmax", 99.999, tmp_path)
    b = calibrate(model, UnpaddedReader(alone, names), "minmax", 99.999, tmp_path)
    assert a.keys() == b.keys() and len(a.keys()) > 4
    for k in a:
        assert np.array_equal(a[k].range_value, b[k].range_value), k

    class Padded:  # what a plain reader would feed: the padded batches as they are
        def __init__(self) -> None:
            self.it = iter(padded)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.it, None)
            return None if batch is None else {"input_ids": batch[0].numpy(), "attention_mask": batch[1].numpy()}

        def rewind(self) -> None:
            self.it = iter(padded)

    c = calibrate(model, Padded(), "minmax", 99.999, tmp_path)  # type: ignore[arg-type]
    assert any(not np.array_equal(a[k].range_value, c[k].range_value) for k in a)


def test_fallback_steps() -> None:
    assert fallback_steps(0) == []
    assert fallback_steps(3) == [1, 2, 3]
    assert fallback_steps(8) == [1, 2, 3, 4, 6, 8]
    assert fallback_steps(10) == [1, 2, 3, 4, 6, 9, 10]
    steps = fallback_steps(30)  # half again past 4, whole nodes: 13 and 19, not 13.5
    assert steps == [1, 2, 3, 4, 6, 9, 13, 19, 28, 30] and all(type(k) is int for k in steps)


def test_draw_is_disjoint_and_seeded() -> None:
    train = [Example(f"s{i}", i % 2) for i in range(50)]
    a, b = CalibrationSet.draw(train, 10, 30, seed=0), CalibrationSet.draw(train, 10, 30, seed=0)
    assert a == b and len(a.calibration) == 10 and len(a.held_out) == 30
    assert not {e.text for e in a.calibration} & {e.text for e in a.held_out}
    assert CalibrationSet.draw(train, 10, 30, seed=1) != a


def test_three_classes(tmp_path: Path) -> None:
    """Nothing assumes two classes: a three-class model (embedding -> LSTM -> mean -> linear) tuned end to end."""
    from torch import nn

    from kdfast.export.int8 import TuneInputs, tune
    from kdfast.export.onnx import ExportSource, export_onnx

    class Three(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.rnn, self.head = nn.Embedding(60, 32, padding_idx=0), nn.LSTM(32, 32), nn.Linear(32, 3)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            mask = (input_ids != 0).unsqueeze(-1).float()  # (B, T, 1)
            h, _ = self.rnn(self.embed(input_ids).transpose(0, 1))  # (T, B, C)
            return self.head((h.transpose(0, 1) * mask).sum(1) / mask.sum(1).clamp(min=1))  # (B, 3)

    torch.manual_seed(0)

    def encode(texts: list[str]) -> list[list[int]]:
        return [[1 + sum(map(ord, w)) % 59 for w in t.split()] for t in texts]

    source = ExportSource(kind="student", module=Three().eval(), input_names=["input_ids"], encode=encode, pad_id=0,
                          save_preprocessing=lambda folder: None, meta={})
    export_onnx(source, tmp_path / "model.onnx", 17)
    rng = np.random.default_rng(0)
    words = ["the", "a", "cat", "dog", "saw", "ran", "big", "small", "red", "blue", "green", "quickly"]
    train = [Example(" ".join(rng.choice(words, rng.integers(3, 12))), int(i % 3)) for i in range(400)]
    inputs = TuneInputs(fp32=tmp_path / "model.onnx", base=tmp_path / "model.onnx", encode=encode, pad_id=0,
                        input_names=["input_ids"])
    cfg = Int8Config(calibration=50, held_out=200, rank_sentences=20, timing_rounds=1, min_agreement=0.5, max_drop=1,
                     min_speedup=0.0)
    said: list[str] = []
    report = tune(inputs, train, tmp_path / "model.int8.onnx", cfg, said.append)
    assert report["winner"] and (tmp_path / "model.int8.onnx").exists()
    assert said[-1].startswith(f"int8: {report['winner']} kept: accurate, and ")
    assert said[-1].endswith(" fp32 at batch 1 / 32")
    got = session(tmp_path / "model.int8.onnx").run(["logits"], {"input_ids": np.array([encode(["a big cat"])[0]])})
    assert got[0].shape == (1, 3)
    assert not [c["error"] for c in report["candidates"] if c["error"]]  # blockwise too: the head's Gemm
    assert all(0 <= c["agreement"] <= 1 for c in report["candidates"])
    # the manifest's record: the rules as given, what was read, and the winner's numbers
    assert report["method"].startswith("accuracy-aware: of the candidates that hold the rule on held-out ")
    assert report["rule"] == {"min_agreement": 0.5, "max_mcc_drop": 1, "metric": "mcc", "confidence": 0.95}
    assert report["speed_rule"] == {"min_speedup": 0.0, "batches": [1, 32], "threads": 0, "spin": True,
                                    "statistic": "p50, taking turns with fp32 in one run, each alone"}
    data = CalibrationSet.draw(train, 50, 200, cfg.seed, cfg.perturbed)
    calibration = report["calibration"]
    assert (calibration["split"], calibration["seed"], calibration["sentences"], calibration["held_out"],
            calibration["perturbed"]) == ("train", 0, 50, 200, 200)
    assert calibration["sha256"] == sentences_sha256([e.text for e in data.calibration])
    assert calibration["held_out_sha256"] == sentences_sha256([e.text for e in data.held_out])
    assert calibration["read"] > 0 and len(calibration["read_sha256"]) == 64
    winner = next(c for c in report["candidates"] if c["name"] == report["winner"])
    assert report["recipe"] == winner["recipe"] and report["kept_fp32"] == winner["kept_fp32"]
    held = report["held_out"]
    assert (held["agreement"], held["agreement_lower"], held["mcc"], held["mcc_drop"]) == (
        winner["agreement"], winner["agreement_lower"], winner["mcc"], winner["mcc_drop"])
    assert held["fp32_mcc"] == pytest.approx(winner["mcc"] + winner["mcc_drop"])
    assert report["speed"]["verdict"] == "pass" and report["speed"]["min_speedup"] == 0.0
    # accurate, but not 1000x fp32: the error names the best one, and nothing is written
    from kdfast.export.int8 import Int8RuleError

    with pytest.raises(Int8RuleError, match=r"^int8: no accurate candidate is at least 1000\.00x fp32's speed") as e:
        tune(inputs, train, tmp_path / "slow.int8.onnx", dataclasses.replace(cfg, min_speedup=1000.0))
    assert not (tmp_path / "slow.int8.onnx").exists() and e.value.report["winner"] is None


def test_wilson_lower_bound() -> None:
    """The rule's bound is the score interval's lower end: the p below the observed share where the observed share
    is z standard errors (at p) away, found here by bisection rather than by the closed form."""
    z = 1.6448536  # one-sided 95%
    for k, n in ((1982, 2000), (1992, 2000), (300, 300), (95, 100)):
        share, lo, hi = k / n, 0.0, k / n
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if n * (share - mid) ** 2 > z * z * mid * (1 - mid) else (lo, mid)
        assert wilson_lower(k / n, n, 0.95) == pytest.approx(lo, abs=1e-7)
    assert wilson_lower(0.99, 100, 0.95) < wilson_lower(0.99, 1000, 0.95) < 0.99
    assert wilson_lower(1.0, 0, 0.95) == 0.0


def test_gemm_as_matmul_is_the_same_model(teacher_run: Path, tmp_path: Path) -> None:
    """GPT-2 exports its Conv1D products as Gemm; written as MatMul + Add they give the same logits, keep the Gemm's
    names, and blockwise int8 then quantizes them."""
    import onnx

    out = tmp_path / "onnx"
    run(ExportConfig(run_dir=teacher_run, out=out, max_check_sentences=8, progress=False))
    src, dst = out / "model.onnx", tmp_path / "matmul.onnx"
    gemms = weight_nodes(src, ("Gemm",))
    assert gemms and gemm_as_matmul(src, dst) == len(gemms)
    assert set(gemms) <= set(weight_nodes(dst, ("MatMul",))) and not weight_nodes(dst, ("Gemm",))
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 100, (3, 7)), "attention_mask": np.ones((3, 7), dtype=np.int64)}
    want = session(src).run(["logits"], feeds)[0]
    got = session(dst).run(["logits"], feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # fp32 both: only the summation order may differ
    quantize_blockwise_file(dst, tmp_path / "blockwise.onnx", 32, exclude=gemms[:1])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "blockwise.onnx")).graph.node]
    assert ops.count("MatMulNBits") == len(weight_nodes(dst, ("MatMul",))) - 1  # all but the one excluded
    blockwise = session(tmp_path / "blockwise.onnx").run(["logits"], feeds)[0]
    assert np.abs(blockwise - want).max() < 0.05 * np.abs(want).max() + 1e-3  # int8: close, not equal
    # what blockwise and per-token quantize: that graph with each attention fused, the same model again
    layers = sum(n.op_type == "Softmax" for n in onnx.load(str(dst)).graph.node)
    fused = tmp_path / "fused.onnx"
    assert layers and matmul_graph(src, fused, load_teacher_for_export(teacher_run).num_heads) == layers
    ops = [n.op_type for n in onnx.load(str(fused)).graph.node]
    assert ops.count("MultiHeadAttention") == layers and "Softmax" not in ops
    assert set(weight_nodes(fused, ("MatMul",), weight_input=1)) == set(weight_nodes(dst, ("MatMul",), weight_input=1))
    feeds["attention_mask"][1, 4:] = 0  # padding too
    np.testing.assert_allclose(session(fused).run(["logits"], feeds)[0], session(dst).run(["logits"], feeds)[0],
                               rtol=1e-4, atol=1e-5)
    assert matmul_graph(src, fused) == 0 and "MultiHeadAttention" not in {  # no heads given: not fused
        n.op_type for n in onnx.load(str(fused)).graph.node}
    # a layer whose output's shape is read for something else than its final Reshape stays as it was
    from onnx import helper

    from kdfast.export.attention import fuse_attention

    model = onnx.load(str(dst))
    probs = next(n for n in model.graph.node if n.op_type == "Softmax").output[0]
    readers = {i: [n for n in model.graph.node if i in n.input] for n in model.graph.node for i in n.output}
    node = readers[probs][0]
    while node.op_type != "Transpose":  # the Cast, the product with v, then the heads' transpose back
        node = readers[node.output[0]][0]
    shape = next(n for n in readers[node.output[0]] if n.op_type == "Shape")
    model.graph.output.append(helper.make_tensor_value_info(shape.output[0], onnx.TensorProto.INT64, None))
    assert fuse_attention(model, load_teacher_for_export(teacher_run).num_heads) == layers - 1


def test_per_token_answers_do_not_depend_on_batch_mates(tuned: tuple[Path, dict[str, Any]], teacher_run: Path,
                                                         tmp_path: Path) -> None:
    """Blockwise and per-token int8 scale each token's activations alone, so a sentence gets the same logits alone
    and padded in a batch beside longer sentences; dynamic int8's one scale per call is set by the whole batch (the
    contrast shows the check can fail). The tiny GPT-2 teacher, every weight product (Conv1D too, as MatMul)
    quantized on the tuner's graph, attention fused (``MultiHeadAttention`` in fp32)."""
    import onnx

    from kdfast.export.pertoken import quantize_pertoken_file, rotated_absmax
    from kdfast.export.quantize import quantize_dynamic_file

    out, manifest = tuned
    assert matmul_graph(out / "model.onnx", tmp_path / "matmul.onnx", load_teacher_for_export(teacher_run).num_heads)
    quantize_blockwise_file(tmp_path / "matmul.onnx", tmp_path / "blockwise.onnx", 32, exclude=[])
    quantize_pertoken_file(tmp_path / "matmul.onnx", tmp_path / "pertoken.onnx", [], None)
    quantize_pertoken_file(tmp_path / "matmul.onnx", tmp_path / "pertoken-h16.onnx", [], None, block=16)
    cal = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]  # one scale per LayerNorm output, from two sentences
    static = rotated_absmax(tmp_path / "matmul.onnx", UnpaddedReader([pad_batch(cal, 0)], ["input_ids",
                                                                                         "attention_mask"]), 16)
    assert static
    quantize_pertoken_file(tmp_path / "matmul.onnx", tmp_path / "pertoken-h16-ln16.onnx", [], None, block=16,
                           static=static, static_block=16)
    products = weight_nodes(tmp_path / "matmul.onnx", ("MatMul",), weight_input=1)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "pertoken.onnx")).graph.node]
    assert products and ops.count("MatMulIntegerToFloat") == len(products)
    quantize_dynamic_file(out / "model.onnx", tmp_path / "dynamic.onnx", exclude=[])
    rng = np.random.default_rng(1)
    rows = [rng.integers(1, 1000, n).tolist() for n in (5, 9, 17, 33, 4, 12)]
    ids, mask = pad_batch(rows, manifest["source_run"]["preprocessing"]["pad_id"])

    def alone_and_batched(path: Path) -> tuple[np.ndarray, np.ndarray]:
        sess = session(path)
        alone = np.concatenate([sess.run(["logits"], {"input_ids": np.array([r]),
                                                      "attention_mask": np.ones((1, len(r)), np.int64)})[0]
                                for r in rows])
        return alone, sess.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]

    want, batched = alone_and_batched(out / "model.onnx")  # fp32: padding changes nothing
    np.testing.assert_allclose(batched, want, rtol=0, atol=1e-5)
    for name in ("blockwise", "pertoken", "pertoken-h16", "pertoken-h16-ln16"):
        alone, batched = alone_and_batched(tmp_path / f"{name}.onnx")
        np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5, err_msg=name)
        assert np.abs(alone - want).max() < 0.05 * np.abs(want).max() + 1e-3, name  # int8: close to fp32
    alone, batched = alone_and_batched(tmp_path / "dynamic.onnx")
    assert np.abs(batched - alone).max() > 1e-3


class ScriptedTuner(Tuner):
    """The search alone: each candidate's verdict and speed scripted by name, nothing built or run. ``speeds``: the
    (batch-1, batch-32) speed-ups by name, of the search's timing and the speed rule's; by default the search's
    batch-1 speed-up, batch 32 unmeasured in the search and equal to it in the speed rule."""

    def __init__(self, script: dict[str, tuple[bool, float]], cfg: Int8Config,
                 speeds: dict[str, tuple[float, float]] | None = None) -> None:
        self.script, self.cfg, self.say, self.built = script, cfg, lambda *a: None, []
        self.scripted, self.judged, self.smoothing = speeds or {}, [], {}

    def nodes(self, recipe: str) -> list[str]:
        return [f"{recipe}/n{i}" for i in range(8)]

    def rank(self, recipe: str) -> list[tuple[str, float]]:
        return [(n, 1.0 / (i + 1)) for i, n in enumerate(self.nodes(recipe))]

    def candidate(self, recipe: str, exclude: Any) -> Candidate:
        name = recipe + (f"+fp32:{len(exclude)}" if exclude else "")
        self.built.append(name)
        passed, _ = self.script[name]
        return Candidate(name=name, recipe=recipe, source="model.onnx", kept_fp32=list(exclude), passed=passed,
                         agreement=0.995 if passed else 0.9, agreement_lower=0.99 if passed else 0.89, mcc_drop=0.0)

    def time(self, candidates: list[Candidate]) -> None:
        for c in candidates:
            c.speedup_b1 = self.script[c.name][1]
            c.p50_b1_ms = 1.0 / c.speedup_b1
            if c.name in self.scripted:
                c.speedup_b32 = self.scripted[c.name][1]

    def speeds(self, candidates: list[Candidate]) -> dict[str, dict[str, Any]]:
        return {c.name: self.speed(c) for c in candidates}

    def speed(self, c: Candidate) -> dict[str, Any]:
        self.judged.append(c.name)
        b1, b32 = self.scripted.get(c.name, (self.script[c.name][1],) * 2)
        return {"threads": self.cfg.threads, "reference": "model.onnx",
                **{f"batch_{b}": {"fp32_p50_ms": 1.0, "int8_p50_ms": 1.0 / s, "speedup": s}
                   for b, s in ((1, b1), (32, b32))}}


def test_the_search_skips_what_cannot_beat_a_passing_candidate() -> None:
    """Fastest failing recipe searched first, and only while faster than the best that passed; a recipe slower than
    a passing one as it is is never searched; the fastest passing candidate wins."""
    script = {"fast": (False, 4.0), "fast+fp32:1": (False, 3.5), "fast+fp32:2": (True, 3.0),
              "mid": (True, 2.0),
              "slowfail": (False, 1.5),
              "other": (False, 3.2), "other+fp32:1": (False, 3.1), "other+fp32:2": (False, 2.9)}
    tuner = ScriptedTuner(script, Int8Config(recipes=("mid", "slowfail", "other", "fast")))  # type: ignore[arg-type]
    found = tuner.run()
    assert found["winner"].name == "fast+fp32:2"
    assert tuner.built == ["mid", "slowfail", "other", "fast", "fast+fp32:1", "fast+fp32:2",
                           "other+fp32:1", "other+fp32:2"]  # other stopped at 2.9x < 3.0x; slowfail never searched
    assert set(found["ranking"]) == {"fast", "other"}
    assert "no faster than a passing candidate" in found["not_searched"]["slowfail"]
    assert found["not_searched"]["other"].startswith("stopped at other+fp32:2")


def test_the_rule_is_judged_on_the_lower_bound() -> None:
    """99.3% of 1,000 sentences agree: above 99% as a share, below it as a 95% lower bound, so the candidate fails;
    at a confidence of one half the bound is the share itself and it passes; a rule of 100% is judged on the share."""
    from kdfast.export.int8 import judge

    want = np.tile([[0.0, 1.0]], (1000, 1))  # fp32 says class 1 everywhere
    got = want.copy()
    got[:7] = [1.0, 0.0]  # int8 flips 7
    labels = np.ones(1000, dtype=int)
    strict, loose = Candidate("c", "dynamic", "model.onnx"), Candidate("c", "dynamic", "model.onnx")
    judge(strict, got, want, labels, Int8Config())
    judge(loose, got, want, labels, Int8Config(confidence=0.5))
    assert strict.agreement == loose.agreement == 0.993
    assert strict.agreement_lower < 0.99 and not strict.passed
    assert loose.agreement_lower == pytest.approx(0.993) and loose.passed
    exact = Candidate("c", "dynamic", "model.onnx")
    judge(exact, want, want, labels, Int8Config(min_agreement=1.0))
    assert exact.agreement == 1.0 and exact.agreement_lower < 1 and exact.passed


def test_mcc_drop_is_fp32s_mcc_minus_int8s() -> None:
    """The signed change the CLI table and the README print: positive when int8 scores a lower MCC than fp32, negative
    when it scores a higher one; the rule bounds its size either way."""
    from kdfast.export.int8 import judge

    labels = np.array([0, 1] * 500)
    right = np.eye(2)[labels]  # (1000, 2): every label right, MCC 1
    wrong = right.copy()
    wrong[:4] = wrong[:4, ::-1]  # 4 flipped: MCC below 1
    worse, better = Candidate("w", "dynamic", "model.onnx"), Candidate("b", "dynamic", "model.onnx")
    judge(worse, wrong, right, labels, Int8Config(max_drop=0.01))
    judge(better, right, wrong, labels, Int8Config(max_drop=0.01))
    assert worse.mcc < 1 and better.mcc == 1
    assert worse.mcc_drop == pytest.approx(1 - worse.mcc) and worse.mcc_drop > 0
    assert better.mcc_drop == pytest.approx(worse.mcc - 1) and better.mcc_drop < 0
    assert worse.passed and better.passed  # |0.008| <= 0.01 both ways
    judge(worse, wrong, right, labels, Int8Config(max_drop=0.005))
    judge(better, right, wrong, labels, Int8Config(max_drop=0.005))
    assert not worse.passed and not better.passed


def test_the_bound_counts_a_sentence_and_its_perturbed_copy_once() -> None:
    """1,000 held-out sentences and 1,000 perturbed copies: the bound is that of 1,000 observations."""
    from kdfast.export.int8 import judge

    want = np.tile([[0.0, 1.0]], (2000, 1))
    got = want.copy()
    got[1000:1008] = [1.0, 0.0]  # 8 copies flip: 99.6% of 2,000
    c = Candidate("c", "dynamic", "model.onnx")
    judge(c, got, want, np.ones(1000, dtype=int), Int8Config())
    assert c.agreement == 0.996 and c.agreement_lower == pytest.approx(wilson_lower(0.996, 1000, 0.95))
    assert c.agreement_lower < wilson_lower(0.996, 2000, 0.95)


def test_a_rule_too_few_sentences_can_prove_fails_before_any_work(teacher_run: Path, tmp_path: Path) -> None:
    """200 held-out sentences cannot show 99% at 95% confidence even with no flip: the export says so and how many
    it needs, builds nothing and writes nothing."""
    out = tmp_path / "onnx"
    with pytest.raises(ParityError, match=r"200 held-out training sentences cannot show 99\.0%.*needs 268") as failure:
        run(ExportConfig(run_dir=teacher_run, out=out, int8=True, int8_tuning=Int8Config(held_out=200),
                         max_check_sentences=16, progress=False))
    assert not out.exists() and failure.value.manifest["int8"]["candidates"] == []


def test_gemm_as_matmul_handles_transposed_shared_weights(tmp_path: Path) -> None:
    """nn.Linear on 2-D input exports as Gemm with transB=1; two Gemms sharing that weight get one transposed copy;
    a Gemm without a bias becomes a MatMul alone; alpha != 1 is left as it is. Same outputs as before."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4)).astype(np.float32)  # (out, in): transB=1
    v = rng.standard_normal((5, 3)).astype(np.float32)  # (in, out): transB=0
    b = rng.standard_normal(5).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h1"], name="first", transB=1),
         helper.make_node("Gemm", ["x", "w"], ["h2"], name="second", transB=1),
         helper.make_node("Add", ["h1", "h2"], ["h"]),
         helper.make_node("Gemm", ["h", "v"], ["y"], name="third"),
         helper.make_node("Gemm", ["h", "v"], ["z"], name="scaled", alpha=0.5)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v"), numpy_helper.from_array(b, "b")])
    src, dst = tmp_path / "gemm.onnx", tmp_path / "matmul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert gemm_as_matmul(src, dst) == 3
    model = onnx.load(str(dst))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.initializer].count("w_t") == 1
    assert weight_nodes(dst, ("MatMul",)) == ["first", "second", "third"] and weight_nodes(dst, ("Gemm",)) == ["scaled"]
    x = rng.standard_normal((2, 4)).astype(np.float32)
    for a, c in zip(session(src).run(None, {"x": x}), session(dst).run(None, {"x": x}), strict=True):
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6)


# --- the speed rule: an int8 slower than fp32 is never kept (timings scripted or faked: tests never read the clock)


def test_an_accurate_candidate_slower_than_fp32_at_batch_32_is_passed_over_for_the_next() -> None:
    """The fastest accurate candidate at batch 1 runs 0.8x fp32 at batch 32: it is judged, refused, and the next
    accurate one (faster than fp32 at both) is kept."""
    script = {"fast": (True, 3.0), "mid": (True, 2.0), "bad": (False, 4.0), "bad+fp32:1": (False, 3.5),
              "bad+fp32:2": (False, 2.5)}
    speeds = {"fast": (3.0, 0.8), "mid": (2.0, 1.5)}
    tuner = ScriptedTuner(script, Int8Config(recipes=("fast", "mid", "bad"), max_fp32_nodes=2),  # type: ignore[arg-type]
                          speeds)
    found = tuner.run()
    assert found["winner"].name == "mid" and found["winner"].fast
    assert tuner.judged == ["mid", "fast"]  # fastest at its slower batch size first; the inaccurate never judged
    fast = next(c for c in found["candidates"] if c.name == "fast")
    assert fast.fast is False and fast.speed["batch_32"]["speedup"] == 0.8
    assert all(c.fast is None for c in found["candidates"] if c.name.startswith("bad"))


def test_of_the_accurate_candidates_the_one_fastest_at_its_slower_batch_size_is_kept() -> None:
    """Two accurate candidates within noise of each other at batch 1 (2.2x and 2.1x) but apart at batch 32 (1.39x and
    1.49x, as pertoken-h64 and -h16 ran on the 10-epoch MiniLM teacher): the one better at its worse batch size wins,
    both judged."""
    script = {"h64": (True, 2.2), "h16": (True, 2.1)}
    speeds = {"h64": (2.2, 1.39), "h16": (2.1, 1.49)}
    tuner = ScriptedTuner(script, Int8Config(recipes=("h64", "h16")), speeds)  # type: ignore[arg-type]
    assert tuner.run()["winner"].name == "h16" and sorted(tuner.judged) == ["h16", "h64"]


def test_the_search_prunes_by_the_slower_batch_size() -> None:
    """h64 passes as it is at 2.2x / 1.39x; h16 fails as it is, slower at batch 1 (2.1x) but faster at batch 32
    (1.52x): it is still searched, and its first fallback, 2.05x / 1.49x, is kept (pruned by batch 1 alone, h16
    would never have been searched)."""
    script = {"h64": (True, 2.2), "h16": (False, 2.1), "h16+fp32:1": (True, 2.05)}
    speeds = {"h64": (2.2, 1.39), "h16": (2.1, 1.52), "h16+fp32:1": (2.05, 1.49)}
    tuner = ScriptedTuner(script, Int8Config(recipes=("h64", "h16")), speeds)  # type: ignore[arg-type]
    found = tuner.run()
    assert tuner.built == ["h64", "h16", "h16+fp32:1"] and found["winner"].name == "h16+fp32:1"


def test_min_speedup_is_the_bar_at_both_batch_sizes() -> None:
    """At --int8-min-speedup 1.6, 1.8x / 1.5x fails and 1.7x / 1.65x passes; a bar nothing clears keeps nothing."""
    script = {"a": (True, 1.8), "b": (True, 1.7)}
    speeds = {"a": (1.8, 1.5), "b": (1.7, 1.65)}
    tuner = ScriptedTuner(script, Int8Config(recipes=("a", "b"), min_speedup=1.6), speeds)  # type: ignore[arg-type]
    assert tuner.run()["winner"].name == "b"
    tuner = ScriptedTuner(script, Int8Config(recipes=("a", "b"), min_speedup=1.7), speeds)  # type: ignore[arg-type]
    found = tuner.run()
    assert found["winner"] is None and tuner.judged == ["b", "a"]
    assert [c.fast for c in found["candidates"]] == [False, False]


def test_a_recipe_below_the_speed_rule_as_it_is_is_not_searched() -> None:
    """Keeping nodes fp32 only slows a candidate: a failing recipe already slower than fp32 at batch 1 gets no
    fallback search, and a fallback that falls below the rule stops the search of its recipe."""
    script = {"slow": (False, 0.9), "edge": (False, 1.2), "edge+fp32:1": (False, 0.95)}
    tuner = ScriptedTuner(script, Int8Config(recipes=("slow", "edge")))  # type: ignore[arg-type]
    found = tuner.run()
    assert found["winner"] is None and tuner.built == ["slow", "edge", "edge+fp32:1"]
    assert "below the speed rule" in found["not_searched"]["slow"]
    assert found["not_searched"]["edge"].startswith("stopped at edge+fp32:1: 0.95x")


def test_timing_runs_each_session_alone_in_turns() -> None:
    """Each round times every session through all batches back to back, after one untimed call (the previous
    session's spinning threads settle), the sessions taking turns in an order that changes from round to round;
    the p50 is over each session's own calls."""
    calls: list[tuple[str, int]] = []

    class Sess:
        def __init__(self, name: str) -> None:
            self.name = name

        def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> None:
            calls.append((self.name, int(feeds["input_ids"][0, 0])))

    sessions = {n: Sess(n) for n in ("fp32", "a", "b", "c")}
    batches = [{"input_ids": np.full((1, 3), i, np.int64)} for i in range(3)]
    p50 = p50_ms(sessions, batches, rounds=6)
    assert set(p50) == set(sessions)
    rounds = calls[12:]  # after one warm-up pass of each over the 3 batches
    blocks = [rounds[i:i + 4] for i in range(0, len(rounds), 4)]  # an untimed call, then the 3 batches
    assert len(blocks) == 24 and all([b for _, b in block] == [0, 0, 1, 2] for block in blocks)
    assert all(len({n for n, _ in block}) == 1 for block in blocks)  # one session's calls back to back
    order = [[blocks[4 * r + i][0][0] for i in range(4)] for r in range(6)]
    assert all(sorted(o) == sorted(sessions) for o in order)  # every session once a round
    assert len({o[0] for o in order}) > 1 and len({tuple(o) for o in order}) > 1  # in turns that change

    calls.clear()  # a list of batches per session (inputs that differ), and a budget spent after the first round
    own = {n: [{"input_ids": np.full((1, 3), 10 * i + j, np.int64)} for j in range(2)] for i, n in enumerate(sessions)}
    assert set(p50_ms(sessions, own, rounds=6, budget_s=0.0)) == set(sessions)
    assert len(calls) == 4 * 2 + 4 * 3  # the warm-up pass, then one round: an untimed call and two timed each
    assert all(b // 10 == list(sessions).index(n) for n, b in calls)  # each session ran its own batches only


def fake_p50(ms: dict[str, tuple[float, float]]) -> Any:
    """``p50_ms`` with scripted latencies: (batch-1, batch-32) ms by session name, "fp32" included; the export's
    batch-1 latencies of every variant (its feeds per variant, for ``auto``) are timed for real."""
    real = p50_ms

    def scripted(sessions: dict[str, Any], batches: Any, rounds: int, budget_s: float | None = None
                 ) -> dict[str, float]:
        if isinstance(batches, dict):
            return real(sessions, batches, rounds, budget_s)
        batch = batches[0]["input_ids"].shape[0]
        return {name: ms[name][0 if batch == 1 else 1] for name in sessions}
    return scripted


def test_export_keeps_the_next_accurate_candidate_and_records_the_timings_auto_reads(
        teacher_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end on the tiny teacher, with the timer faked: dynamic is 2x fp32 at batch 1 but 0.5x at batch 32, so
    blockwise-32 (1.25x at both) is written; the manifest holds both timings, the verdict and the thread count, and
    ``auto`` takes the fastest variant by the latencies the export recorded."""
    import shutil

    import onnx

    import kdfast.export.int8 as int8_module
    from kdfast.serve.predict import ONNX_RUNTIMES, choose_runtime, passed_variants

    fake = fake_p50({"fp32": (10.0, 100.0), "dynamic": (5.0, 200.0), "blockwise-32": (8.0, 80.0)})
    spinning: set[str] = set()

    def timed(sessions: dict[str, Any], batches: Any, rounds: int, budget_s: float | None = None
              ) -> dict[str, float]:
        if not isinstance(batches, dict):  # the speed rule's
            spinning.update(s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
                            for s in sessions.values())
        return fake(sessions, batches, rounds, budget_s)

    monkeypatch.setattr(int8_module, "p50_ms", timed)
    run_dir = tmp_path / "teacher"
    shutil.copytree(teacher_run, run_dir, ignore=shutil.ignore_patterns("onnx"))
    cfg = Int8Config(calibration=32, held_out=100, recipes=("dynamic", "blockwise-32"), timing_rounds=1,
                     min_agreement=0.5, max_drop=1.0, spin=False)  # timed as serve runs: idle threads sleep
    manifest = run(ExportConfig(run_dir=run_dir, int8=True, int8_tuning=cfg, threads=1, max_check_sentences=16,
                                progress=False))
    int8 = manifest["int8"]
    by = {c["name"]: c for c in int8["candidates"]}
    assert by["dynamic"]["passed"] and by["dynamic"]["fast"] is False  # accurate, slower than fp32 at batch 32
    assert int8["winner"] == "blockwise-32" and by["blockwise-32"]["fast"]
    ops = {n.op_type for n in onnx.load(str(run_dir / "onnx" / "model.int8.onnx")).graph.node}
    assert "MatMulNBits" in ops  # the file written is the blockwise candidate
    speed = int8["speed"]
    assert speed["batch_1"] == {"fp32_p50_ms": 10.0, "int8_p50_ms": 8.0, "speedup": 1.25}
    assert speed["batch_32"] == {"fp32_p50_ms": 100.0, "int8_p50_ms": 80.0, "speedup": 1.25}
    assert speed["verdict"] == "pass" and speed["min_speedup"] == 1.0 and speed["threads"] == 1
    assert int8["speed_rule"] == {"min_speedup": 1.0, "batches": [1, 32], "threads": 1, "spin": False,
                                  "statistic": "p50, taking turns with fp32 in one run, each alone"}
    assert spinning == {"0"} and speed["spin"] is False  # every timed session had its threads sleep
    on_disk = json.loads((run_dir / "onnx" / MANIFEST).read_text())
    assert on_disk["int8"]["speed"] == speed
    latency = on_disk["latency"]  # what auto reads, timed at the same threads
    assert latency["threads"] == 1 and set(latency["ms"]) == {"fp32", "int8"} and min(latency["ms"].values()) > 0
    fastest = min(passed_variants(on_disk) & set(latency["ms"]), key=latency["ms"].__getitem__)
    assert ONNX_RUNTIMES[choose_runtime(run_dir, "auto")] == fastest


def test_export_writes_nothing_when_no_accurate_candidate_is_faster_than_fp32(
        teacher_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """Every candidate accurate, every one slower than fp32 (timer faked): ``kdfast export`` writes nothing and
    prints one error line with the best candidate's agreement and both speed-ups."""
    import kdfast.export.int8 as int8_module
    from kdfast.cli.main import main
    from kdfast.cli.output import console

    monkeypatch.setattr(console, "width", 200)
    names = ["fp32", *RECIPES]
    ms = {n: (10.0, 100.0) if n == "fp32" else (20.0, 125.0) for n in names}  # 0.5x and 0.8x
    ms["blockwise-32"] = (12.5, 110.0)  # 0.8x and ~0.91x: the best of the slow ones
    monkeypatch.setattr(int8_module, "p50_ms", fake_p50(ms))
    out = tmp_path / "onnx"
    monkeypatch.setattr(sys, "argv", ["kdfast", "export", "--onnx", str(teacher_run), "--out", str(out), "--int8",
                                      "--int8-min-agreement", "0.5", "--int8-max-drop", "1", "--int8-calibration",
                                      "32"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code != 0 and not out.exists()
    captured = capsys.readouterr()
    errors = [line for line in (captured.out + captured.err).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in captured.err
    line = errors[0]
    assert "no accurate candidate is at least 1.00x fp32" in line and "nothing was written" in line
    assert "blockwise-32" in line and "0.80x fp32 at batch 1 and 0.91x at batch 32" in line
    assert "% agreement" in line and "Δ MCC" in line
    assert "slow" in captured.out  # the table marks the accurate candidates the speed rule refused


def test_the_pipelines_export_drops_an_int8_that_is_too_slow(teacher_run: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_dropping_failed_int8`` (what ``kdfast pipeline`` exports with) turns the speed rule's refusal into an
    export without int8, and says why (timer faked: int8 2x slower than fp32)."""
    import shutil

    import kdfast.export.int8 as int8_module
    from kdfast.export.onnx import run_dropping_failed_int8

    monkeypatch.setattr(int8_module, "p50_ms", fake_p50({"fp32": (1.0, 10.0), "dynamic": (2.0, 20.0)}))
    run_dir = tmp_path / "teacher"
    shutil.copytree(teacher_run, run_dir, ignore=shutil.ignore_patterns("onnx"))
    said: list[str] = []
    cfg = Int8Config(calibration=32, held_out=100, recipes=("dynamic",), timing_rounds=1, min_agreement=0.5,
                     max_drop=1.0)
    manifest = run_dropping_failed_int8(ExportConfig(run_dir=run_dir, int8=True, int8_tuning=cfg,
                                                     max_check_sentences=16, progress=False), said.append)
    assert "int8" not in {v["variant"] for v in manifest["variants"]} and manifest["parity"]["passed"]
    assert not (run_dir / "onnx" / "model.int8.onnx").exists()
    assert len(said) == 1 and "0.50x fp32 at batch 1 and 0.50x at batch 32" in said[0] and "without it" in said[0]


def test_per_token_recipes_name_their_rotation() -> None:
    from kdfast.export.int8 import on_matmul_graph, pertoken_block, pertoken_static_block

    names = ("pertoken", "pertoken-h16", "pertoken-h64", "pertoken-h16-ln64", "dynamic", "blockwise-32", "pertoken-x")
    assert [pertoken_block(r) for r in names] == [0, 16, 64, 16, None, None, None]
    assert [pertoken_static_block(r) for r in names] == [0, 0, 0, 64, 0, 0, 0]
    assert all(on_matmul_graph(r) for r in ("pertoken", "pertoken-h16", "pertoken-h16-ln64", "blockwise-32"))
    assert not on_matmul_graph("dynamic") and not on_matmul_graph("static-minmax")


def test_every_per_token_recipe_builds_in_the_tuner(teacher_run: Path, tmp_path: Path) -> None:
    """``pertoken`` (no rotation), ``pertoken-h16`` and ``pertoken-h16-ln64`` (GPT-2's LayerNorm outputs on one
    calibrated scale each) built and judged end to end on the tiny teacher, no error."""
    cfg = Int8Config(calibration=32, held_out=100, recipes=("pertoken", "pertoken-h16", "pertoken-h16-ln64"),
                     max_fp32_nodes=0,
                     timing_rounds=1, min_agreement=0.5, max_drop=1.0, min_speedup=0.0)
    manifest = run(ExportConfig(run_dir=teacher_run, out=tmp_path / "onnx", int8=True, int8_tuning=cfg,
                                max_check_sentences=16, progress=False))
    built = {c["name"]: c["error"] for c in manifest["int8"]["candidates"]}
    assert built == {"pertoken": "", "pertoken-h16": "", "pertoken-h16-ln64": ""}


def test_recipes_are_the_known_ones_each_optionally_smoothed() -> None:
    Int8Config(recipes=("dynamic", "pertoken-h16", "smooth-pertoken-h16", "smooth-blockwise-32")).validate()
    for bad in (("pertoken-h12",), ("smooth-",), ("smooth-smooth-dynamic",), ()):
        with pytest.raises(KdfastError, match="recipes must be among"):
            Int8Config(recipes=bad).validate()


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--int8-min-speedup", "-1", "--int8-min-speedup must be at least 0"),
    ("--threads", "-2", "--threads must be at least 0"),
])
def test_bad_speed_flags_are_one_error_line_before_any_work(teacher_run: Path, tmp_path: Path, flag: str, value: str,
                                                            says: str, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from kdfast.cli.main import main

    out = tmp_path / "onnx"
    monkeypatch.setattr(sys, "argv", ["kdfast", "export", "--onnx", str(teacher_run), "--out", str(out), "--int8",
                                      flag, value])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and not out.exists()
    assert err.startswith("error: ") and says in err and len(err.strip().splitlines()) == 1


def test_a_refused_int8_is_dropped_with_a_note_and_the_rest_exported(teacher_run: Path, tmp_path: Path) -> None:
    """What bench and the pipeline export through: int8 refused (here a rule 200 held-out sentences cannot prove),
    the export is made again without it, says so once, and writes the fp32 model and a manifest without int8."""
    from kdfast.export.onnx import run_dropping_failed_int8

    notes: list[str] = []
    out = tmp_path / "onnx"
    manifest = run_dropping_failed_int8(ExportConfig(run_dir=teacher_run, out=out, int8=True,
                                                     int8_tuning=Int8Config(held_out=200), max_check_sentences=16,
                                                     progress=False), lambda *a, **k: notes.append(" ".join(a)))
    assert len(notes) == 1 and notes[0].startswith(f"{teacher_run}: export refused every int8 candidate (int8: 200 "
                                                   "held-out training sentences cannot show")
    assert notes[0].endswith("); exporting without it")  # the reason, once
    written = json.loads((out / MANIFEST).read_text())
    assert [v["variant"] for v in written["variants"]] == [v["variant"] for v in manifest["variants"]] == ["fp32"]
    assert written["parity"]["passed"] and not written.get("int8")
    assert (out / "model.onnx").is_file() and not list(out.glob("*int8*"))


@pytest.mark.parametrize("failure", ["fp32-and-int8", "fp32", "untuned-without-report", "int8-not-asked"])
def test_only_a_failed_int8_alone_is_dropped(failure: str, tmp_path: Path) -> None:
    """Any other failure stops the export as it is: a wrong fp32 model is never papered over by dropping int8."""
    import kdfast.export.onnx as onnx

    row = {"checked": True, "passed": True}
    parity = {"checked": True, "variants": [{**row, "variant": "fp32", "passed": "fp32" not in failure},
                                            {**row, "variant": "int8", "passed": failure == "fp32"}]}
    manifest = ({"parity": {"checked": False}, "int8": {"candidates": []}} if failure == "untuned-without-report"
                else {"parity": parity})
    calls: list[bool] = []

    def failing_run(cfg: ExportConfig) -> dict[str, Any]:
        calls.append(cfg.int8)
        raise ParityError("failed", manifest)

    cfg = ExportConfig(run_dir=tmp_path, int8=failure != "int8-not-asked")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(onnx, "run", failing_run)
        with pytest.raises(ParityError, match="failed"):
            onnx.run_dropping_failed_int8(cfg, lambda *a, **k: pytest.fail("no note: nothing is dropped"))
    assert calls == [cfg.int8]  # one export, not a second one without int8


# --- the report: what the table, the errors and the manifest say (exact: a user reads them)


def test_the_sentence_hash_is_of_each_sentence_and_a_newline_in_order() -> None:
    import hashlib

    assert sentences_sha256(["a", "b"]) == hashlib.sha256(b"a\nb\n").hexdigest()
    assert sentences_sha256([]) == hashlib.sha256(b"").hexdigest()
    assert sentences_sha256(["é"]) == hashlib.sha256("é\n".encode()).hexdigest()


def test_draw_takes_at_most_half_for_calibration_and_needs_two_sentences() -> None:
    train = [Example(f"s{i}", i % 2) for i in range(10)]
    data = CalibrationSet.draw(train, 8, 30, seed=0)
    assert len(data.calibration) == 5 and len(data.held_out) == 5 and data.perturbed == []
    assert sorted(e.text for e in data.calibration + data.held_out) == sorted(e.text for e in train)
    copies = CalibrationSet.draw(train, 2, 3, seed=0, perturbed=True)
    assert len(copies.perturbed) == 3 and copies.perturbed == CalibrationSet.draw(train, 2, 3, 0, True).perturbed
    assert len(CalibrationSet.draw(train[:2], 5, 5, seed=0).calibration) == 1
    with pytest.raises(KdfastError, match=r"^int8 tuning needs training sentences; the training split has 1$"):
        CalibrationSet.draw(train[:1], 5, 5, seed=0)


def test_a_rule_the_held_out_sentences_cannot_prove_says_how_many_it_needs() -> None:
    from kdfast.export.int8 import unprovable

    cfg = Int8Config(calibration=64)
    assert unprovable(268, cfg) is None and unprovable(300, cfg) is None
    assert unprovable(10, Int8Config(min_agreement=1.0)) is None  # no bound: judged on the share
    assert unprovable(200, cfg) == (
        "int8: 200 held-out training sentences cannot show 99.0% agreement with fp32 at 95% confidence even if int8 "
        f"kept every label (the bound would be {wilson_lower(1.0, 200, 0.95):.2%}); it needs 268 beyond the 64 "
        "calibration sentences: train on more data, lower --int8-min-agreement, or export without --int8")
    assert "it needs 536 beyond" in unprovable(100, Int8Config(confidence=0.99))  # ceil(2.3263^2 x 99)


def test_the_verdict_and_the_speed_errors_read_exactly() -> None:
    from kdfast.export.int8 import describe_threads, too_slow

    assert describe_threads(0) == "ONNX Runtime's default threads" and describe_threads(2) == "2 thread(s)"
    tuner = ScriptedTuner({}, Int8Config())
    c = Candidate("c", "dynamic", "model.onnx", agreement=0.995, agreement_lower=0.9912, mcc_drop=0.0123,
                  speedup_b1=2.5, passed=True)
    assert tuner.verdict(c) == "99.50% agreement (≥ 99.12% at 95%), MCC Δ -0.0123, 2.50x fp32: pass"
    c.passed, c.speedup_b1, c.mcc_drop = False, float("nan"), -0.5
    assert tuner.verdict(c) == "99.50% agreement (≥ 99.12% at 95%), MCC Δ +0.5000"

    def timed(name: str, b1: float, b32: float) -> Candidate:
        return Candidate(name, "dynamic", "model.onnx", agreement=0.996, mcc_drop=0.001,
                         speed={"batch_1": {"speedup": b1}, "batch_32": {"speedup": b32}})

    judged = [timed("a", 3.0, 0.7), timed("b", 1.1, 0.9), timed("c", 0.5, 2.0)]
    assert too_slow(judged, Int8Config(min_speedup=1.5, threads=0)) == (
        "int8: no accurate candidate is at least 1.50x fp32's speed at batch 1 and 32 (ONNX Runtime's default "
        "threads; --int8-min-speedup); the best of 3, b (99.60% agreement, Δ MCC -0.0010), ran 1.10x fp32 at "
        "batch 1 and 0.90x at batch 32; nothing was written")


def test_every_skipped_recipe_is_recorded_and_fallbacks_keep_the_ranked_nodes() -> None:
    """Recipes sorted fastest first: once one cannot beat a passing candidate (or the speed rule), none after it can,
    and each is recorded; a fallback keeps the top of its own recipe's ranking fp32, and one that runs exactly at
    the speed rule is searched on."""
    script = {"pass": (True, 3.0), "slow1": (False, 2.0), "slow2": (False, 1.5)}
    found = ScriptedTuner(script, Int8Config(recipes=("pass", "slow1", "slow2"))).run()  # type: ignore[arg-type]
    assert set(found["not_searched"]) == {"slow1", "slow2"}
    script = {"under1": (False, 0.9), "under2": (False, 0.8)}
    found = ScriptedTuner(script, Int8Config(recipes=("under1", "under2"))).run()  # type: ignore[arg-type]
    assert set(found["not_searched"]) == {"under1", "under2"}
    script = {"edge": (False, 1.2), "edge+fp32:1": (False, 1.0), "edge+fp32:2": (True, 1.0)}
    tuner = ScriptedTuner(script, Int8Config(recipes=("edge",)))  # type: ignore[arg-type]
    found = tuner.run()
    assert tuner.built == ["edge", "edge+fp32:1", "edge+fp32:2"] and found["winner"].name == "edge+fp32:2"
    assert found["winner"].kept_fp32 == ["edge/n0", "edge/n1"]
    assert [r["node"] for r in found["ranking"]["edge"]][:2] == ["edge/n0", "edge/n1"]


def test_a_candidate_that_fails_to_build_is_said_with_its_error() -> None:
    class Failing(ScriptedTuner):
        def candidate(self, recipe: str, exclude: Any) -> Candidate:
            c = super().candidate(recipe, exclude)
            c.error = "the quantizer failed" if recipe == "broken" else ""
            return c

    said: list[str] = []
    tuner = Failing({"ok": (True, 2.0), "broken": (False, 0.5)},
                    Int8Config(recipes=("ok", "broken")))  # type: ignore[arg-type]
    tuner.say = said.append
    assert tuner.run()["winner"].name == "ok"
    assert "int8: broken: error: the quantizer failed" in said


def test_the_search_says_what_it_judged() -> None:
    """Each judged candidate's speed line, and the recipe left unsearched with the reason."""
    said: list[str] = []
    script = {"a": (True, 1.8), "b": (False, 1.5)}
    tuner = ScriptedTuner(script, Int8Config(recipes=("a", "b"), min_speedup=1.6, threads=2),  # type: ignore[arg-type]
                          {"a": (1.8, 1.7)})
    tuner.say = said.append
    found = tuner.run()
    assert found["winner"].name == "a"
    assert ("int8: a: 1.80x fp32 at batch 1, 1.70x fp32 at batch 32 (2 thread(s)): meets the speed rule (≥ 1.60x)"
            in said)
    assert found["not_searched"] == {"b": "1.50x fp32 as it is, no faster than a passing candidate (1.70x)"}
    said.clear()
    tuner = ScriptedTuner(script, Int8Config(recipes=("a",), min_speedup=2.0), {"a": (1.8, 1.7)})  # type: ignore[arg-type]
    tuner.say = said.append
    assert tuner.run()["winner"] is None
    assert said[-1].endswith("(ONNX Runtime's default threads): fails the speed rule (≥ 2.00x)")


def test_smoothing_keeps_the_model_and_moves_the_outliers_into_the_weights(teacher_run: Path, tmp_path: Path) -> None:
    """SmoothQuant on the ONNX graph (``smooth_file``): the smoothed fp32 model gives fp32's logits, every weight
    product's activation passes through one inserted scale, the channel spread of those activations shrinks (what
    makes per-tensor int8 steps finer), and the result still quantizes to a model close to fp32."""
    import onnx

    from kdfast.export.quantize import activation_absmax, quantize_blockwise_file, smooth_file, smooth_groups

    out = tmp_path / "onnx"
    run(ExportConfig(run_dir=teacher_run, out=out, max_check_sentences=8, progress=False))
    src, matmul, dst = out / "model.onnx", tmp_path / "matmul.onnx", tmp_path / "smooth.onnx"
    gemm_as_matmul(src, matmul)
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 100, n).tolist() for n in (4, 9, 13)]
    reader = UnpaddedReader([pad_batch(rows, 0)], ["input_ids", "attention_mask"])
    groups = smooth_groups(onnx.load(str(matmul)))
    assert groups
    before = smooth_file(matmul, dst, reader, 0.5)
    graph = onnx.load(str(dst)).graph
    assert sum(n.op_type == "Mul" and n.name.endswith("_smooth") for n in graph.node) == len(groups)
    smoothed = activation_absmax(dst, [f"{a}_smoothed" for a in groups], reader)

    def spread(m: np.ndarray) -> float:
        return float(m.max() / max(np.median(m), 1e-6))

    assert np.mean([spread(smoothed[f"{a}_smoothed"]) for a in groups]) < np.mean([spread(before[a])
                                                                                 for a in groups])
    feeds = {"input_ids": rng.integers(0, 100, (3, 7)), "attention_mask": np.ones((3, 7), dtype=np.int64)}
    want = session(src).run(["logits"], feeds)[0]
    np.testing.assert_allclose(session(dst).run(["logits"], feeds)[0], want, rtol=1e-4, atol=1e-5)
    # given the ranges again, a second alpha needs no second measurement and is the same model in fp32
    again = smooth_file(matmul, tmp_path / "smooth75.onnx", UnpaddedReader([], []), 0.75, before)
    assert again is before
    np.testing.assert_allclose(session(tmp_path / "smooth75.onnx").run(["logits"], feeds)[0], want, rtol=1e-4,
                               atol=1e-5)
    quantize_blockwise_file(dst, tmp_path / "q.onnx", 32, exclude=[])
    got = session(tmp_path / "q.onnx").run(["logits"], feeds)[0]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max() + 1e-3  # int8: close, not equal


def test_a_smoothed_recipe_chooses_its_alpha_and_stays_close_to_fp32(teacher_run: Path, cola_dir: Path,
                                                                     tmp_path: Path) -> None:
    """``smooth-R``: R's quantizer on R's source after SmoothQuant, with the alpha among ``SMOOTH_ALPHAS`` whose
    quantized model is closest to fp32 on the calibration sentences (each alpha's MSE recorded); the candidate is
    judged by the same rule as any other and its logits stay within int8's tolerance of fp32's."""
    import onnx

    from kdfast.export.int8 import SMOOTH_ALPHAS

    out = tmp_path / "onnx"
    run(ExportConfig(run_dir=teacher_run, out=out, max_check_sentences=8, progress=False))
    source = load_teacher_for_export(teacher_run)
    inputs = TuneInputs(fp32=out / "model.onnx", base=out / "model.onnx", encode=source.encode, pad_id=source.pad_id,
                        input_names=source.input_names)
    cfg = Int8Config(calibration=32, held_out=100, rank_sentences=16, timing_rounds=1, min_agreement=0.9,
                     recipes=("smooth-blockwise-32",), min_speedup=0.0)
    data = CalibrationSet.draw(load_dataset(str(cola_dir)).train, cfg.calibration, cfg.held_out, cfg.seed, True)
    work = tmp_path / "work"
    work.mkdir()
    tuner = Tuner(inputs, data, cfg, work, lambda *a: None)
    c = tuner.candidate("smooth-blockwise-32", [])
    assert not c.error, c.error
    chosen = tuner.smoothing["smooth-blockwise-32"]
    assert set(chosen["logit_mse"]) == {f"{a:g}" for a in SMOOTH_ALPHAS}
    assert chosen["logit_mse"][f"{chosen['alpha']:g}"] == min(chosen["logit_mse"].values())
    assert c.source == chosen["file"] and c.agreement == c.agreement  # judged by the rule
    ops = [n.op_type for n in onnx.load(str(tuner.files[c.name])).graph.node]
    assert "MatMulNBits" in ops and sum(n.endswith("_smooth") for n in
                                        [n.name for n in onnx.load(str(tuner.files[c.name])).graph.node]) > 0
    assert c.mse < 0.05 * float((tuner.want_held ** 2).mean()) + 1e-4  # int8: close to fp32, not equal


def test_the_speed_rule_times_every_accurate_candidate_in_one_measurement() -> None:
    """``choose`` times fp32 and all the accurate candidates together (taking turns in one run), so the one kept is
    compared with the others under the same load; each gets its own record against that run's fp32."""
    calls: list[list[str]] = []

    class Timed(Tuner):
        def __init__(self) -> None:
            self.cfg, self.say = Int8Config(), lambda *a: None
            self.inputs = TuneInputs(fp32=Path("model.onnx"), base=Path("model.onnx"), encode=lambda t: [],
                                     pad_id=0, input_names=["input_ids"])

        def p50s(self, names: Any) -> dict[int, dict[str, float]]:
            calls.append(list(names))
            return {1: {"fp32": 2.0, "a": 1.0, "b": 1.25}, 32: {"fp32": 60.0, "a": 40.0, "b": 30.0}}

    a, b = (Candidate(name=n, recipe=n, source="model.onnx", passed=True, speedup_b1=s) for n, s in (("a", 2.0),
                                                                                                   ("b", 1.6)))
    winner = Timed().choose([a, b])
    assert calls == [["a", "b"]]  # one measurement, fastest by the search first
    assert winner is b and b.speed is not None and a.speed is not None  # 1.6x / 2.0x beats 2.0x / 1.5x
    assert b.speed["batch_32"] == {"fp32_p50_ms": 60.0, "int8_p50_ms": 30.0, "speedup": 2.0}
    assert a.speed["batch_1"]["speedup"] == 2.0 and a.fast and b.fast
