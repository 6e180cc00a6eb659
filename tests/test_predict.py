"""``kdfast predict`` and ``kdfast.load``: every runtime gives ``kdfast eval``'s logits, on a tiny teacher and a tiny
student; inputs from arguments, files and stdin; ``auto`` picks an export and falls back to torch; bad input is an
``error:`` line; ``kdfast --help`` imports neither torch nor transformers."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, train_tiny_student

import kdfast
from kdfast.serve.predict import Classifier, softmax

SENTENCES = ["The book that John wrote was read by everyone.", "Books.", "Who did you see Mary and?",
             "She sang , and he danced .", "It is raining cats and dogs", "the the the"]


@pytest.fixture(scope="module")
def runs(teacher_run: Path, cola_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny teacher and a tiny student, each exported (fp32, and optimized/int8 where they pass), and a copy of
    the student without its export."""
    from kdfast.export.onnx import ExportConfig, run_dropping_failed_int8

    root = tmp_path_factory.mktemp("predict-runs")
    teacher = root / "teacher"
    shutil.copytree(teacher_run, teacher, ignore=shutil.ignore_patterns("onnx"))
    student = train_tiny_student(root / "student", cola_dir)
    bare = root / "student-bare"
    shutil.copytree(student, bare)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for run_dir, optimize in ((teacher, True), (student, False)):
            run_dropping_failed_int8(ExportConfig(run_dir=run_dir, optimize=optimize, int8=True,
                                                  max_check_sentences=16, progress=False), lambda *a, **k: None)
    finally:
        torch.set_num_threads(threads)
    return {"teacher": teacher, "student": student, "bare": bare}


def eval_logits(run_dir: Path) -> np.ndarray:
    from kdfast.evaluate import run_logits

    return run_logits(run_dir, SENTENCES, torch.device("cpu"))


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_every_runtime_gives_eval_logits(runs: dict[str, Path], kind: str) -> None:
    run_dir = runs[kind]
    want = eval_logits(run_dir)
    manifest = json.loads((run_dir / "onnx" / "manifest.json").read_text())
    variants = {v["variant"] for v in manifest["variants"]}
    checked = []
    for runtime, variant in (("torch", None), ("onnx", "fp32"), ("onnx-opt", "optimized"), ("onnx-int8", "int8")):
        if variant is not None and variant not in variants:
            continue
        clf = kdfast.load(run_dir, runtime=runtime, batch_size=64)  # int8: the parity check's batches
        got = clf.logits(SENTENCES)
        assert got.shape == (len(SENTENCES), len(clf.labels))
        if variant in (None, "fp32", "optimized"):
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)  # exact up to float summation order
        else:  # int8: a quantized model, so near PyTorch's logits but not equal to them (the fp32 file loaded
            # instead would be equal); its agreement with PyTorch on dev is the export's own check
            assert clf.backend.description.endswith("model.int8.onnx")
            scale = float(np.abs(want).max())
            assert np.abs(got - want).max() <= max(0.5 * scale, 0.05), (got, want)  # loose: tiny random models
            assert not np.allclose(got, want, atol=1e-7, rtol=0), "int8 gave fp32's logits"
        np.testing.assert_allclose(clf.predict_proba(SENTENCES), softmax(got), atol=1e-7)
        assert clf.predict(SENTENCES) == [clf.labels[i] for i in got.argmax(axis=1)]
        checked.append(runtime)
    assert {"torch", "onnx"} <= set(checked)


def test_batch_size_and_order_do_not_change_logits(runs: dict[str, Path]) -> None:
    one = Classifier(runs["student"], "onnx", batch_size=1).logits(SENTENCES)
    many = Classifier(runs["student"], "onnx", batch_size=64).logits(SENTENCES)
    np.testing.assert_allclose(one, many, atol=1e-5)
    streamed = np.stack([p for _, p in Classifier(runs["student"], "onnx").stream(iter(SENTENCES), chunk=4)])
    np.testing.assert_allclose(streamed, softmax(many), atol=1e-5)


