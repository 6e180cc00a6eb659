"""Every int8 candidate of ``kdfast export --int8`` side by side: size, batch-1 and batch-32 p50 against fp32 ONNX,
and label agreement and MCC on CoLA dev, for a real teacher run and for a 124M GPT-2 (random weights: speed only).

    python benchmarks/bench_int8.py --data /path/to/cola --teacher runs/minilm-teacher [--gpt2] [--threads 2]

For a teacher run: export fp32 and optimized ONNX (with export's parity checks), then build the candidates exactly as
``kdfast.export.int8.Tuner`` does (calibration and held-out sentences drawn from train with the same seed; each recipe's
nodes ranked by sensitivity and kept fp32 one step at a time until the rule holds on the held-out sentences), and
measure each on the whole dev set. Agreement is against the fp32 ONNX model, which export checked equal to PyTorch
on every dev label. For GPT-2 (``--gpt2``: ``GPT2Config()``, 124M, random weights, the real GPT-2 tokenizer from
tests/data) ranking 49 nodes of a 500 MB model would take most of an hour here, so its fallback candidates keep the
score head and then the last layers' weight products fp32, in graph order from the end: their speed is what a
ranking would give within the spread of which nodes it picks. Where Optimum installs, its ``ORTQuantizer`` dynamic
int8 (``AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)``) is measured beside them.

Timing: one ONNX Runtime session per file with ``--threads`` intra-op threads; batches of consecutive dev sentences
(a seeded sample, as ``kdfast bench`` takes), right-padded; sessions taking turns, each timed
alone through its batches after one untimed call (``kdfast.export.int8.p50_ms``), so a busy moment of the shared
machine falls on all of them; one untimed warm-up pass. Writes
``results/int8-<model>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kdfast.batching import length_sorted_batches, pad_batch
from kdfast.bench.harness import git_commit, load_avg, machine, now, write_json, write_text
from kdfast.data import load_dataset, subsample
from kdfast.export.int8 import (
    CalibrationSet,
    Candidate,
    Int8Config,
    TuneInputs,
    Tuner,
    logits,
    p50_ms,
    session,
    timing_feeds,
)
from kdfast.export.onnx import MODEL_FILES, ExportConfig, ExportSource, export_onnx, load_teacher_for_export, optimize
from kdfast.export.onnx import run as export
from kdfast.export.quantize import (
    BLOCKWISE_OPS,
    DYNAMIC_OPS,
    STATIC_OPS,
    UnpaddedReader,
    calibrate,
    gemm_as_matmul,
    quantize_blockwise_file,
    quantize_dynamic_file,
    quantize_static_file,
    smooth_file,
    weight_nodes,
)
from kdfast.metrics import mcc

RESULTS = Path(__file__).resolve().parent / "results"
DATE = "%Y-%m-%d %H:%M UTC"  # the results files' format of dates (UTC)


def optimum_dynamic(src: Path, out: Path) -> tuple[Path | None, str]:
    """Optimum's dynamic int8 of ``src`` (as its docs show it), or None and why not."""
    try:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
    except Exception as e:  # ImportError, or an import-time failure beside transformers 5
        return None, f"optimum not usable here: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    try:
        quantizer = ORTQuantizer.from_pretrained(src.parent, file_name=src.name)
        qconfig = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
        quantizer.quantize(save_dir=out, quantization_config=qconfig)
    except Exception as e:
        return None, f"optimum failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return next(out.glob("*quantized*.onnx")), ""


def gpt2_source() -> ExportSource:
    """A full-size GPT-2 classifier with random weights and the real tokenizer, exported as export exports it."""
    from kdfast.export.onnx import ClassifierLogits
    from kdfast.testing import gpt2_tokenizer, random_gpt2_classifier
    from kdfast.train.teacher import encode

    tokenizer = gpt2_tokenizer()
    model = random_gpt2_classifier(tokenizer).eval()
    model.set_attn_implementation("eager")
    return ExportSource(kind="teacher", module=ClassifierLogits(model).eval(), input_names=["input_ids",
                        "attention_mask"], encode=lambda s: encode(tokenizer, s, 64), pad_id=tokenizer.eos_token_id,
                        save_preprocessing=lambda folder: None, optimizer_type="gpt2", num_heads=12, hidden_size=768)


