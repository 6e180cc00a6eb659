"""The one exception a user can cause. The CLI prints it as a single ``error: ...`` line and exits non-zero."""


class KdfastError(Exception):
    """A problem with the user's input (a path, a file, a flag), as opposed to a bug in kdfast."""
