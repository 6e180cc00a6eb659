"""The distillation loss (Hinton, Vinyals and Dean 2015, https://arxiv.org/abs/1503.02531) and the word-vector term
of ``--word-weight``; ``kdfast.train.distill`` describes both."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, temperature: float,
            alpha: float, rows: int | None = None, labelled_rows: int | None = None) -> torch.Tensor:
    """α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·CE(s, y), in fp32.

    ``student`` and ``teacher`` are logits (B, C); ``labels`` (B,) is −1 on sentences with no gold label, which
    then count in the KL term only (the CE term averages over labelled rows; 0 when there are none). The KL term
    averages over all rows (``batchmean``). ``teacher`` may be None only when ``alpha`` is 0.

    With ``rows`` and ``labelled_rows``, the sums divide by those counts instead (of the *global* batch, when these
    B rows are one slice of it in data-parallel training): the slices' losses then add up to the global batch's.
    """
    s = student.float()
    labelled = labels >= 0
    ce_rows = F.cross_entropy(s, labels.clamp(min=0), reduction="none")  # (B,)
    ce = (ce_rows * labelled).sum() / (labelled.sum().clamp(min=1) if labelled_rows is None else max(labelled_rows, 1))
    if alpha == 0:
        return ce
    assert teacher is not None, "the KL term needs teacher logits"
    t = temperature
    kl = F.kl_div(F.log_softmax(s / t, dim=-1), F.log_softmax(teacher.float() / t, dim=-1), log_target=True,
                  reduction="sum") / (len(s) if rows is None else rows)
    return alpha * t * t * kl + (1 - alpha) * ce


def word_loss(predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, total: int) -> torch.Tensor:
    """Σ over the ``valid`` steps (B, T) of (1 − cos(predicted, target)) (both (B, T, d)), divided by ``total``: the
    number of such steps in the whole global batch, so that data-parallel slices add up to the one-process loss."""
    valid = valid.to(predicted.device)
    cos = F.cosine_similarity(predicted.float()[valid], target.to(predicted.device)[valid], dim=-1)
    return (1 - cos).sum() / max(total, 1)
