"""The Typer command line, installed as ``kdfast.cli``: it parses and prints, ``kdfast`` does the work."""