class RemedyTuner(Tuner):
    """The tuner, able to build issue 25's remedies as well, named ``[smoothNN-]BASE[-opt]``: BASE one of
    ``dynamic``, ``static-minmax``, ``static-percentile``, ``blockwise-N`` (any block); ``-opt`` on the optimized
    (fused attention) graph, else the plain one; ``smoothNN-`` after SmoothQuant with alpha NN/100
    (:func:`kdfast.export.quantize.smooth_file`, ranges from the calibration sentences). Judged by the same rule."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.absmax: dict[str, Any] = {}

    def _reader(self) -> UnpaddedReader:
        return UnpaddedReader([pad_batch([self.cal_ids[i] for i in idx], self.inputs.pad_id)
                               for idx in length_sorted_batches(self.cal_ids, 64)], self.inputs.input_names)

    def source(self, recipe: str) -> Path:
        if recipe in self.cfg.recipes:
            return super().source(recipe)
        base = self.inputs.base if recipe.endswith("-opt") else self.inputs.fp32
        if "blockwise" in recipe:  # its Gemms as MatMuls, before any smoothing
            matmul = self.workdir / f"matmul-{base.name}"
            if not matmul.exists():
                gemm_as_matmul(base, matmul)
            base = matmul
        if not recipe.startswith("smooth"):
            return base
        alpha = recipe.split("-")[0].removeprefix("smooth")
        dst = self.workdir / f"smooth{alpha}-{base.name}"
        if not dst.exists():
            self.absmax[base.name] = smooth_file(base, dst, self._reader(), int(alpha) / 100,
                                                 self.absmax.get(base.name))
        return dst

    def nodes(self, recipe: str) -> list[str]:
        if recipe in self.cfg.recipes:
            return super().nodes(recipe)
        if "blockwise" in recipe:
            return weight_nodes(self.source(recipe), BLOCKWISE_OPS, weight_input=1)
        return weight_nodes(self.source(recipe), DYNAMIC_OPS if "dynamic" in recipe else STATIC_OPS)

    def build(self, recipe: str, exclude: Any, dst: Path) -> None:
        if recipe in self.cfg.recipes:
            return super().build(recipe, exclude, dst)
        src = self.source(recipe)
        if "blockwise" in recipe:
            quantize_blockwise_file(src, dst, int(recipe.split("blockwise-")[1].split("-")[0]), exclude)
        elif "dynamic" in recipe:
            quantize_dynamic_file(src, dst, exclude)
        else:
            from onnxruntime.quantization.calibrate import save_tensors_data

            method = "minmax" if "minmax" in recipe else "percentile"
            cache = self.workdir / f"ranges-{recipe}.json"
            if not cache.exists():
                save_tensors_data(calibrate(src, self._reader(), method, self.cfg.percentile, self.workdir), cache)
            quantize_static_file(src, dst, cache, method, self.nodes(recipe), exclude)
        return None


def build_candidates(tuner: Tuner, ranked: bool, max_fp32: int) -> dict[str, Any]:
    """The tuner's own search (``ranked``), or, for GPT-2, fallbacks from the end of the graph; the candidates, the
    tuner's pick and why a recipe was not searched further."""
    if ranked:
        found = tuner.run()
        return found | {"winner": found["winner"].name if found["winner"] else None}
    out = []
    for recipe in tuner.cfg.recipes:
        nodes = tuner.nodes(recipe)
        for k in (0, 2, max_fp32):
            if k <= len(nodes):
                print(f"  {recipe} +fp32:{k}", flush=True)
                out.append(tuner.candidate(recipe, nodes[len(nodes) - k:]))
    return {"candidates": out, "winner": None, "not_searched": {}}


