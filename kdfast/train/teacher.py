"""The teacher: a Hugging Face sequence classifier (GPT-2 small by default) fine-tuned with our LoRA, on CoLA or
any single-sentence classification dataset (``kdfast.data``), two classes or more.

One stage, shaped setup → train → save (``run``). The report this project grew from trained GPT-2 + LoRA with
Adam at lr 1e-3 and predicted "acceptable" for every sentence (69.26% in-domain dev accuracy, MCC 0). The defaults
here (AdamW at 3e-4 with warm-up and linear decay, gradient clipping, best epoch kept by dev MCC) learn.

GPT-2 has no pad token: it pads with ``<|endoftext|>`` and ``GPT2ForSequenceClassification`` pools the logits of
the last token that is not padding, which is right under right padding (checked in tests/test_teacher.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from kdfast.batching import length_grouped_batches, length_sorted_batches, pad_batch, shuffled_batches
from kdfast.configs import TeacherConfig, check_model_name
from kdfast.data import Dataset, load_dataset, subsample
from kdfast.errors import KdfastError, first_line
from kdfast.metrics import best_summary, improves, score_logits
from kdfast.models import resolve_model
from kdfast.options import CONFIG_FILE, plain, write_config
from kdfast.plots import plot_curves
from kdfast.runs import (
    METRICS_FILE,
    check_out_dir,
    read_json,
    read_run_info,
    run_labels,
    staged_dir,
    write_json,
    write_run_info,
)
from kdfast.train.distributed import Context, setup
from kdfast.train.loggers import epoch_metrics, metric_logger
from kdfast.train.lora import (
    count_parameters,
    inject_lora,
    load_adapter_weights,
    mark_trainable,
    save_adapter,
    set_fused,
    unwrap_merged,
)
from kdfast.train.training import (
    adamw_with_warmup,
    check_finite,
    optimizer_step,
    progress_bar,
    seed_everything,
)
from kdfast.verdict import against_majority


def check_hub_model(name: str) -> None:
    """A Hub model name (not a folder) must be in the local cache or the Hub reachable: fail in seconds, not after
    half a minute of retries."""
    if Path(name).expanduser().is_dir():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except Exception:  # not a valid repo name, or no cache: the Hub decides
        pass
    from kdfast.data.hub import require_hub

    require_hub(f"--model {name}", "pass a local folder written by save_pretrained with --model DIR")


def load_tokenizer(name: str) -> Any:
    """A model's tokenizer with a pad token (GPT-2: eos) and right padding."""
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    check_model_name(name)
    check_hub_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise KdfastError(f"--model {name}: could not load its tokenizer ({first_line(e)})") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise KdfastError(f"--model {name}: its tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_backbone(name: str, labels: list[str] | None = None) -> tuple[nn.Module, Any]:
    """A sequence classifier and its tokenizer, with a pad token (GPT-2: eos) and right padding. With ``labels``, a
    head of ``len(labels)`` classes named by them (a new head when the checkpoint's has another size); without,
    the checkpoint's own head (a saved teacher)."""
    from transformers import AutoModelForSequenceClassification

    name = resolve_model(name)
    tokenizer = load_tokenizer(name)
    # A checkpoint with a head for another number of classes gets a new one (ignore_mismatched_sizes).
    named = {} if labels is None else {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                                       "label2id": {n: i for i, n in enumerate(labels)},
                                       "ignore_mismatched_sizes": True}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(name, **named)
    except Exception as e:
        raise KdfastError(f"--model {name}: could not load a sequence classifier ({first_line(e)})") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def encode(tokenizer: Any, sentences: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The layer that produces a sequence classifier's logits: its last ``nn.Linear`` with one output per label
    (BERT's ``classifier``, GPT-2's ``score``, RoBERTa's ``out_proj``)."""
    n = model.config.num_labels
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == n]
    if not layers:
        raise KdfastError(f"the teacher has no linear layer with {n} outputs to read its sentence representation from")
    return layers[-1]


def pooled_input(seen: dict[str, torch.Tensor], logits: torch.Tensor, rows: int) -> torch.Tensor:
    """The classification layer's input (B, d) for a batch of ``rows`` sentences whose ``logits`` it gave, from
    what a forward hook on it caught (``seen``: its input ``x`` and output ``y``). A head scored at every position
    (GPT-2's: (B, T, d)) yields the position the model pooled: the one whose scores are the logits."""
    x, y = seen["x"].float(), seen["y"].float()
    if x.dim() == 3:
        pos = (y - logits.unsqueeze(1)).abs().sum(-1).argmin(1)
        x = x[torch.arange(rows, device=x.device), pos]
    return x


@torch.no_grad()
def teacher_outputs(model: nn.Module, ids: list[list[int]], pad_id: int, device: torch.device,
                    batch_size: int = 64, features: bool = True) -> dict[str, torch.Tensor]:
    """``logits`` (N, C) and, with ``features``, ``features`` (N, d), in the order of ``ids``, batched by length:
    the teacher's logits and the vector its classification layer turned into them (BERT's pooled [CLS], GPT-2's
    last real token). A layer that scores every position (GPT-2's) gives, for each sentence, the position whose
    output is the model's logits."""
    model.eval()
    seen: dict[str, torch.Tensor] = {}
    hook = None
    if features:  # the classification layer's input, caught on its way in
        hook = classifier_layer(model).register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    logits_out, features_out = torch.zeros(len(ids), model.config.num_labels), None
    try:
        for idx in length_sorted_batches(ids, batch_size):
            input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
            logits_out[idx] = logits.cpu()
            if not features:
                continue
            x = pooled_input(seen, logits, len(idx))
            if features_out is None:
                features_out = torch.zeros(len(ids), x.shape[-1])
            features_out[idx] = x.cpu()
    finally:
        if hook is not None:
            hook.remove()
    return {"logits": logits_out} if features_out is None else {"logits": logits_out, "features": features_out}


def predict_logits(
    model: nn.Module, ids: list[list[int]], pad_id: int, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """Logits (N, C) in the order of ``ids``, batched by length. The student's ``predict_logits``
    (``kdfast.train.student``) takes the same arguments in the same order."""
    return teacher_outputs(model, ids, pad_id, device, batch_size, features=False)["logits"].numpy()


def sharded_logits(ctx: Context, model: nn.Module, ids: list[list[int]], pad_id: int) -> np.ndarray:
    """``predict_logits`` over all of ``ids``, each rank scoring its shard: the same (N, C) on every rank."""
    shard = ctx.shard(len(ids))
    local = predict_logits(model, ids[shard.start : shard.stop], pad_id, ctx.device)
    return ctx.gather_rows(torch.from_numpy(local), len(ids)).numpy()


def score_dev(logits: np.ndarray, data: Dataset) -> dict[str, float]:
    """Loss, accuracy, MCC and macro-F1 on dev (and on its two halves, for CoLA)."""
    return score_logits(logits, *data.dev_targets())


def run(cfg: TeacherConfig) -> dict[str, Any]:
    """Train the teacher and write its run folder; returns the contents of ``metrics.json``."""
    # --- setup
    cfg.validate()
    cfg.out = Path(cfg.out)
    check_out_dir(cfg.out, cfg.overwrite)
    ctx = setup(cfg.device, cfg.precision, cfg.batch_size, cfg.grad_accum)
    device = ctx.device
    generator = seed_everything(cfg.seed)
    data = load_dataset(cfg.data, cfg.dev_data, cfg.text_column, cfg.label_column)
    train = subsample(data.train, cfg.max_train_samples, cfg.seed)
    model, tokenizer = load_backbone(cfg.model, data.labels)
    try:
        inject_lora(model, cfg.rank, cfg.alpha, cfg.lora_dropout)
    except ValueError as e:
        raise KdfastError(f"--model {cfg.model}: {e}") from None
    mark_trainable(model)
    set_fused(model, cfg.fused_lora)
    model.to(device)
    trainable, total = count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    ddp = ctx.wrap(model)  # DDP over the LoRA factors and the head; model itself with one process
    scaler = ctx.scaler()
    train_ids = encode(tokenizer, [e.text for e in train], cfg.max_length)
    train_labels = torch.tensor([e.label for e in train])
    dev_ids = encode(tokenizer, [e.text for e in data.dev], cfg.max_length)
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    optimizer, scheduler = adamw_with_warmup(
        params, cfg.lr, steps_per_epoch * cfg.epochs, cfg.warmup_ratio, cfg.weight_decay
    )

    # --- train
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] = {}
    step_no = 0  # optimizer steps so far: the x-axis of --report-to
    with progress_bar(cfg.progress, ctx.master) as bar, metric_logger(cfg.report_to, cfg.out, plain(cfg),
                                                                        ctx.master) as log:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            task = bar.add_task(f"teacher epoch {epoch}/{cfg.epochs}", total=len(train), loss=0.0, rate=0.0)
            loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
            if cfg.group_by_length:
                batches = length_grouped_batches([len(ids) for ids in train_ids], cfg.batch_size, generator)
            else:
                batches = shuffled_batches(len(train), cfg.batch_size, generator)
            for step, batch in enumerate(batches):  # the same global batches on every rank; each takes its slice
                parts = ctx.micro_batches(batch, cfg.grad_accum)
                step_loss, step_rows = 0.0, 0
                for k, part in enumerate(parts):
                    idx = part or batch[:1]  # an empty slice still runs (every rank joins DDP's sync), at weight 0
                    input_ids, mask = pad_batch([train_ids[i] for i in idx], tokenizer.pad_token_id)
                    labels = train_labels[idx].to(device)
                    with ctx.sync(ddp, last=k == len(parts) - 1), ctx.autocast():
                        logits = ddp(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                        loss = F.cross_entropy(logits.float(), labels, reduction="sum")  # summed over the rows
                        check_finite(loss / len(idx), epoch, step)
                        # rows' sum × N / B: DDP's mean over ranks then gives the mean over the global batch
                        scaler.scale(loss * ctx.weight(len(part), len(batch))).backward()
                    if part:
                        step_loss += loss.item()
                        step_rows += len(part)
                        correct += int((logits.argmax(-1) == labels).sum())
                lr = optimizer.param_groups[0]["lr"]
                optimizer_step(optimizer, scheduler, scaler, params, cfg.max_grad_norm)
                loss_sum, seen, step_no = loss_sum + step_loss, seen + step_rows, step_no + 1
                log.log_dict({"train/loss": step_loss / max(step_rows, 1), "train/lr": lr}, step_no)
                rate = seen * ctx.world / (time.perf_counter() - start)
                bar.update(task, advance=len(batch), loss=loss_sum / max(seen, 1), rate=rate)
            loss_sum, correct, seen = ctx.all_sum(loss_sum, correct, seen)  # the epoch over every rank's slices
            seconds = time.perf_counter() - start
            report = score_dev(sharded_logits(ctx, model, dev_ids, tokenizer.pad_token_id), data)
            history.append({"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                            "train_sentences_per_s": seen / seconds, **report})
            log.log_dict(epoch_metrics(history[-1]), step_no)
            bar.console.print(
                f"epoch {epoch}: train loss {loss_sum / seen:.4f}, dev acc {report['dev_acc']:.4f}, "
                f"dev MCC {report['dev_mcc']:.4f}, dev F1 {report['dev_f1']:.4f}"
            )
            if improves(report, best, cfg.select_by):  # the same dev logits on every rank: the same best epoch
                best = best_summary(epoch, report)
                best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        assert best is not None
        log.set_final({f"best/{k.removeprefix('dev_')}": v for k, v in best.items()})
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in best_state:
                p.copy_(best_state[n])

    # --- save
    metrics = {
        "history": history,
        "best": best,
        "trainable_params": trainable,
        "total_params": total,
        "config": {**asdict(cfg), "out": str(cfg.out)},
        "data": data.summary(train),
        "processes": ctx.world,
    }
    metrics["verdict"] = against_majority(best, data.dev_targets()[0], data.labels, "the teacher",
                                          steps_per_epoch * cfg.epochs, cfg.lr)
    if not ctx.master:  # rank 0 alone writes the run folder
        return metrics
    with staged_dir(cfg.out, cfg.overwrite) as tmp:
        save_adapter(model.cpu(), tmp / "adapter", cfg.model, cfg.rank, cfg.alpha, cfg.lora_dropout)
        merged = unwrap_merged(model)
        merged.save_pretrained(tmp / "merged")
        tokenizer.save_pretrained(tmp / "merged")
        write_json(tmp / METRICS_FILE, metrics)
        write_config(tmp / CONFIG_FILE, cfg)  # what --config reads back: the run again
        plot_curves(history, tmp / "curves.png", f"LoRA teacher ({cfg.model}, r={cfg.rank}) on {data.source}")
        write_run_info(tmp, "teacher", labels=data.labels)
    return metrics


def load_teacher(run_dir: Path, merged: bool = True) -> tuple[nn.Module, Any]:
    """The teacher of a run folder on the CPU, in eval mode: the merged model, or the base model with its LoRA
    adapter unmerged (which needs the base model named in the run's config)."""
    run_dir = Path(run_dir)
    read_run_info(run_dir, "teacher")
    if merged:
        model, tokenizer = load_backbone(str(run_dir / "merged"))
    else:
        cfg = read_json(run_dir / METRICS_FILE)["config"]
        model, tokenizer = load_backbone(cfg["model"], run_labels(run_dir))
        inject_lora(model, cfg["rank"], cfg["alpha"], cfg["lora_dropout"])
        try:
            load_adapter_weights(model, load_file(str(run_dir / "adapter" / "adapter_model.safetensors")))
        except (ValueError, OSError) as e:
            raise KdfastError(f"{run_dir / 'adapter'}: {e}") from None
    return model.eval(), tokenizer
