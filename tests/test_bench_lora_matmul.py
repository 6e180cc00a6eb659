"""benchmarks/bench_lora_matmul.py's CPU-side logic (kdfast.bench.lora_matmul): the cost model, the CSV, and its exit
without CUDA."""

import csv
import importlib
import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import count_launches

# where the kernel runs: CUDA, else the CPU under Triton's interpreter (conftest.py switches it on without CUDA)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("kdfast.bench.lora_matmul")


def test_flops(bench) -> None:
    assert bench.flops("merged", 2, 3, 5, 4) == 2 * 2 * 3 * 5
    assert bench.flops("fused", 2, 3, 5, 4) == 2 * 2 * 3 * 5 + 2 * 2 * 3 * 4 + 2 * 2 * 4 * 5
    assert bench.flops("unfused", 2, 3, 5, 4) == bench.flops("fused", 2, 3, 5, 4)


def test_bytes_moved(bench) -> None:
    m, k, n, r = 2, 3, 5, 4
    assert bench.bytes_moved("merged", m, k, n, r, 2) == 2 * (m * k + k * n + n + m * n)
    assert bench.bytes_moved("fused", m, k, n, r, 2) == 2 * (m * k + k * n + r * k + n * r + n + m * n)
    assert bench.bytes_moved("fused", m, k, n, r, 2, bias=False) == 2 * (m * k + k * n + r * k + n * r + m * n)
    # unfused: x twice, y written, read, written again, xa written and read
    unfused = 2 * m * k + k * n + r * k + n * r + n + 3 * m * n + 2 * m * r
    assert bench.bytes_moved("unfused", m, k, n, r, 4) == 4 * unfused
    with pytest.raises(ValueError):
        bench.bytes_moved("cublas", m, k, n, r, 2)


def test_gpt2_decode_step_is_weight_bound(bench) -> None:
    """At M = 1 the bytes are essentially the weight: 768 x 2304 fp16 ~ 3.5 MB, ~1 µs at 3.35 TB/s."""
    n_bytes = bench.bytes_moved("merged", 1, 768, 2304, 16, 2)
    assert 768 * 2304 * 2 <= n_bytes < 768 * 2304 * 2 * 1.01
    assert bench.bandwidth_bound_us(n_bytes, 3.35) == pytest.approx(n_bytes / 3.35e6)


def test_point_metrics(bench) -> None:
    got = bench.point_metrics("fused", 64, 768, 768, 16, 2, us=10.0, tbps=3.35)
    n_bytes = bench.bytes_moved("fused", 64, 768, 768, 16, 2)
    assert got["gbps"] == pytest.approx(n_bytes / 10e-6 / 1e9)
    assert got["tflops"] == pytest.approx(bench.flops("fused", 64, 768, 768, 16) / 10e-6 / 1e12)
    assert got["pct_of_bw_bound"] == pytest.approx(100 * bench.bandwidth_bound_us(n_bytes, 3.35) / 10.0)
    unknown = bench.point_metrics("fused", 64, 768, 768, 16, 2, us=10.0, tbps=None)
    assert unknown["bw_bound_us"] == unknown["pct_of_bw_bound"] == "" and unknown["gbps"] == got["gbps"]


@pytest.mark.parametrize(
    ("name", "tbps"),
    [("NVIDIA H200", 4.8), ("NVIDIA H200 NVL", 4.8), ("NVIDIA H100 80GB HBM3", 3.35), ("NVIDIA H100 PCIe", 2.0),
     ("NVIDIA H100 NVL", 3.9), ("NVIDIA A100-SXM4-80GB", 2.039), ("NVIDIA A100-SXM4-40GB", 1.555),
     ("NVIDIA GH200 480GB", None), ("NVIDIA GeForce RTX 4090", None), ("cpu", None)],
)  # fmt: skip
def test_hbm_bandwidth_by_device_name(bench, name: str, tbps: float | None) -> None:
    assert bench.hbm_tbps(name) == tbps


def test_append_csv_writes_header_once(bench, tmp_path: Path) -> None:
    path = tmp_path / "results" / "lora_matmul.csv"
    bench.append_rows(path, [{"gpu": "H100", "m": 1, "provider": "fused", "us": 12.3456789}])
    bench.append_rows(path, [{"gpu": "H100", "m": 8, "provider": "merged", "us": 4.0}])
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == bench.CSV_FIELDS
    assert [(row["m"], row["provider"], row["us"]) for row in rows] == [("1", "fused", "12.3457"), ("8", "merged", "4")]


def test_summarize(bench) -> None:
    rows = [
        {"provider": "fused", "fused_over_merged": 1.05, "unfused_over_fused": 1.8, "m": 8, "dtype": "fp16",
         "shape": "attn.c_attn"},
        {"provider": "fused", "fused_over_merged": 1.2, "unfused_over_fused": 1.1, "m": 4096, "dtype": "bf16",
         "shape": "mlp.c_fc"},
    ]  # fmt: skip
    text = bench.summarize(rows)
    assert "1.20" in text and "M=4096" in text and "1.80" in text


