"""kdfast.serve.predict in pieces, quickly: the numerics (softmax, length batches, padding), ``auto``'s choice read
from a manifest written here, the Classifier's batching with a scripted backend, and both runtimes of one tiny
exported student (tests/test_predict.py holds the end-to-end checks on an exported teacher, slower to build)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import exported_tiny_student

from kdfast.errors import KdfastError
from kdfast.serve.predict import (
    Backend,
    Classifier,
    choose_runtime,
    length_sorted,
    pad,
    passed_variants,
    softmax,
    variant_file,
)


def test_softmax_is_per_row_stable_and_float64() -> None:
    logits = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, np.log(2.0)]], dtype=np.float32)  # (2, 3): N != C
    p = softmax(logits)
    assert p.dtype == np.float64 and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    e = np.exp([1.0, 2.0, 0.0])
    np.testing.assert_allclose(p[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(p[1], [0.25, 0.25, 0.5], rtol=1e-6)


def test_length_sorted_batches_and_right_padding() -> None:
    seqs = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10, 11], [12]]
    assert list(length_sorted(seqs, 2)) == [[1, 4], [2, 0], [3]]  # shortest first, a stable sort
    assert list(length_sorted(seqs, 5)) == [[1, 4, 2, 0, 3]]
    ids, mask = pad([[5, 6, 7], [8]], pad_id=9)
    assert ids.dtype == mask.dtype == np.int64
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


FILES = {"fp32": "model.onnx", "optimized": "model.opt.onnx", "int8": "model.int8.onnx"}


def export_folder(run_dir: Path, passed: set[str], ms: dict[str, object] | None, files: set[str] | None = None,
                  checked: bool = True) -> Path:
    """A run folder with only what ``auto`` reads: onnx/manifest.json and (empty) model files."""
    onnx = run_dir / "onnx"
    onnx.mkdir(parents=True, exist_ok=True)
    for variant in FILES if files is None else files:
        (onnx / FILES[variant]).write_bytes(b"")
    manifest: dict[str, object] = {
        "variants": [{"variant": v, "file": f} for v, f in FILES.items()],
        "parity": {"variants": [{"variant": v, "checked": checked, "passed": v in passed} for v in FILES]}}
    if ms is not None:
        manifest["latency"] = {"batch": 1, "ms": ms}
    (onnx / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


def test_passed_variants_are_the_checked_ones_that_passed() -> None:
    manifest = {"parity": {"variants": [{"variant": "fp32", "checked": True, "passed": True},
                                        {"variant": "optimized", "checked": False, "passed": True},
                                        {"variant": "int8", "checked": True, "passed": False}]}}
    assert passed_variants(manifest) == {"fp32"}
    assert passed_variants({}) == set() and passed_variants({"parity": {}}) == set()


def test_auto_reads_the_manifest(tmp_path: Path) -> None:
    everything = set(FILES)
    assert choose_runtime(tmp_path / "none", "auto") == "torch"  # no export
    assert choose_runtime(tmp_path / "none", "onnx-int8") == "onnx-int8"  # asked for: no check here
    fast_int8 = {"fp32": 3.0, "optimized": 2.0, "int8": 1.0}
    assert choose_runtime(export_folder(tmp_path / "a", everything, fast_int8), "auto") == "onnx-int8"
    assert choose_runtime(export_folder(tmp_path / "b", everything, {"fp32": 1.0, "optimized": 2.0, "int8": 3.0}),
                          "auto") == "onnx"
    assert choose_runtime(export_folder(tmp_path / "c", {"fp32", "int8"}, fast_int8, {"fp32"}), "auto") == "onnx"
    assert choose_runtime(export_folder(tmp_path / "d", everything, fast_int8, set()), "auto") == "torch"  # no files
    assert choose_runtime(export_folder(tmp_path / "e", everything, fast_int8, checked=False), "auto") == "torch"
    assert choose_runtime(export_folder(tmp_path / "f", everything, {"fp32": 1.0, "optimized": 1.0, "int8": 1.0}),
                          "auto") == "onnx-opt"  # a tie keeps the order
    assert choose_runtime(export_folder(tmp_path / "g", {"fp32", "int8"}, None), "auto") == "onnx"  # no timings
    assert choose_runtime(export_folder(tmp_path / "h", {"fp32", "int8"}, {"int8": 1.0}), "auto") == "onnx"
    assert choose_runtime(export_folder(tmp_path / "i", {"int8"}, None), "auto") == "onnx-int8"
    with pytest.raises(KdfastError, match=r"--runtime 'tf': choose one of auto, torch, onnx, onnx-opt, onnx-int8"):
        choose_runtime(tmp_path, "tf")


def test_a_missing_variant_says_how_to_export_it() -> None:
    manifest = {"variants": [{"variant": "fp32", "file": "model.onnx"}]}
    assert variant_file(manifest, "fp32") == "model.onnx"
    for variant, hint in (("optimized", "kdfast export --onnx RUN --optimize"), ("int8", "kdfast export --onnx RUN "
                                                                                       "--int8")):
        with pytest.raises(KdfastError) as e:
            variant_file(manifest, variant)
        assert str(e.value) == f"the export has no {variant} model (its variants: fp32); export it, e.g. {hint}"
    with pytest.raises(KdfastError, match=r"\(its variants: none\); export it, e.g. kdfast export --onnx RUN$"):
        variant_file({}, "fp32")


def scripted(labels: list[str], batch_size: int, calls: list[tuple[int, ...]]) -> Classifier:
    """A Classifier whose backend encodes a text as its words' lengths and scores a row by its ids: logits
    (sum of ids, twice the number of real tokens, 0), so each text's row shows where it landed."""

    def encode(texts: list[str]) -> list[list[int]]:
        return [[len(w) for w in t.split()] for t in texts]

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls.append(ids.shape)
        assert ((ids == 7) == (mask == 0)).all()  # padded with pad_id, masked out
        real = np.where(mask == 1, ids, 0)
        return np.stack([real.sum(1), 2 * mask.sum(1), np.zeros(len(ids))], axis=1).astype(np.float32)

    clf = Classifier.__new__(Classifier)
    clf.labels, clf.batch_size, clf.backend = labels, batch_size, Backend(encode, forward, 7, "scripted")
    return clf


