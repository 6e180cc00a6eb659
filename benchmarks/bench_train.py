"""Training throughput of our LoRA against PEFT's LoRA: same backbone, batches, rank, targets and optimiser.

    python benchmarks/bench_train.py                      # GPT-2 small (124M, random weights: same cost)
    python benchmarks/bench_train.py --model DIR          # any local sequence-classification folder

Both models train on the same real CoLA batches (tokenised once), with the same LoRA targets (every block's
attention and MLP projections), rank, alpha and dropout, and AdamW. Rounds alternate between the two so that a
noisy, shared machine slows both alike; the median sentences/s over the rounds is reported, and the ratio
ours / PEFT (>= 1 means ours is no slower). A row is appended to benchmarks/results/train.csv.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from kdfast.batching import pad_batch
from kdfast.bench.harness import append_csv, git_commit, now
from kdfast.data import load_dataset
from kdfast.testing import gpt2_tokenizer, random_gpt2_classifier
from kdfast.train.lora import inject_lora, mark_trainable, target_module_names

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train.csv"
FIELDS = ["date", "commit", "machine", "torch", "model", "batch_size", "rank", "threads", "ours_sent_per_s",
          "peft_sent_per_s", "ratio"]


def build_models(args: argparse.Namespace) -> tuple[nn.Module, nn.Module, object]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if args.model:
        base = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    else:
        tokenizer = gpt2_tokenizer()
        base = random_gpt2_classifier(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base.config.pad_token_id = tokenizer.pad_token_id
    targets = target_module_names(base)

    ours = copy.deepcopy(base)
    inject_lora(ours, args.rank, args.alpha, args.dropout, targets)
    mark_trainable(ours)

    fan_in_fan_out = type(base).__name__.startswith("GPT2")
    config = LoraConfig(task_type="SEQ_CLS", r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                        target_modules=targets, fan_in_fan_out=fan_in_fan_out)
    theirs = get_peft_model(copy.deepcopy(base), config)
    return ours, theirs, tokenizer


def sentences_per_second(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                         optimizer: torch.optim.Optimizer) -> float:
    model.train()
    n, start = 0, time.perf_counter()
    for ids, mask, labels in batches:
        loss = nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n += len(labels)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="local model folder (default: GPT-2 small with random weights)")
    parser.add_argument("--data", default="cola")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="training steps per round and model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ours, theirs, tokenizer = build_models(args)
    sentences = [e.text for e in load_dataset(args.data).train]
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(sentences), generator=g).tolist()
    batches = []
    for i in range(args.steps + 1):  # one extra batch for the warm-up step
        idx = order[i * args.batch_size : (i + 1) * args.batch_size]
        ids, mask = pad_batch(tokenizer([sentences[j] for j in idx], truncation=True, max_length=64)["input_ids"],
                              tokenizer.pad_token_id)
        batches.append((ids, mask, torch.randint(0, 2, (len(idx),), generator=g)))
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for name, m in (("ours", ours), ("peft", theirs))}
    trainable = {name: sum(p.numel() for p in m.parameters() if p.requires_grad)
                 for name, m in (("ours", ours), ("peft", theirs))}
    assert trainable["ours"] == trainable["peft"], trainable

    rates: dict[str, list[float]] = {"ours": [], "peft": []}
    for name, model in (("ours", ours), ("peft", theirs)):  # warm-up, not timed
        sentences_per_second(model, batches[:1], optimizers[name])
    for r in range(args.rounds):
        pair = [("ours", ours), ("peft", theirs)]
        for name, model in pair if r % 2 == 0 else pair[::-1]:
            rates[name].append(sentences_per_second(model, batches[1:], optimizers[name]))
    ours_rate, peft_rate = statistics.median(rates["ours"]), statistics.median(rates["peft"])
    ratio = ours_rate / peft_rate
    model_name = args.model or "gpt2-small (random weights)"
    print(f"model {model_name}, batch {args.batch_size}, rank {args.rank}, {trainable['ours']:,} trainable, "
          f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps")
    print(f"ours {ours_rate:8.1f} sentences/s   (rounds: {', '.join(f'{x:.1f}' for x in rates['ours'])})")
    print(f"peft {peft_rate:8.1f} sentences/s   (rounds: {', '.join(f'{x:.1f}' for x in rates['peft'])})")
    print(f"ours / peft = {ratio:.3f}  ({'no slower' if ratio >= 0.97 else 'SLOWER'}; within 3% counts as even)")

    row = {"date": now("%Y-%m-%d"), "commit": git_commit(),
           "machine": f"{platform.machine()} {platform.processor()}".strip(), "torch": torch.__version__,
           "model": model_name, "batch_size": args.batch_size, "rank": args.rank, "threads": args.threads,
           "ours_sent_per_s": f"{ours_rate:.2f}", "peft_sent_per_s": f"{peft_rate:.2f}", "ratio": f"{ratio:.3f}"}
    append_csv(RESULTS, [row], FIELDS)


if __name__ == "__main__":
    main()
