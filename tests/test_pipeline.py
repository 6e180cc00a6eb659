"""kdfast pipeline end to end on a tiny GPT-2, and its resume: only a removed stage and what reads it run again."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import run_cli


@pytest.fixture
def tiny_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick preset cut to test size: a few batches and a small student (the real one is sized for MiniLM)."""
    import kdfast.pipeline as pipeline

    monkeypatch.setitem(pipeline.QUICK_TEACHER, "max_train_samples", 96)
    monkeypatch.setitem(pipeline.QUICK_TEACHER, "epochs", 1)
    monkeypatch.setitem(pipeline.QUICK_TEACHER, "lr", 3e-4)
    monkeypatch.setitem(pipeline.QUICK_STUDENT, "max_train_samples", 96)
    monkeypatch.setitem(pipeline.QUICK_STUDENT, "epochs", 1)
    monkeypatch.setitem(pipeline.QUICK_STUDENT, "hidden", 16)
    monkeypatch.setitem(pipeline.QUICK_STUDENT, "embed_dim", 16)


def check_summary(out: Path) -> None:
    """Every number of the pipeline's summary recomputed from metrics.json and bench.json."""
    import kdfast.pipeline as pipeline

    bench_json = out / "bench" / "bench.json"
    bench = json.loads(bench_json.read_text())
    summary = pipeline.summarize(pipeline.SummaryConfig(out / "teacher", out / "student", out / "rnn", bench_json,
                                                        out / "summary.md"))
    teacher, distilled, scratch = summary["models"]
    for m, name in ((teacher, "teacher"), (distilled, "student"), (scratch, "rnn")):
        best = json.loads((out / name / "metrics.json").read_text())["best"]
        assert (m["acc"], m["mcc"]) == (best["dev_acc"], best["dev_mcc"])
        onnx = [r for r in bench["results"] if r["model"] == name and r["batch_size"] == 1
                and r["variant"].split("-")[1] == "onnx"]
        fastest = min(onnx, key=lambda r: r["p50_ms"])
        assert (m["form"], m["p50_ms"], m["file_mb"], m["form_mcc"]) == (
            fastest["variant"], fastest["p50_ms"], fastest["file_mb"], fastest["mcc"])
    assert teacher["form"].startswith("teacher-onnx") and distilled["form"].startswith("student-onnx")
    assert distilled["speedup"] == pytest.approx(teacher["p50_ms"] / distilled["p50_ms"])
    if teacher["mcc"] > 0:
        assert distilled["mcc_kept"] == pytest.approx(distilled["mcc"] / teacher["mcc"])
    else:
        assert distilled["mcc_kept"] is None
    assert summary["distilled_minus_scratch"] == pytest.approx(distilled["mcc"] - scratch["mcc"])
    assert summary["majority_class"] == "acceptable" and summary["majority_acc"] == pytest.approx(719 / 1043)
    text = pipeline.summary_markdown(summary)
    assert text == (out / "summary.md").read_text()
    word = "beats" if summary["distilled_minus_scratch"] > 0 else "does not beat"
    assert f"The distilled student {word} the same student trained from the labels alone" in text


def test_pipeline_runs_end_to_end_and_resumes(tiny_gpt2: Path, cola_dir: Path, tmp_path: Path, tiny_quick: None,
                                              capsys) -> None:
    out = tmp_path / "runs"
    args = ["pipeline", "--model", str(tiny_gpt2), "--data", str(cola_dir), "--out", str(out), "--preset", "quick",
            "--device", "cpu", "--no-progress"]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    for path in ("teacher/merged", "student/student.safetensors", "rnn/student.safetensors",
                 "teacher/onnx/model.onnx", "student/onnx/model.onnx", "rnn/onnx/model.onnx", "bench/bench.json",
                 "bench/bench.md", "bench/bench.csv", "bench/bench.png", "summary.md"):
        assert (out / path).exists(), path
    report = json.loads((out / "bench" / "bench.json").read_text())
    variants = {r["variant"] for r in report["results"]}
    assert {"teacher-merged", "teacher-onnx-fp32", "student-eager", "student-onnx-fp32"} <= variants
    # the quick preset exports its teacher without int8 (the tuning alone takes longer than the rest)
    manifest = json.loads((out / "teacher" / "onnx" / "manifest.json").read_text())
    assert "int8" not in {v["variant"] for v in manifest["variants"]}
    assert json.loads((out / "teacher" / "metrics.json").read_text())["config"]["max_train_samples"] == 96
    state = json.loads((out / "pipeline.json").read_text())["stages"]
    assert set(state) == {"teacher", "student", "rnn", "export-teacher", "export-student", "export-rnn", "bench",
                          "summary"}
    summary = (out / "summary.md").read_text()
    assert " ".join(summary.split()) in " ".join(stdout.split())  # printed, and the same in summary.md
    check_summary(out)

    # Nothing changed: everything is skipped, and the summary is printed again.
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    assert "ran: nothing" in stdout and "| majority class ('acceptable' for every sentence) | 0.6894 | 0 |" in stdout
    # The run's config.yaml is the same pipeline: read back alone, every stage's configuration hashes the same.
    code, stdout, stderr = run_cli(["pipeline", "--config", str(out / "config.yaml"), "--no-progress"], capsys)
    assert code == 0, stderr
    assert "ran: nothing" in stdout

    # The scratch student's outputs are gone: it runs again, with its export, the bench and the summary.
    shutil.rmtree(out / "rnn")
    teacher_mtime = (out / "teacher" / "metrics.json").stat().st_mtime
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    assert "ran: rnn, export-rnn, bench, summary;" in stdout
    assert (out / "rnn" / "onnx" / "model.onnx").exists()
    assert (out / "teacher" / "metrics.json").stat().st_mtime == teacher_mtime


