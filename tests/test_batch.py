"""Files scored into tables (``kdfast predict --file X --out Y``, kdfast.batch.columnar) and the teacher's labels for
distillation (``kdfast label``, kdfast.batch.label), on this process: every format in and out gives the
Classifier's own probabilities in the input's order, with the input's columns; bad rows stop with the row named or
come out null with the reason; a bad input is one ``error:`` line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import assert_one_error_line, exported_tiny_student, run_cli

from kdfast.batch.columnar import predict_file
from kdfast.errors import KdfastError
from kdfast.serve.predict import Classifier

SENTENCES = ["The book that John wrote was read by everyone.", "Books.", "Who did you see Mary and?",
             "She sang , and he danced .", "It is raining cats and dogs", "the the the", "John, 007 and I left.",
             "Quoted \"words\", commas; and\ttabs."]


@pytest.fixture(scope="module")
def student(cola_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny student, exported to ONNX (fp32)."""
    return exported_tiny_student(tmp_path_factory.mktemp("batch") / "student", cola_dir)


@pytest.fixture(scope="module")
def clf(student: Path) -> Classifier:
    return Classifier(student, "onnx")


def write_inputs(folder: Path) -> dict[str, Path]:
    """The same 8 rows (an id, the sentence, a score) as Parquet, CSV, TSV, JSON Lines; the sentences as text."""
    rows = [{"id": i, "sentence": s, "score": i / 2} for i, s in enumerate(SENTENCES)]
    paths = {k: folder / f"in.{k}" for k in ("parquet", "csv", "tsv", "jsonl", "txt")}
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"], row_group_size=3)
    for kind, delimiter in (("csv", ","), ("tsv", "\t")):
        with paths[kind].open("w", newline="") as f:
            w = csv.DictWriter(f, ["id", "sentence", "score"], delimiter=delimiter)
            w.writeheader()
            w.writerows(rows)
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["txt"].write_text("\n".join(SENTENCES) + "\n")
    return paths


def read_out(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix == ".jsonl":
        return pa.Table.from_pylist([json.loads(line) for line in path.read_text().splitlines()])
    import pyarrow.csv as pcsv

    return pcsv.read_csv(path)


@pytest.mark.parametrize("out_kind", ["parquet", "csv", "jsonl"])
def test_every_format_in_and_out(clf: Classifier, tmp_path: Path, out_kind: str) -> None:
    want = clf.predict_proba(SENTENCES)  # (N, C)
    for kind, path in write_inputs(tmp_path).items():
        out = tmp_path / f"out-{kind}.{out_kind}"
        summary = predict_file(clf, path, out, rows=3)  # 3 rows at a time: the batches' seams are crossed
        got = read_out(out)
        text = "text" if kind == "txt" else "sentence"
        columns = ["text"] if kind == "txt" else ["id", "sentence", "score"]
        assert got.column_names == [*columns, "label", "p_unacceptable", "p_acceptable"]
        assert summary.rows == got.num_rows == len(SENTENCES)
        assert got.column(text).to_pylist() == SENTENCES  # row order kept
        probs = np.stack([got.column(f"p_{n}").to_numpy() for n in clf.labels], axis=1)
        np.testing.assert_allclose(probs, want, rtol=0, atol=1e-12)
        assert got.column("label").to_pylist() == [clf.labels[i] for i in want.argmax(1)]
        if kind != "txt":
            assert [str(v) for v in got.column("id").to_pylist()] == [str(i) for i in range(len(SENTENCES))]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_keep_columns_and_clashes(clf: Classifier, tmp_path: Path) -> None:
    paths = write_inputs(tmp_path)
    out = tmp_path / "o.parquet"
    predict_file(clf, paths["parquet"], out, text_column="sentence", keep=["id"])
    assert pq.read_table(out).column_names == ["id", "label", "p_unacceptable", "p_acceptable"]
    predict_file(clf, paths["csv"], out, keep=[])
    assert pq.read_table(out).column_names == ["label", "p_unacceptable", "p_acceptable"]
    labelled = tmp_path / "labelled.parquet"
    pq.write_table(pa.table({"text": SENTENCES[:2], "label": [0, 1]}), labelled)
    with pytest.raises(KdfastError, match=r"'label' would be overwritten.*--keep-columns text"):
        predict_file(clf, labelled, out)
    predict_file(clf, labelled, out, keep=["text"])
    with pytest.raises(KdfastError, match="no column 'nope'"):
        predict_file(clf, paths["parquet"], out, keep=["nope"])


def test_bad_rows_error_or_null(clf: Classifier, tmp_path: Path) -> None:
    table = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3, 4, 5], "text": ["Fine.", "", None, "   ", "Also fine."]}), table)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "Fine."}\n{"text": 42}\n{"text": ["a"]}\n{"other": 1}\n')
    out = tmp_path / "o.parquet"
    with pytest.raises(KdfastError, match=r"row 2: empty text in column 'text'; --bad-rows null"):
        predict_file(clf, table, out, rows=2)
    assert not out.exists()  # a failed run leaves nothing
    with pytest.raises(KdfastError, match=r"row 2: not a string \(int\)"):
        predict_file(clf, jsonl, out)

    summary = predict_file(clf, table, out, bad_rows="null", rows=2)
    got = pq.read_table(out)
    assert summary.bad == 3
    assert got.column("error").to_pylist() == [None, "empty text", "null", "empty text", None]
    assert got.column("label").to_pylist()[1:4] == [None] * 3
    want = clf.predict_proba(["Fine.", "Also fine."])
    np.testing.assert_allclose(got.column("p_acceptable").to_numpy(zero_copy_only=False)[[0, 4]], want[:, 1])
    predict_file(clf, jsonl, out, bad_rows="null")
    assert pq.read_table(out).column("error").to_pylist() == [None, "not a string (int)", "not a string (list)",
                                                             "null"]
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    with pytest.raises(KdfastError, match=r"row 1: not a string \(int64\)"):
        predict_file(clf, numbers, out)


