"""What the teacher says about the transfer set, computed once and cached: logits, sentence representations and,
for the word-level term, contextual word vectors.

**The cache** (``teacher_logits.safetensors`` in a student run folder), one safetensors file:

- ``logits`` (N, C) float32: the teacher's logits, one row per sentence, in the order of the sentences;
- ``features`` (N, d) float32: the vector the teacher's classification layer turned into those logits (BERT's
  pooled [CLS], GPT-2's last real token);
- with ``--word-weight`` > 0, also ``word_states`` (W, d) float16: for every word of every sentence as the student
  splits it (``kdfast.train.vocab.split_words``), the mean over the word's sub-word tokens of the teacher's hidden
  state at layer ``word_layer`` (metadata); ``word_offsets`` (N + 1,) int64: sentence i's words are rows
  ``word_offsets[i]:word_offsets[i + 1]``; ``word_valid`` (W,) bool: False for a word the teacher never saw
  (cut off by its maximum length, or no token of its own);
- metadata ``key``: sha256 of the teacher run's run.json and metrics.json and of the exact texts it read
  (``cache_key``); a cache whose key differs is not used.

Caching beats running the teacher during training: the word vectors come out of the same forward pass as the
logits, so they cost one teacher pass over the transfer set instead of one per epoch (the teacher reads about as
many sentences a second as the student trains on, docs/results.md), for about 0.8 KB per word on disk.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kdfast.batching import length_sorted_batches, pad_batch
from kdfast.errors import KdfastError, first_line
from kdfast.runs import METRICS_FILE, RUN_FILE, read_json
from kdfast.train.distributed import Context
from kdfast.train.vocab import MASK, word_spans

CACHE_FILE = "teacher_logits.safetensors"
WORD_KEYS = ("word_states", "word_offsets", "word_valid")


def teacher_fingerprint(teacher: Path) -> str:
    """Identifies a teacher run: its run.json (with its creation time) and metrics.json."""
    h = hashlib.sha256()
    for name in (RUN_FILE, METRICS_FILE):
        h.update((Path(teacher) / name).read_bytes())
    return h.hexdigest()


def cache_key(fingerprint: str, texts: list[str]) -> str:
    h = hashlib.sha256(fingerprint.encode())
    for s in texts:
        h.update(b"\0" + s.encode())
    return h.hexdigest()


def read_cache(path: Path, key: str, word_layer: int | None = None) -> dict[str, torch.Tensor] | None:
    """The cached ``logits`` (N, C), ``features`` (N, d) when present and, when ``word_layer`` is given and the cache
    holds that layer's word vectors, ``word_*``, at ``path`` when its key matches; else None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key:
                return None
            names = set(f.keys())  # a safetensors handle is not iterable
            out = {k: f.get_tensor(k).float() for k in names if k in ("logits", "features")}
            if word_layer is not None and meta.get("word_layer") == str(word_layer) and set(WORD_KEYS) <= names:
                out.update({k: f.get_tensor(k) for k in WORD_KEYS})
            return out
    except Exception:  # an unreadable cache is only a cache: score again
        return None


def write_cache(path: Path, scores: dict[str, torch.Tensor], key: str, teacher: Path, n_real: int,
                word_layer: int | None = None) -> None:
    """The teacher's logits and sentence representations in fp32 (a run that reads them back trains on exactly what
    the run that scored them did), its word vectors in fp16."""
    n = len(scores["logits"])
    meta = {"key": key, "teacher": str(teacher), "real": str(n_real), "synthetic": str(n - n_real)}
    if word_layer is not None and "word_states" in scores:
        meta["word_layer"] = str(word_layer)
    tensors = {k: (v.float() if k in ("logits", "features") else v).contiguous() for k, v in scores.items()}
    save_file(tensors, str(path), metadata=meta)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Each column to mean 0 and standard deviation 1 (a constant column to 0), so that every dimension of the
    teacher's representation weighs the same in the mean-squared error."""
    return (x - x.mean(0)) / x.std(0, unbiased=len(x) > 1).clamp(min=1e-6)


def column_stats(x: torch.Tensor, rows: torch.Tensor | None = None, chunk: int = 65536
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each column of ``x`` (fp16 allowed; summed in fp64), over ``rows`` (bool)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    square = torch.zeros(x.shape[1], dtype=torch.float64)
    n = 0
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].double()
        if rows is not None:
            part = part[rows[i : i + chunk]]
        total += part.sum(0)
        square += (part * part).sum(0)
        n += len(part)
    mean = total / max(n, 1)
    var = (square / max(n, 1) - mean * mean).clamp(min=0)
    return mean.float(), var.sqrt().float().clamp(min=1e-6)


