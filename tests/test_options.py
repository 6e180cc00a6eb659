"""Each option said once: every command's options are its configuration's fields (same name, default, type and help),
``--config FILE`` fills the rest with explicit flags winning, and a run folder's ``config.yaml`` reproduces the run."""

from __future__ import annotations

import csv
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import typer.main
from helpers import run_cli

from kdfast.cli.main import app
from kdfast.configs import (
    BenchConfig,
    EvalConfig,
    ExportConfig,
    GenerateConfig,
    Int8Config,
    LabelConfig,
    PredictConfig,
    ServeConfig,
    TeacherConfig,
)
from kdfast.options import KEY, config_only
from kdfast.pipeline import SECTIONS, PipelineConfig
from kdfast.train.distill import DistillConfig, ScratchConfig

COMMANDS: dict[str, type] = {"train lora": TeacherConfig, "train rnn": ScratchConfig, "distill": DistillConfig,
                             "pipeline": PipelineConfig, "export": ExportConfig, "bench": BenchConfig,
                             "serve": ServeConfig, "generate": GenerateConfig, "predict": PredictConfig,
                             "label": LabelConfig, "eval": EvalConfig}
NO_CONFIG = {"compare"}  # commands without a configuration (it reads run folders)
CLI_ONLY = {name: {"config"} for name in COMMANDS} | {"export": {"config", "onnx"},
                                                     "bench": {"config", "compare_files"}}
# Fields no flag sets (a configuration file does): each one here on purpose.
FILE_ONLY = {
    TeacherConfig: ["warmup_ratio", "weight_decay", "max_grad_norm"],
    ScratchConfig: ["max_length", "warmup_ratio", "weight_decay", "max_grad_norm"],
    DistillConfig: ["max_length", "warmup_ratio", "weight_decay", "max_grad_norm", "teacher_batch_size"],
    PipelineConfig: list(SECTIONS),
    ExportConfig: ["int8_tuning." + n for n in ("held_out", "perturbed", "confidence", "max_fp32_nodes",
                                                 "rank_sentences", "percentile", "recipes", "threads",
                                                 "timing_rounds", "batch_size", "seed")]
    + ["triton_max_batch_size", "max_check_sentences", "batch_size", "progress"],
    BenchConfig: ["timed_sentences"],
    ServeConfig: [],
    GenerateConfig: [],
    PredictConfig: [],
    LabelConfig: [],
    EvalConfig: [],
}


def commands() -> dict[str, Any]:
    out = {}

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd

    walk(typer.main.get_command(app), [])
    return out