def measure(name: str, folder: Path, inputs: TuneInputs, cola: Any, cfg: Int8Config, threads: int, ranked: bool,
            max_fp32: int, timed: int, rounds: int, dev_sentences: int | None, remedies: list[str]
            ) -> dict[str, Any]:
    dev = cola.dev if dev_sentences is None else subsample(cola.dev, dev_sentences, seed=0)
    labels = np.array([e.label for e in dev])
    dev_ids = inputs.encode([e.text for e in dev])
    data = CalibrationSet.draw(cola.train, cfg.calibration, cfg.held_out, cfg.seed, cfg.perturbed)
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    start = time.time()
    tuner = RemedyTuner(inputs, data, cfg, work, print)
    found = build_candidates(tuner, ranked, max_fp32)
    candidates: list[Candidate] = found["candidates"]
    remedy_s = {}
    for recipe in remedies:
        begun = time.time()
        c = tuner.candidate(recipe, [])
        remedy_s[recipe] = time.time() - begun
        print(f"  {recipe}: " + (c.error or tuner.verdict(c)), flush=True)
        candidates.append(c)
    tuning_s = time.time() - start
    files = {"fp32": folder / MODEL_FILES["fp32"], "optimized": folder / MODEL_FILES["optimized"]}
    files |= {c.name: tuner.files[c.name] for c in candidates if not c.error}
    notes = {}
    opt_path, why = optimum_dynamic(folder / MODEL_FILES["fp32"], work / "optimum")
    if opt_path is not None:
        files["optimum-dynamic"] = opt_path
    else:
        notes["optimum-dynamic"] = why
    print(f"{name}: dev logits of {len(files)} models", flush=True)
    want = logits(session(files["fp32"]), dev_ids, inputs.pad_id, 64)
    rows: dict[str, dict[str, Any]] = {}
    for key, path in files.items():
        got = want if key == "fp32" else logits(session(path), dev_ids, inputs.pad_id, 64)
        rows[key] = {"model": key, "file": str(path), "mb": path.stat().st_size / 1e6,
                     "dev_agreement": float((got.argmax(-1) == want.argmax(-1)).mean()),
                     "dev_mcc": mcc(got.argmax(-1), labels), "dev_mcc_drop": mcc(want.argmax(-1), labels) - mcc(
                         got.argmax(-1), labels)}
    sample = sorted(random.Random(0).sample(range(len(dev_ids)), timed))
    ids = [dev_ids[i] for i in sample]
    time_rows(list(rows.values()), ids, inputs, threads, timed, rounds)
    by_name = {c.name: c for c in candidates}
    for k, row in rows.items():
        c = by_name.get(k)
        row |= {"tuning_agreement": c.agreement if c else None,
                "held_out_agreement": c.agreement_held_out if c else None,
                "perturbed_agreement": c.agreement_perturbed if c else None,
                "tuning_agreement_lower": c.agreement_lower if c else None,
                "held_out_mcc_drop": c.mcc_drop if c else None, "passed_tuning": c.passed if c else None,
                "kept_fp32": c.kept_fp32 if c else []}
    return {"model": name, "rows": list(rows.values()), "errors": {c.name: c.error for c in candidates if c.error},
            "notes": notes, "tuning_s": tuning_s, "remedy_build_s": remedy_s, "dev_sentences": len(dev),
            "winner": found["winner"], "load_after_timing": load_avg(),
            "not_searched": found["not_searched"],
            "rule": {"min_agreement": cfg.min_agreement, "max_mcc_drop": cfg.max_drop,
                     "confidence": cfg.confidence},
            "calibration": cfg.calibration, "held_out": cfg.held_out, "threads": threads,
            "timed_sentences": timed, "rounds": rounds}


