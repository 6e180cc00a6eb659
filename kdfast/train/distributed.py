"""Data-parallel training under ``torchrun``, as nanoGPT's ``train.py`` does it.

``torchrun --nproc-per-node N -m kdfast train lora ...`` starts N copies of the same command; each reads its rank
from the environment torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``). Every rank seeds the same way and
walks the same shuffled order of global batches; of each global batch of B sentences, rank r takes the r-th of N
contiguous slices, and splits it again into ``--grad-accum`` K micro-batches:

    global batch (B rows)  ->  rank 0: [micro 0 | ... | micro K-1]  rank 1: [...]  ...  rank N-1: [...]

A micro-batch's loss is the *sum* of its rows' losses times N / B (``Context.weight``). Gradients add up over the
K micro-steps (synchronised only on the last: ``no_sync``), DistributedDataParallel averages them over the N
ranks, and the result is the gradient of the mean loss over the B rows, exactly what one process computes on the
whole batch, an uneven last batch included. A loss averaged over a subset of rows (distillation's cross-entropy
over the labelled sentences only) divides by that subset's count in the *global* batch, which every rank can count
itself since every rank knows the whole batch.

Without torchrun the world size is 1 and the same code runs: one slice, no process group, no DDP wrapper.
``master`` (rank 0) alone prints and writes the run folder; the other ranks write nothing.

We use ``torch.distributed`` directly rather than Hugging Face Accelerate: the loss weighting above, keeping the
frozen base out of DDP's buckets and sharding the teacher's scoring are each a few lines here, and Accelerate would
add a dependency and a launcher of its own without removing any of them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from kdfast.errors import KdfastError
from kdfast.train.training import resolve_device

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TIMEOUT = timedelta(minutes=10)  # the longest any rank waits in a collective before the job fails


@dataclass
class Context:
    """Where this process stands in the job: its rank among ``world`` processes and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"

    @property
    def master(self) -> bool:
        """Rank 0: the one process that prints and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def weight(self, rows: int, global_rows: int) -> float:
        """The factor that turns a micro-batch's *summed* loss into its share of the global batch's mean, such
        that DDP's average over ranks gives the one-process gradient: N / B, and 0 for an empty slice."""
        return self.world / global_rows if rows else 0.0

    def micro_batches(self, batch: list[int], accum: int) -> list[list[int]]:
        """This rank's ``accum`` micro-batches of a global batch (contiguous slices; some empty when the batch is
        smaller than world × accum, as the last one of an epoch may be)."""
        parts = split(batch, self.world * accum)
        return parts[self.rank * accum : (self.rank + 1) * accum]

    def shard(self, n: int) -> range:
        """This rank's contiguous share of ``range(n)`` (for scoring, not training)."""
        sizes = [len(p) for p in split(list(range(n)), self.world)]
        start = sum(sizes[: self.rank])
        return range(start, start + sizes[self.rank])

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` under DistributedDataParallel when there are several ranks, else ``model`` itself. Only the
        parameters that train are synchronised: frozen ones (a LoRA teacher's base) are neither broadcast nor put in
        gradient buckets, and the buffers (constant) are not broadcast at every step."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
        frozen += [name for name, _ in model.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)  # ignored buffers are not broadcast either

    def sync(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager[None]:
        """Gradients are averaged across ranks only on the last micro-step of an accumulation."""
        if last or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Mixed precision on CUDA (``--precision bf16 | fp16``); fp32 everywhere else."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=PRECISIONS[self.precision])

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler for fp16 (a pass-through otherwise)."""
        return torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    def all_sum(self, *values: float) -> list[float]:
        """Sums of numbers over the ranks (epoch totals: loss, correct, seen)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The rows every rank computed for its ``shard(n)``, in order, on every rank: (n, ...) on the CPU."""
        if not self.distributed:
            return local.cpu()
        sizes = [len(Context(rank=r, world=self.world).shard(n)) for r in range(self.world)]
        buf = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=self.comm_device)
        buf[: len(local)] = local.to(self.comm_device)
        parts = [torch.empty_like(buf) for _ in sizes]
        dist.all_gather(parts, buf)
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).cpu()

    @property
    def comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def split(items: list[int], parts: int) -> list[list[int]]:
    """``items`` in ``parts`` contiguous pieces whose sizes differ by at most one (the first ones longer)."""
    q, r = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + q + (i < r)
        out.append(items[start:end])
        start = end
    return out


def env_world() -> tuple[int, int, int]:
    """(rank, local rank, world size) from the environment torchrun sets; (0, 0, 1) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_master() -> bool:
    return env_world()[0] == 0


def setup(device: str = "auto", precision: str = "fp32", batch_size: int | None = None, grad_accum: int = 1
          ) -> Context:
    """This process's ``Context``: joins the job's process group on first use (gloo on the CPU, nccl on CUDA; the
    group lives until the process exits, so ``kdfast pipeline``'s stages share it), picks the device (``cuda:LOCAL
    _RANK`` under torchrun) and checks that the global ``batch_size`` splits evenly over ranks × ``grad_accum``."""
    rank, local_rank, world = env_world()
    if precision not in PRECISIONS:
        raise KdfastError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if grad_accum < 1:
        raise KdfastError(f"--grad-accum must be at least 1, got {grad_accum}")
    if batch_size is not None and batch_size % (world * grad_accum):
        raise KdfastError(f"--batch-size {batch_size} (the global batch) does not split evenly over {world} "
                          f"process(es) × --grad-accum {grad_accum}")
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(resolved)
    elif precision != "fp32":
        raise KdfastError(f"--precision {precision} needs CUDA; on the CPU kdfast trains in fp32")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=resolved if backend == "nccl" else None)
        atexit.register(_teardown)
    return Context(rank=rank, world=world, local_rank=local_rank, device=resolved, precision=precision)


def barrier() -> None:
    """Wait for every rank of the job (nothing to wait for without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

