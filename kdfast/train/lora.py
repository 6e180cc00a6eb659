"""LoRA, ours: low-rank adapters on a frozen Hugging Face model.

LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) freezes the pretrained weight W and learns a low-rank
update B·A next to it::

    x ──┬──────────────► W (frozen; [out, in]) ────────────────────┐
        │                                                           + ──► y
        └─► dropout ─► A [r, in] ─► B [out, r] ─► × alpha/r ────────┘
                       (kaiming)    (zeros, so B·A = 0 at step 0)

    y = x·Wᵀ + b + (alpha/r) · dropout(x)·Aᵀ·Bᵀ

Only A, B (and the task head) train. ``merge()`` folds (alpha/r)·B·A into W so inference costs nothing extra.

GPT-2 builds its projections from transformers' ``Conv1D``, whose weight is stored transposed, [in, out], where
``nn.Linear`` stores [out, in]. ``LoRALinear`` wraps both; A and B keep PEFT's shapes ([r, in] and [out, r]) for
either, so adapters save in PEFT's format and ``peft.PeftModel.from_pretrained`` loads them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

# The heads transformers' sequence classifiers put on top of the backbone (PEFT's SEQ_CLS modules_to_save).
HEAD_NAMES = ("score", "classifier")
# BERT-style classifiers read the pooler (dense + tanh over the first token) before the classifier: it is part of
# the classification head, and trains with it. Pretraining trains it only through next-sentence prediction, and
# some checkpoints carry an untrained one (MiniLM-L6's has zero bias and weights of std 0.009): frozen, it is a
# fixed random projection that LoRA has to learn through, which on CoLA takes epochs longer.
POOLER_NAME = "pooler"
# A projection inside a repeated block: a numeric index in its qualified name (transformer.h.3.attn.c_attn,
# bert.encoder.layer.3.attention.self.query, model.layers.3.mlp.up_proj, ...).
_BLOCK_INDEX = re.compile(r"\.\d+\.")


class LoRALinear(nn.Module):
    """``base(x) + scaling · dropout(x)·Aᵀ·Bᵀ`` around a frozen ``nn.Linear`` or GPT-2 ``Conv1D``."""

    def __init__(self, base: nn.Linear | Conv1D, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base
        self.fan_in_fan_out = isinstance(base, Conv1D)  # Conv1D stores W as [in, out]
        if self.fan_in_fan_out:
            in_features, out_features = base.weight.shape
        else:
            out_features, in_features = base.weight.shape
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.scaling = alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as in LoRA's reference code
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.use_fused = False  # run the fused Triton kernel where it runs (kdfast.kernels.lora_matmul)
        self._unmerged_weight: torch.Tensor | None = None

    def delta_weight(self) -> torch.Tensor:
        """scaling·B·A in fp32, laid out like the base weight ([out, in], or [in, out] for Conv1D)."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        if self.use_fused and (not self.training or isinstance(self.dropout, nn.Identity)):
            # One fused Triton kernel for x·W + b + s·(x·A)·B (dropout, when it is active, needs the plain path),
            # on CUDA, and on CPU tensors under Triton's interpreter (the tests).
            from kdfast.kernels.lora_matmul import fused_lora_supported, lora_matmul

            if fused_lora_supported(x):
                layout = "conv1d" if self.fan_in_fan_out else "linear"
                return lora_matmul(x, self.base.weight, self.lora_A, self.lora_B, self.scaling, self.base.bias,
                                   weight_layout=layout)
        # (.., in) -> (.., r) -> (.., out): never materialise B·A while training. F.linear, not x @ A.T: its
        # forward and backward run as single GEMMs on the weight as stored (GPT-2 small trained 8% slower with @).
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + scaling·B·A, computed in fp32. Merging twice is a no-op."""
        if self.merged:
            return
        w = self.base.weight
        self._unmerged_weight = w.detach().clone()
        w.copy_((w.float() + self.delta_weight()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original weight exactly (a saved copy, not W − B·A, which would round)."""
        if not self.merged:
            return
        assert self._unmerged_weight is not None
        self.base.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        kind = "Conv1D" if self.fan_in_fan_out else "Linear"
        return f"{kind}({self.in_features}→{self.out_features}), rank={self.rank}, scaling={self.scaling:g}"