def mask_token_of(tokenizer: Any) -> str:
    """The teacher's stand-in for the augmentation's ``[MASK]``: its mask token, else its unknown token (GPT-2)."""
    return getattr(tokenizer, "mask_token", None) or getattr(tokenizer, "unk_token", None) or ""


def teacher_texts(sentences: list[str], tokenizer: Any) -> list[str]:
    """What the teacher reads: the augmentation's ``[MASK]`` as the teacher's mask (or unknown) token."""
    mask = mask_token_of(tokenizer)
    return sentences if mask == MASK else [s.replace(MASK, mask) for s in sentences]


def teacher_view(sentence: str, mask: str) -> tuple[str, list[tuple[int, int]]]:
    """``sentence`` as the teacher reads it (``[MASK]`` as ``mask``) and where each of the student's words stands in
    that text: (text, [(start, end)] with one span per word of ``split_words(sentence)``)."""
    pieces, spans, pos, last = [], [], 0, 0
    for start, end in word_spans(sentence):
        word = sentence[start:end]
        shown = mask if word == MASK else word
        pos += start - last
        pieces += [sentence[last:start], shown]
        spans.append((pos, pos + len(shown)))
        pos += len(shown)
        last = end
    pieces.append(sentence[last:])
    return "".join(pieces), spans


