"""Text generation with a causal language model (GPT-2 small by default): the report's Problem 0.

``run`` loads the model, samples a continuation of the prompt with ``model.generate`` (KV cache on, so each new
token costs one forward pass over one position) and measures the speed. Sampling follows the usual order:
logits / temperature → keep the ``top_k`` largest → keep the smallest set whose probability reaches ``top_p`` →
sample. ``temperature 0`` means greedy decoding (argmax at every step; top-k, top-p and the seed then play no part).

The same seed gives the same text: the seed is set right before generation, and streaming does not change what is
sampled, only when it is shown.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdfast.configs import GenerateConfig
from kdfast.errors import KdfastError, first_line
from kdfast.train.teacher import check_model_name
from kdfast.train.training import resolve_device, seed_everything

# Decoding options shared by the streamed and the whole-text paths, so that both give the same characters.
_DECODE = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}




@dataclass
class GenerateResult:
    prompt: str
    continuations: list[str]  # one per sequence, without the prompt
    new_token_ids: list[list[int]]  # the tokens generated for each sequence, eos included when it ended one
    seconds: float  # wall time of generation alone (not loading, not tokenising the prompt)
    device: str

    @property
    def texts(self) -> list[str]:
        return [self.prompt + c for c in self.continuations]

    @property
    def new_tokens(self) -> int:
        return sum(len(ids) for ids in self.new_token_ids)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


def _causal_lm_classes() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def load_causal_lm(name: str) -> tuple[nn.Module, Any]:
    """A causal LM and its tokenizer, refusing checkpoints of other heads.

    The check reads ``architectures`` in config.json before any weights: ``AutoModelForCausalLM`` would otherwise
    load a GPT2ForSequenceClassification folder as a GPT2LMHeadModel without complaint (its LM head is tied to the
    embeddings, so nothing is missing) and a BERT encoder as a BertLMHeadModel with a random head.
    """
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    check_model_name(name)
    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as e:
        raise KdfastError(f"--model {name}: could not load its config ({first_line(e)})") from None
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not set(architectures) & _causal_lm_classes():
        raise KdfastError(f"--model {name}: not a causal language model (its checkpoint is a "
                          f"{', '.join(architectures)}); generate needs one such as GPT2LMHeadModel")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise KdfastError(f"--model {name}: could not load its tokenizer ({first_line(e)})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(name, config=config)
    except Exception as e:
        raise KdfastError(f"--model {name}: could not load a causal language model ({first_line(e)})") from None
    return model.eval(), tokenizer


def count_new_tokens(new_ids: torch.Tensor, eos_ids: set[int]) -> list[int]:
    """Tokens each sequence really generated: ``generate`` pads a sequence that ended early (with pad = eos for
    GPT-2), so a row counts up to and including its first eos. new_ids: (N, T_new)."""
    counts = []
    for row in new_ids.tolist():
        ends = [i for i, token in enumerate(row) if token in eos_ids]
        counts.append(ends[0] + 1 if ends else len(row))
    return counts


def _eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    """The tokens ``generate`` stops at: the generation config's (some models list several), else the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    return set() if ids is None else {ids} if isinstance(ids, int) else set(ids)


def _stdout_writer(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _streamer(tokenizer: Any, on_text: Callable[[str], None]) -> Any:
    """transformers' TextStreamer (decodes incrementally, holds back text that may still change, such as an
    incomplete UTF-8 character) with its output sent to ``on_text`` instead of print, and no final newline."""
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return _Streamer(tokenizer, skip_prompt=True, **_DECODE)


@torch.no_grad()
def run(cfg: GenerateConfig, on_text: Callable[[str], None] | None = None) -> GenerateResult:
    """Continue ``cfg.prompt``. With ``cfg.stream`` the continuation is passed to ``on_text`` (default: written to
    stdout) piece by piece as it is decoded; the pieces join to ``result.continuations[0]``."""
    # --- setup
    cfg.validate()
    device = resolve_device(cfg.device)
    model, tokenizer = load_causal_lm(cfg.model)
    model.to(device)
    encoded = tokenizer(cfg.prompt, return_tensors="pt")
    input_ids = encoded["input_ids"].to(device)  # (1, T_prompt)
    attention_mask = encoded["attention_mask"].to(device)
    prompt_len = input_ids.shape[1]
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and prompt_len + cfg.max_new_tokens > limit:
        raise KdfastError(f"the prompt ({prompt_len} tokens) plus --max-new-tokens {cfg.max_new_tokens} exceeds "
                          f"the model's {limit} positions")
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id  # GPT-2: eos
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p}
        if cfg.temperature > 0 else {"do_sample": False}
    )
    if cfg.ignore_eos:  # eos gets logit -inf until max_new_tokens are out, so generation never stops early
        sampling["min_new_tokens"] = cfg.max_new_tokens
    streamer = _streamer(tokenizer, on_text or _stdout_writer) if cfg.stream else None

    # --- generate
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=cfg.max_new_tokens,
        num_return_sequences=cfg.num_return_sequences, pad_token_id=pad_id, use_cache=True, streamer=streamer,
        **sampling,
    )  # (N, T_prompt + T_new)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    # --- decode
    new_ids = output[:, prompt_len:].cpu()  # (N, T_new)
    counts = count_new_tokens(new_ids, eos_ids)
    ids = [row[:n] for row, n in zip(new_ids.tolist(), counts, strict=True)]
    continuations = [tokenizer.decode(row, **_DECODE) for row in ids]
    return GenerateResult(prompt=cfg.prompt, continuations=continuations, new_token_ids=ids, seconds=seconds,
                          device=str(device))
