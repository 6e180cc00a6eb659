"""The files ``kdfast bench`` writes (JSON, CSV, Markdown, a PNG) and ``--compare`` of two JSON reports.

The schema is documented once, in ``kdfast.bench.measure``'s docstring; ``ROW_FIELDS`` is the column order of CSV and
Markdown alike. The report arrives as data: this module imports nothing of ``kdfast.bench.measure``, which imports it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from kdfast.bench.harness import markdown_table, write_json, write_text
from kdfast.bench.variants import VARIANTS
from kdfast.errors import KdfastError
from kdfast.runs import read_json

# The columns of a row, in the order of the CSV and Markdown files (described in ``kdfast.bench.measure``'s docstring).
ROW_FIELDS = ["model", "variant", "batch_size", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "throughput", "acc",
              "mcc", "agreement", "params", "file_mb", "speedup", "seq_len", "calls", "setup_s", "load_1m", "runtime",
              "note"]

# How each column is printed in Markdown (JSON and CSV keep full precision).
FORMATS = {"p50_ms": "{:.3f}", "p90_ms": "{:.3f}", "p99_ms": "{:.3f}", "mean_ms": "{:.3f}", "cv": "{:.3f}",
           "throughput": "{:.1f}", "acc": "{:.4f}", "mcc": "{:.4f}", "agreement": "{:.4f}", "params": "{:,}",
           "file_mb": "{:.1f}", "speedup": "{:.2f}", "seq_len": "{:.1f}", "setup_s": "{:.1f}", "load_1m": "{:.2f}"}
REQUIRED = ("variant", "batch_size", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "cv", "throughput", "acc", "mcc",
            "params", "file_mb", "speedup")


def cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    fmt = FORMATS.get(key)
    return fmt.format(value) if fmt and isinstance(value, (int, float)) else str(value)


def csv_text(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(report["results"])
    return out.getvalue()


def meta_line(meta: dict[str, Any]) -> str:
    m, v = meta["machine"], meta["versions"]
    load = meta.get("load_avg") or {}
    return (f"{meta['date']}, {m['host']} ({m['cpu']}, {m['cpus']} CPUs), device {meta['device']} "
            f"({meta['device_name']}), {meta['threads']} threads, torch {v.get('torch')}, onnxruntime "
            f"{v.get('onnxruntime') or v.get('onnxruntime-gpu')}, commit {meta['commit']}, load average "
            f"{load.get('start')} → {load.get('end')}; {meta['timed_sentences']} timed dev sentences, warm-up "
            f"{meta['warmup']}, ≥ {meta['iters']} calls and ≥ {meta['min_time']} s per row; acc/MCC over "
            f"{meta['dev_sentences']} dev sentences ({meta['data']}); speedup against {meta['teacher_eager']}")


def ratio_line(r: dict[str, Any]) -> str:
    text = (f"{r['name']}, batch {r['batch_size']}: {r['slow']} {r['slow_p50_ms']:.3f} ms / {r['fast']} "
            f"{r['fast_p50_ms']:.3f} ms = {r['ratio']:.2f}x (target ≥ {r['target']:g}x")
    if r.get("mcc_drop") is not None:
        text += f"; dev MCC drop {r['mcc_drop']:.4f}, at most {r['mcc_drop_max']:g}"
    return text + f"): {'met' if r['met'] else 'NOT met'}"


def markdown(report: dict[str, Any]) -> str:
    lines = [meta_line(report["meta"]), *(f"\n**Warning**: {w}" for w in report["meta"].get("warnings", [])), "",
             *markdown_table(ROW_FIELDS, ([cell(row, k) for k in ROW_FIELDS] for row in report["results"]))]
    if report.get("skipped"):
        lines += ["", "Skipped:", ""] + [f"- {s['variant']} ({s['model']}): {s['reason']}" for s in report["skipped"]]
    if report.get("ratios"):
        lines += ["", "Ratios:", ""] + [f"- {ratio_line(r)}" for r in report["ratios"]]
    return "\n".join(lines) + "\n"


STUDENT_MARKERS = "s^Dvp*hX"  # one marker per student run; the teacher is a circle


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and MCC (higher), fastest first: the
    variants worth choosing between."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def figure(report: dict[str, Any]) -> Any:
    """The bench picture: latency p50 (log scale) against dev MCC, one panel per batch size. No text is placed at
    the points, so nothing overlaps however close they lie: colour says the variant, marker the model (one legend
    beside the panels), a dashed line joins the variants no other beats on both axes, and each panel names its
    fastest and its most accurate variant in its title, their points ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = report["results"]
    batches = sorted({r["batch_size"] for r in rows}) or [1]
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    variants += sorted({r["variant"] for r in rows} - set(variants))
    colors = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(variants)}
    models = list(dict.fromkeys(r["model"] for r in rows))
    students = [m for m in models if not any(r["model"] == m and r["variant"].startswith("teacher") for r in rows)]
    markers = {m: "o" if m not in students else STUDENT_MARKERS[students.index(m) % len(STUDENT_MARKERS)]
               for m in models}
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5.2), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        here = [r for r in rows if r["batch_size"] == batch]
        for r in here:
            ax.scatter(r["p50_ms"], r["mcc"], color=colors[r["variant"]], marker=markers[r["model"]], s=55,
                       edgecolors="black", linewidths=0.4, zorder=3)
        front = [here[i] for i in pareto([(r["p50_ms"], r["mcc"]) for r in here])]
        if len(front) > 1:
            ax.plot([r["p50_ms"] for r in front], [r["mcc"] for r in front], "--", color="grey", lw=1, zorder=2)
        if here:
            fastest = min(here, key=lambda r: r["p50_ms"])
            accurate = max(here, key=lambda r: (r["mcc"], -r["p50_ms"]))
            for r, ring, size in ((fastest, "tab:green", 420), (accurate, "tab:red", 220)):  # both show on one point
                ax.scatter(r["p50_ms"], r["mcc"], s=size, facecolors="none", edgecolors=ring, linewidths=1.8,
                           zorder=4)
            ax.set_title(f"batch {batch}\nfastest (green ring): {fastest['variant']} ({fastest['model']}), "
                         f"{fastest['p50_ms']:.3g} ms\nmost accurate (red ring): {accurate['variant']} "
                         f"({accurate['model']}), MCC {accurate['mcc']:.3f}", fontsize=8.5)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 0.2, 0.5, 1, 2, 5, ... ms
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks collide on a narrow axis
        ax.set_xlabel(f"p50 latency per batch of {batch}, ms (log scale; left is faster)")
        ax.set_ylabel("dev MCC (up is more accurate)")
        ax.grid(alpha=0.3, which="both")
    variant_handles = [Line2D([], [], ls="", marker="o", color=colors[v], markeredgecolor="black", label=v)
                       for v in variants]
    model_handles = [Line2D([], [], ls="", marker=markers[m], color="lightgrey", markeredgecolor="black",
                            label=m + (" (student)" if m in students else " (teacher)")) for m in models]
    heading = Line2D([], [], ls="", label="model (marker):")
    front_handle = Line2D([], [], ls="--", color="grey", label="no variant both faster and more accurate")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.legend(handles=[*variant_handles, heading, *model_handles, front_handle], title="variant (colour):",
               loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, title_fontsize=8, alignment="left")
    meta = report["meta"]
    fig.suptitle(f"kdfast bench: {meta['device_name']}, {meta['threads']} threads, commit {meta['commit']}",
                 fontsize=10)
    return fig


