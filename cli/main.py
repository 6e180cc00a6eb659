"""The ``kdfast`` command. Each command module registers its commands on ``app``; this module only turns a user's
mistake (a ``KdfastError`` or a bad flag) into one ``error: ...`` line and a non-zero exit, without a traceback."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

import typer

from kdfast.errors import KdfastError, first_line

# Typer >= 0.26 carries its own copy of click, whose exceptions derive from typer.TyperException; older Typers raise
# click's own. A bad flag is a user's mistake either way.
_CLI_ERRORS: tuple[type[Exception], ...] = tuple(
    e for e in (getattr(typer, "TyperException", None),) if isinstance(e, type)
)
try:
    import click

    _CLI_ERRORS += (click.ClickException,)
    _ABORTS: tuple[type[BaseException], ...] = (typer.Abort, click.Abort, KeyboardInterrupt)
except ImportError:  # pragma: no cover
    _ABORTS = (typer.Abort, KeyboardInterrupt)

RANK_ERROR_GRACE_S = 2.0  # see _fail

app = typer.Typer(
    name="kdfast",
    help="LoRA-tune GPT-2 (or any classifier) on CoLA or your data, distil it into a small RNN, make both fast, "
         "export, benchmark and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train the LoRA teacher (lora) or the RNN student from labels alone (rnn).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")

from kdfast.cli import bench, distill, evaluate, export, generate, pipeline, predict, serve, train  # noqa: E402,F401  (register commands)


def _fail(message: str, code: int) -> None:
    """Print one ``error:`` line and exit. Under torchrun, ranks other than 0 wait a moment first: when rank 0
    failed the same way (a bad flag fails on every rank), torchrun stops them meanwhile and the job prints the
    error once; when they alone failed, they print it and torchrun stops the others."""
    if int(os.environ.get("RANK", "0")) > 0:
        time.sleep(RANK_ERROR_GRACE_S)
    print(message, file=sys.stderr)
    sys.exit(code)


_stopped: list[int] = []  # the signal that stopped this run: Typer turns the KeyboardInterrupt into exit code 130


def _stop_on_signals(main_pid: int) -> dict[int, Any]:
    """SIGINT and SIGTERM recorded, then raised as KeyboardInterrupt in the main process where they landed, so that
    the run unwinds as after Ctrl-C (staged writes removed; ``kdfast serve`` installs its own handlers); returns the
    handlers they replaced. A forked child (a data-loader worker) keeps the old behaviour; a second SIGTERM ends the
    process at once. Nothing is installed off the main thread or where the caller ignores the signal."""
    def handler(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if os.getpid() != main_pid:
            if signum == signal.SIGTERM:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            raise KeyboardInterrupt
        _stopped.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum, default in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(signum) == default:
            previous[signum] = signal.signal(signum, handler)
    return previous


def _stopped_by_signal() -> None:
    """One error line for the signal that stopped the run, and its exit code (128 + the signal: 130, 143). A rank
    that torchrun stopped for another's failure says nothing: that failure was said where it happened."""
    signum = _stopped[0]
    code = 128 + signum
    if signum == signal.SIGTERM and "TORCHELASTIC_RUN_ID" in os.environ:
        sys.exit(code)
    _fail("error: terminated" if signum == signal.SIGTERM else "error: interrupted", code)


def main() -> None:
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 alone prints
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
    _stopped.clear()
    previous = _stop_on_signals(os.getpid())
    try:
        code = app(standalone_mode=False)
    except KdfastError as e:
        _fail(f"error: {e}", 2)
    except _ABORTS:  # Typers that let the KeyboardInterrupt through
        if _stopped:
            _stopped_by_signal()
        _fail("error: interrupted", 130)
    except _CLI_ERRORS as e:
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        _fail(f"error: {message}", getattr(e, "exit_code", 2) or 2)
    except RuntimeError as e:  # torch.OutOfMemoryError (named, so that this module need not import torch)
        if type(e).__name__ != "OutOfMemoryError":
            raise
        _fail(f"error: out of memory ({first_line(e)}); try a smaller --batch-size, or --grad-accum", 1)
    finally:
        for signum, handler in previous.items():  # main() run in-process (tests) leaves the caller's handlers
            signal.signal(signum, handler)
    if _stopped:
        _stopped_by_signal()
    sys.exit(code if isinstance(code, int) else 0)
