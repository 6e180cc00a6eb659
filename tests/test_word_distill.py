"""The teacher's knowledge below the sentence: word-level alignment, the cached word vectors, the word-level loss term
and the student's embeddings initialised from the teacher (GPT-2's BPE and BERT's WordPiece alike)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import gpt2_tokenizer, minilm_dir
from safetensors import safe_open

from kdfast.train.distill import CACHE_FILE, DistillConfig, WordTargets, default_word_layer, run, word_loss
from kdfast.train.embed_init import init_from_teacher_embeddings, init_from_word_states, pca_scaled, word_pieces
from kdfast.train.teacher_cache import teacher_pass, teacher_view, token_words
from kdfast.train.vocab import MASK, WordVocab, split_words


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tokenizers() -> list[Any]:
    from transformers import AutoTokenizer

    return [gpt2_tokenizer(), AutoTokenizer.from_pretrained(str(minilm_dir()))]


SENTENCES = ["John's dog didn't bark, Bill.", f"the {MASK} sat  on the mat .", "Unbelievably, x-rays!", ""]


@pytest.mark.parametrize("which", ["gpt2", "bert"])
def test_every_student_word_gets_the_teacher_tokens_inside_it(which: str) -> None:
    tokenizer = tokenizers()[which == "bert"]
    mask = tokenizer.mask_token or tokenizer.unk_token
    for sentence in SENTENCES:
        text, spans = teacher_view(sentence, mask)
        assert text == sentence.replace(MASK, mask)
        words = split_words(sentence)
        assert len(spans) == len(words)
        for w, (a, b) in zip(words, spans, strict=True):
            assert (mask if w == MASK else w) == text[a:b].lower() if w != MASK else text[a:b] == mask
        enc = tokenizer(text, return_offsets_mapping=True)
        owner = token_words(enc["offset_mapping"], spans)
        for j, (a, b) in enumerate(spans):  # each word's tokens spell the word (no token of another word among them)
            mine = [t for t, o in zip(enc["input_ids"], owner, strict=True) if o == j]
            assert mine, (sentence, j)
            pieces = tokenizer.decode(mine).replace(" ", "").replace("##", "").lower()
            assert pieces == text[a:b].replace(" ", "").lower()
        assert all(o == -1 for t, o in zip(enc["input_ids"], owner, strict=True) if t in tokenizer.all_special_ids
                   and t != tokenizer.convert_tokens_to_ids(mask))


@pytest.mark.parametrize("which", ["gpt2", "bert"])
def test_embedding_init_maps_every_student_word_to_the_teachers_sub_words(which: str) -> None:
    tokenizer = tokenizers()[which == "bert"]
    vocab = WordVocab.build(["Unbelievably the cat sat .", "the cat didn't sit on x-rays"] * 2)
    pieces = word_pieces(vocab.words, tokenizer)
    assert pieces[vocab.pad_id] == [] and pieces[vocab.unk_id] == [tokenizer.unk_token_id]
    assert pieces[vocab.mask_id] == [tokenizer.mask_token_id if which == "bert" else tokenizer.unk_token_id]
    for w, ids in zip(vocab.words[3:], pieces[3:], strict=True):
        assert ids and tokenizer.decode(ids).replace("##", "").replace(" ", "").lower() == w
    # the rows are the PCA of the mean sub-word vectors, scaled to a mean squared norm of the width
    table = torch.randn(len(tokenizer), 12)
    embedding = torch.nn.Embedding(len(vocab), 4, padding_idx=0)
    assert init_from_teacher_embeddings(embedding, vocab, tokenizer, table) == len(vocab) - 1
    means = torch.stack([table[ids].mean(0) for ids in pieces[1:]])
    torch.testing.assert_close(embedding.weight[1:], pca_scaled(means, 4))
    assert embedding.weight[0].abs().sum() == 0
    assert embedding.weight[1:].pow(2).sum(1).mean().item() == pytest.approx(4, rel=1e-4)


def test_pca_keeps_the_top_components() -> None:
    torch.manual_seed(0)
    x = torch.randn(200, 2) @ torch.tensor([[5.0, 0, 0, 0], [0, 0, 1.0, 0]]) + torch.randn(200, 4) * 0.01
    y = pca_scaled(x, 1)
    assert abs(torch.corrcoef(torch.stack([y[:, 0], x[:, 0]]))[0, 1]) > 0.999  # the high-variance direction
    assert pca_scaled(x[:, :1], 3)[:, 1:].abs().sum() == 0  # narrower than the student: zero-padded


def test_word_vectors_are_the_mean_of_their_tokens_hidden_states(teacher_run: Path) -> None:
    from kdfast.train.teacher import load_teacher

    model, tokenizer = load_teacher(teacher_run)
    sentences = ["John's dog didn't bark.", f"the {MASK} sat", "x"]
    out = teacher_pass(model, tokenizer, sentences, 64, torch.device("cpu"), batch_size=2, word_layer=-1)
    assert out["word_offsets"].tolist() == [0, 5, 8, 9]  # john's dog didn't bark . | the [MASK] sat | x
    assert out["word_states"].dtype == torch.float16 and bool(out["word_valid"].all())
    text, spans = teacher_view(sentences[0], tokenizer.unk_token)
    enc = tokenizer(text, return_offsets_mapping=True)
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([enc["input_ids"]]), output_hidden_states=True).hidden_states[-1][0]
    owner = torch.tensor(token_words(enc["offset_mapping"], spans))
    want = torch.stack([hidden[owner == j].mean(0) for j in range(len(spans))])
    torch.testing.assert_close(out["word_states"][:5].float(), want, atol=2e-3, rtol=2e-3)
    # truncated to the teacher's maximum length: the words it did not see have no vector
    cut = teacher_pass(model, tokenizer, sentences[:1], 3, torch.device("cpu"), word_layer=-1)
    assert cut["word_valid"].tolist() == [True, True, False, False, False]  # John 's dog | ...


def test_word_loss_by_hand() -> None:
    torch.manual_seed(0)
    states = torch.randn(7, 3)
    scores = {"word_states": states.half(), "word_offsets": torch.tensor([0, 3, 7]),
              "word_valid": torch.tensor([True, True, False, True, True, True, True])}
    words = WordTargets(scores, lengths=[3, 2])  # the student cut sentence 1 at 2 words
    assert words.hits.tolist() == [2, 2]
    pred = torch.randn(2, 3, 3)
    target, valid = words.batch([0, 1], 3)
    assert valid.tolist() == [[True, True, False], [True, True, False]]
    kept = scores["word_states"][scores["word_valid"]].float()  # standardised over the words with a vector
    mean, std = kept.mean(0), kept.std(0, unbiased=False)
    torch.testing.assert_close((words.mean, words.std), (mean, std))
    torch.testing.assert_close(target[1, 1], (states[4].half().float() - mean) / std)
    t = (states.half().float() - mean) / std
    cos = [torch.cosine_similarity(pred[0, 0], t[0], 0), torch.cosine_similarity(pred[0, 1], t[1], 0),
           torch.cosine_similarity(pred[1, 0], t[3], 0), torch.cosine_similarity(pred[1, 1], t[4], 0)]
    want = sum(1 - c for c in cos) / 4
    torch.testing.assert_close(word_loss(pred, target, valid, 4), want)
    # one slice of a global batch divides by the global batch's count: the slices add up
    parts = [word_loss(pred[i : i + 1], *words.batch([i], 3), int(words.hits[[0, 1]].sum())) for i in (0, 1)]
    torch.testing.assert_close(parts[0] + parts[1], want)


def test_word_term_and_embed_init_through_the_library(teacher_run: Path, cola_dir: Path, tmp_path: Path) -> None:
    cfg: dict[str, Any] = dict(teacher=teacher_run, data=str(cola_dir), epochs=1, hidden=8, embed_dim=8,
                               max_train_samples=32, augment=1, feature_weight=1.0, device="cpu", progress=False)
    base = run(DistillConfig(**cfg, out=tmp_path / "a", word_weight=0.0, embed_init="none"))
    words = run(DistillConfig(**cfg, out=tmp_path / "b", word_weight=1.0, embed_init="context"))
    assert words["best"] != base["best"] or words["history"][0]["train_loss"] != base["history"][0]["train_loss"]
    with safe_open(str(tmp_path / "b" / CACHE_FILE), framework="pt") as f:
        assert {"word_states", "word_offsets", "word_valid"} <= set(f.keys())
        assert f.metadata()["word_layer"] == str(default_word_layer(teacher_run)) == str(words["teacher"]["word_layer"])
    again = run(DistillConfig(**cfg, out=tmp_path / "c", word_weight=1.0, embed_init="teacher",
                              reuse_logits=tmp_path / "b"))
    assert again["teacher"]["logits_cache"]["reused"]  # the word vectors came from b's cache
    # a cache without word vectors is not enough for the word term: the teacher runs again
    assert not run(DistillConfig(**cfg, out=tmp_path / "d", word_weight=1.0,
                                 reuse_logits=tmp_path / "a"))["teacher"]["logits_cache"]["reused"]


def test_context_init_averages_each_words_vectors() -> None:
    vocab = WordVocab(["cat", "sat"])
    sentences = ["cat sat", "the cat"]  # "the" is <unk>
    states = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [3.0, 0, 0]])
    scores = {"word_states": states, "word_offsets": torch.tensor([0, 2, 4]), "word_valid": torch.ones(4, dtype=bool)}
    embedding = torch.nn.Embedding(len(vocab), 2, padding_idx=0)
    assert init_from_word_states(embedding, vocab, sentences, scores) == 3  # <unk>, cat, sat
    means = torch.stack([states[2], (states[0] + states[3]) / 2, states[1]])  # unk, cat, sat
    torch.testing.assert_close(embedding.weight[[1, 3, 4]], pca_scaled(means, 2))


@pytest.mark.parametrize(("config", "layer"), [({"num_hidden_layers": 6}, 4), ({"n_layer": 12}, 8),
                                                ({"num_hidden_layers": 2}, 1), ({"n_layer": 1}, 1)])
def test_the_default_word_layer_is_two_thirds_of_the_teachers_depth(tmp_path: Path, config: dict[str, int],
                                                                     layer: int) -> None:
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text(json.dumps(config))
    assert default_word_layer(tmp_path) == layer
    assert DistillConfig(teacher=tmp_path).word_layer_used == layer  # the bare command's recipe needs word vectors
    assert DistillConfig(teacher=tmp_path, word_layer=-1).word_layer_used == -1
    assert DistillConfig(teacher=tmp_path, recipe="sentence").word_layer_used is None

