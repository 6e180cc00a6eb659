"""The one exception a user can cause. The CLI prints it as a single ``error: ...`` line and exits non-zero."""


class KdfastError(Exception):
    """A problem with the user's input (a path, a file, a flag), as opposed to a bug in kdfast."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to many lines), or its type."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise a KdfastError with the message of the first check that failed (a config's ``validate``)."""
    for ok, message in checks:
        if not ok:
            raise KdfastError(message)
