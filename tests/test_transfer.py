"""``kdfast distill --transfer FILE``: every format, streamed, labelled into cached parts, resumed, sharded under
torchrun like one process, and bad files as one error line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from kdfast.errors import KdfastError
from kdfast.runs import read_json
from kdfast.train.distill import DistillConfig, run
from kdfast.train.distributed import Context
from kdfast.train.teacher_cache import teacher_pass
from kdfast.train.training import progress_bar
from kdfast.train.transfer import (
    FORMAT,
    decode_texts,
    encode_texts,
    label_transfer,
    part_file,
    proportional,
    read_part,
    read_parts,
    read_texts,
)

TEXTS = [f"sentence number {i} is here ." for i in range(10)] + ["Ünïcode, \"quoted\", tab\tinside", "last one"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write(path: Path, texts: list[str], column: str = "text") -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"id": i, column: t}) + "\n" for i, t in enumerate(texts)))
    elif suffix in (".csv", ".tsv"):
        import csv

        with path.open("w", newline="") as f:
            w = csv.writer(f, delimiter="," if suffix == ".csv" else "\t")
            w.writerow(["id", column])
            w.writerows([i, t] for i, t in enumerate(texts))
    else:
        path.write_text("\n\n".join(texts) + "\n")  # blank lines between: skipped
    return path


@pytest.mark.parametrize("name", ["t.txt", "t.csv", "t.tsv", "t.jsonl", "noext"])
def test_every_format_reads_back_its_texts(tmp_path: Path, name: str) -> None:
    texts = [t.replace("\t", " ") for t in TEXTS] if not name.endswith((".csv", ".tsv", ".jsonl")) else TEXTS
    column = "sentence" if name.endswith(".csv") else "text"
    assert list(read_texts(write(tmp_path / name, texts, column))) == texts
    if name.endswith(".tsv"):
        write(tmp_path / "c.csv", texts, "body")
        assert list(read_texts(tmp_path / "c.csv", "body")) == texts  # --text-column


def test_parts_stream(tmp_path: Path) -> None:
    """The first part comes before the file has been read to its (broken) end: the file is streamed."""
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": f"s {i}"}) + "\n" for i in range(5)) + "{broken\n")
    parts = read_parts(path, None, lines=2)
    assert next(parts) == ["s 0", "s 1"] and next(parts) == ["s 2", "s 3"]
    with pytest.raises(KdfastError, match=r":6: not a JSON object"):
        next(parts)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "no text in it"),
    (b"\n  \n", "no text in it"),
    (b"\xff\xfe\x00bad", "not valid UTF-8"),
])
def test_bad_plain_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(KdfastError, match=message):
        list(read_parts(path, None))


def test_texts_round_trip_through_bytes() -> None:
    assert decode_texts(*encode_texts(TEXTS)) == TEXTS
    assert decode_texts(*encode_texts([])) == []


def test_proportional_interleaving() -> None:
    got = list(proportional(2, 6))
    assert got.count(True) == 2 and got.count(False) == 6 and got[0] and not got[1] and got[4]
    assert list(proportional(3, 0)) == [True] * 3 and list(proportional(0, 2)) == [False] * 2


def label(teacher: Path, path: Path, folder: Path, lines: int = 4) -> Any:
    with progress_bar(False) as bar:
        return label_transfer(teacher, path, None, folder, Context(), bar, batch_size=3, lines=lines)


def test_labelled_parts_are_cached_and_resumed(monkeypatch: pytest.MonkeyPatch, teacher_run: Path,
                                               tmp_path: Path) -> None:
    from kdfast.train import teacher as teacher_module

    path = write(tmp_path / "t.txt", TEXTS)
    folder = tmp_path / "cache"
    first = label(teacher_run, path, folder)
    assert first.sizes == [4, 4, 4] and first.labelled == 12 and len(first) == 12
    assert sorted(p.name for p in folder.iterdir()) == [part_file(folder, i).name for i in range(3)]  # no temp files
    model, tokenizer = teacher_module.load_teacher(teacher_run)
    want = teacher_pass(model, tokenizer, TEXTS[4:8], 64, torch.device("cpu"))
    part = read_part(part_file(folder, 1))
    assert part["texts"] == TEXTS[4:8]
    torch.testing.assert_close(part["logits"], want["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part["features"], want["features"], atol=2e-3, rtol=2e-3)  # fp16
    with safe_open(str(part_file(folder, 1)), framework="pt") as f:
        assert f.metadata()["format"] == FORMAT and f.metadata()["lines"] == "4"

    calls: list[int] = []
    real_pass = teacher_pass

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[2]))
        return real_pass(*args, **kwargs)

    monkeypatch.setattr("kdfast.train.transfer.teacher_pass", counting)
    assert label(teacher_run, path, folder).labelled == 0 and calls == []  # all from the cache
    part_file(folder, 1).unlink()  # interrupted before part 1 was written
    part_file(folder, 2).write_bytes(b"half a file")  # or a part damaged
    assert label(teacher_run, path, folder).labelled == 8 and calls == [4, 4]
    torch.testing.assert_close(read_part(part_file(folder, 1))["logits"], want["logits"], atol=1e-5, rtol=1e-5)
    write(path, [*TEXTS[:4], "a new sentence", *TEXTS[5:]])  # part 1's texts changed: its key did
    calls.clear()
    assert label(teacher_run, path, folder).labelled == 4 and calls == [4]


def test_distill_with_a_transfer_file(teacher_run: Path, cola_dir: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", TEXTS * 3)
    cfg: dict[str, Any] = dict(teacher=teacher_run, data=str(cola_dir), epochs=2, hidden=8, embed_dim=8,
                               max_train_samples=16, augment=0, word_weight=0.0, device="cpu", progress=False,
                               batch_size=8, transfer_part_lines=10)
    out = tmp_path / "s"
    metrics = run(DistillConfig(**cfg, out=out, transfer=path))
    assert metrics["teacher"]["logits_cache"]["transfer"]["lines"] == 36
    assert sorted(p.name for p in (out / "transfer_cache").iterdir()) == [f"part-00000{i}.safetensors"
                                                                          for i in range(4)]
    seen = sum(h["train_sentences_per_s"] for h in metrics["history"])  # both epochs trained on 16 + 36 sentences
    assert seen > 0 and metrics["data"]["train"] == 16
    without = run(DistillConfig(**cfg, out=tmp_path / "w"))
    assert without["history"][0]["train_loss"] != metrics["history"][0]["train_loss"]
    # a rerun into the same folder finds the parts: nothing labelled again
    again = run(DistillConfig(**cfg, out=out, transfer=path, overwrite=True))
    assert again["teacher"]["logits_cache"]["transfer"]["labelled_now"] == 0
    assert (out / "transfer_cache" / "part-000003.safetensors").is_file()
    # interrupted after labelling (only the cache in --out): the rerun needs no --overwrite and resumes
    interrupted = tmp_path / "i"
    (interrupted / "transfer_cache").mkdir(parents=True)
    for p in (out / "transfer_cache").iterdir():
        (interrupted / "transfer_cache" / p.name).write_bytes(p.read_bytes())
    resumed = run(DistillConfig(**cfg, out=interrupted, transfer=path))
    assert resumed["teacher"]["logits_cache"]["transfer"]["labelled_now"] == 0
    assert read_json(interrupted / "metrics.json")["best"] == resumed["best"]


def kdfast_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from kdfast.cli.main import main

    monkeypatch.setattr(sys, "argv", ["kdfast", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.txt", None, "no such file"),
    ("t.jsonl", b'{"text": "fine"}\n[1, 2]\n', "t.jsonl:2: expected one JSON object per line"),
    ("t.csv", b"id,body\n1,hello\n", "no column 'text' or 'sentence'"),
    ("t.txt", b"\xff\xfebad\n", "not valid UTF-8"),
    ("t.txt", b"", "no text in it"),
])
def test_bad_transfer_file_is_one_error_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             teacher_run: Path, cola_dir: Path, tmp_path: Path, name: str,
                                             content: bytes | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, err = kdfast_cli(monkeypatch, capsys, "distill", "--teacher", str(teacher_run), "--data", str(cola_dir),
                           "--out", str(tmp_path / "out"), "--transfer", str(path), "--hidden", "8", "--embed-dim",
                           "8", "--epochs", "1", "--max-train-samples", "16", "--augment", "0", "--word-weight", "0",
                           "--no-progress", "--device", "cpu")
    assert code != 0 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_two_processes_label_and_train_like_one(tmp_path: Path, teacher_run: Path, cola_dir: Path) -> None:
    """Under torchrun the two ranks label alternate parts; the cache, the cached word vectors and the student equal
    one process's (dropout off, so the runs are comparable to rounding)."""
    from safetensors.torch import load_file
    from test_ddp import files, kdfast, ok

    def assert_close(a: Path, b: Path, rel: float = 1e-5) -> None:
        x, y = load_file(str(a)), load_file(str(b))
        assert x.keys() == y.keys()
        for k in x:
            if x[k].is_floating_point():
                err = float((x[k].float() - y[k].float()).norm() / y[k].float().norm().clamp(min=1e-12))
                assert err <= rel, f"{a.name} {k}: relative difference {err:.2e}"
            else:
                assert torch.equal(x[k], y[k]), k

    path = write(tmp_path / "t.txt", [f"{t} {i}" for i in range(4) for t in TEXTS])  # 48 lines, 6 parts of 8
    runs = {procs: tmp_path / f"student-{procs}" for procs in (1, 2)}
    for procs, out in runs.items():
        ok(kdfast(["distill", "--teacher", str(teacher_run), "--data", str(cola_dir), "--out", str(out),
                   "--transfer", str(path), "--transfer-part-lines", "8", "--augment", "1", "--word-weight", "1",
                   "--epochs", "2", "--max-train-samples", "20", "--batch-size", "8", "--dropout", "0", "--hidden",
                   "8", "--embed-dim", "8", "--device", "cpu", "--seed", "3"], procs))
    assert files(runs[2]) == files(runs[1])
    for i in range(6):
        name = f"transfer_cache/part-00000{i}.safetensors"
        assert_close(runs[2] / name, runs[1] / name)
    assert_close(runs[2] / "teacher_logits.safetensors", runs[1] / "teacher_logits.safetensors", rel=1e-3)
    assert_close(runs[2] / "student.safetensors", runs[1] / "student.safetensors", rel=1e-4)


