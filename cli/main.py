"""The ``kdfast`` command. Each command module registers its commands on ``app``; this module only turns a user's
mistake (a ``KdfastError`` or a bad flag) into one ``error: ...`` line and a non-zero exit, without a traceback."""

from __future__ import annotations

import sys

import typer

from kdfast.errors import KdfastError

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

app = typer.Typer(
    name="kdfast",
    help="LoRA-tune GPT-2 on CoLA, distil it into a small RNN, make both fast, export and benchmark them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train the LoRA teacher (lora) or the RNN student from labels alone (rnn).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")

from kdfast.cli import bench, distill, evaluate, export, generate, pipeline, predict, serve, train  # noqa: E402,F401  (register commands)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except KdfastError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except _ABORTS:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except _CLI_ERRORS as e:
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2) or 2)
    sys.exit(code if isinstance(code, int) else 0)
