"""The memory floor of a forward pass: the machine's read bandwidth and the bytes a model streams per call.

At batch 1 and a dozen tokens a forward pass reads every weight matrix from memory once and uses it for a dozen rows:
the call is bound by memory bandwidth, not by arithmetic, and bytes / bandwidth is the fastest it can be.
benchmarks/memory_floor.py puts these beside a ``kdfast bench`` report's latencies; the functions live in the package
so that the tests import them from here, never from benchmarks/.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from kdfast.bench.harness import time_calls

GIB = 1 << 30


def read_bandwidth(threads: int, repeats: int) -> dict[str, float]:
    """GB/s of summing a 1 GiB fp32 tensor and of a matrix-vector product over a 1 GiB fp32 matrix (medians)."""
    torch.set_num_threads(threads)
    x = torch.ones(GIB // 4)
    w = x.view(16384, 16384)
    v = torch.ones(16384)
    out = {}
    for name, fn in (("sum", lambda: x.sum()), ("gemv", lambda: v @ w)):
        out[name] = GIB / statistics.median(time_calls(fn, warmup=1, iters=repeats)) / 1e9
    return out


def streamed_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes a forward pass reads: fp32 everywhere, and with the 2-D weight matrices at 1 byte (int8)."""
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    params = [p for p in model.parameters() if id(p) not in embedding]
    total = sum(p.numel() for p in params)
    matrices = sum(p.numel() for p in params if p.dim() == 2)
    return {"fp32": 4 * total, "int8": matrices + 4 * (total - matrices)}