def test_git_commit(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDFAST_COMMIT", raising=False)
    assert bench.git_commit() != ""
    assert bench.git_commit(Path("/")) == "unknown"
    monkeypatch.setenv("KDFAST_COMMIT", "abc1234-dirty")  # what gpu_check.sh reads from its commit file
    assert bench.git_commit(Path("/")) == "abc1234-dirty"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit without CUDA")
def test_exits_without_cuda(bench) -> None:
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        bench.main(["--m", "1"])


@pytest.mark.parametrize("layout", ["conv1d", "linear"])
def test_providers_compute_the_same_function(bench, layout: str) -> None:
    """Counting the Triton launches: "fused" is the kernel (under the interpreter here), never lora_matmul's fallback
    to the very reference it is compared with."""
    fns = bench.make_providers(5, 48, 40, 4, torch.float32, layout, 2.0, device=DEVICE)
    reference = fns["reference"]()
    for provider in bench.PROVIDERS:
        with count_launches() as launches:
            got = fns[provider]()
        torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-4)
        assert (launches["mm"] > 0) == (provider == "fused") and not launches["grad"], (provider, launches)


@pytest.mark.parametrize("layout", ["conv1d", "linear"])
def test_backward_providers_compute_the_same_gradients(bench, layout: str) -> None:
    fns, trainable = bench.make_backward_providers(5, 48, 40, 4, torch.float32, layout, 2.0, device=DEVICE)
    reference = fns["reference"]()
    for provider in bench.PROVIDERS:
        with count_launches() as launches:
            grads = fns[provider]()
        fused = provider == "fused"
        assert (launches["mm"] > 0, launches["grad"] > 0) == (fused, fused), (provider, launches)  # the kernels ran
        assert len(grads) == (1 if provider == "merged" else 3) == len(trainable[provider])
        for got, want in zip(grads, reference, strict=False):  # merged: dx only
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_timer_calls_bind_to_the_installed_triton(bench) -> None:
    bench.check_timer_signatures()


def test_fused_is_accurate(bench) -> None:
    eps = torch.finfo(torch.float16).eps
    assert bench.fused_is_accurate({"fused": 1e-3, "unfused": 1e-3}, 1.0, torch.float16)
    assert bench.fused_is_accurate({"fused": 2e-3 + eps, "unfused": 1e-3}, 1.0, torch.float16)
    assert not bench.fused_is_accurate({"fused": 3e-3 + 2 * eps, "unfused": 1e-3}, 1.0, torch.float16)
    assert bench.fused_is_accurate({"fused": 5e-4, "unfused": 0.0}, 10.0, torch.float32)
    assert not bench.fused_is_accurate({"fused": 2e-3, "unfused": 1e-3}, 10.0, torch.float32)


def test_measure_table_and_rows(bench, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The whole measurement loop on the CPU with fake timers: the table prints and every row is complete."""
    args = bench.parse_args(["--m", "1", "80", "--backward-m", "3", "--shapes", "attn.c_proj", "--dtype", "fp32",
                             "--layout", "linear", "--rank", "4", "--csv", str(tmp_path / "out.csv")])  # fmt: skip
    fake_ms = {"merged": 0.010, "unfused": 0.030, "fused": 0.011}
    providers = iter(p for _ in range(3) for p in bench.PROVIDERS)  # two forward points, then one backward
    graphed = iter(p for p in bench.PROVIDERS)  # M = 1 only: 80 > --cudagraph-max-m

    def time_ms(fn, grad_to_none=None) -> float:
        return fake_ms[next(providers)]

    rows = bench.measure(args, device="cpu", time_ms=time_ms, graph_ms=lambda fn: fake_ms[next(graphed)] / 2)
    assert len(rows) == 3 * 3 and [row["pass"] for row in rows[::3]] == ["forward", "forward", "backward"]
    forward = [row for row in rows if row["pass"] == "forward"]
    assert all(set(row) == set(bench.CSV_FIELDS) for row in forward)
    assert [row["us_cudagraph"] for row in forward if row["provider"] == "fused"] == [5.5, ""]
    fused = [row for row in rows if row["provider"] == "fused"]
    assert all(row["fused_over_merged"] == pytest.approx(1.1) for row in fused)
    assert all(row["unfused_over_fused"] == pytest.approx(30 / 11) for row in fused)
    assert all(row["max_abs_err"] < 1e-3 and row["fused_accurate"] for row in fused)
    assert all(row["fused_config"].startswith(("fixed", "tuned")) for row in fused if row["pass"] == "forward")
    out = capsys.readouterr().out
    assert "attn.c_proj" in out and "fwd+bwd" in out
    assert len(args.csv.read_text().splitlines()) == 1 + len(rows)  # appended point by point
