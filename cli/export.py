"""``kdfast export --onnx``: a run folder to ONNX, with its parity table."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from kdfast.cli.main import app
from kdfast.cli.output import console
from kdfast.configs import ExportConfig
from kdfast.errors import KdfastError
from kdfast.options import command

ONNX_HELP = "Export to ONNX (the one format so far; required)."  # a flag of the command, not of the export


def parity_table(manifest: dict[str, Any]) -> Table:
    """One row per model: PyTorch first, then every ONNX variant with its agreement and max |Δlogit|."""
    parity = manifest["parity"]
    table = Table(title=f"ONNX vs PyTorch, {parity['sentences']} dev sentences")
    table.add_column("model")
    for col in ("agreement", "max |Δlogit|", "dev acc", "dev MCC", "verdict"):
        table.add_column(col, justify="right")
    ref = parity["pytorch"]["metrics"]
    table.add_row("pytorch", "", "", f"{ref['dev_acc']:.4f}", f"{ref['dev_mcc']:.4f}", "reference")
    for v in parity["variants"]:
        provider = v["provider"].removesuffix("ExecutionProvider")
        name = f"{v['variant']} ({provider})" if v["variant"] == "fp16" or provider != "CPU" else v["variant"]
        if not v["checked"]:
            table.add_row(name, "", "", "", "", "[yellow]NOT CHECKED[/]")
            continue
        m = v["metrics"]
        verdict = "[green]pass[/]" if v["passed"] else "[red]FAIL[/]" + ("" if v["shapes_ok"] else " (shapes)")
        table.add_row(name, f"{v['agreement']:.2%}", f"{v['max_abs_diff']:.2e}", f"{m['dev_acc']:.4f}",
                      f"{m['dev_mcc']:.4f}", verdict)
    return table


def int8_table(int8: dict[str, Any]) -> Table:
    """Every int8 candidate tuning built: agreement with fp32 on every judged sentence and its lower confidence bound
    (the rule's), MCC change on the held-out originals, speed against fp32 at batch 1 and (for the accurate ones the
    speed rule judged) 32, size, verdict (the held-out originals' and perturbed copies' agreements apart are in the
    manifest)."""
    rule = int8["rule"]
    cal = int8["calibration"]
    table = Table(title=f"int8 candidates, {cal['held_out']} held-out training sentences"
                        f"{' + a perturbed copy of each' if cal.get('perturbed') else ''} (rule: ≥ "
                        f"{rule['min_agreement']:.1%} agreement at {rule['confidence']:.0%} confidence, "
                        f"|Δ MCC| ≤ {rule['max_mcc_drop']:g})")
    table.add_column("candidate", no_wrap=True)
    for col in ("agree", "bound", "Δ MCC", "b1 vs fp32", "b32", "MB", "verdict"):
        table.add_column(col, justify="right", no_wrap=True)
    for c in int8["candidates"]:
        if c["error"]:
            table.add_row(c["name"], "", "", "", "", "", "", f"[red]error[/]: {c['error'][:60]}")
            continue
        verdict = "[green]pass[/]" if c["passed"] else "[red]fail[/]"
        if c.get("fast") is False:  # accurate, but below the speed rule
            verdict = "[red]slow[/]"
        if c["name"] == int8["winner"]:
            verdict = "[bold green]kept[/]"
        speed = c.get("speed")  # the speed rule's timing, for the accurate candidates it judged
        b1 = speed["batch_1"]["speedup"] if speed else c["speedup_b1"]
        at32 = speed["batch_32"]["speedup"] if speed else c.get("speedup_b32")  # None: not measured
        b32 = f"{at32:.2f}x" if at32 is not None else ""
        table.add_row(c["name"], f"{c['agreement']:.1%}", f"{c['agreement_lower']:.1%}",
                      f"{-c['mcc_drop']:+.3f}", f"{b1:.2f}x", b32, f"{c['mb']:.0f}", verdict)
    return table


def print_int8(int8: dict[str, Any]) -> None:
    if not int8["candidates"]:  # refused before any was built: the error line says why
        return
    console.print(int8_table(int8))
    cal = int8["calibration"]
    console.print(f"calibration: {cal['sentences']} training sentences (sha256 {cal['sha256'][:12]}), unpadded; "
                  f"rule judged on {cal['held_out']} others")
    if rule := int8.get("speed_rule"):  # exports from before the speed rule have none
        console.print(f"speed rule: ≥ {rule['min_speedup']:.2f}x fp32 at batch 1 and 32 "
                      f"({rule['threads'] or 'default'} thread(s)); 'slow': accurate but below it")
    for recipe, why in int8["not_searched"].items():
        console.print(f"{recipe}: no further fallback: {why}")
    if int8["winner"] is None:
        return
    kept = ", ".join(int8["kept_fp32"]) or "none"
    speed = int8["speed"]
    console.print(f"model.int8.onnx = {int8['winner']} (from {int8['from']}); nodes kept fp32: {kept}; "
                  f"{speed['batch_1']['speedup']:.2f}x fp32 at batch 1, {speed['batch_32']['speedup']:.2f}x at "
                  f"batch 32 ({speed['threads'] or 'default'} thread(s)), rule ≥ {speed['min_speedup']:.2f}x: "
                  f"{speed['verdict']}")


def print_report(manifest: dict[str, Any]) -> None:
    if manifest.get("int8"):
        print_int8(manifest["int8"])
    parity = manifest["parity"]
    if parity["checked"]:
        console.print(parity_table(manifest))
        shapes = parity["variants"][0]["shapes"]
        console.print(f"data {parity['data']}; atol {parity['atol']:g}; rules: fp32 and optimized 100% of labels and "
                      "max |Δlogit| ≤ atol, fp16 ≥ 99% of labels, int8 the rule it was tuned to; (batch, seq) shapes "
                      "run on each: "
                      + ", ".join(f"({s['batch']}, {s['seq']})" for s in shapes))
        for v in parity["variants"]:
            for s in v["shapes"]:
                if not s["ok"]:
                    why = s.get("error") or f"output {s['output_shape']}, max |Δlogit| {s['max_abs_diff']:.2e}"
                    console.print(f"[red]shape ({s['batch']}, {s['seq']}) failed[/] for {v['file']}: {why}")
            if v["note"]:
                console.print(f"[yellow]note[/]: {v['file']}: {v['note']}")
    fused = (manifest.get("optimizer") or {}).get("fused")
    if fused:
        console.print("fused nodes in model.opt.onnx: " + ", ".join(f"{k} {n}" for k, n in fused.items()))


@app.command("export")
@command(ExportConfig, extra={"onnx": (bool, typer.Option(False, "--onnx", help=ONNX_HELP))})
def export_command(cfg: ExportConfig, onnx: bool) -> None:
    """Export a run's model to ONNX and prove it equal to PyTorch on the whole CoLA dev set."""
    if not onnx:
        raise KdfastError("say which format: --onnx (the only one so far), e.g. kdfast export --onnx RUN_DIR")
    from kdfast.export.onnx import ParityError
    from kdfast.export.onnx import run as run_export

    no_check = not cfg.check
    if no_check:
        console.print("[bold yellow]WARNING: --no-check: the ONNX models are NOT compared with PyTorch[/]")
    try:
        manifest = run_export(cfg)
    except ParityError as e:
        print_report(e.manifest)
        raise
    print_report(manifest)
    if no_check:
        console.print("[bold yellow]WARNING: --no-check: parity not checked[/]")
    out_dir = cfg.out if cfg.out is not None else cfg.run_dir / "onnx"
    console.print(f"wrote {out_dir}: " + ", ".join(v["file"] for v in manifest["variants"]) + ", manifest.json")
    if manifest["triton"]:
        console.print(f"wrote the Triton model {manifest['triton']['repo']}/{manifest['triton']['name']}")
