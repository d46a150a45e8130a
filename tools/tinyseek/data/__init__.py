"""Tasks -> Dataset: the built-in smart-home intents (en/zh) or your own JSONL / NPZ files."""
from __future__ import annotations

from ..config import TaskConfig
from .dataset import DataError, Dataset, Split

__all__ = ["DataError", "Dataset", "Split", "load_task", "load_task_and_transcripts"]


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
        return load_task_and_transcripts(cfg, cache_dir)[0]
    raise DataError(f"task.kind must be intents, jsonl, npz or audio, not {cfg.kind!r}")


def load_task_and_transcripts(cfg: TaskConfig, cache_dir=None) -> tuple[Dataset, Dataset | None]:
    """load_task's Dataset and, for an audio task whose every clip has a transcript, the
    transcripts as a text task, clip for clip (what the teacher reads in cross-modal
    distillation); None otherwise. An audio task's clips are read once for both."""
    if cfg.kind != "audio":
        return load_task(cfg, cache_dir), None
    from ..audio.data import feature_dataset, load_audio, transcript_dataset
    labels, splits = load_audio(cfg, cache_dir)
    split_by = "samples" if cfg.train else "voices"
    return (feature_dataset(labels, splits, split_by=split_by, frames_per_step=cfg.frames_per_step),
            transcript_dataset(labels, splits, split_by))