def token_words(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """For each token (its character ``offsets`` in the text), the index of the word (``spans``, in order) it
    overlaps first, or -1 (special tokens, spaces)."""
    out, j = [], 0
    for a, b in offsets:
        if b <= a:
            out.append(-1)
            continue
        while j < len(spans) and spans[j][1] <= a:
            j += 1
        out.append(j if j < len(spans) and spans[j][0] < b else -1)
    return out


@torch.no_grad()
def teacher_pass(model: torch.nn.Module, tokenizer: Any, sentences: list[str], max_length: int,
                 device: torch.device, batch_size: int = 64, word_layer: int | None = None
                 ) -> dict[str, torch.Tensor]:
    """One forward pass of the teacher over ``sentences`` (batched by length): ``logits`` (N, C), ``features``
    (N, d) and, with ``word_layer``, ``word_states`` (W, d) fp16, ``word_offsets`` (N + 1,) and ``word_valid`` (W,)
    as the module docstring describes them."""
    from kdfast.train.teacher import classifier_layer, pooled_input

    model.eval()
    mask = mask_token_of(tokenizer)
    views = [teacher_view(s, mask) for s in sentences]
    words = word_layer is not None
    enc = tokenizer([t for t, _ in views], truncation=True, max_length=max_length, return_offsets_mapping=words)
    ids = enc["input_ids"]
    counts = torch.tensor([len(spans) for _, spans in views], dtype=torch.long)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    seen: dict[str, torch.Tensor] = {}
    hook = classifier_layer(model).register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    logits_out = torch.zeros(len(ids), model.config.num_labels)
    features_out: torch.Tensor | None = None
    states: torch.Tensor | None = None
    hits = torch.zeros(int(offsets[-1]))
    try:
        for idx in length_sorted_batches(ids, batch_size):
            input_ids, attn = pad_batch([ids[i] for i in idx], tokenizer.pad_token_id)
            out = model(input_ids=input_ids.to(device), attention_mask=attn.to(device), output_hidden_states=words)
            logits = out.logits.float()
            logits_out[idx] = logits.cpu()
            x = pooled_input(seen, logits, len(idx))
            if features_out is None:
                features_out = torch.zeros(len(ids), x.shape[-1])
            features_out[idx] = x.cpu()
            if words:
                h = out.hidden_states[word_layer].float().cpu()  # (B, T, d)
                if states is None:
                    states = torch.zeros(int(offsets[-1]), h.shape[-1])
                rows = torch.full(input_ids.shape, -1, dtype=torch.long)
                for b, i in enumerate(idx):
                    tw = torch.tensor(token_words(enc["offset_mapping"][i], views[i][1]), dtype=torch.long)
                    rows[b, : len(tw)] = torch.where(tw >= 0, tw + offsets[i], -1)
                keep = rows >= 0
                states.index_add_(0, rows[keep], h[keep])
                hits.index_add_(0, rows[keep], torch.ones(int(keep.sum())))
    finally:
        hook.remove()
    assert features_out is not None
    result = {"logits": logits_out, "features": features_out}
    if words:
        d = states.shape[1] if states is not None else features_out.shape[1]
        states = states if states is not None else torch.zeros(0, d)
        result.update(word_states=(states / hits.clamp(min=1).unsqueeze(1)).half(), word_offsets=offsets,
                      word_valid=hits > 0)
    return result


def concat_passes(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The results of ``teacher_pass`` on consecutive slices, as one result."""
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "word_offsets"}
    if "word_offsets" in parts[0]:
        counts = torch.cat([p["word_offsets"].diff() for p in parts])
        out["word_offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    return out


def gather_flat(ctx: Context, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Rank r's ``sizes[r]`` rows of a flat table, in rank order, on every rank (rows of unequal count per rank)."""
    import torch.distributed as dist

    dtype = local.dtype
    buf = torch.zeros((max(max(sizes), 1), *local.shape[1:]), dtype=torch.float32, device=ctx.comm_device)
    buf[: len(local)] = local.float().to(ctx.comm_device)
    parts = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(parts, buf)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).cpu().to(dtype)


def score_with_teacher(teacher: Path, sentences: list[str], ctx: Context, bar: Any, candidates: list[Path | None],
                       need_features: bool, word_layer: int | None, batch_size: int = 64
                       ) -> tuple[dict[str, torch.Tensor], str, bool]:
    """The teacher's ``logits`` (N, C), ``features`` (N, d) and, with ``word_layer``, its word vectors for
    ``sentences``, from the cache of one of ``candidates`` (run folders) when one matches: (scores, key, from_cache).
    Under torchrun each rank scores its contiguous shard and every rank gets all N rows: N devices take 1/N of the
    time."""
    from transformers import AutoTokenizer

    from kdfast.train.teacher import load_teacher

    merged = Path(teacher) / "merged"
    try:  # the tokenizer alone decides the texts, hence the key: no need to load the model on a cache hit
        tokenizer = AutoTokenizer.from_pretrained(str(merged))
    except Exception as e:
        raise KdfastError(f"{merged}: could not load the teacher's tokenizer ({first_line(e)})") from None
    if word_layer is not None and not getattr(tokenizer, "is_fast", False):
        raise KdfastError(f"{merged}: --word-weight needs a fast tokenizer (character offsets of its tokens)")
    key = cache_key(teacher_fingerprint(teacher), teacher_texts(sentences, tokenizer))
    for candidate in candidates:
        cached = read_cache(Path(candidate) / CACHE_FILE, key, word_layer) if candidate is not None else None
        if cached is None or (need_features and "features" not in cached):
            continue
        if word_layer is not None and "word_states" not in cached:
            continue
        bar.console.print(f"teacher logits: reusing {Path(candidate) / CACHE_FILE}")
        return cached, key, True
    model, tokenizer = load_teacher(teacher)
    model.to(ctx.device)
    max_length = read_json(Path(teacher) / METRICS_FILE)["config"].get("max_length", 64)
    shard = ctx.shard(len(sentences)) if len(sentences) >= ctx.world else range(len(sentences))
    mine = sentences[shard.start : shard.stop]
    parts: list[dict[str, torch.Tensor]] = []
    task = bar.add_task("teacher logits (once)", total=len(mine), loss=0.0, rate=0.0)
    start, chunk = time.perf_counter(), 2048
    for i in range(0, len(mine), chunk):
        parts.append(teacher_pass(model, tokenizer, mine[i : i + chunk], max_length, ctx.device, batch_size,
                                  word_layer))
        done = min(i + chunk, len(mine))
        bar.update(task, completed=done, rate=done / (time.perf_counter() - start))
    del model
    scores = concat_passes(parts)
    if len(mine) < len(sentences):  # every rank's shard, in order, on every rank
        offsets = scores.pop("word_offsets", None)
        flat = {k: scores.pop(k) for k in ("word_states", "word_valid") if k in scores}
        scores = {k: ctx.gather_rows(v, len(sentences)) for k, v in scores.items()}
        if offsets is not None:
            counts = ctx.gather_rows(offsets.diff(), len(sentences))
            sizes = [int(counts[r.start : r.stop].sum())
                     for r in (Context(rank=k, world=ctx.world).shard(len(sentences)) for k in range(ctx.world))]
            scores.update({k: gather_flat(ctx, v, sizes) for k, v in flat.items()})
            scores["word_offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    return scores, key, False