def test_pipeline_rejects_an_unknown_preset(tmp_path: Path, capsys) -> None:
    code, _, stderr = run_cli(["pipeline", "--preset", "huge", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and stderr.startswith("error: --preset must be one of quick, full")


@dataclass
class FakeConfig:
    out: Path
    value: int = 0
    overwrite: bool = True
    progress: bool = False


def test_a_changed_configuration_reruns_its_stage_and_those_that_read_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Resume after a configuration change, with stand-in stages (a → b → c, and d alone): the changed stage runs
    again, so do the stages that read it, and nothing else; a change of only overwrite/progress is no change."""
    import kdfast.pipeline as pipeline

    calls: list[str] = []
    values = {"a": 0, "b": 0, "c": 0, "d": 0}

    def stages(cfg: pipeline.PipelineConfig) -> list[pipeline.Stage]:
        def make(name: str, needs: list[str]) -> pipeline.Stage:
            config = FakeConfig(out=tmp_path / name, value=values[name])

            def run(c: FakeConfig) -> None:
                calls.append(name)
                c.out.mkdir(exist_ok=True)
                (c.out / "done").write_text(str(c.value))

            return pipeline.Stage(name, config, [config.out / "done"], run, needs)

        return [make("a", []), make("b", ["a"]), make("c", ["b"]), make("d", [])]

    monkeypatch.setattr(pipeline, "build_stages", stages)
    cfg = pipeline.PipelineConfig(out=tmp_path, progress=False)
    assert pipeline.run(cfg)["ran"] == ["a", "b", "c", "d"]
    assert pipeline.run(cfg)["ran"] == []
    values["b"] = 1
    result = pipeline.run(cfg)
    assert (result["ran"], result["skipped"]) == (["b", "c"], ["a", "d"])
    assert (tmp_path / "b" / "done").read_text() == "1"
    assert pipeline.run(cfg)["ran"] == []  # the new configuration was recorded
    values["a"] = 2
    assert pipeline.run(cfg)["ran"] == ["a", "b", "c"]
    state = json.loads((tmp_path / "pipeline.json").read_text())["stages"]
    assert state["a"] == pipeline.stage_hash(FakeConfig(out=tmp_path / "a", value=2))
    assert pipeline.stage_hash(FakeConfig(tmp_path, 2, overwrite=False, progress=True)) == pipeline.stage_hash(
        FakeConfig(tmp_path, 2))
    # a stage that fails leaves no record: the next run tries it again
    values["d"] = 3

    def broken(c: FakeConfig) -> None:
        raise RuntimeError("d broke")

    monkeypatch.setattr(pipeline, "build_stages", lambda cfg: [*stages(cfg)[:3], pipeline.Stage(
        "d", FakeConfig(out=tmp_path / "d", value=3), [tmp_path / "d" / "done"], broken)])
    with pytest.raises(RuntimeError, match="d broke"):
        pipeline.run(cfg)
    assert "d" not in json.loads((tmp_path / "pipeline.json").read_text())["stages"]
    monkeypatch.setattr(pipeline, "build_stages", stages)
    assert pipeline.run(cfg)["ran"] == ["d"]


def write_three_class_data(folder: Path) -> Path:
    """A tiny dataset that is not CoLA: three classes named by words, in train.csv (60 rows) and dev.csv (30; 12 of
    them "fish", the majority)."""
    import csv

    nouns = {"bird": ["sparrow", "robin", "crow"], "fish": ["trout", "salmon", "carp"], "tree": ["oak", "elm", "ash"]}
    verbs = ["sits here", "is seen today", "grows old", "waits nearby", "was there"]

    def rows(counts: dict[str, int], offset: int) -> list[tuple[str, str]]:
        return [(f"the {nouns[label][(i + offset) % 3]} {verbs[(i + offset) % 5]} number {i}", label)
                for label, n in counts.items() for i in range(n)]

    folder.mkdir()
    for name, part in (("train.csv", rows({"bird": 20, "fish": 20, "tree": 20}, 0)),
                       ("dev.csv", rows({"bird": 9, "fish": 12, "tree": 9}, 1))):
        with open(folder / name, "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *part])
    return folder


def test_pipeline_data_reaches_every_stage(tiny_gpt2: Path, tmp_path: Path, tiny_quick: None, capsys) -> None:
    """``--data`` with a dataset that is not the default CoLA: every stage trains, exports, benchmarks and summarises
    on it (a stage that fell back to CoLA would show CoLA's 1,043 dev sentences and its two labels)."""
    data = write_three_class_data(tmp_path / "birds")
    labels = ["bird", "fish", "tree"]
    out = tmp_path / "runs"
    code, _, stderr = run_cli(["pipeline", "--model", str(tiny_gpt2), "--data", str(data), "--out", str(out),
                               "--preset", "quick", "--device", "cpu", "--no-progress"], capsys)
    assert code == 0, stderr
    for name in ("teacher", "student", "rnn"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["config"]["data"] == str(data), name
        assert metrics["data"]["source"] == str(data) or str(data) in metrics["data"]["source"], name
        assert (metrics["data"]["labels"], metrics["data"]["train"], metrics["data"]["dev"]) == (labels, 60, 30), name
        assert json.loads((out / name / "run.json").read_text())["labels"] == labels, name
        manifest = json.loads((out / name / "onnx" / "manifest.json").read_text())
        assert manifest["labels"] == labels and manifest["parity"]["sentences"] == 30, name  # checked on our dev
    from safetensors import safe_open

    with safe_open(str(out / "student" / "teacher_logits.safetensors"), framework="pt") as f:
        assert f.get_tensor("logits").shape == (60 * 5, 3)  # our 60 sentences and 4 synthetic ones each
    import kdfast.pipeline as pipeline

    summary = pipeline.summarize(pipeline.SummaryConfig(out / "teacher", out / "student", out / "rnn",
                                                        out / "bench" / "bench.json", out / "summary.md"))
    assert summary["majority_class"] == "fish" and summary["majority_acc"] == pytest.approx(12 / 30)
    assert "fish" in (out / "summary.md").read_text()


def test_config_sections_set_each_stages_options(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """A section per stage in --config: its options over the preset's, written back in OUT/config.yaml; the options
    every stage shares and the folders that wire them are refused there, with one error line."""
    import yaml

    import kdfast.pipeline as pipeline

    seen: list[pipeline.PipelineConfig] = []
    monkeypatch.setattr(pipeline, "run", lambda cfg: seen.append(cfg) or {"summary": None})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"preset": "quick", "seed": 3, "teacher": {"epochs": 2, "rank": 4},
                                    "student": {"temperature": 4, "recipe": "plain"},
                                    "export-student": {"int8": False, "int8_tuning": {"min_speedup": 1.5}},
                                    "bench": {"iters": 3}}))
    code, _, err = run_cli(["pipeline", "--config", str(path), "--out", str(tmp_path / "r"), "--seed", "5"], capsys)
    assert code == 0, err
    cfg = seen[-1]
    stages = {s.name: s.config for s in pipeline.build_stages(cfg)}
    teacher, student, rnn = stages["teacher"], stages["student"], stages["rnn"]
    assert (teacher.epochs, teacher.rank, teacher.lr) == (2, 4, pipeline.QUICK_TEACHER["lr"])  # the rest: the preset
    assert (student.temperature, student.recipe, student.alpha) == (4.0, "plain", 0.5)
    assert student.augment == pipeline.QUICK_DISTILL["augment"]  # the preset's explicit value wins over the recipe
    assert {teacher.seed, student.seed, rnn.seed} == {5}  # the flag over the file, for every stage
    assert teacher.out == tmp_path / "r" / "teacher" and student.teacher == teacher.out
    export = stages["export-student"]
    assert not export.int8 and export.int8_tuning.min_speedup == 1.5 and export.int8_tuning.max_drop == 0.01
    assert stages["export-rnn"].int8 and stages["bench"].iters == 3

    written = pipeline.resolved_config(cfg, list(pipeline.build_stages(cfg)))
    assert written["seed"] == 5 and written["teacher"]["epochs"] == 2 and "out" not in written["teacher"]
    assert written["export_student"]["int8_tuning"]["min_speedup"] == 1.5 and "seed" not in written["student"]

    for section, bad in (("teacher", {"out": "x"}), ("student", {"seed": 1}), ("bench", {"students": ["a"]}),
                         ("export_rnn", {"run_dir": "a"})):
        path.write_text(yaml.safe_dump({section: bad}))
        code, _, err = run_cli(["pipeline", "--config", str(path), "--out", str(tmp_path / "r")], capsys)
        assert code == 0, err  # the file is read; the stages are built (and refuse it) when the pipeline runs
        with pytest.raises(pipeline.KdfastError, match=f"section {section}: {next(iter(bad))} is set for the whole"):
            pipeline.build_stages(seen[-1])
    path.write_text("teacher:\n  epochz: 2\n")
    run_cli(["pipeline", "--config", str(path), "--out", str(tmp_path / "r")], capsys)
    with pytest.raises(pipeline.KdfastError, match="section teacher: unknown option 'epochz'"):
        pipeline.build_stages(seen[-1])
    path.write_text("teacher: 3\n")
    monkeypatch.undo()
    code, _, err = run_cli(["pipeline", "--config", str(path), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.startswith("error: --config: section teacher must be a mapping") and not (
        tmp_path / "r").exists()