def target_module_names(model: nn.Module) -> list[str]:
    """The attention and feed-forward projections of every block: each Linear/Conv1D with a block index in its
    name, outside the classification head (GPT-2: c_attn, attn.c_proj, c_fc, mlp.c_proj; BERT: query, key, value,
    attention.output.dense, intermediate.dense, output.dense; the pooler is not in a block)."""
    names = []
    for name, module in model.named_modules():
        in_block = _BLOCK_INDEX.search(f".{name}.") and name.split(".")[0] not in HEAD_NAMES
        if isinstance(module, (nn.Linear, Conv1D)) and in_block:
            names.append(name)
    return names


def inject_lora(
    model: nn.Module, rank: int, alpha: float, dropout: float = 0.0, targets: list[str] | None = None
) -> list[str]:
    """Wrap each target projection in a :class:`LoRALinear`, in place; returns the wrapped names."""
    targets = target_module_names(model) if targets is None else targets
    if not targets:
        raise ValueError(f"no Linear/Conv1D projections inside numbered blocks in {type(model).__name__}")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        if isinstance(base, LoRALinear):
            raise ValueError(f"{name} already has LoRA")
        setattr(parent, child, LoRALinear(base, rank, alpha, dropout))
    return targets


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def head_names(model: nn.Module) -> list[str]:
    """Qualified names of the classification head's modules: the classifier/score layer, and a pooler if any."""
    names = [n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)]
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == POOLER_NAME and any(True for _ in module.parameters()):
            names.append(name)
    return names


def mark_trainable(model: nn.Module) -> None:
    """Freeze everything, then let the LoRA factors and the classification head train."""
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in lora_layers(model).values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    for name in head_names(model):
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def set_fused(model: nn.Module, enabled: bool) -> None:
    """Route unmerged LoRA layers through the fused Triton kernel when they run on CUDA."""
    for layer in lora_layers(model).values():
        layer.use_fused = enabled


@torch.no_grad()
def unwrap_merged(model: nn.Module) -> nn.Module:
    """Merge every adapter and put the plain base modules back, in place: a standard Hugging Face model."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)
    return model


# PEFT's on-disk format: adapter_config.json + adapter_model.safetensors with keys
# base_model.model.<module>.lora_A.weight [r, in], ....lora_B.weight [out, r], and the head's own weights.
_PEFT_PREFIX = "base_model.model."


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        sd[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        sd[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
    for head in head_names(model):
        for pname, p in model.get_submodule(head).named_parameters():
            sd[f"{_PEFT_PREFIX}{head}.{pname}"] = p.detach().contiguous()
    return {k: v.cpu() for k, v in sd.items()}


def save_adapter(model: nn.Module, folder: Path, base_model: str, rank: int, alpha: float, dropout: float) -> None:
    """Write the adapter in PEFT's format, loadable with ``peft.PeftModel.from_pretrained(base, folder)``."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers")
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(layers),
        "modules_to_save": head_names(model),
        "fan_in_fan_out": any(layer.fan_in_fan_out for layer in layers.values()),
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(adapter_state_dict(model), str(folder / "adapter_model.safetensors"))


@torch.no_grad()
def load_adapter_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a PEFT-format adapter state dict into a model that ``inject_lora`` prepared the same way."""
    layers = lora_layers(model)
    expected = set(adapter_state_dict(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
        raise ValueError(f"adapter does not fit the model (missing {missing}, unexpected {extra})")
    for name, layer in layers.items():
        layer.lora_A.copy_(state[f"{_PEFT_PREFIX}{name}.lora_A.weight"])
        layer.lora_B.copy_(state[f"{_PEFT_PREFIX}{name}.lora_B.weight"])
    for head in head_names(model):
        for pname, p in model.get_submodule(head).named_parameters():
            p.copy_(state[f"{_PEFT_PREFIX}{head}.{pname}"])