def test_logits_are_batched_by_length_and_come_back_in_order() -> None:
    calls: list[tuple[int, ...]] = []
    clf = scripted(["a", "b", "c"], 2, calls)
    texts = ["aaaa bb c", "z", "xx yyy", "q q q q"]
    got = clf.logits(texts)
    assert got.dtype == np.float32
    assert got.tolist() == [[7, 6, 0], [1, 2, 0], [5, 4, 0], [4, 8, 0]]
    assert calls == [(2, 2), (2, 4)]  # ("z", "xx yyy") then ("aaaa bb c", "q q q q"): little padding
    assert clf.logits([]).shape == (0, 3)
    assert clf.predict(["aaaa", "a b c"]) == ["a", "b"]  # the argmax of (4, 2, 0) and (3, 6, 0)
    np.testing.assert_allclose(clf.predict_proba(texts), softmax(got))


def test_stream_holds_a_chunk_at_a_time_in_order() -> None:
    calls: list[tuple[int, ...]] = []
    clf = scripted(["a", "b", "c"], 64, calls)
    texts = [" ".join(["w"] * (1 + i % 3)) for i in range(7)]
    out = list(clf.stream(iter(texts), chunk=3))
    assert [shape[0] for shape in calls] == [3, 3, 1]  # three calls, at most a chunk each
    assert [t for t, _ in out] == texts
    np.testing.assert_allclose(np.stack([p for _, p in out]), clf.predict_proba(texts))


@pytest.fixture(scope="module")
def student(cola_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_tiny_student(tmp_path_factory.mktemp("predict-units") / "student", cola_dir)


def test_both_runtimes_of_a_student_agree_and_say_what_they_loaded(student: Path) -> None:
    config = json.loads((student / "onnx" / "student_config.json").read_text())
    long = " ".join(["the book was read"] * config["max_length"])  # cut at max_length words, as in training
    texts = ["The book was read.", "Books.", "Who did you see Mary and?", long, long + " by everyone"]
    onnx = Classifier(student, "onnx", threads=1)
    torch = Classifier(student, "torch", threads=1, device="cpu")
    assert onnx.runtime == "onnx" and torch.runtime == "torch" and Classifier(student).runtime == "onnx"
    np.testing.assert_allclose(onnx.logits(texts), torch.logits(texts), atol=1e-5)
    np.testing.assert_array_equal(onnx.logits(texts[3:4]), onnx.logits(texts[4:5]))  # the same first words
    sha = hashlib.sha256((student / "onnx" / "manifest.json").read_bytes()).hexdigest()
    d = onnx.describe()
    assert d["run"] == str(student) and d["kind"] == "student" and d["labels"] == onnx.labels
    assert d["runtime"] == "onnx" and d["requested_runtime"] == "onnx" and d["manifest_sha256"] == sha
    assert d["model"].startswith("ONNX Runtime ") and d["model"].endswith(str(student / "onnx" / "model.onnx"))
    assert torch.describe()["model"].startswith("PyTorch ") and " on cpu, " in torch.describe()["model"]
    assert Classifier(student, "auto").describe()["requested_runtime"] == "auto"


def test_a_run_without_its_model_or_export_is_an_error(student: Path, tmp_path: Path) -> None:
    with pytest.raises(KdfastError, match="--batch-size must be positive, got 0"):
        Classifier(student, "onnx", batch_size=0)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "run.json").write_text((student / "run.json").read_text())
    with pytest.raises(KdfastError, match=r"no model \(student.safetensors missing\): a student run that did not"):
        Classifier(bare, "torch")
    with pytest.raises(KdfastError, match=r"no ONNX export \(.*manifest.json missing\); run kdfast export --onnx"):
        Classifier(bare, "onnx")


def test_session_options_follow_the_threads_and_a_server_does_not_spin(student: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import onnxruntime as ort

    seen: list[ort.SessionOptions] = []
    real = ort.InferenceSession

    def recording(path: str, options: ort.SessionOptions, **kwargs: object) -> ort.InferenceSession:
        seen.append(options)
        return real(path, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    Classifier(student, "onnx", threads=2, spin=False)
    Classifier(student, "onnx")
    served, default = seen
    assert served.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert (served.intra_op_num_threads, served.inter_op_num_threads, served.log_severity_level) == (2, 1, 3)
    with pytest.raises(RuntimeError):
        default.get_session_config_entry("session.intra_op.allow_spinning")
    assert (default.intra_op_num_threads, default.inter_op_num_threads) == (0, 0)
    unexported = tmp_path / "unexported"
    shutil.copytree(student, unexported, ignore=shutil.ignore_patterns("onnx"))
    clf = Classifier(unexported, "auto", device="cpu")
    assert clf.runtime == "torch" and clf.manifest_sha256 is None and clf.describe()["manifest_sha256"] is None