def time_rows(rows: list[dict[str, Any]], ids: list[list[int]], inputs: TuneInputs, threads: int, timed: int,
              rounds: int) -> None:
    """Batch-1 and batch-32 p50 of every row's file, and its ratio to the fp32 row's, in one run, taking turns
    (p50_ms)."""
    print(f"timing {len(rows)} models at batch 1 and 32, {threads} threads", flush=True)
    sessions = {r["model"]: session(Path(r["file"]), threads) for r in rows}
    for batch, n in ((1, timed), (32, max(1, timed // 32))):
        p50 = p50_ms(sessions, timing_feeds(ids, inputs.pad_id, inputs.input_names, batch, n), rounds)
        for r in rows:
            r[f"b{batch}_p50_ms"] = p50[r["model"]]
            r[f"b{batch}_vs_fp32"] = p50["fp32"] / p50[r["model"]]


def retime(path: Path, candidates: Path, cola: Any, threads: int, timed: int, rounds: int) -> dict[str, Any]:
    """Time again the files of an earlier result (a busy machine spoils latencies, not accuracies): each row's
    ``file``, or for a result written before rows recorded it, the tuner's name for it in ``candidates``."""
    result = json.loads(path.read_text())
    folder = Path(result["folder"])
    for r in result["rows"]:
        if "file" not in r:
            fixed = {"fp32": folder / MODEL_FILES["fp32"], "optimized": folder / MODEL_FILES["optimized"]}
            r["file"] = str(fixed.get(r["model"]) or candidates / f"{r['model'].replace(':', '-').replace('+', '_')}"
                                                                   ".onnx")
    source = gpt2_source() if result["model"].startswith("gpt2") else load_teacher_for_export(Path(result["run"]))
    inputs = TuneInputs(fp32=folder / MODEL_FILES["fp32"], base=folder / MODEL_FILES["optimized"],
                        encode=source.encode, pad_id=source.pad_id, input_names=source.input_names,
                        num_heads=source.num_heads)
    dev_ids = inputs.encode([e.text for e in cola.dev])
    ids = [dev_ids[i] for i in sorted(random.Random(0).sample(range(len(dev_ids)), timed))]
    result["meta"]["retimed"] = {"date": now(DATE, utc=True), "commit": git_commit(), "load": load_avg()}
    time_rows(result["rows"], ids, inputs, threads, timed, rounds)
    result["meta"]["retimed"]["load_after"] = load_avg()
    result |= {"threads": threads, "timed_sentences": timed, "rounds": rounds}
    return result


def retimed_note(meta: dict[str, Any]) -> str:
    if "retimed" not in meta:
        return ""
    again = meta["retimed"]
    return (f"; timed again {again['date']} (commit {again['commit']}, load average {again['load']} before, "
            f"{again['load_after']} after)")


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"# int8 candidates: {result['model']}", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['machine']}, load average at start {meta['load']}"
             + retimed_note(meta) + "; "
             f"{result['threads']} ONNX Runtime threads; calibration {result['calibration']} / held-out "
             f"{result['held_out']} training sentences; rule ≥ {result['rule']['min_agreement']:.0%} agreement, "
             f"|Δ MCC| ≤ {result['rule']['max_mcc_drop']}; tuning took {result['tuning_s']:.0f} s"
             + (f"; load average {result['load_after_timing']} after the timing" if "load_after_timing" in result
                else "") + ".", "",
             *([f"Command: `{result['command']}`.", ""] if "command" in result else []),
             f"Dev: {result['dev_sentences']} sentences. Tuning agreement: held-out training sentences + perturbed "
             "copies (held-out / perturbed apart), and its lower confidence bound (Wilson, "
             f"{result['rule'].get('confidence', 0.95):.0%}), which the rule judges; the tuner searches a failing "
             "recipe's fallbacks only while they are faster than a passing candidate, and keeps the fastest that "
             f"passes: **{result.get('winner') or 'none'}**.", "",
             "| model | MB | b1 p50 ms | b1 vs fp32 | b32 p50 ms | b32 vs fp32 | tuning agreement (held-out / "
             "perturbed), bound | tuning verdict | dev agreement | dev MCC | dev Δ MCC | fp32 nodes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        tuning = verdict = ""
        if r["tuning_agreement"] is not None:
            tuning = (f"{r['tuning_agreement']:.2%} ({r['held_out_agreement']:.2%} / "
                      f"{r['perturbed_agreement']:.2%})")
            if r.get("tuning_agreement_lower") is not None:
                tuning += f", ≥ {r['tuning_agreement_lower']:.2%}"
            verdict = "pass" if r["passed_tuning"] else "fail"
        lines.append(f"| {r['model']} | {r['mb']:.1f} | {r['b1_p50_ms']:.3g} | {r['b1_vs_fp32']:.2f}x | "
                     f"{r['b32_p50_ms']:.3g} | {r['b32_vs_fp32']:.2f}x | {tuning} | {verdict} | "
                     f"{r['dev_agreement']:.2%} | {r['dev_mcc']:.4f} | {-r['dev_mcc_drop']:+.4f} | "
                     f"{len(r['kept_fp32'])} |")
    for k, v in result.get("remedy_build_s", {}).items():
        lines.append(f"\n{k}: built and judged in {v:.0f} s (remedy; not part of the tuner's search)")
    for k, v in result.get("not_searched", {}).items():
        lines.append(f"\n{k}: not searched further: {v}")
    for k, v in {**result["errors"], **result["notes"]}.items():
        lines.append(f"\n{k}: {v}")
    return "\n".join(lines) + "\n"


def side_by_side(models: list[str], run_dir: Path, cola: Any, threads: int, timed: int, rounds: int
                 ) -> dict[str, Any]:
    """Files made elsewhere (``NAME=PATH``; the first is the fp32 reference), e.g. Optimum's int8 made in its own
    environment beside kdfast's export: dev agreement and MCC against the first, and batch-1 / batch-32 p50 all
    timed in one run, taking turns, at ``threads``."""
    source = load_teacher_for_export(run_dir)
    files = dict(m.split("=", 1) for m in models)
    reference = next(iter(files))
    inputs = TuneInputs(fp32=Path(files[reference]), base=Path(files[reference]), encode=source.encode,
                        pad_id=source.pad_id, input_names=source.input_names)
    labels = np.array([e.label for e in cola.dev])
    dev_ids = inputs.encode([e.text for e in cola.dev])
    want = logits(session(inputs.fp32), dev_ids, inputs.pad_id, 64)
    rows = []
    for name, path in files.items():
        got = logits(session(Path(path)), dev_ids, inputs.pad_id, 64)
        rows.append({"model": "fp32" if name == reference else name, "file": path,
                     "mb": Path(path).stat().st_size / 1e6,
                     "dev_agreement": float((got.argmax(-1) == want.argmax(-1)).mean()),
                     "dev_mcc": mcc(got.argmax(-1), labels),
                     "dev_mcc_drop": mcc(want.argmax(-1), labels) - mcc(got.argmax(-1), labels)})
    ids = [dev_ids[i] for i in sorted(random.Random(0).sample(range(len(dev_ids)), timed))]
    load = load_avg()
    time_rows(rows, ids, inputs, threads, timed, rounds)
    return {"model": f"side by side: {run_dir}", "rows": rows, "threads": threads, "timed_sentences": timed,
            "rounds": rounds, "load_before_timing": load, "load_after_timing": load_avg(),
            "dev_sentences": len(dev_ids)}


def side_by_side_markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"# int8 {result['model']}", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['machine']}; {result['threads']} ONNX Runtime threads "
             "(0: its default); load average {0} before the timing, {1} after; {2} dev sentences timed, {3} rounds, "
             "every model timed alone in turns (p50_ms).".format(
                 result["load_before_timing"], result["load_after_timing"], result["timed_sentences"],
                 result["rounds"]), "",
             f"Command: `{result['command']}`.", "",
             "| model | MB | b1 p50 ms | b1 vs fp32 | b32 p50 ms | b32 vs fp32 | dev agreement | dev MCC | dev Δ MCC |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['mb']:.1f} | {r['b1_p50_ms']:.3g} | {r['b1_vs_fp32']:.2f}x | "
                     f"{r['b32_p50_ms']:.3g} | {r['b32_vs_fp32']:.2f}x | {r['dev_agreement']:.2%} | "
                     f"{r['dev_mcc']:.4f} | {-r['dev_mcc_drop']:+.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cola")
    parser.add_argument("--teacher", type=Path, help="A teacher run folder (real weights).")
    parser.add_argument("--gpt2", action="store_true", help="Also a 124M GPT-2 with random weights (speed only).")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-int8",
                        help="Where the fp32 exports are written.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timed", type=int, default=64, help="Dev sentences timed (batch 1: each; batch 32: /32).")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--retime", type=Path, help="Time again the models of this results JSON, nothing else.")
    parser.add_argument("--candidates", type=Path, help="With --retime: the folder holding its candidates.")
    parser.add_argument("--stem", help="Results file name (default int8-minilm / int8-gpt2).")
    parser.add_argument("--recipes", help="The tuner's recipes, comma-separated (default: its defaults).")
    parser.add_argument("--max-fp32-nodes", type=int, help="The tuner's fallback limit (0: no fallback search).")
    parser.add_argument("--remedies", default="", help="Issue 25's remedies built beside them, comma-separated "
                        "[smoothNN-]BASE[-opt] (RemedyTuner), judged by the same rule and timed in the same run.")
    parser.add_argument("--gpt2-held-out", type=int, default=100)
    parser.add_argument("--gpt2-dev", type=int, default=128, help="Dev sentences GPT-2's (meaningless) agreement is "
                                                                   "measured on.")
    parser.add_argument("--side-by-side", nargs="+", metavar="NAME=PATH", help="With --teacher: time these files "
                        "(the first the fp32 reference) against each other, nothing else (side_by_side).")
    args = parser.parse_args()
    cola = load_dataset(args.data)
    if args.side_by_side:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
                "machine": f"{machine()['cpu']} ({machine()['cpus']} CPUs)"}
        result = side_by_side(args.side_by_side, args.teacher, cola, args.threads, args.timed, args.rounds)
        result["command"] = "python benchmarks/bench_int8.py " + " ".join(sys.argv[1:])
        stem = args.stem or "int8-side-by-side"
        write_json(RESULTS / f"{stem}.json", {"meta": meta, **result}, indent=1)
        write_text(RESULTS / f"{stem}.md", side_by_side_markdown(result, meta))
        print(side_by_side_markdown(result, meta))
        return
    if args.retime:
        result = retime(args.retime, args.candidates, cola, args.threads, args.timed, args.rounds)
        write_json(args.retime, result, indent=1)
        write_text(args.retime.with_suffix(".md"), markdown(result, result["meta"]))
        print(markdown(result, result["meta"]))
        return
    host = machine()
    meta = {"date": now(DATE, utc=True), "commit": git_commit(), "machine": f"{host['cpu']} ({host['cpus']} CPUs)",
            "load": load_avg()}
    jobs = []
    if args.teacher:
        folder = args.work / args.teacher.name
        export(ExportConfig(run_dir=args.teacher, out=folder, optimize=True, data=args.data))
        source = load_teacher_for_export(args.teacher)
        tuning = Int8Config(threads=args.threads, max_fp32_nodes=args.max_fp32_nodes,
                            **({"recipes": tuple(args.recipes.split(","))} if args.recipes else {}))
        jobs.append((str(args.teacher), folder, source, tuning, True, None))
    if args.gpt2:
        folder = args.work / "gpt2-124m-random"
        folder.mkdir(parents=True, exist_ok=True)
        source = gpt2_source()
        if not (folder / MODEL_FILES["optimized"]).exists():
            export_onnx(source, folder / MODEL_FILES["fp32"], 17)
            optimize(folder / MODEL_FILES["fp32"], folder / MODEL_FILES["optimized"], source)
        jobs.append(("gpt2-124m-random", folder, source, Int8Config(
            held_out=args.gpt2_held_out, calibration=100,
            **({"recipes": tuple(args.recipes.split(","))} if args.recipes else {})), False, args.gpt2_dev))
    for name, folder, source, cfg, ranked, dev_sentences in jobs:
        inputs = TuneInputs(fp32=folder / MODEL_FILES["fp32"], base=folder / MODEL_FILES["optimized"],
                            encode=source.encode, pad_id=source.pad_id, input_names=source.input_names,
                            num_heads=source.num_heads)  # blockwise and per-token on the fused-attention graph
        result = measure(name, folder, inputs, cola, cfg, args.threads, ranked, 8, args.timed, args.rounds,
                         dev_sentences, [r for r in args.remedies.split(",") if r])
        result["command"] = "python benchmarks/bench_int8.py " + " ".join(sys.argv[1:])
        stem = args.stem or ("int8-gpt2" if name.startswith("gpt2") else "int8-minilm")
        result |= {"folder": str(folder), "run": None if name.startswith("gpt2") else name}
        write_json(RESULTS / f"{stem}.json", {"meta": meta, **result}, indent=1)
        write_text(RESULTS / f"{stem}.md", markdown(result, meta))
        print(markdown(result, meta))


if __name__ == "__main__":
    main()