def expected_options(cls: type, prefix: str = "") -> dict[str, tuple[dataclasses.Field[Any], Any, str]]:
    """The parameter each field with a flag should make: name -> (field, its type, the flag's name)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(KEY)
        if spec is None:
            continue
        if spec.prefix:
            out.update(expected_options(hints[f.name], prefix + spec.prefix))
            continue
        name = spec.name or prefix + f.name
        flag = spec.decls[0] if spec.decls else "--" + name.replace("_", "-")
        out[name] = (f, hints[f.name], flag)
    return out


def bare(annotation: Any) -> Any:
    """A type as Typer keeps it: ``X | None`` is ``X`` (an option's None default says it may be absent)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def field_default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def test_every_option_is_a_field_and_every_field_an_option() -> None:
    cmds = commands()
    assert set(cmds) == set(COMMANDS) | NO_CONFIG
    for name, cls in COMMANDS.items():
        params = {p.name: p for p in cmds[name].params}
        expected = expected_options(cls)
        assert set(params) == set(expected) | CLI_ONLY.get(name, set()), name
        assert config_only(cls) == FILE_ONLY[cls], name
        for pname, (f, ftype, flag) in expected.items():
            p, spec = params[pname], f.metadata[KEY]
            where = f"{name} {flag}"
            assert p.help == spec.help, where
            if spec.argument:  # required unless it has a default (kdfast predict RUN [TEXT ...])
                has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                assert p.required is not has_default and type(p).__name__ == "TyperArgument", where
                continue
            assert flag in p.opts, where
            if spec.required:
                assert p.required, where
                continue
            if spec.invert:  # --no-check: check=False
                assert p.type_descriptor.annotation is bool and p.is_flag and p.default is not field_default(f), where
            elif spec.parse is not None:  # a flag that parses into the field's type (--batch-sizes 1,32)
                assert p.type_descriptor.annotation == bare(spec.cli_type), where
                assert spec.parse(p.default) == field_default(f), where
            else:
                assert p.type_descriptor.annotation == bare(ftype), where
                assert p.default == field_default(f), where


def test_help_is_beside_the_field() -> None:
    """The help of an option comes from its field (a spot check that would fail if the CLI kept its own copy)."""
    params = {p.name: p for p in commands()["export"].params}
    assert params["int8_max_drop"].help == dataclasses.fields(Int8Config)[1].metadata[KEY].help
    assert params["int8_max_drop"].opts == ["--int8-max-drop"] and params["no_check"].opts == ["--no-check"]
    assert {p.name: p for p in commands()["distill"].params}["plain"].opts == ["--plain"]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The configuration ``kdfast train rnn`` / ``distill`` would run, captured instead of training."""
    import kdfast.train.student_stage

    seen: list[Any] = []

    def fake_run(cfg: Any) -> dict[str, Any]:
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(kdfast.train.student_stage, "run", fake_run)
    return seen


def test_config_file_fills_options_and_flags_win(tmp_path: Path, captured: list[Any], capsys) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("epochs: 3\nlr: 1\nhidden: 64\nout: runs/x\nmax_length: 20\nbidirectional: false\n"
                         "weight_decay: 0.5\n")
    code, _, err = run_cli(["train", "rnn", "--config", str(yaml_file), "--hidden", "32", "--seed", "7"], capsys)
    assert code == 0, err
    cfg = captured[-1]
    assert isinstance(cfg, ScratchConfig) and not isinstance(cfg, DistillConfig)
    # the file over the defaults (a flag-less field too), the command line over the file, ints as floats
    assert (cfg.epochs, cfg.lr, cfg.out, cfg.max_length, cfg.bidirectional, cfg.weight_decay) == (
        3, 1.0, Path("runs/x"), 20, False, 0.5)
    assert isinstance(cfg.lr, float) and (cfg.hidden, cfg.seed) == (32, 7)
    assert cfg.dropout == ScratchConfig().dropout  # neither: the default
    # an explicit flag equal to its default still wins over the file
    code, _, err = run_cli(["train", "rnn", "--config", str(yaml_file), "--epochs", "10", "--bidirectional"], capsys)
    assert code == 0 and (captured[-1].epochs, captured[-1].bidirectional) == (10, True)

    toml_file = tmp_path / "c.toml"
    toml_file.write_text('teacher = "runs/t"\nrecipe = "plain"\ntemperature = 4\n')
    code, _, err = run_cli(["distill", "--config", str(toml_file), "--alpha", "0.25"], capsys)
    assert code == 0, err
    cfg = captured[-1]
    assert (cfg.teacher, cfg.recipe, cfg.augment, cfg.temperature, cfg.alpha) == (Path("runs/t"), "plain", 0, 4.0,
                                                                                   0.25)


@pytest.mark.parametrize(("text", "suffix", "message"), [
    ("epochs: 3\nepochz: 4\n", ".yaml", "unknown option 'epochz'"),
    ("epochs: three\n", ".yaml", "epochs: expected int, got 'three'"),
    ("- 1\n- 2\n", ".yaml", "expected a mapping"),
    ("epochs = [", ".toml", "not valid TOML"),
    ("epochs: 3\n", ".json", "expected a .yaml, .yml or .toml file"),
])
def test_bad_config_file_is_one_error_line(tmp_path: Path, captured: list[Any], capsys, text: str, suffix: str,
                                            message: str) -> None:
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    code, _, err = run_cli(["train", "rnn", "--config", str(path)], capsys)
    assert code == 2 and err.startswith("error: --config ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and not captured
    code, _, err = run_cli(["train", "rnn", "--config", str(tmp_path / "none.yaml")], capsys)
    assert code == 2 and err.startswith("error: --config ") and len(err.strip().splitlines()) == 1


def test_run_folder_config_reproduces_the_teacher(tiny_gpt2: Path, cola_dir: Path, tmp_path: Path, capsys) -> None:
    """``kdfast train lora --config RUN/config.yaml --out AGAIN`` trains the same weights, bit for bit (CPU)."""
    import yaml
    from safetensors.torch import load_file

    data = tmp_path / "data"  # CoLA's first 64 training and 48 dev sentences: a run in seconds
    data.mkdir()
    for name, source, n in (("train", "in_domain_train.tsv", 64), ("dev", "in_domain_dev.tsv", 48)):
        rows = [line.split("\t") for line in (cola_dir / source).read_text().splitlines()[:n]]
        with (data / f"{name}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *((r[3], r[1]) for r in rows)])
    first = tmp_path / "teacher"
    code, _, err = run_cli(["train", "lora", "--model", str(tiny_gpt2), "--data", str(data), "--out", str(first),
                            "--epochs", "1", "--rank", "4", "--alpha", "8", "--lr", "1e-3", "--batch-size", "16",
                            "--seed", "3", "--device", "cpu", "--no-progress"], capsys)
    assert code == 0, err
    recorded = yaml.safe_load((first / "config.yaml").read_text())
    assert (recorded["rank"], recorded["lr"], recorded["seed"], recorded["out"]) == (4, 1e-3, 3, str(first))
    again = tmp_path / "again"
    code, _, err = run_cli(["train", "lora", "--config", str(first / "config.yaml"), "--out", str(again)], capsys)
    assert code == 0, err
    a = load_file(str(first / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(again / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert yaml.safe_load((again / "config.yaml").read_text()) == {**recorded, "out": str(again)}
    assert any("lora_B" in k and a[k].abs().sum() > 0 for k in a)  # trained: B starts at zero
