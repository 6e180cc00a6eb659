"""Distillation: the KD loss by hand, the transfer set, the teacher-logit cache, and both commands end to end."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

import kdfast.train.student_stage
import kdfast.train.teacher
from kdfast.errors import KdfastError
from kdfast.train.distill import (
    CACHE_FILE,
    DEFAULT_RECIPE,
    RECIPES,
    DistillConfig,
    augment,
    kd_loss,
    run,
    standardise,
    teacher_embeddings,
    word_neighbours,
)
from kdfast.train.student import MASK

STUDENT_FLAGS = ["--hidden", "8", "--embed-dim", "8", "--epochs", "2", "--max-train-samples", "48", "--batch-size",
                 "16", "--device", "cpu", "--no-progress"]
STUDENT_FILES = {"run.json", "metrics.json", "student.safetensors", "student_config.json", "vocab.json", "curves.png",
                 "config.yaml"}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kdfast_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str,
                                                                                                           str]:
    """Run ``kdfast ARGS`` in this process: (exit code, stdout, stderr)."""
    from kdfast.cli.main import main

    monkeypatch.setattr(sys, "argv", ["kdfast", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_kd_loss_by_hand() -> None:
    s, t, T, alpha = [1.0, 2.0], [3.0, 0.0], 2.0, 0.3

    def softmax(z: list[float]) -> list[float]:
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]

    p, q = softmax(t), softmax(s)  # teacher, student at temperature T
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    ce = -math.log(math.exp(s[1]) / (math.exp(s[0]) + math.exp(s[1])))  # label 1, at T = 1
    expected = alpha * T**2 * kl + (1 - alpha) * ce
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([1]), T, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() != pytest.approx(alpha * kl + (1 - alpha) * ce, rel=1e-3)  # the T² is there
    assert kd_loss(torch.tensor([s]), None, torch.tensor([1]), T, 0.0).item() == pytest.approx(ce, rel=1e-6)
    with pytest.raises(AssertionError, match=r"^the KL term needs teacher logits$"):
        kd_loss(torch.tensor([s]), None, torch.tensor([1]), T, alpha)


def test_kd_loss_unlabelled_rows_count_in_kl_only() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(4, 2, dtype=torch.float16), torch.randn(4, 2)
    y = torch.tensor([1, 0, -1, -1])
    loss = kd_loss(s, t, y, 2.0, 0.5)
    assert loss.dtype == torch.float32
    ce = torch.nn.functional.cross_entropy(s[:2].float(), y[:2])
    kl = torch.nn.functional.kl_div(torch.log_softmax(s.float() / 2, -1), torch.softmax(t / 2, -1),
                                    reduction="batchmean")
    torch.testing.assert_close(loss, 0.5 * 4 * kl + 0.5 * ce)
    assert kd_loss(s, t, torch.full((4,), -1), 2.0, 0.0).item() == 0.0


def test_kd_loss_gradient_by_hand() -> None:
    """d loss / d s = α·T·(softmax(s/T) − softmax(t/T)) / B + (1 − α)·(softmax(s) − onehot(y)) / n_labelled: the
    teacher pulls every row, the labels only the labelled ones; a grad_output that is not 1."""
    torch.manual_seed(1)
    s, t = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3) * 3
    y, T, alpha = torch.tensor([2, -1, 0, 1, -1]), 3.0, 0.25
    (kd_loss(s, t, y, T, alpha) * 0.5).backward()
    p_s, p_t = torch.softmax(s.detach() / T, -1), torch.softmax(t / T, -1)
    onehot = torch.zeros(5, 3)
    onehot[[0, 2, 3], y[[0, 2, 3]]] = 1
    labelled = (y >= 0).float()[:, None]
    want = alpha * T * (p_s - p_t) / 5 + (1 - alpha) * (torch.softmax(s.detach(), -1) - onehot) * labelled / 3
    assert s.grad is not None
    torch.testing.assert_close(s.grad, 0.5 * want)
    assert (s.grad[1] != 0).all()  # an unlabelled row still learns, from the teacher alone


def test_teacher_logits_change_what_the_student_learns(teacher_run: Path, cola_dir: Path, tmp_path: Path) -> None:
    """Three runs alike but for the teacher's cached logits: the same logits give the same weights, other logits
    other weights. Training with the KL term dropped (gold labels only) would give the same weights all three
    times."""
    from safetensors.torch import load_file, save_file

    cfg = dict(teacher=teacher_run, data=str(cola_dir), epochs=1, hidden=8, embed_dim=8, max_train_samples=32,
               augment=0, feature_weight=0.0, device="cpu", progress=False)
    run(DistillConfig(**cfg, out=tmp_path / "a"))
    run(DistillConfig(**cfg, out=tmp_path / "same", reuse_logits=tmp_path / "a"))
    flipped = tmp_path / "flipped"
    flipped.mkdir()
    with safe_open(str(tmp_path / "a" / CACHE_FILE), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(tmp_path / "a" / CACHE_FILE))
    save_file({**tensors, "logits": tensors["logits"].flip(-1).contiguous()}, str(flipped / CACHE_FILE), metadata=meta)
    run(DistillConfig(**cfg, out=tmp_path / "b", reuse_logits=flipped))

    def weights(name: str) -> dict[str, torch.Tensor]:
        return load_file(str(tmp_path / name / "student.safetensors"))

    a, same, b = weights("a"), weights("same"), weights("b")
    assert all(torch.equal(a[k], same[k]) for k in a)  # deterministic: any difference below is the teacher's
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_augment_is_seeded_and_changes_every_sentence() -> None:
    sentences = ["the cat sat on the mat .", "John left", "Bill saw himself in the mirror ."]
    a = augment(sentences, 3, seed=1)
    assert a == augment(sentences, 3, seed=1) and a != augment(sentences, 3, seed=2)
    assert len(a) == 9
    for i, s in enumerate(a):
        assert s != sentences[i // 3] and s.split()
    words = {w for s in sentences for w in s.split()} | {MASK}
    assert all(w in words for s in a for w in s.split())
    assert any(MASK in s for s in augment(sentences, 20, seed=0))


def test_distill_through_the_cli_writes_every_artifact(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], teacher_run: Path,
                                                        cola_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    code, stdout, err = kdfast_cli(monkeypatch, capsys, "distill", "--teacher", str(teacher_run), "--data",
                                   str(cola_dir), "--out", str(out), "--augment", "2", "--temperature", "2",
                                   "--alpha", "0.5", "--cell", "gru", *STUDENT_FLAGS)
    assert code == 0, err
    assert "wrote" in stdout
    assert {p.name for p in out.iterdir()} == STUDENT_FILES | {CACHE_FILE}
    info = json.loads((out / "run.json").read_text())
    assert (info["kind"], info["mode"]) == ("student", "distill")
    metrics = json.loads((out / "metrics.json").read_text())
    check_schema(metrics)
    assert metrics["data"]["train"] == 48 and metrics["data"]["synthetic"] == 96
    with safe_open(str(out / CACHE_FILE), framework="pt") as f:
        assert f.get_tensor("logits").shape == (48 * 3, 2)
    code, stdout, err = kdfast_cli(monkeypatch, capsys, "eval", str(out), "--json", "--device", "cpu")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["mode"] == "distill" and report["dev_mcc"] == pytest.approx(metrics["best"]["dev_mcc"])


def test_train_rnn_through_the_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                   cola_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rnn"
    code, _, err = kdfast_cli(monkeypatch, capsys, "train", "rnn", "--data", str(cola_dir), "--out", str(out),
                              "--pooling", "last", *STUDENT_FLAGS)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == STUDENT_FILES
    assert json.loads((out / "run.json").read_text())["mode"] == "scratch"
    check_schema(json.loads((out / "metrics.json").read_text()))
    code, _, err = kdfast_cli(monkeypatch, capsys, "compare", str(out), "--plot", str(tmp_path / "cmp.png"))
    assert code == 0, err
    assert (tmp_path / "cmp.png").stat().st_size > 0


@pytest.mark.parametrize("where", ["training", "saving"])
def test_a_failing_student_run_leaves_out_untouched(where: str, monkeypatch: pytest.MonkeyPatch, cola_dir: Path,
                                                    tmp_path: Path) -> None:
    """--overwrite onto an earlier run, failing in training (a NaN loss) or half-way through writing the files:
    the earlier run is still there, byte for byte, and nothing is left beside it."""
    from kdfast.errors import KdfastError
    from kdfast.train.distill import ScratchConfig

    out = tmp_path / "rnn"
    cfg = dict(data=str(cola_dir), out=out, hidden=8, embed_dim=8, epochs=1, max_train_samples=32, device="cpu",
               progress=False)
    run(ScratchConfig(**cfg))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*_: Any, **__: Any) -> None:
        raise KdfastError(f"failed while {where}")

    monkeypatch.setattr(kdfast.train.student_stage, "check_finite" if where == "training" else "plot_curves", fail)
    with pytest.raises(KdfastError, match=f"failed while {where}"):
        run(ScratchConfig(**cfg, overwrite=True, seed=1))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rnn"]  # no staging folder left behind


def check_schema(metrics: dict[str, Any]) -> None:
    assert len(metrics["history"]) == 2
    for entry in metrics["history"]:
        assert {"epoch", "train_loss", "train_acc", "dev_loss", "dev_acc", "dev_mcc"} <= entry.keys()
    assert {"epoch", "dev_acc", "dev_mcc", "dev_in_domain_mcc", "dev_out_of_domain_mcc"} <= metrics["best"].keys()
    assert metrics["best"]["dev_mcc"] == max(h["dev_mcc"] for h in metrics["history"])
    for key in ("trainable_params", "total_params", "non_embedding_params", "config"):
        assert key in metrics
    assert 0 < metrics["non_embedding_params"] < metrics["total_params"]


def test_word_neighbours_are_nearest_in_the_teacher_embedding_space() -> None:
    token_ids = {" cat": [0], " dog": [1], " ran": [2], " walked": [3, 4], " once": [0]}

    def tokenizer(text: str, add_special_tokens: bool) -> dict[str, list[int]]:
        return {"input_ids": token_ids[text]}

    table = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8], [0.0, 1.0]])  # walked = mean of rows 3, 4
    sentences = ["cat ran", "dog walked", "cat walked", "dog ran once"]
    near = word_neighbours(sentences, tokenizer, table, k=1)
    assert near == {"cat": ["dog"], "dog": ["cat"], "ran": ["walked"], "walked": ["ran"]}  # "once" is seen once
    assert word_neighbours(sentences, tokenizer, table, k=5)["cat"] == ["dog", "walked", "ran"]  # at most all others
    swapped = {w for s in augment(sentences, 50, seed=0, neighbours=near) for w in s.split()}
    assert swapped <= {"cat", "dog", "ran", "walked", "once", MASK}


def test_teacher_embeddings_are_the_models_input_embeddings(teacher_run: Path) -> None:
    from kdfast.train.teacher import load_teacher

    model, _ = load_teacher(teacher_run)
    assert torch.equal(teacher_embeddings(teacher_run), model.get_input_embeddings().weight.detach().float())


def test_teacher_features_are_what_its_classifier_turns_into_the_logits(teacher_run: Path) -> None:
    """Batched and padded, in length order, the features are each sentence's own: GPT-2's last token state (after
    the final layer norm), BERT's pooled [CLS]; and the logits are the model's."""
    from transformers import BertConfig, BertForSequenceClassification

    from kdfast.train.teacher import encode, load_teacher, predict_logits, teacher_outputs

    gpt2, tokenizer = load_teacher(teacher_run)
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32)).eval()
    gpt2_ids = encode(tokenizer, ["John left .", "The cat that the dog chased sat on the mat .", "Bill"], 64)
    cpu = torch.device("cpu")
    with torch.no_grad():
        for model, ids, pad in ((gpt2, gpt2_ids, tokenizer.pad_token_id), (bert, [[5, 6, 7], [8, 9, 4, 3], [10]], 0)):
            got = teacher_outputs(model, ids, pad, cpu, batch_size=2)
            torch.testing.assert_close(got["logits"].numpy(), predict_logits(model, ids, pad, cpu, batch_size=2))
            for i, sentence in enumerate(ids):
                alone = torch.tensor([sentence])
                if model is gpt2:
                    want = gpt2.transformer(alone).last_hidden_state[0, -1]
                else:
                    want = bert.bert(alone).pooler_output[0]
                torch.testing.assert_close(got["features"][i], want, rtol=1e-4, atol=1e-5)


def test_standardise() -> None:
    x = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    z = standardise(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3))
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.0, 1.0]))  # a constant column is 0, not NaN
    assert torch.equal(standardise(x[:1]), torch.zeros(1, 3))  # one sentence: zeros, not NaN


def test_feature_term_through_the_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                      teacher_run: Path, cola_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    code, _, err = kdfast_cli(monkeypatch, capsys, "distill", "--teacher", str(teacher_run), "--data", str(cola_dir),
                              "--out", str(out), "--augment", "1", "--feature-weight", "1", *STUDENT_FLAGS)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["feature_weight"] == 1.0
    with safe_open(str(out / CACHE_FILE), framework="pt") as f:
        features = f.get_tensor("features")
    assert features.shape == (48 * 2, 32) and features.dtype == torch.float32  # the tiny GPT-2's width
    # the term is in the loss: the same run without it (same seed, same cached teacher) trains differently
    code, _, err = kdfast_cli(monkeypatch, capsys, "distill", "--teacher", str(teacher_run), "--data", str(cola_dir),
                              "--out", str(tmp_path / "plain"), "--augment", "1", "--feature-weight", "0",
                              "--reuse-logits", str(out), *STUDENT_FLAGS)
    assert code == 0, err
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert plain["teacher"]["logits_cache"]["reused"]
    assert metrics["history"][0]["train_loss"] > plain["history"][0]["train_loss"]  # plus a non-negative MSE
    # the projection onto the teacher's features is for training only: the student's files are the usual ones
    assert {p.name for p in out.iterdir()} == STUDENT_FILES | {CACHE_FILE}
    code, _, err = kdfast_cli(monkeypatch, capsys, "distill", "--teacher", str(teacher_run), "--data", str(cola_dir),
                              "--out", str(tmp_path / "x"), "--feature-weight", "-1", *STUDENT_FLAGS)
    assert code == 2 and err.startswith("error: --feature-weight must be at least 0")


def test_cached_teacher_logits_are_reused(monkeypatch: pytest.MonkeyPatch, teacher_run: Path, cola_dir: Path,
                                          tmp_path: Path) -> None:
    calls = []
    real_load = kdfast.train.teacher.load_teacher

    def counting_load(run_dir: Path, merged: bool = True) -> Any:
        calls.append(run_dir)
        return real_load(run_dir, merged)

    monkeypatch.setattr(kdfast.train.teacher, "load_teacher", counting_load)
    cfg = dict(teacher=teacher_run, data=str(cola_dir), out=tmp_path / "s", epochs=2, hidden=8, embed_dim=8,
               max_train_samples=32, augment=1, feature_weight=0.0, word_weight=0.0, embed_init="none", device="cpu",
               progress=False)
    first = run(DistillConfig(**cfg))
    assert len(calls) == 1 and not first["teacher"]["logits_cache"]["reused"]  # once, not once per epoch

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("the teacher was loaded again")

    monkeypatch.setattr(kdfast.train.teacher, "load_teacher", refuse)
    again = run(DistillConfig(**{**cfg, "overwrite": True}))  # same --out
    assert again["teacher"]["logits_cache"]["reused"]
    elsewhere = run(DistillConfig(**{**cfg, "out": tmp_path / "s2", "reuse_logits": tmp_path / "s", "lr": 1e-3}))
    assert elsewhere["teacher"]["logits_cache"]["reused"]
    # another transfer set is another key: the teacher must run
    with pytest.raises(AssertionError, match="loaded again"):
        run(DistillConfig(**{**cfg, "out": tmp_path / "s3", "reuse_logits": tmp_path / "s", "augment": 2}))
    assert run(DistillConfig(**{**cfg, "out": tmp_path / "f", "reuse_logits": tmp_path / "s", "feature_weight": 1.0}
                             ))["teacher"]["logits_cache"]["reused"]  # the features are cached with the logits
    # a cache written before features were cached has logits only: good for the KL term, not for --feature-weight
    from safetensors.torch import load_file, save_file

    path = tmp_path / "s" / CACHE_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file({"logits": load_file(str(path))["logits"]}, str(path), metadata=meta)
    assert run(DistillConfig(**{**cfg, "overwrite": True, "out": tmp_path / "s4", "reuse_logits": tmp_path / "s"}
                             ))["teacher"]["logits_cache"]["reused"]
    with pytest.raises(AssertionError, match="loaded again"):
        run(DistillConfig(**{**cfg, "out": tmp_path / "s5", "reuse_logits": tmp_path / "s", "feature_weight": 1.0}))


def test_default_recipe_is_the_measured_winner_and_the_old_ones_are_one_flag_away() -> None:
    def recipe(cfg: DistillConfig) -> tuple[Any, ...]:
        return cfg.augment, cfg.feature_weight, cfg.word_weight, cfg.embed_init

    assert recipe(DistillConfig()) == tuple(RECIPES[DEFAULT_RECIPE].values()) == (4, 1.0, 1.0, "context")
    assert recipe(DistillConfig(recipe="sentence")) == (4, 1.0, 0.0, "none")  # the previous default
    assert recipe(DistillConfig(plain=True)) == recipe(DistillConfig(recipe="plain")) == (0, 0.0, 0.0, "none")
    assert DistillConfig(plain=True, augment=2).augment == 2  # an explicit value wins
    assert DistillConfig(feature_weight=0.0).augment == RECIPES[DEFAULT_RECIPE]["augment"]
    with pytest.raises(KdfastError, match="--recipe must be one of"):
        DistillConfig(recipe="nope").validate()


def test_teacher_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cola_dir: Path,
                        tmp_path: Path) -> None:
    args = ["distill", "--data", str(cola_dir), "--out", str(tmp_path / "out"), "--no-progress"]
    code, _, err = kdfast_cli(monkeypatch, capsys, *args, "--teacher", str(tmp_path / "missing"))
    assert code == 2 and err.startswith("error: --teacher") and "no such run folder" in err
    (tmp_path / "plain").mkdir()
    code, _, err = kdfast_cli(monkeypatch, capsys, *args, "--teacher", str(tmp_path / "plain"))
    assert code == 2 and err.startswith("error: ") and "not a kdfast run folder" in err
    student = tmp_path / "student"
    student.mkdir()
    (student / "run.json").write_text(json.dumps({"kind": "student", "mode": "scratch"}))
    code, _, err = kdfast_cli(monkeypatch, capsys, *args, "--teacher", str(student))
    assert code == 2 and "a student run, expected a teacher run" in err
    assert not (tmp_path / "out").exists()
    code, _, err = kdfast_cli(monkeypatch, capsys, *args, "--teacher", str(student), "--alpha", "2")
    assert code == 2 and "--alpha must be in [0, 1]" in err
