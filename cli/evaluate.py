"""``kdfast eval``: dev accuracy and MCC of a run folder."""

from __future__ import annotations

import json

from kdfast.cli.main import app
from kdfast.cli.output import console, dev_table
from kdfast.configs import EvalConfig
from kdfast.options import command


@app.command("eval")
@command(EvalConfig)
def eval_command(cfg: EvalConfig) -> None:
    """Accuracy, Matthews correlation and macro-F1 on the dev set (CoLA: 1,043 sentences, and its in- and
    out-of-domain halves)."""
    from kdfast.evaluate import evaluate_run

    report = evaluate_run(cfg.run_dir, cfg.data, cfg.device)
    if cfg.json:
        print(json.dumps(report, indent=2))
    else:
        console.print(dev_table(f"{report['kind']} run {cfg.run_dir} on {report['data']}", [(str(cfg.run_dir),
                                                                                           report)]))