def test_a_teacher_labels_file_fills_the_cache_without_the_teacher(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  teacher_run: Path, tmp_path: Path) -> None:
    """``distill --transfer labels.parquet`` from ``kdfast label`` (the pass that can run on a Ray cluster): the
    parts hold the file's texts, logits and features under the keys the teacher's own pass would give them, and the
    teacher does not run again; its part boundaries need not be the file's record batches."""
    import shutil

    from helpers import run_cli

    path = write(tmp_path / "t.txt", TEXTS)
    labels = tmp_path / "labels.parquet"
    code, _, err = run_cli(["label", str(teacher_run), "--file", str(path), "--out", str(labels),
                            "--rows-per-batch", "5", "--threads", "1", "--no-progress"], capsys)
    assert code == 0, err
    own = label(teacher_run, path, tmp_path / "own")  # the teacher labels the text itself: the reference
    calls: list[int] = []
    monkeypatch.setattr("kdfast.train.transfer.teacher_pass", lambda *a, **k: calls.append(1))
    given = label(teacher_run, labels, tmp_path / "given")
    assert calls == [] and given.labelled == 0 and given.sizes == own.sizes == [4, 4, 4]
    for i in range(3):
        a, b = read_part(part_file(tmp_path / "own", i)), read_part(part_file(tmp_path / "given", i))
        assert a["texts"] == b["texts"] == TEXTS[4 * i : 4 * i + 4]
        torch.testing.assert_close(b["logits"], a["logits"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b["features"], a["features"], atol=2e-3, rtol=2e-3)  # fp16
        with safe_open(str(part_file(tmp_path / "own", i)), framework="pt") as f, \
                safe_open(str(part_file(tmp_path / "given", i)), framework="pt") as g:
            assert f.metadata()["key"] == g.metadata()["key"]  # so either cache serves the other's run

    other = tmp_path / "other-teacher"  # labelled by another run: refused, not silently used
    shutil.copytree(teacher_run, other)
    (other / "run.json").write_text((other / "run.json").read_text().replace("}", ', "x": 1}', 1))
    with pytest.raises(KdfastError, match="labelled by another teacher"):
        label(other, labels, tmp_path / "x")
    bare = tmp_path / "bare.parquet"
    code, _, err = run_cli(["label", str(teacher_run), "--file", str(path), "--out", str(bare), "--no-features",
                            "--no-progress"], capsys)
    assert code == 0, err
    with pytest.raises(KdfastError, match="without features"):
        label(teacher_run, bare, tmp_path / "y")
