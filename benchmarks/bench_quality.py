"""The teacher against what a user would otherwise do, on the same backbone and data: dev MCC per epoch.

Three ways to fine-tune one Hugging Face classifier backbone on one dataset, side by side, several seeds each:

- ``full``: full fine-tuning as the transformers course writes it: every weight trains, ``torch.optim.AdamW``,
  ``transformers.get_linear_schedule_with_warmup`` (10% warm-up, linear decay to 0), weight decay 0.01, gradient
  clipping at 1.0, batch 32, a dev evaluation after every epoch.
- ``peft``: PEFT's LoRA with the same targets, rank, alpha, dropout and trained head (``modules_to_save``) as
  kdfast's, in the same loop as ``full``.
- ``kdfast``: ``kdfast.train.teacher.run`` (what ``kdfast train lora`` calls) with its defaults, only ``--model``,
  ``--data`` and ``--seed`` given (plus any ``--kdfast-arg`` overrides, to measure alternatives).

All three batch sentences of similar length together (Trainer's ``group_by_length``, kdfast's
``--group-by-length``): the same batches for the same seed, and about half the compute on CoLA.
Each run writes ``OUT/runs/<label>-seed<k>.json`` (per-epoch dev scores, training seconds) and is skipped when that
file exists, so an interrupted sweep resumes; ``--report`` gathers every run file into ``OUT/quality.{json,md}``:
mean and standard deviation over seeds of the best epoch's and the last epoch's dev MCC, and training time.

    python benchmarks/bench_quality.py --model minilm --method full --lr 5e-5 --epochs 5 --seeds 0,1,2
    python benchmarks/bench_quality.py --model minilm --method peft --seeds 0,1,2
    python benchmarks/bench_quality.py --model minilm --method kdfast --seeds 0,1,2
    python benchmarks/bench_quality.py --report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kdfast.bench.harness import git_commit, write_json, write_text
from kdfast.testing import minilm_dir

RESULTS = Path(__file__).resolve().parent / "results" / "quality"


def resolve_model(name: str) -> str:
    return str(minilm_dir()) if name == "minilm" else name


def run_hf_loop(method: str, model_name: str, data_name: str, seed: int, epochs: int, lr: float, rank: int,
                alpha: float, dropout: float, batch_size: int, max_length: int) -> dict[str, Any]:
    """``full`` or ``peft``: the plain transformers training loop a user would write."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from kdfast.batching import length_grouped_batches, length_sorted_batches, pad_batch
    from kdfast.data import load_dataset
    from kdfast.metrics import score_logits
    from kdfast.train.lora import HEAD_NAMES, POOLER_NAME, target_module_names
    from kdfast.train.training import seed_everything

    generator = seed_everything(seed)
    data = load_dataset(data_name)
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    labels = data.labels
    model = AutoModelForSequenceClassification.from_pretrained(
        model_name, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, ignore_mismatched_sizes=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    if method == "peft":
        from peft import LoraConfig, get_peft_model

        # kdfast's targets (every block's projections) and its trained head (the classifier, and BERT's pooler)
        targets = target_module_names(model)
        heads = [n for n, _ in model.named_children() if n in HEAD_NAMES]
        pooler = [n for n, _ in model.named_modules() if n.endswith(POOLER_NAME) and n.count(".") <= 1]
        model = get_peft_model(model, LoraConfig(
            task_type="SEQ_CLS", r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
            modules_to_save=heads + [p.split(".")[-1] for p in pooler]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_ids = tokenizer([e.text for e in data.train], truncation=True, max_length=max_length)["input_ids"]
    train_labels = torch.tensor([e.label for e in data.train])
    dev_ids = tokenizer([e.text for e in data.dev], truncation=True, max_length=max_length)["input_ids"]
    params = [p for p in model.parameters() if p.requires_grad]
    steps = math.ceil(len(train_ids) / batch_size) * epochs
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    history: list[dict[str, Any]] = []
    seconds = 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        for batch in length_grouped_batches([len(s) for s in train_ids], batch_size, generator):
            ids, mask = pad_batch([train_ids[i] for i in batch], tokenizer.pad_token_id)
            loss = F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, train_labels[batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
        model.eval()
        logits = torch.zeros(len(dev_ids), len(labels))
        with torch.no_grad():
            for idx in length_sorted_batches(dev_ids, 64):
                ids, mask = pad_batch([dev_ids[i] for i in idx], tokenizer.pad_token_id)
                logits[idx] = model(input_ids=ids, attention_mask=mask).logits.float()
        report = score_logits(logits.numpy(), *data.dev_targets())
        history.append({"epoch": epoch, **report})
        print(f"{method} seed {seed} epoch {epoch}: dev MCC {report['dev_mcc']:.4f} acc {report['dev_acc']:.4f}",
              flush=True)
    return {"history": history, "train_seconds": seconds, "trainable_params": trainable}


def run_kdfast(model_name: str, data_name: str, seed: int, overrides: dict[str, Any],
               keep: Path | None = None) -> dict[str, Any]:
    """``kdfast train lora --model M --data D --seed S`` with its defaults (and ``overrides``), through the library;
    its run folder is kept as ``keep`` when given."""
    from kdfast.train.teacher import TeacherConfig, run

    with tempfile.TemporaryDirectory() as tmp:
        out = keep if keep is not None else Path(tmp) / "teacher"
        cfg = TeacherConfig(model=model_name, data=data_name, seed=seed, out=out, progress=False, **overrides)
        start = time.perf_counter()
        metrics = run(cfg)
        elapsed = time.perf_counter() - start
    history = [{k: v for k, v in h.items() if k.startswith(("epoch", "dev_"))} for h in metrics["history"]]
    n_train = int(metrics["data"]["train"])
    train_seconds = sum(n_train / h["train_sentences_per_s"] for h in metrics["history"])
    return {"history": history, "train_seconds": train_seconds, "wall_seconds": elapsed,
            "trainable_params": metrics["trainable_params"], "config": metrics["config"]}


def from_run(run_dir: Path) -> dict[str, Any]:
    """A result from an existing ``kdfast train lora`` run folder (its ``metrics.json``), as ``run_kdfast`` makes."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = [{k: v for k, v in h.items() if k.startswith(("epoch", "dev_"))} for h in metrics["history"]]
    n_train = int(metrics["data"]["train"])
    train_seconds = sum(n_train / h["train_sentences_per_s"] for h in metrics["history"])
    return {"history": history, "train_seconds": train_seconds, "trainable_params": metrics["trainable_params"],
            "config": metrics["config"], "imported_from": str(run_dir)}


def parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    import statistics

    best = [max(h["dev_mcc"] for h in r["history"]) for r in runs]
    last = [r["history"][-1]["dev_mcc"] for r in runs]
    best_epoch = [max(r["history"], key=lambda h: h["dev_mcc"])["epoch"] for r in runs]

    def sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    return {"seeds": [r["seed"] for r in runs], "best_mcc": best, "last_mcc": last, "best_epoch": best_epoch,
            "best_mean": statistics.mean(best), "best_sd": sd(best), "last_mean": statistics.mean(last),
            "last_sd": sd(last), "epochs": len(runs[0]["history"]),
            "last_acc_mean": statistics.mean(r["history"][-1]["dev_acc"] for r in runs),
            "train_minutes_mean": statistics.mean(r["train_seconds"] for r in runs) / 60,
            "trainable_params": runs[0]["trainable_params"]}


def report(out: Path) -> None:
    groups: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        groups.setdefault(run["label"], []).append(run)
    rows = {label: summarise(sorted(runs, key=lambda r: r["seed"])) for label, runs in groups.items()}
    write_json(out / "quality.json", rows)
    lines = ["| method | seeds | epochs | best-epoch dev MCC, mean ± sd | last-epoch dev MCC, mean ± sd | "
             "last-epoch dev acc | best epochs | trainable params | train min/run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, s in sorted(rows.items(), key=lambda kv: -kv[1]["last_mean"]):
        lines.append(f"| {label} | {len(s['seeds'])} | {s['epochs']} | {s['best_mean']:.4f} ± {s['best_sd']:.4f} | "
                     f"{s['last_mean']:.4f} ± {s['last_sd']:.4f} | {s['last_acc_mean']:.4f} | "
                     f"{','.join(map(str, s['best_epoch']))} | {s['trainable_params']:,} | "
                     f"{s['train_minutes_mean']:.1f} |")
    write_text(out / "quality.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", help="minilm (the pip-installed MiniLM-L6), a folder or a Hub name")
    ap.add_argument("--data", default="cola")
    ap.add_argument("--method", choices=["full", "peft", "kdfast"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=5, help="full and peft (kdfast: its default, or --kdfast-arg)")
    ap.add_argument("--lr", type=float, default=5e-5, help="full and peft")
    ap.add_argument("--rank", type=int, default=16, help="peft")
    ap.add_argument("--alpha", type=float, default=32.0, help="peft")
    ap.add_argument("--dropout", type=float, default=0.1, help="peft")
    ap.add_argument("--batch-size", type=int, default=32, help="full and peft")
    ap.add_argument("--max-length", type=int, default=64, help="full and peft")
    ap.add_argument("--kdfast-arg", action="append", default=[], metavar="FIELD=VALUE",
                    help="a TeacherConfig field to set for --method kdfast (default: none, the bare command)")
    ap.add_argument("--label", help="the row's name (default: the method and its settings)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--from-run", type=Path, help="--method kdfast: take the one --seeds run from this run folder, "
                    "trained by `kdfast train lora` with the same configuration (checked)")
    ap.add_argument("--keep-runs", type=Path, help="--method kdfast: keep each run folder under this folder")
    ap.add_argument("--report", action="store_true", help="only gather the run files into a table")
    args = ap.parse_args()
    if args.report:
        report(args.out)
        return
    if args.method is None:
        ap.error("--method is required unless --report")
    import torch

    from kdfast.train.teacher import TeacherConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    model = resolve_model(args.model)
    overrides = dict(kv.split("=", 1) for kv in args.kdfast_arg)
    overrides = {k.replace("-", "_"): parse_value(v) for k, v in overrides.items()}
    if args.label:
        label = args.label
    elif args.method == "kdfast":
        label = "kdfast" + "".join(f" {k}={v}" for k, v in sorted(overrides.items())) if overrides else "kdfast (bare)"
    elif args.method == "peft":
        label = f"peft r={args.rank} a={args.alpha:g} lr={args.lr:g} {args.epochs}ep"
    else:
        label = f"full lr={args.lr:g} {args.epochs}ep"
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        path = args.out / "runs" / f"{label.replace(' ', '_').replace('/', '-')}-seed{seed}.json"
        if path.exists():
            print(f"{path.name}: done, skipped")
            continue
        if args.method == "kdfast" and args.from_run:
            result = from_run(args.from_run)
            wanted = {**asdict(TeacherConfig()), **overrides, "seed": seed}
            differ = {k: (v, wanted[k]) for k, v in result["config"].items()
                      if k in wanted and k not in ("model", "data", "out", "progress", "overwrite") and v != wanted[k]}
            if differ:
                raise SystemExit(f"error: {args.from_run} was trained with other settings (theirs, wanted): {differ}")
        elif args.method == "kdfast":
            keep = args.keep_runs / path.stem if args.keep_runs else None
            result = run_kdfast(model, args.data, seed, overrides, keep)
        else:
            result = run_hf_loop(args.method, model, args.data, seed, args.epochs, args.lr, args.rank, args.alpha,
                                 args.dropout, args.batch_size, args.max_length)
        result.update(label=label, method=args.method, seed=seed, model=args.model, data=args.data,
                      threads=torch.get_num_threads(), load_average=os.getloadavg(), commit=git_commit())
        write_json(path, result)
        best = max(h["dev_mcc"] for h in result["history"])
        print(f"{label} seed {seed}: best dev MCC {best:.4f}, last {result['history'][-1]['dev_mcc']:.4f}, "
              f"{result['train_seconds'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
