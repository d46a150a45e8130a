"""The dataclasses every stage reads a task through, and the seeded splitting they share."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """A task's data is missing, malformed or inconsistent; the message names the file and the fix."""


@dataclass
class Split:
    y: np.ndarray  # int64 [N]
    texts: list[str] | None  # text tasks
    x: np.ndarray | None  # float32 [N, T, F], sequence tasks
    # Built-in tasks only: the id of the template each sample was generated from
    # (int64 [N], an index into intents.TEMPLATE_TABLE), so leakage can be checked.
    groups: np.ndarray | None = None
    # Audio tasks: the int16 clips [N, samples] x was computed from (what a device hears).
    audio: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    name: str
    kind: str  # "text" | "sequence"
    labels: list[str]
    train: Split
    val: Split
    test: Split
    # How validation (and a test split cut from the training file) were held out: "templates"
    # (built-in task), "group '<key>'" (task.group) or "samples" (stratified at random).
    split_by: str = "samples"


def stratified_holdout(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held) with round(fraction * n) of each class held out.

    Each class keeps at least one sample, so a class never vanishes from the kept part.
    Both index arrays are sorted, so the original order survives.
    """
    keep, held = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_held = min(int(len(idx) * fraction + 0.5), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(keep).astype(np.int64), cat(held).astype(np.int64)


def take(split: Split, idx: np.ndarray) -> Split:
    """The samples of `split` at `idx`, in that order."""
    return Split(
        y=split.y[idx],
        texts=[split.texts[i] for i in idx] if split.texts is not None else None,
        x=split.x[idx] if split.x is not None else None,
        groups=split.groups[idx] if split.groups is not None else None,
        audio=split.audio[idx] if split.audio is not None else None,
    )


def group_holdout(groups: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held): whole groups (speaker, template, session...) held out, in seeded
    order, until they hold round(fraction * n) samples or more; at least one group is kept.
    Both index arrays are sorted."""
    names = np.unique(groups)
    rng.shuffle(names)
    target, held_names, n_held = int(len(groups) * fraction + 0.5), [], 0
    for g in names[:-1]:
        if n_held >= target:
            break
        held_names.append(g)
        n_held += int((groups == g).sum())
    mask = np.isin(groups, held_names)
    return np.flatnonzero(~mask).astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def stratified_first(y: np.ndarray, n: int) -> np.ndarray:
    """Indices of n samples with the classes as even as they can be (each class's first ones, in
    split order; classes short of samples leave their share to the others), sorted. Unlabeled
    samples (y < 0) count as one more class."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y), dtype=np.int64)
    queues = [list(np.flatnonzero(y == c)) for c in np.unique(y)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        for q in queues:
            if depth < len(q) and len(chosen) < n:
                chosen.append(int(q[depth]))
        depth += 1
    return np.sort(np.array(chosen, dtype=np.int64))
