"""kdfast generate: seeded sampling, exact token counts, streaming, several sequences, and the error lines.

The model is a random 2-layer GPT-2 LM with the real tokenizer: its text is gibberish, but every check here is about
the mechanics. Such a model spreads its probability over all 50,257 tokens, so it almost never ends a text with eos
by itself; the tests that count tokens pass --ignore-eos anyway, and ``eos_lm`` is a copy rigged to always pick eos.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import minilm_dir, run_cli, save_tiny_gpt2_lm

from kdfast.errors import KdfastError
from kdfast.generate import GenerateConfig, count_new_tokens, run

PROMPT = "The cat sat on the"
EOS = 50256  # GPT-2's <|endoftext|>


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gpt2_lm(tmp_path_factory.mktemp("tiny-gpt2-lm"))


@pytest.fixture(scope="module")
def eos_lm(tmp_path_factory: pytest.TempPathFactory, tiny_lm: Path) -> Path:
    """The tiny LM rigged so that eos wins every step: logits = ln_f(h) @ wte.T, so a large ln_f bias along u and
    wte[eos] = 10 u give eos a logit near 100 while every other token stays near 0."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tiny_lm)
    with torch.no_grad():
        u = torch.nn.functional.normalize(torch.ones(model.config.n_embd), dim=0)
        model.transformer.ln_f.bias.copy_(10 * u)
        model.transformer.wte.weight[EOS] = 10 * u
    folder = tmp_path_factory.mktemp("eos-lm")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(folder)
    return folder


def generate_cli(model: Path, capsys, *flags: str, max_new_tokens: int = 5) -> tuple[int, str, str]:
    return run_cli(["generate", "--prompt", PROMPT, "--model", str(model), "--max-new-tokens", str(max_new_tokens),
                    *flags], capsys)


def test_same_seed_same_text_streamed_or_not_other_seed_other_text(tiny_lm: Path, capsys) -> None:
    code, whole, err = generate_cli(tiny_lm, capsys, "--seed", "3")
    assert code == 0, err
    assert whole.startswith(PROMPT) and whole.endswith("\n") and len(whole) > len(PROMPT) + 1
    assert re.fullmatch(r"\d+ new tokens in [\d.]+ s: [\d.]+ tokens/s on cpu\n", err)
    code, streamed, err = generate_cli(tiny_lm, capsys, "--seed", "3", "--stream")
    assert code == 0, err
    assert streamed == whole
    assert generate_cli(tiny_lm, capsys, "--seed", "4")[1] != whole


