"""Tasks -> Dataset: the built-in smart-home intents (en/zh) or your own JSONL / NPZ files."""
from __future__ import annotations

from ..config import TaskConfig
from .dataset import DataError, Dataset, Split

__all__ = ["DataError", "Dataset", "Split", "load_task"]


def load_task(cfg: TaskConfig) -> Dataset:
    """The Dataset a task configuration describes; raises DataError on bad data."""
    if cfg.kind == "intents":
        from .intents import generate
        return generate(cfg.languages, cfg.samples_per_intent, cfg.val_fraction, cfg.seed)
    if cfg.kind == "jsonl":
        from .byo import load_jsonl
        return load_jsonl(cfg)
    if cfg.kind == "npz":
        from .byo import load_npz
        return load_npz(cfg)
    raise DataError(f"task.kind must be intents, jsonl or npz, not {cfg.kind!r}")