def test_the_export_records_each_variants_latency_and_auto_takes_the_fastest(runs: dict[str, Path]) -> None:
    from kdfast.serve.predict import passed_variants

    runtime_of = {"optimized": "onnx-opt", "fp32": "onnx", "int8": "onnx-int8"}
    for kind in ("teacher", "student"):
        manifest = json.loads((runs[kind] / "onnx" / "manifest.json").read_text())
        ms = manifest["latency"]["ms"]
        assert set(ms) == {v["variant"] for v in manifest["variants"]} - {"fp16"}
        assert all(t > 0 for t in ms.values()) and manifest["latency"]["batch"] == 1
        fastest = min((v for v in ms if v in passed_variants(manifest)), key=ms.__getitem__)
        assert Classifier(runs[kind], "auto").runtime == runtime_of[fastest]
    assert Classifier(runs["bare"], "auto").runtime == "torch"
    assert Classifier(runs["teacher"]).describe()["manifest_sha256"]
    assert Classifier(runs["bare"]).describe()["manifest_sha256"] is None


@pytest.fixture
def three_variants(runs: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the teacher whose export has fp32, optimized and int8 files (int8: a copy of fp32 when the export
    dropped it), for manifests written by the test."""
    teacher = tmp_path / "teacher"
    shutil.copytree(runs["teacher"], teacher)
    if not (teacher / "onnx" / "model.int8.onnx").exists():
        shutil.copy(teacher / "onnx" / "model.onnx", teacher / "onnx" / "model.int8.onnx")
    return teacher


def auto_with(run_dir: Path, passed: set[str], ms: dict[str, float] | None) -> str:
    """``auto``'s pick when the manifest says ``passed`` passed parity and (``None``: an export from before
    timings were recorded) the batch-1 latencies ``ms``."""
    from kdfast.serve.predict import choose_runtime

    path = run_dir / "onnx" / "manifest.json"
    manifest = json.loads(path.read_text())
    files = {"fp32": "model.onnx", "optimized": "model.opt.onnx", "int8": "model.int8.onnx"}
    manifest["variants"] = [{"variant": v, "file": f} for v, f in files.items()]
    manifest["parity"]["variants"] = [{"variant": v, "checked": True, "passed": v in passed} for v in files]
    manifest.pop("latency", None)
    if ms is not None:
        manifest["latency"] = {"batch": 1, "ms": ms}
    path.write_text(json.dumps(manifest))
    return choose_runtime(run_dir, "auto")


def test_auto_takes_the_fastest_variant_that_passed(three_variants: Path) -> None:
    everything = {"fp32", "optimized", "int8"}
    assert auto_with(three_variants, everything, {"fp32": 3.0, "optimized": 2.0, "int8": 1.0}) == "onnx-int8"
    assert auto_with(three_variants, everything, {"fp32": 1.0, "optimized": 2.0, "int8": 3.0}) == "onnx"
    assert auto_with(three_variants, everything, {"fp32": 3.0, "optimized": 1.0, "int8": 2.0}) == "onnx-opt"
    # the fastest failed its check: the fastest of the rest
    assert auto_with(three_variants, {"fp32", "optimized"}, {"fp32": 3.0, "optimized": 2.0, "int8": 1.0}) == "onnx-opt"
    assert auto_with(three_variants, {"fp32", "int8"}, {"fp32": 1.5, "optimized": 1.0, "int8": 2.0}) == "onnx"
    assert auto_with(three_variants, set(), {"fp32": 1.0, "optimized": 1.0, "int8": 1.0}) == "torch"
    # a tie keeps the fixed order
    assert auto_with(three_variants, everything, {"fp32": 1.0, "optimized": 1.0, "int8": 1.0}) == "onnx-opt"


def test_auto_without_timings_keeps_the_old_order(three_variants: Path) -> None:
    """An export from before latencies were recorded (or missing one it needs): optimized, then fp32, then int8."""
    assert auto_with(three_variants, {"fp32", "optimized", "int8"}, None) == "onnx-opt"
    assert auto_with(three_variants, {"fp32", "int8"}, None) == "onnx"
    assert auto_with(three_variants, {"int8"}, None) == "onnx-int8"
    assert auto_with(three_variants, {"fp32", "int8"}, {"int8": 1.0}) == "onnx"  # fp32 untimed: the order decides
    assert auto_with(three_variants, {"fp32", "int8"}, {"fp32": "slow", "int8": 1.0}) == "onnx"


def test_auto_skips_a_variant_that_failed_parity(runs: dict[str, Path], tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    shutil.copytree(runs["teacher"], teacher)
    path = teacher / "onnx" / "manifest.json"
    manifest = json.loads(path.read_text())
    for v in manifest["parity"]["variants"]:
        v["passed"] = v["variant"] not in ("optimized", "int8")
    path.write_text(json.dumps(manifest))
    assert Classifier(teacher, "auto").runtime == "onnx"


def jsonl(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_cli_arguments_jsonl_and_csv(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = runs["student"]
    want = Classifier(run_dir, "onnx").predict_proba(SENTENCES[:2])
    code, out, err = run_cli(["predict", str(run_dir), *SENTENCES[:2], "--runtime", "onnx"], capsys)
    assert code == 0, err
    rows = jsonl(out)  # not a terminal: JSON Lines
    assert [r["text"] for r in rows] == SENTENCES[:2]
    labels = kdfast.load(run_dir).labels
    for r, p in zip(rows, want, strict=True):
        assert list(r["probs"]) == labels and r["label"] == labels[int(p.argmax())]
        np.testing.assert_allclose(list(r["probs"].values()), p, atol=1e-6)
    assert "runtime onnx" in err and "sentences/s" in err
    code, out, err = run_cli(["predict", str(run_dir), *SENTENCES[:2], "--format", "csv"], capsys)
    assert code == 0, err
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["text", "label", *(f"p_{n}" for n in labels)] and [r[0] for r in table[1:]] == SENTENCES[:2]
    code, out, err = run_cli(["predict", str(run_dir), SENTENCES[0], "--format", "table"], capsys)
    assert code == 0 and "p(" in out


def test_cli_files_and_stdin(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = runs["student"]
    txt = tmp_path / "s.txt"
    txt.write_text(SENTENCES[0] + "\n\n" + "\n".join(SENTENCES[1:]) + "\n")
    code, out, err = run_cli(["predict", str(run_dir), "--file", str(txt)], capsys)
    assert code == 0, err
    assert [r["text"] for r in jsonl(out)] == SENTENCES
    assert "skipped 1 blank line(s) (line 2)" in err  # said, not dropped silently

    table = tmp_path / "s.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "sentence"])
        w.writerows([i, s] for i, s in enumerate(SENTENCES))
    jl = tmp_path / "s.jsonl"
    jl.write_text("".join(json.dumps({"body": s}) + "\n" for s in SENTENCES))
    for path, extra in ((table, []), (jl, ["--text-column", "body"])):
        out_file = tmp_path / f"{path.stem}-{path.suffix[1:]}.jsonl"
        code, out, err = run_cli(["predict", str(run_dir), "--file", str(path), *extra, "--out", str(out_file)],
                                 capsys)
        assert code == 0, err
        rows = jsonl(out_file.read_text())  # a table scored into a table: the input's columns, label, p_<class>
        assert out == "" and [r["sentence" if path == table else "body"] for r in rows] == SENTENCES

    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(SENTENCES[:3]) + "\n"))
    code, out, err = run_cli(["predict", str(run_dir)], capsys)
    assert code == 0, err
    assert [r["text"] for r in jsonl(out)] == SENTENCES[:3]


def test_cli_bad_input(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    no_model = tmp_path / "no-model"
    shutil.copytree(runs["bare"], no_model)
    (no_model / "student.safetensors").unlink()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    table = tmp_path / "t.csv"
    table.write_text("id,body\n1,hello\n")
    cases = [
        (["predict", str(tmp_path / "missing"), "x"], "no such run folder"),
        (["predict", str(no_model), "x", "--runtime", "torch"], "no model (student.safetensors missing)"),
        (["predict", str(runs["bare"]), "x", "--runtime", "onnx"], "no ONNX export"),
        (["predict", str(runs["student"]), "x", "--runtime", "onnx-opt"], "the export has no optimized model"),
        (["predict", str(runs["student"]), "--file", str(empty)], "no sentences to classify"),
        (["predict", str(runs["student"]), "--file", str(table)], "no column 'text' or 'sentence'"),
        (["predict", str(runs["student"]), "--file", str(table), "--text-column", "x"], "no column 'x'"),
        (["predict", str(runs["student"]), "--file", str(tmp_path / "nope.txt")], "no such file"),
        (["predict", str(runs["student"]), "x", "--runtime", "tf"], "--runtime 'tf'"),
        (["predict", str(runs["student"]), "x", "--format", "xml"], "--format 'xml'"),
    ]
    for args, message in cases:
        code, _, err = run_cli(args, capsys)
        assert code != 0 and "error: " in err and message in err, (args, err)
        assert "Traceback" not in err


def test_help_and_onnx_student_predict_import_no_torch(runs: dict[str, Path]) -> None:
    probe = ("import sys, runpy; sys.argv = {argv!r}\ntry:\n    runpy.run_module('kdfast', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('LOADED', [m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)")
    for argv in (["kdfast", "--help"], ["kdfast", "predict", str(runs["student"]), "A sentence.", "--runtime", "onnx"]):
        done = subprocess.run([sys.executable, "-c", probe.format(argv=argv)], capture_output=True, text=True,
                              timeout=120)
        assert "LOADED []" in done.stderr, (argv, done.stderr[-2000:])


def test_stream_reads_a_chunk_at_a_time(runs: dict[str, Path]) -> None:
    """An endless input still yields: predictions come a chunk at a time, the input is never read whole."""
    import itertools

    read = 0

    def endless() -> Iterator[str]:
        nonlocal read
        for s in itertools.cycle(SENTENCES):
            read += 1
            yield s

    first = list(itertools.islice(Classifier(runs["student"], "onnx").stream(endless(), chunk=8), 10))
    assert [t for t, _ in first] == [SENTENCES[i % len(SENTENCES)] for i in range(10)]
    assert read == 16  # two chunks of 8


def test_the_cli_streams_stdin_with_one_chunk_in_memory(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """``kdfast predict RUN < big`` reads standard input as it writes its answers: counted line by line, it has never
    read more than one chunk (CHUNK sentences) ahead of what it wrote, and its first answers are out before the
    input ends. Memory therefore does not grow with the input (a CLI that read all its input first, or a writer that
    held every row, fails here)."""
    from kdfast.cli.main import main
    from kdfast.serve.predict import CHUNK

    n = 3 * CHUNK + 5
    trace: list[tuple[int, int]] = []  # (lines read, answers written) at each line read

    class Out(io.StringIO):
        lines = 0

        def write(self, s: str) -> int:
            self.lines += s.count("\n")
            return super().write(s) if self.lines <= 3 else len(s)  # keep the first answers only

        def isatty(self) -> bool:
            return False

    out = Out()

    def stdin() -> Iterator[str]:
        for i in range(n):
            trace.append((i + 1, out.lines))
            yield f"Sentence number {i} is {'short' if i % 3 else 'a little longer than the others'}.\n"

    monkeypatch.setattr(sys, "stdin", stdin())
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "argv", ["kdfast", "predict", str(runs["student"]), "--batch-size", "4", "--no-progress"])
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code
    assert out.lines == n and len(trace) == n
    assert max(read - written for read, written in trace) <= CHUNK + 1
    assert trace[-1][1] >= 3 * CHUNK  # three chunks answered before the last line was read
    assert json.loads(out.getvalue().splitlines()[0])["text"] == "Sentence number 0 is a little longer than the others."
