"""Tasks -> Dataset: the built-in smart-home intents (en/zh) or your own JSONL / NPZ files."""
from __future__ import annotations

from ..config import TaskConfig
from .dataset import DataError, Dataset, Split

__all__ = ["DataError", "Dataset", "Split", "load_task"]


def load_task(cfg: TaskConfig, cache_dir=None) -> Dataset:
    """The Dataset a task configuration describes; raises DataError on bad data. cache_dir:
    where an audio task keeps its synthesised clips (None: made again each time)."""
    if cfg.kind == "intents":
        from .intents import generate
        return generate(cfg.languages, cfg.samples_per_intent, cfg.val_fraction, cfg.seed)
    if cfg.kind == "jsonl":
        from .byo import load_jsonl
        return load_jsonl(cfg)
    if cfg.kind == "npz":
        from .byo import load_npz
        return load_npz(cfg)
    if cfg.kind == "audio":
        from ..audio.data import feature_dataset, load_audio
        labels, splits = load_audio(cfg, cache_dir)
        return feature_dataset(labels, splits, split_by="samples" if cfg.train else "voices",
                               frames_per_step=cfg.frames_per_step)
    raise DataError(f"task.kind must be intents, jsonl, npz or audio, not {cfg.kind!r}")
