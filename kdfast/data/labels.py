"""Label values as read from a file (integers or strings) to ids, through names fixed from the training split.

Integer labels keep their numeric order (``0, 1, 2`` → names ``"0", "1", "2"``); string labels are sorted, so the
same training file always gives the same ids. A dev label that train never had, one class only, or integers mixed
with strings are errors that name the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kdfast.errors import KdfastError

_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class RawLabel:
    value: int | str
    where: str  # "path:line", for errors


def parse_label(value: object, where: str) -> RawLabel:
    """A label cell as an int (``"3"``, ``3``) or a stripped string; empty, bool, float or nested values are errors."""
    if isinstance(value, bool) or value is None or isinstance(value, float | list | dict):
        raise KdfastError(f"{where}: label must be an integer or a string, found {value!r}")
    if isinstance(value, int):
        return RawLabel(value, where)
    text = str(value).strip()
    if not text:
        raise KdfastError(f"{where}: empty label")
    return RawLabel(int(text) if _INT.fullmatch(text) else text, where)


def label_names(raw: list[RawLabel], source: str) -> list[str]:
    """The names of the classes in ``raw`` (the training split), in id order."""
    if not raw:
        raise KdfastError(f"{source}: no rows")
    first = raw[0]
    for r in raw:
        if isinstance(r.value, int) != isinstance(first.value, int):
            kinds = {True: "an integer", False: "a string"}
            raise KdfastError(f"{r.where}: label {r.value!r} is {kinds[isinstance(r.value, int)]}, but the first "
                              f"label ({first.where}: {first.value!r}) is {kinds[isinstance(first.value, int)]}; "
                              "labels must be all integers or all strings")
    values = sorted({r.value for r in raw})  # type: ignore[type-var]  # all int or all str, checked above
    if len(values) < 2:
        raise KdfastError(f"{source}: every label is {values[0]!r}; a classifier needs at least two classes")
    return [str(v) for v in values]


def label_ids(raw: list[RawLabel], names: list[str], split: str) -> list[int]:
    """Ids of ``raw`` under ``names``; a label that is not among them is an error naming its file and line."""
    index = {n: i for i, n in enumerate(names)}
    ids = []
    for r in raw:
        i = index.get(str(r.value))
        if i is None:
            shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise KdfastError(f"{r.where}: {split} label {r.value!r} does not occur in train (its labels: {shown})")
        ids.append(i)
    return ids
