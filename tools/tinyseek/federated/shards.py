"""Non-IID client shards of a task's training split: by language, then by intent.

A fleet does not see the task the way centralised training does: a device in a Chinese home
hears Chinese, a device without a speaker never hears music commands. So each client speaks
one language (clients are dealt to the task's languages in turn: with en and zh, the even
clients English, the odd ones Chinese) and sees only some intents: every (language, intent)
cell of the training split goes to `overlap` of that language's clients, in equal parts: the
cells, in a seeded order, to consecutive clients (cell i to clients i, i+1, ...; modulo the
language's clients), so every client gets the same number of cells (one more at most) and
its intents overlap partly with each neighbour's. With 8 clients, 2 languages and overlap 2, each client holds 7 or 8 of the
15 intents of one language.

The shards are disjoint and together cover the training split exactly (a sample is in one
shard); tests/test_federated.py checks both. A task without languages (your own data) is
one language: the clients differ by intent only.
"""
from __future__ import annotations

import numpy as np

from ..data.dataset import Dataset


class ShardError(ValueError):
    """The client count or overlap does not fit the task."""


def sample_languages(dataset: Dataset) -> np.ndarray:
    """The language of every training sample (str array): the built-in task's template table
    knows it; samples without a template (your own data, the teacher's transfer set) get ''."""
    train = dataset.train
    if dataset.name != "intents" or train.groups is None:
        return np.full(len(train.y), "", dtype=object)
    from ..data.intents import TEMPLATE_TABLE
    return np.array([TEMPLATE_TABLE[g][0] if g >= 0 else "" for g in train.groups], dtype=object)


def non_iid_shards(dataset: Dataset, clients: int, overlap: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Sorted training-split indices of each client's shard (see the module docstring)."""
    langs = sample_languages(dataset)
    languages = sorted(set(langs), key=lambda lang: (lang == "", lang))  # '' (no language) last
    if clients < len(languages):
        raise ShardError(f"{clients} client(s) cannot each speak one of the task's {len(languages)} languages "
                         f"({', '.join(lang or '(none)' for lang in languages)}): use --clients {len(languages)} or more")
    if overlap < 1:
        raise ShardError(f"overlap (clients per intent and language) must be at least 1, not {overlap}")
    y = np.asarray(dataset.train.y)
    rng = np.random.default_rng(seed)
    shards: list[list[np.ndarray]] = [[] for _ in range(clients)]
    for li, lang in enumerate(languages):
        speakers = list(range(li, clients, len(languages)))
        cover = min(overlap, len(speakers))
        cells = [c for c in np.unique(y) if np.any((langs == lang) & (y == c))]
        order = rng.permutation(len(cells))
        for pos, ci in enumerate(order):
            idx = np.flatnonzero((langs == lang) & (y == cells[ci]))
            owners = [speakers[(pos + k) % len(speakers)] for k in range(cover)]  # a sliding window
            for owner, part in zip(owners, np.array_split(idx, cover)):
                shards[owner].append(part)
    out = [np.sort(np.concatenate(s)).astype(np.int64) if s else np.zeros(0, np.int64) for s in shards]
    empty = [k for k, s in enumerate(out) if not len(s)]
    if empty:
        raise ShardError(f"client(s) {empty} would get no training sample: the task has too few (language, "
                         f"class) cells for {clients} clients with overlap {overlap}; use fewer clients or a "
                         "larger overlap")
    return out


def describe(dataset: Dataset, shards: list[np.ndarray]) -> list[dict]:
    """Per client: its samples, language(s) and classes, for the report."""
    langs, y = sample_languages(dataset), np.asarray(dataset.train.y)
    return [{"client": k, "samples": int(len(s)),
             "languages": sorted({str(v) for v in langs[s]}),
             "classes": [dataset.labels[c] for c in np.unique(y[s])]} for k, s in enumerate(shards)]