def test_stream_comes_in_pieces_that_make_up_the_text(tiny_lm: Path) -> None:
    pieces: list[str] = []
    result = run(GenerateConfig(prompt=PROMPT, model=str(tiny_lm), max_new_tokens=5, seed=3, stream=True),
                 on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == result.continuations[0]


def test_max_new_tokens_is_exact_with_ignore_eos(tiny_lm: Path) -> None:
    result = run(GenerateConfig(prompt=PROMPT, model=str(tiny_lm), max_new_tokens=3, num_return_sequences=2,
                                ignore_eos=True))
    assert [len(ids) for ids in result.new_token_ids] == [3, 3]
    assert result.new_tokens == 6 and result.seconds > 0 and result.tokens_per_s > 0
    assert len(result.texts) == 2 and all(t.startswith(PROMPT) for t in result.texts)


def test_eos_ends_the_text_unless_ignored(eos_lm: Path) -> None:
    ended = run(GenerateConfig(prompt=PROMPT, model=str(eos_lm), max_new_tokens=4))
    assert ended.new_token_ids == [[EOS]] and ended.continuations == [""]  # eos counted as generated, not shown
    banned = run(GenerateConfig(prompt=PROMPT, model=str(eos_lm), max_new_tokens=4, ignore_eos=True))
    assert len(banned.new_token_ids[0]) == 4 and EOS not in banned.new_token_ids[0]


def test_count_new_tokens_stops_at_the_first_eos() -> None:
    # Rows that ended early are padded with pad = eos by generate.
    new_ids = torch.tensor([[5, 6, 7, 8], [5, EOS, EOS, EOS], [EOS, EOS, EOS, EOS]])  # (N=3, T_new=4)
    assert count_new_tokens(new_ids, {EOS}) == [4, 2, 1]
    assert count_new_tokens(new_ids, {7, EOS}) == [3, 2, 1]  # a model may stop at any of several tokens
    assert count_new_tokens(new_ids, set()) == [4, 4, 4]


def test_num_return_sequences(tiny_lm: Path, capsys) -> None:
    code, out, err = generate_cli(tiny_lm, capsys, "--num-return-sequences", "3", "--ignore-eos", max_new_tokens=4)
    assert code == 0, err
    assert re.findall(r"^--- sequence (\d) ---$", out, flags=re.M) == ["1", "2", "3"]
    texts = re.split(r"^--- sequence \d ---\n", out, flags=re.M)[1:]
    assert all(t.startswith(PROMPT) for t in texts) and len(set(texts)) == 3
    assert err.startswith("12 new tokens")


def test_greedy_ignores_the_seed_and_matches_a_loop_without_cache(tiny_lm: Path) -> None:
    """temperature 0 is argmax at every step: the same for any seed, and the same tokens as recomputing the whole
    sequence each step without the KV cache (the reference)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    a = run(GenerateConfig(prompt=PROMPT, model=str(tiny_lm), max_new_tokens=4, temperature=0, seed=0))
    b = run(GenerateConfig(prompt=PROMPT, model=str(tiny_lm), max_new_tokens=4, temperature=0, seed=1))
    assert a.new_token_ids == b.new_token_ids
    model = GPT2LMHeadModel.from_pretrained(tiny_lm).eval()
    ids = AutoTokenizer.from_pretrained(tiny_lm)(PROMPT, return_tensors="pt")["input_ids"]  # (1, T)
    with torch.no_grad():
        for _ in range(4):
            logits = model(input_ids=ids, use_cache=False).logits  # (1, T, V)
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert a.new_token_ids[0] == ids[0, -4:].tolist()


@pytest.mark.parametrize(("flags", "message"), [
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "   "], "--prompt is empty"),
    (["--temperature", "-0.5"], "--temperature must be 0 (greedy) or positive"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be 0 (off) or positive"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--num-return-sequences", "0"], "--num-return-sequences must be at least 1"),
    (["--num-return-sequences", "2", "--stream"], "--stream shows one sequence"),
    (["--num-return-sequences", "2", "--temperature", "0"], "--temperature 0 (greedy) gives one sequence"),
    (["--max-new-tokens", "200"], "exceeds the model's 128 positions"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
])
def test_bad_flags_give_an_error_line(tiny_lm: Path, capsys, flags: list[str], message: str) -> None:
    code, out, err = run_cli(["generate", "--prompt", PROMPT, "--model", str(tiny_lm), *flags], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_models_that_are_not_causal_lms_give_an_error_line(tiny_gpt2: Path, tmp_path: Path, capsys) -> None:
    # tiny_gpt2 is a GPT2ForSequenceClassification folder: AutoModelForCausalLM alone would load it.
    for folder, kind in [(tiny_gpt2, "GPT2ForSequenceClassification"), (minilm_dir(), "BertModel")]:
        code, out, err = run_cli(["generate", "--prompt", PROMPT, "--model", str(folder), "--stream"], capsys)
        assert code == 2 and out == ""
        assert err == f"error: --model {folder}: not a causal language model (its checkpoint is a {kind}); " \
                      "generate needs one such as GPT2LMHeadModel\n"
    code, _, err = run_cli(["generate", "--prompt", PROMPT, "--model", str(tmp_path / "nope")], capsys)
    assert code == 2 and err == f"error: --model {tmp_path / 'nope'}: no such folder\n"
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["generate", "--prompt", PROMPT, "--model", str(tmp_path / "empty")], capsys)
    assert code == 2 and err.startswith(f"error: --model {tmp_path / 'empty'}: could not load its config")


def test_the_library_raises_kdfast_errors(tiny_lm: Path) -> None:
    with pytest.raises(KdfastError, match="--prompt is empty"):
        run(GenerateConfig(prompt="", model=str(tiny_lm)))
