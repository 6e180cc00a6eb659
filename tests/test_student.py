"""The RNN student: cell loop == nn.LSTM/GRU, padding changes nothing, compiled == eager, vocabulary, size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdfast.batching import pad_batch
from kdfast.errors import KdfastError
from kdfast.train.student import (
    GPT2_SMALL_PARAMS,
    MASK,
    DistilRNN,
    StudentConfig,
    WordVocab,
    check_size,
    compile_student,
    pad_for_compile,
    parameter_counts,
    split_words,
)

# Odd sizes on purpose; lengths 1 to 7, with a length-1 sentence.
SENTENCES = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14], [15, 16, 17, 18]]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a shared CPU: more threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(cell: str, bidirectional: bool = True, layers: int = 2, pooling: str = "max", seed: int = 0) -> DistilRNN:
    torch.manual_seed(seed)
    cfg = StudentConfig(vocab_size=23, cell=cell, embed_dim=7, hidden=5, layers=layers, bidirectional=bidirectional,
                        dropout=0.0, pooling=pooling)
    return DistilRNN(cfg).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("pooling", ["mean", "max", "last"])
def test_cell_loop_matches_nn_forward_and_backward(cell: str, pooling: str) -> None:
    model = tiny(cell, pooling=pooling)
    ids, mask = pad_batch(SENTENCES, 0)
    grad_out = torch.randn(len(SENTENCES), 2)  # not ones: the backward sees a realistic gradient
    results = {}
    for impl in ("nn", "loop"):
        model.impl = impl
        model.zero_grad()
        logits = model(ids, mask)
        logits.backward(grad_out)
        results[impl] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results["loop"][0], results["nn"][0], rtol=1e-5, atol=1e-6)
    for name, grad in results["nn"][1].items():
        torch.testing.assert_close(results["loop"][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("impl", ["nn", "loop"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_padding_changes_no_output(impl: str, cell: str, bidirectional: bool) -> None:
    for pooling in ("mean", "max", "last"):
        model = tiny(cell, bidirectional, pooling=pooling)
        model.impl = impl
        ids, mask = pad_batch(SENTENCES, 0)
        with torch.no_grad():
            ref = model(ids, mask)
            # other pad ids, and 5 more padded steps
            other = ids.masked_fill(mask == 0, 21)
            wider = F.pad(other, (0, 5), value=3), F.pad(mask, (0, 5), value=0)
            alone = torch.cat([model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))
                               for s in SENTENCES])
            torch.testing.assert_close(model(other, mask), ref, rtol=0, atol=1e-6)
            torch.testing.assert_close(model(*wider), ref, rtol=0, atol=1e-6)
            torch.testing.assert_close(alone, ref, rtol=0, atol=1e-6)


def test_compiled_matches_eager() -> None:
    model = tiny("lstm", bidirectional=True, layers=1)
    ids, mask = pad_batch(SENTENCES, 0)
    with torch.no_grad():
        eager = model(ids, mask)  # nn.LSTM
        runner = compile_student(model)
        compiled = runner(*pad_for_compile(ids, mask, 0))
        logits, features = runner(*pad_for_compile(ids, mask, 0), return_features=True)  # distillation's path
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, eager, rtol=1e-5, atol=1e-5)
    assert features.shape == (len(SENTENCES), 2 * model.cfg.hidden)
    torch.testing.assert_close(model.head(features), eager, rtol=1e-5, atol=1e-5)


def test_vocab_encodes_saves_and_loads(tmp_path: Path) -> None:
    assert split_words(f"John didn't leave {MASK}, did he?") == ["john", "didn't", "leave", MASK, ",", "did", "he",
                                                                 "?"]
    vocab = WordVocab.build(["the cat sat.", "The dog sat.", "a bird"], min_freq=2)
    assert vocab.words[:3] == ["<pad>", "<unk>", MASK]
    assert set(vocab.words[3:]) == {"the", "sat", "."}
    assert vocab.encode("The bird sat [MASK]") == [vocab.index["the"], vocab.unk_id, vocab.index["sat"],
                                                  vocab.mask_id]
    assert vocab.encode("") == [vocab.unk_id]
    assert vocab.encode("the the the", max_length=2) == [vocab.index["the"]] * 2
    vocab.save(tmp_path / "vocab.json")
    assert WordVocab.load(tmp_path / "vocab.json").words == vocab.words
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(KdfastError, match="not a kdfast word vocabulary"):
        WordVocab.load(tmp_path / "bad.json")


def test_default_student_is_under_a_twentieth_of_gpt2() -> None:
    vocab_size = 6000  # more than CoLA train's 5,526 distinct words
    counts = parameter_counts(DistilRNN(StudentConfig(vocab_size=vocab_size)))
    assert counts["total_params"] * 20 <= GPT2_SMALL_PARAMS
    assert counts["total_params"] - counts["non_embedding_params"] == vocab_size * 128
    with pytest.raises(KdfastError, match="1/20 of GPT-2"):
        check_size(DistilRNN(StudentConfig(vocab_size=50257, embed_dim=768, hidden=8)))


def test_bad_config_is_a_user_error() -> None:
    with pytest.raises(KdfastError, match="--cell"):
        StudentConfig(vocab_size=10, cell="rnn").validate()
    with pytest.raises(KdfastError, match="--pooling"):
        StudentConfig(vocab_size=10, pooling="sum").validate()
