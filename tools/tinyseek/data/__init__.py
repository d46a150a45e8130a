"""Tasks -> Dataset: the built-in smart-home intents (en/zh) or your own JSONL / NPZ files."""
from __future__ import annotations

from ..config import TaskConfig
from .dataset import DataError, Dataset, Split

__all__ = ["DataError", "Dataset", "Split", "load_task", "load_transcripts"]


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


def load_transcripts(cfg: TaskConfig, cache_dir=None) -> Dataset | None:
    """An audio task's transcripts as a text task, clip for clip in load_task's order: what the
    teacher reads in cross-modal distillation. None where the task is not audio or any clip has
    no transcript (the teacher then reads the front end's features, like any sequence task)."""
    if cfg.kind != "audio":
        return None
    from ..audio.data import load_audio
    labels, splits = load_audio(cfg, cache_dir)
    if not all(t for s in splits.values() for t in s.texts):
        return None
    parts = {name: Split(y=s.y, texts=list(s.texts), x=None) for name, s in splits.items()}
    return Dataset(name="transcripts", kind="text", labels=list(labels), split_by="samples" if cfg.train else "voices",
                   **parts)
