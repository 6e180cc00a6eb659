"""What every stage reads: a single-sentence classification dataset with named labels.

Named as Hugging Face ``datasets`` names things: each example has a ``text`` and a ``label`` (an id), the splits are
``train`` and ``dev`` (the ``validation`` split), and the label names (``ClassLabel.names``) are kept beside the
ids: ``labels[i]`` is the name of id ``i``. The mapping is fixed from the training split and saved in every run
folder, so that every later stage (eval, export, bench, predict) reads ids the same way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kdfast.errors import KdfastError


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # an id into the dataset's ``labels``
    in_domain: bool = True  # CoLA only: dev splits into in-domain and out-of-domain halves


@dataclass
class Dataset:
    """The train and dev splits of a dataset, and its label names (``labels[id]``)."""

    train: list[Example]
    dev: list[Example]
    labels: list[str]
    source: str  # where it came from, as the user named it (``cola``, a path, ``hub:NAME``)
    halves: bool = False  # dev has in-domain and out-of-domain halves (CoLA), each scored on its own

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def dev_in_domain(self) -> list[Example]:
        return [e for e in self.dev if e.in_domain]

    @property
    def dev_out_of_domain(self) -> list[Example]:
        return [e for e in self.dev if not e.in_domain]

    def dev_targets(self) -> Targets:
        """Dev's label ids (N,) and, for a dataset with halves, which sentences are in-domain (N,) (else None)."""
        return targets(self.dev, self.halves)

    def summary(self, train: Sequence[Example] | None = None) -> dict[str, object]:
        """What a run's ``metrics.json`` records of its data (``train``: the subset actually trained on)."""
        out: dict[str, object] = {"source": self.source, "labels": self.labels,
                                  "train": len(self.train if train is None else train), "dev": len(self.dev)}
        if self.halves:
            out.update(dev_in_domain=len(self.dev_in_domain), dev_out_of_domain=len(self.dev_out_of_domain))
        return out


Targets = tuple[np.ndarray, "np.ndarray | None"]  # label ids (N,), in-domain flags (N,) or None: what is scored


def targets(examples: Sequence[Example], halves: bool) -> Targets:
    """The label ids of ``examples`` and, when the data has halves (CoLA), their in-domain flags."""
    labels = np.array([e.label for e in examples], dtype=np.int64)
    return labels, (np.array([e.in_domain for e in examples], dtype=bool) if halves else None)


def subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """A seeded random subset of ``n`` examples (all of them when ``n`` is None or too large), order kept."""
    if n is None or n >= len(examples):
        return list(examples)
    if n <= 0:
        raise KdfastError(f"--max-train-samples must be positive, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]
