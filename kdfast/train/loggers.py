"""Metrics where users look for them (``--report-to``), as torchtune's metric loggers: one small interface,
``log(name, value, step)``, ``log_config(config)`` and ``close(final)``, with TensorBoard, MLflow or nothing behind it.

What a training stage logs: ``train/loss`` and ``train/lr`` after every optimizer step (the loss of the step's
batch; under torchrun, of rank 0's slice of it), ``train/epoch_loss``, ``train/acc`` and every dev score
(``dev/acc``, ``dev/mcc``, ``dev/f1``, ``dev/loss``, CoLA's halves) after every epoch, at the step the epoch ended;
its resolved configuration as hyperparameters; the best epoch's scores (``best/...``) at the end. Rank 0 alone logs.

- ``tensorboard`` (``torch.utils.tensorboard``): event files under ``OUT/../tensorboard/NAME`` (``runs/teacher``
  logs to ``runs/tensorboard/teacher``: ``tensorboard --logdir runs/tensorboard`` shows every run side by side; the
  run folder itself only appears, complete, at the end). The configuration is a text summary and TensorBoard's
  hyperparameters (``add_hparams``, with the best scores).
- ``mlflow``: one MLflow run named after ``--out``, in the experiment ``kdfast`` (``MLFLOW_EXPERIMENT_NAME``
  overrides it), at ``MLFLOW_TRACKING_URI`` when it is set, else in a local file store, ``./mlruns`` (MLflow keeps
  its file store in maintenance mode; point ``MLFLOW_TRACKING_URI`` at a server or database for the rest).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdfast.errors import KdfastError, first_line

REPORT_TO = ("none", "tensorboard", "mlflow")
EXPERIMENT = "kdfast"


def tensorboard_dir(out: Path) -> Path:
    return Path(out).parent / "tensorboard" / Path(out).name


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested configuration as one level of scalars (``int8_tuning.seed``); None and lists as text."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, bool | int | float | str) else str(v)
    return out


def epoch_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """An epoch's row of ``metrics.json``'s history as logged names: train/epoch_loss, train/acc, dev/mcc, ..."""
    names = {"train_loss": "train/epoch_loss", "train_acc": "train/acc"}
    return {names.get(k, k.replace("dev_", "dev/", 1)): v for k, v in row.items()
            if k in names or k.startswith("dev_")}


class MetricLogger:
    """``--report-to none``: logs nothing. The others override what they keep."""

    def __init__(self) -> None:
        self.final: dict[str, float] = {}  # the best epoch's scores, logged on close

    def set_final(self, values: dict[str, Any]) -> None:
        self.final = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}

    def log(self, name: str, value: float, step: int) -> None:
        pass

    def log_dict(self, values: dict[str, Any], step: int) -> None:
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.log(name, float(value), step)

    def log_config(self, config: dict[str, Any]) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


class TensorBoardLogger(MetricLogger):
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise KdfastError(f"--report-to tensorboard needs TensorBoard: pip install 'kdfast[tensorboard]' "
                              f"({first_line(e)})") from None
        super().__init__()
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))
        self.hparams: dict[str, Any] = {}

    def log(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(name, value, step)

    def log_config(self, config: dict[str, Any]) -> None:
        self.hparams = flat(config)
        text = "\n".join(f"    {k}: {v}" for k, v in self.hparams.items())  # indented: Markdown code
        self.writer.add_text("config", text)

    def close(self, failed: bool = False) -> None:
        if self.final and self.hparams:  # the hyperparameters tab: the configuration against the best scores
            self.writer.add_hparams(self.hparams, self.final, run_name=".")
        self.writer.close()


class MLflowLogger(MetricLogger):
    def __init__(self, run_name: str) -> None:
        try:
            import mlflow
        except ImportError as e:
            raise KdfastError(f"--report-to mlflow needs MLflow: pip install 'kdfast[mlflow]' ({first_line(e)})"
                              ) from None
        super().__init__()
        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the local file store, which MLflow asks to be allowed
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = Path("mlruns").resolve().as_uri()
        mlflow.set_tracking_uri(uri)  # every time: an earlier run in this process may have set another
        try:
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT)
            self.run = mlflow.start_run(run_name=run_name)
        except Exception as e:
            raise KdfastError(f"--report-to mlflow: could not start a run at {mlflow.get_tracking_uri()} "
                              f"({first_line(e)})") from None
        self.run_id = self.run.info.run_id

    def log(self, name: str, value: float, step: int) -> None:
        self.mlflow.log_metric(name, value, step=step)

    def log_config(self, config: dict[str, Any]) -> None:
        self.mlflow.log_params(flat(config))

    def close(self, failed: bool = False) -> None:
        if self.final:
            self.mlflow.log_metrics(self.final)
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


def open_logger(report_to: str, out: Path, master: bool = True) -> MetricLogger:
    if report_to not in REPORT_TO:
        raise KdfastError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    if not master or report_to == "none":
        return MetricLogger()
    if report_to == "tensorboard":
        return TensorBoardLogger(tensorboard_dir(out))
    return MLflowLogger(Path(out).name)


@contextmanager
def metric_logger(report_to: str, out: Path, config: dict[str, Any], master: bool = True) -> Iterator[MetricLogger]:
    """The logger for one training run, its configuration logged; closed (the run marked failed in MLflow) however
    the run ends; the scores given to ``set_final`` are logged on close."""
    logger = open_logger(report_to, out, master)
    logger.log_config(config)
    try:
        yield logger
    except BaseException:
        logger.close(failed=True)
        raise
    logger.close()
