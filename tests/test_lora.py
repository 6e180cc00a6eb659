"""Our LoRA: identity at B=0, frozen base, merge/unmerge exactness, Conv1D orientation, the trainable set."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kdfast.train.lora import (
    LoRALinear,
    count_parameters,
    inject_lora,
    lora_layers,
    mark_trainable,
    merge_lora,
    set_fused,
    target_module_names,
    unmerge_lora,
    unwrap_merged,
)


def _conv1d(n_in: int, n_out: int) -> Conv1D:
    layer = Conv1D(n_out, n_in)  # transformers' argument order: (nf=out, nx=in); weight is [in, out]
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    return layer


@pytest.fixture(params=["linear", "conv1d"])
def base(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(12, 20) if request.param == "linear" else _conv1d(12, 20)


def test_b_zero_is_the_base_model(base: nn.Module) -> None:
    x = torch.randn(3, 5, 12)
    expected = base(x)
    lora = LoRALinear(base, rank=4, alpha=8, dropout=0.0)
    assert torch.equal(lora.lora_B, torch.zeros(20, 4))
    assert lora.lora_A.abs().sum() > 0  # A is kaiming-initialised, not zero
    torch.testing.assert_close(lora(x), expected, rtol=0, atol=0)


def test_conv1d_orientation_matches_an_explicit_formula() -> None:
    torch.manual_seed(0)
    conv = _conv1d(12, 20)
    assert conv.weight.shape == (12, 20)  # GPT-2 stores [in, out]
    lora = LoRALinear(conv, rank=3, alpha=6)
    nn.init.normal_(lora.lora_B)
    x = torch.randn(4, 12)
    expected = x @ conv.weight + conv.bias + 2.0 * (x @ lora.lora_A.T @ lora.lora_B.T)
    torch.testing.assert_close(lora(x), expected, rtol=1e-5, atol=1e-5)
    assert lora.delta_weight().shape == conv.weight.shape


def test_base_weights_stay_put_after_an_optimizer_step(base: nn.Module) -> None:
    lora = LoRALinear(base, rank=4, alpha=8)
    w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    for p in lora.base.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # two steps: after the first, B is non-zero and A receives gradient too
        lora(torch.randn(8, 12)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(base.weight, w0) and torch.equal(base.bias, b0)
    assert lora.lora_B.abs().sum() > 0


def test_merge_equals_unmerged_and_unmerge_is_exact(base: nn.Module) -> None:
    lora = LoRALinear(base, rank=4, alpha=8).eval()
    nn.init.normal_(lora.lora_B)
    x = torch.randn(6, 12)
    w0 = base.weight.detach().clone()
    unmerged = lora(x)
    lora.merge()
    torch.testing.assert_close(lora(x), unmerged, rtol=0, atol=1e-4)
    torch.testing.assert_close(base.weight, w0 + lora.delta_weight(), rtol=0, atol=1e-6)
    merged_once = base.weight.detach().clone()
    lora.merge()  # a no-op
    assert torch.equal(base.weight, merged_once)
    lora.unmerge()
    assert torch.equal(base.weight, w0)
    lora.unmerge()  # a no-op
    assert torch.equal(base.weight, w0)


def test_dropout_applies_to_the_lora_branch_only(base: nn.Module) -> None:
    lora = LoRALinear(base, rank=4, alpha=8, dropout=0.5).train()
    nn.init.normal_(lora.lora_B)
    x = torch.randn(5, 12)
    torch.manual_seed(7)
    y = lora(x)
    torch.manual_seed(7)
    expected = base(x) + 2.0 * (torch.nn.functional.dropout(x, 0.5) @ lora.lora_A.T @ lora.lora_B.T)
    torch.testing.assert_close(y, expected)
    lora.eval()  # no dropout at inference
    torch.testing.assert_close(lora(x), base(x) + 2.0 * (x @ lora.lora_A.T @ lora.lora_B.T))


def test_rank_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=0, alpha=1)


def test_gpt2_targets_and_trainable_set(tiny_gpt2: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    names = target_module_names(model)
    assert names == [f"transformer.h.{i}.{m}" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    inject_lora(model, rank=4, alpha=8)
    mark_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"{n}.lora_{ab}" for n in names for ab in "AB"} | {"score.weight"}
    assert trainable == expected
    n_trainable, total = count_parameters(model)
    assert n_trainable == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert total > n_trainable
    assert not model.transformer.wte.weight.requires_grad and not model.transformer.wpe.weight.requires_grad


def test_bert_targets(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=32, vocab_size=50))
    suffixes = {n.split(".", 4)[-1] for n in target_module_names(model)}
    assert suffixes == {"attention.self.query", "attention.self.key", "attention.self.value",
                        "attention.output.dense", "intermediate.dense", "output.dense"}
    assert not any("pooler" in n or "classifier" in n for n in target_module_names(model))
    targets = inject_lora(model, rank=2, alpha=4)
    mark_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    assert trainable == {f"{n}.lora_{ab}" for n in targets for ab in "AB"} | head


def test_whole_model_merge_and_unwrap(tiny_gpt2: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2).eval()
    inject_lora(model, rank=4, alpha=8)
    torch.manual_seed(1)
    for layer in lora_layers(model).values():
        nn.init.normal_(layer.lora_B, std=0.05)
    ids = torch.randint(0, 50000, (3, 9))
    unmerged = model(input_ids=ids).logits
    merge_lora(model)
    torch.testing.assert_close(model(input_ids=ids).logits, unmerged, rtol=0, atol=1e-4)
    unmerge_lora(model)
    torch.testing.assert_close(model(input_ids=ids).logits, unmerged, rtol=0, atol=0)
    plain = unwrap_merged(copy.deepcopy(model))
    assert not lora_layers(plain)
    torch.testing.assert_close(plain(input_ids=ids).logits, unmerged, rtol=0, atol=1e-4)


def test_peft_loads_a_bert_adapter_with_its_pooler(tmp_path: Path) -> None:
    """The BERT head (pooler + classifier) travels in PEFT's modules_to_save: PEFT gives the same logits."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    from kdfast.train.lora import save_adapter

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=32, vocab_size=50))
    model.save_pretrained(tmp_path / "base")
    inject_lora(model, rank=2, alpha=4)
    for layer in lora_layers(model).values():
        nn.init.normal_(layer.lora_B)
    with torch.no_grad():  # as if trained: the head differs from the base checkpoint's
        model.bert.pooler.dense.weight.add_(1.0)
        model.classifier.weight.add_(0.5)
    save_adapter(model.eval(), tmp_path / "adapter", str(tmp_path / "base"), rank=2, alpha=4, dropout=0.0)
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=2)
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=1e-6)


def test_repr_says_the_kind_shape_rank_and_scaling() -> None:
    assert LoRALinear(nn.Linear(12, 20), rank=4, alpha=6).extra_repr() == "Linear(12→20), rank=4, scaling=1.5"
    assert LoRALinear(_conv1d(12, 20), rank=2, alpha=8).extra_repr() == "Conv1D(12→20), rank=2, scaling=4"


def test_set_fused_switches_every_lora_layer() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0], model[2] = LoRALinear(model[0], rank=2, alpha=2), LoRALinear(model[2], rank=2, alpha=2)
    set_fused(model, True)
    assert [layer.use_fused for layer in lora_layers(model).values()] == [True, True]
    set_fused(model, False)
    assert [layer.use_fused for layer in lora_layers(model).values()] == [False, False]