def test_cli_columnar_and_bad_input(student: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_inputs(tmp_path)
    out = tmp_path / "scored.parquet"
    code, stdout, err = run_cli(["predict", str(student), "--file", str(paths["csv"]), "--out", str(out),
                                 "--keep-columns", "id,sentence", "--rows-per-batch", "5"], capsys)
    assert code == 0, err
    assert pq.read_table(out).column("sentence").to_pylist() == SENTENCES and stdout == ""
    bad = tmp_path / "bad.csv"
    bad.write_text('text\nfine\n""\n')
    code, _, err = run_cli(["predict", str(student), "--file", str(bad), "--out", str(out)], capsys)
    assert code != 0 and "Traceback" not in err  # found while scoring: after the line that says what was loaded
    assert err.splitlines()[-1].startswith("error: ") and "bad.csv: row 2: empty text" in err
    cases = [
        (["--file", str(tmp_path / "missing.parquet"), "--out", str(out)], "missing.parquet: no such file"),
        (["--file", str(tmp_path / "*.nothing"), "--out", str(out), "--engine", "ray"], "no file matches"),
        (["--file", str(paths["csv"]), "--out", str(out), "--text-column", "body"], "no column 'body'"),
        (["--file", str(paths["csv"]), "--out", str(out), "--keep-columns", "nope"], "no column 'nope'"),
        (["--file", str(paths["csv"]), "--out", str(out), "--bad-rows", "skip"], "--bad-rows 'skip'"),
        (["--file", str(paths["csv"]), "--out", str(tmp_path / "no" / "o.parquet")], "no folder"),
        (["x", "--bad-rows", "null"], "apply to a file scored into a table"),
        (["--file", str(paths["csv"]), "--out", str(out), "--engine", "spark"], "--engine 'spark'"),
    ]
    for args, message in cases:
        code, _, err = run_cli(["predict", str(student), *args], capsys)
        assert code != 0, args
        assert_one_error_line(err, message)


def test_teacher_labels_file(teacher_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``kdfast label`` writes the logits and features distill computes, with a key distill's cache_key agrees with."""
    from kdfast.batch.label import read_teacher_labels
    from kdfast.train.distill import cache_key, teacher_fingerprint, teacher_texts
    from kdfast.train.teacher import encode, load_teacher, teacher_outputs

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([*SENTENCES, "A [MASK] sentence."]) + "\n\n")
    out = tmp_path / "labels.parquet"
    code, _, err = run_cli(["label", str(teacher_run), "--file", str(corpus), "--out", str(out),
                            "--rows-per-batch", "4", "--threads", "1"], capsys)
    assert code == 0, err
    got = read_teacher_labels(out, teacher=teacher_run)
    texts = [*SENTENCES, "A [MASK] sentence."]
    assert got.texts == texts and got.meta["rows"] == str(len(texts))
    model, tokenizer = load_teacher(teacher_run)
    ids = encode(tokenizer, teacher_texts(texts, tokenizer), 64)
    want = teacher_outputs(model, ids, tokenizer.pad_token_id, torch.device("cpu"), 64)
    np.testing.assert_allclose(got.logits, want["logits"].numpy(), atol=1e-5)
    np.testing.assert_allclose(got.features, want["features"].numpy(), atol=1e-5)
    assert got.meta["key"] == cache_key(teacher_fingerprint(teacher_run), teacher_texts(texts, tokenizer))

    other = tmp_path / "other-teacher"
    shutil.copytree(teacher_run, other)
    (other / "run.json").write_text((other / "run.json").read_text().replace("}", ', "x": 1}', 1))
    with pytest.raises(KdfastError, match="labelled by another teacher"):
        read_teacher_labels(out, teacher=other)
    code, _, err = run_cli(["label", str(teacher_run), "--file", str(corpus), "--out", str(tmp_path / "l.csv")],
                           capsys)
    assert_one_error_line(err, "written as Parquet")


def test_ray_callable_is_the_local_scoring(student: Path, clf: Classifier, tmp_path: Path) -> None:
    """The class Ray Data's actors run (without Ray: one actor's work) loads the same Classifier and answers as
    local predict does, batch by batch; the Ray engine itself runs in tests/test_batch_ray.py."""
    from kdfast.batch.ray_engine import ScoreBatches, user_error

    paths = write_inputs(tmp_path)
    out = tmp_path / "local.parquet"
    predict_file(clf, paths["parquet"], out)
    actor = ScoreBatches(str(student), "onnx", threads=1, text_column="sentence", keep=["id"])
    assert type(actor.clf) is Classifier
    batches = pq.ParquetFile(paths["parquet"]).iter_batches(3)
    got = pa.concat_tables([actor(pa.Table.from_batches([b])) for b in batches])
    want = pq.read_table(out)
    assert got.column_names == ["id", "label", "p_unacceptable", "p_acceptable"]
    assert got.column("label").to_pylist() == want.column("label").to_pylist()
    np.testing.assert_allclose(got.column("p_acceptable").to_numpy(), want.column("p_acceptable").to_numpy(),
                               rtol=0, atol=1e-6)
    with pytest.raises(KdfastError, match=r'the row \{"id": 1, "text": null\}: null') as bad:
        ScoreBatches(str(student), "onnx")(pa.table({"id": [0, 1], "text": ["Fine.", None]}))

    class TaskError(KdfastError):  # as Ray wraps an actor's exception: a subclass of it, the original as its cause
        cause = bad.value

    wrapped = RuntimeError("the dataset failed")
    wrapped.__cause__ = TaskError("ray::MapWorker... Traceback ... KdfastError: ...")
    assert user_error(wrapped) is bad.value
    assert user_error(RuntimeError("a bug")) is None


@pytest.mark.parametrize("owned", [True, False])
def test_ray_session_unwraps_an_actors_error_and_shuts_down_what_it_started(
        owned: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ray_session`` (both Ray paths): an actor's KdfastError, wrapped by Ray, comes out as itself; any other
    error as it is; Ray is shut down after, error or not, when this run started it, and left running otherwise."""
    import kdfast.batch.ray_engine as engine

    calls: list[str] = []

    class FakeRay:
        def shutdown(self) -> None:
            calls.append("shutdown")

    monkeypatch.setattr(engine, "init_ray", lambda address, num_cpus=None, progress=False: owned)
    monkeypatch.setattr(engine, "ray_required", lambda: FakeRay())
    with engine.ray_session(None, 2) as (ray, start_s):
        assert isinstance(ray, FakeRay) and start_s >= 0
    assert calls == (["shutdown"] if owned else [])
    bad = KdfastError("row 3: the text is null")
    wrapped = RuntimeError("RayTaskError(KdfastError)")
    wrapped.__cause__ = bad
    with pytest.raises(KdfastError) as caught, engine.ray_session(None, 2):
        raise wrapped
    assert str(caught.value) == str(bad) and caught.value.__suppress_context__  # one line, no Ray traceback
    with pytest.raises(RuntimeError, match="a bug"), engine.ray_session(None, 2):
        raise RuntimeError("a bug")
    assert calls == (["shutdown"] * 3 if owned else [])