def plot(report: dict[str, Any], path: Path) -> None:
    """Write :func:`figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = figure(report)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_outputs(report: dict[str, Any], json_path: Path | None = None, csv_path: Path | None = None,
                  md_path: Path | None = None, plot_path: Path | None = None) -> None:
    """The files asked for, each written whole or not at all (the PNG: matplotlib's own write)."""
    if json_path is not None:
        write_json(Path(json_path), report)
    if csv_path is not None:
        write_text(Path(csv_path), csv_text(report))
    if md_path is not None:
        write_text(Path(md_path), markdown(report))
    if plot_path is not None:
        Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
        plot(report, Path(plot_path))


# --- --compare


def load_report(path: Path) -> dict[str, Any]:
    """A JSON report written by ``kdfast bench --json``, its rows checked to have the schema's keys."""
    report = read_json(Path(path))
    if not isinstance(report, dict) or not isinstance(report.get("meta"), dict) or \
            not isinstance(report.get("results"), list):
        raise KdfastError(f"{path}: not a kdfast bench report (expected {{\"meta\": ..., \"results\": [...]}})")
    for i, row in enumerate(report["results"]):
        missing = [k for k in REQUIRED if not isinstance(row, dict) or k not in row]
        if missing:
            raise KdfastError(f"{path}: result {i} lacks {', '.join(missing)}")
    return report


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``a`` and ``b`` paired by variant and batch size (and by model when a variant has several);
    ``ratio`` = a's p50 / b's p50, so above 1 means B is faster. Unpaired rows come last with ratio None."""
    out, used = [], set()
    for ra in a["results"]:
        same = [(i, rb) for i, rb in enumerate(b["results"])
                if rb["variant"] == ra["variant"] and rb["batch_size"] == ra["batch_size"] and i not in used]
        if len(same) > 1:
            same = [(i, rb) for i, rb in same if rb.get("model") == ra.get("model")]
        if len(same) == 1:
            i, rb = same[0]
            used.add(i)
            out.append(pair(ra, rb))
        else:
            out.append(pair(ra, None))
    out += [pair(None, rb) for i, rb in enumerate(b["results"]) if i not in used]
    return out


def pair(ra: dict[str, Any] | None, rb: dict[str, Any] | None) -> dict[str, Any]:
    some = ra or rb
    assert some is not None
    return {"variant": some["variant"], "batch_size": some["batch_size"],
            "model_a": ra.get("model") if ra else None, "model_b": rb.get("model") if rb else None,
            "p50_ms_a": ra["p50_ms"] if ra else None, "p50_ms_b": rb["p50_ms"] if rb else None,
            "ratio": ra["p50_ms"] / rb["p50_ms"] if ra and rb else None,
            "mcc_a": ra["mcc"] if ra else None, "mcc_b": rb["mcc"] if rb else None}


def meta_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between the two runs' setups (a ratio across machines or thread counts says less)."""
    diffs = []
    for key in ("device_name", "threads", "device", "commit"):
        if a["meta"].get(key) != b["meta"].get(key):
            diffs.append(f"{key}: {a['meta'].get(key)} vs {b['meta'].get(key)}")
    host_a, host_b = (x["meta"].get("machine", {}).get("host") for x in (a, b))
    if host_a != host_b:
        diffs.append(f"host: {host_a} vs {host_b}")
    return diffs
