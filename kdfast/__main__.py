"""``python -m kdfast``: the same as the ``kdfast`` command."""

from kdfast.cli.main import main

main()
