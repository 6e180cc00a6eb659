"""``kdfast predict``: the label and class probabilities of each sentence, from arguments, a file or stdin;
``kdfast label``: a teacher's logits over a large file."""

from __future__ import annotations

from rich.console import Console

from kdfast.cli.main import app
from kdfast.configs import LabelConfig, PredictConfig
from kdfast.options import command

err = Console(stderr=True)


@app.command("predict")
@command(PredictConfig)
def predict_command(cfg: PredictConfig) -> None:
    """Classify sentences: each one's label and the probability of every class, in the input's order.

    A table file (Parquet, CSV, TSV, JSON Lines) or plain text with --out FILE.parquet/.csv/.tsv/.jsonl is scored
    in record batches: the input's columns kept, then label and p_<class> for each class."""
    from kdfast.predicting import run

    run(cfg, err)


@app.command("label")
@command(LabelConfig)
def label_command(cfg: LabelConfig) -> None:
    """The teacher's logits (and sentence representations) for every sentence of a large file, for distillation."""
    from kdfast.batch.label import label_file

    result = label_file(cfg.teacher, cfg.file, cfg.out, cfg.engine, cfg.workers, cfg.rows_per_batch, cfg.batch_size,
                        cfg.threads, cfg.features, cfg.text_column, cfg.address, cfg.device)
    if cfg.progress:
        extra = f", Ray started in {result.start_s:.2f} s" if cfg.engine == "ray" else ""
        err.print(f"{result.rows} sentences labelled in {result.seconds:.3f} s: "
                  f"{result.rows / max(result.seconds, 1e-9):.1f} sentences/s{extra}", highlight=False)
        err.print(f"wrote {cfg.out}", highlight=False)
