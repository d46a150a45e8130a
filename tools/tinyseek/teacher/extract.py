"""Knowledge extraction: run the adapted teacher over every split once and cache what the
student learns from in `<run>/knowledge.safetensors`.

Per split `s` in train, val, test:
  `s.logits`         float32 [N, C]  the classifier's logits
  `s.hidden.<l>`     float32 [N, D]  layer l's hidden states, mean-pooled over real tokens
  `s.attn.<l>`       float16 [N, T, T] (only with cfg.attentions) layer l's attention,
                     averaged over heads; T is the split's longest input (in teacher tokens for
                     text), rows and columns of padding are 0, so each real row sums to 1
Metadata: `layers` (comma-separated), `num_classes`, `teacher_hash` (of `<run>/teacher/`).

Large teachers: the weights load in cfg.dtype on cfg.device (see load.py); batches run under
inference mode; forward hooks pool the chosen layers as the decoder runs, so a batch never
holds every layer's hidden states (nor attention maps, unless asked for). Results are written
in shards of cfg.shard_size samples, `<run>/knowledge.parts/<split>-<k>.safetensors`, each
stamped with a hash of the teacher, its inputs and the settings. A rerun after an
interruption keeps every shard whose stamp matches and recomputes the rest (a truncated or
corrupt shard with a warning); when all are there they are merged into the file above and
the parts folder is removed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from .classifier import TeacherClassifier, load_adapted, mean_pool, split_inputs, trim
from ..progress import Progress
from .load import TeacherError, use_threads

SPLITS = ("train", "val", "test")
KNOWLEDGE_FILE = "knowledge.safetensors"
PARTS_DIR = "knowledge.parts"
EXTRACTION_FILE = "extraction.json"
SHARD_FORMAT = "1"  # part of every shard's stamp: a change of layout invalidates old shards


def default_layers(num_layers: int) -> list[int]:
    """Three layers evenly spaced through the depth, ending at the last one:
    round(L/3), round(2L/3), L (halves round up), without duplicates and never 0.

    Layer numbers index `hidden_states`: 0 is the embedding output, l (1..L) the output of
    decoder layer l (L: after the final norm). So 36 layers give 12, 24, 36; 4 give 1, 3, 4;
    2 give 1, 2; 1 gives 1.
    """
    return sorted({max(1, math.floor(num_layers * k / 3 + 0.5)) for k in (1, 2, 3)})


def select_layers(requested: list[int], num_layers: int) -> list[int]:
    """The layers to cache: `requested` (sorted, without duplicates) or, if empty, the default."""
    if not requested:
        return default_layers(num_layers)
    bad = [v for v in requested if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= num_layers]
    if bad:
        raise TeacherError(
            f"teacher.layers {bad} out of range: this teacher has {num_layers} layers, so valid layers are "
            f"0 (the embeddings) to {num_layers} (the last layer)")
    return sorted(set(requested))


def load_for_extraction(teacher_dir: Path, dtype: str = "auto", device: str = "auto"):
    """(TeacherClassifier in eval mode, tokenizer, teacher.json) of `<run>/teacher/`, as the
    extraction runs it: classifier.load_adapted with the backbone in `dtype` on `device`."""
    return load_adapted(teacher_dir, dtype, device)


def head_logits(model: TeacherClassifier, last_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits [B, C] of a teacher with a head, from the decoder's last hidden state [B, T, D].
    A teacher without one (teacher.labels = "zero-shot") gets its logits per shard from
    verbalize.zero_shot_from_meta instead (see `_run_shard`)."""
    return model.head(mean_pool(last_hidden.float(), mask))


@contextmanager
def _layer_hooks(model: TeacherClassifier, layers: list[int], attn_layers: list[int], mask_box: list):
    """Forward hooks that keep, per batch, only what is cached: layer l's hidden states
    mean-pooled (l < L; layer L, after the final norm, is the decoder's last_hidden_state)
    and, for `attn_layers`, the head-averaged attention. `mask_box[0]` is the batch's mask.
    Yields the dict the hooks fill: `hidden.<l>` [B, D] and `attn.<l>` [B, T, T], float32."""
    decoder = model.backbone.base_model
    blocks, captured, handles = decoder.layers, {}, []

    def pool_input(l):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[f"hidden.{l}"] = mean_pool(hidden.float(), mask_box[0])
        return hook

    def pool_output(l):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            captured[f"hidden.{l}"] = mean_pool(hidden.float(), mask_box[0])
        return hook

    def keep_attention(l):
        def hook(module, args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise TeacherError("the teacher's attention returned no weights; attention maps need the eager "
                                   "attention implementation")
            real = mask_box[0].to(torch.float32)
            captured[f"attn.{l}"] = weights.float().mean(1) * real[:, :, None] * real[:, None, :]
        return hook

    try:
        for l in layers:
            if l == 0:
                handles.append(blocks[0].register_forward_pre_hook(pool_input(l), with_kwargs=True))
            elif l < len(blocks):
                handles.append(blocks[l - 1].register_forward_hook(pool_output(l)))
        for l in attn_layers:
            handles.append(blocks[l - 1].self_attn.register_forward_hook(keep_attention(l)))
        yield captured
    finally:
        for h in handles:
            h.remove()


def _empty_split(hidden: int, num_classes: int, layers: list[int], attn_layers: list[int]) -> dict[str, np.ndarray]:
    out = {"logits": np.zeros((0, num_classes), np.float32)}
    out.update({f"hidden.{l}": np.zeros((0, hidden), np.float32) for l in layers})
    out.update({f"attn.{l}": np.zeros((0, 0, 0), np.float16) for l in attn_layers})
    return out


@dataclass
class _Shard:
    split: str
    index: int
    path: Path
    stamp: str
    shapes: dict[str, tuple]
    inputs: torch.Tensor  # this shard's rows of the split's inputs and mask
    mask: torch.Tensor
    texts: list[str] | None  # text tasks: the shard's texts (zero-shot logits prompt them)
    t_max: int  # the split's longest input: the attention maps' size


class _Both:
    """The terminal's bar and the log's progress lines, counted together."""

    def __init__(self, bar, progress):
        self.bar, self.progress = bar, progress

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.progress.step(n)


def _run_shard(model, shard: _Shard, layers: list[int], attn_layers: list[int], batch_size: int, bar,
               zero_shot: Callable[[list[str]], np.ndarray] | None) -> dict[str, np.ndarray]:
    """The cached tensors of one shard's samples. Logits come from `head_logits` per batch,
    or with `zero_shot` (a teacher without a head) from its scoring of the shard's texts."""
    n, device, t_max = len(shard.mask), model.backbone.device, shard.t_max
    last = model.backbone.config.num_hidden_layers
    out = {"logits": np.zeros(shard.shapes["logits"], np.float32)}
    out.update({f"hidden.{l}": np.zeros((n, model.backbone.config.hidden_size), np.float32) for l in layers})
    out.update({f"attn.{l}": np.zeros((n, t_max, t_max), np.float16) for l in attn_layers})
    mask_box = [None]
    with torch.inference_mode(), _layer_hooks(model, layers, attn_layers, mask_box) as captured:
        for start in range(0, n, batch_size):
            inp, m = trim(shard.inputs[start:start + batch_size], shard.mask[start:start + batch_size])
            inp, m = inp.to(device), m.to(device)
            if inp.is_floating_point():
                inp = inp.to(model.backbone.dtype)
            mask_box[0] = m
            stop, t = start + len(m), m.shape[1]
            captured.clear()
            last_hidden = model.encode(inp, m).last_hidden_state
            if zero_shot is None:
                out["logits"][start:stop] = head_logits(model, last_hidden, m).cpu().numpy()
            if last in layers:
                captured[f"hidden.{last}"] = mean_pool(last_hidden.float(), m)
            for l in layers:
                out[f"hidden.{l}"][start:stop] = captured[f"hidden.{l}"].cpu().numpy()
            for l in attn_layers:
                out[f"attn.{l}"][start:stop, :t, :t] = captured[f"attn.{l}"].to(torch.float16).cpu().numpy()
            bar.update(stop - start)
    if zero_shot is not None:  # its own forward passes (prompted texts), without the layer hooks
        out["logits"] = zero_shot(shard.texts)
    return out


def hash_folder(folder: Path, chunk: int = 1 << 24) -> str:
    """pipeline.hash_files(folder), read in chunks of `chunk` bytes: a 7B teacher's weights are
    one 14 GB file, which must not be read into memory whole next to the loaded model."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.name.encode())
        with f.open("rb") as stream:
            while block := stream.read(chunk):
                h.update(block)
    return h.hexdigest()


def _content_hash(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(f"{key}:{tensors[key].dtype.str}:{tensors[key].shape}".encode())
        h.update(np.ascontiguousarray(tensors[key]).tobytes())
    return h.hexdigest()


def _read_shard(path: Path, stamp: str, shapes: dict[str, tuple]) -> dict[str, np.ndarray] | None:
    """The shard's tensors if it is whole and was made for `stamp`, else None (with a warning
    when the file is there but truncated or corrupt; a shard of other inputs or settings is
    simply stale)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            if meta.get("stamp") != stamp:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        warnings.warn(f"cache shard {path} is unreadable ({e}); extracting it again", stacklevel=3)
        return None
    if {k: v.shape for k, v in tensors.items()} != shapes or meta.get("content") != _content_hash(tensors):
        warnings.warn(f"cache shard {path} is corrupt (its tensors do not match its checksum); extracting it again",
                      stacklevel=3)
        return None
    return tensors


def _write_shard(path: Path, tensors: dict[str, np.ndarray], stamp: str) -> None:
    # Written under another name and renamed: an interruption never leaves a half-written shard
    # under the final name.
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"stamp": stamp, "content": _content_hash(tensors)})
    os.replace(tmp, path)


def _shard_stamp(settings: dict, split: str, start: int, inputs: torch.Tensor, mask: torch.Tensor) -> str:
    h = hashlib.sha256(json.dumps({**settings, "split": split, "start": start}, sort_keys=True).encode())
    h.update(inputs.contiguous().numpy().tobytes())
    h.update(mask.contiguous().numpy().tobytes())
    return h.hexdigest()


def extract(dataset, cfg, run_dir: str | Path, batch_size: int = 64,
            on_shard: Callable[[str, int, Path], None] | None = None, log: Callable[[str], None] = print) -> Path:
    """Cache the adapted teacher's knowledge of every split in `<run_dir>/knowledge.safetensors`.

    Layers: `cfg.layers`, or `default_layers` of the teacher's depth when empty. Attention
    maps (cfg.attentions) are cached for the chosen layers >= 1 only: layer 0 is the
    embedding output, which has none. The teacher runs in cfg.dtype on cfg.device, in
    batches of `batch_size`; results go to shards of cfg.shard_size samples first (see the
    module docstring), so a rerun after an interruption only computes the missing ones.
    cfg.engine = "ray" computes the shards on Ray actors instead (ray_engine.py), with the
    same files and the same merge. `on_shard(split, index, path)` is called after each shard
    computed and written. `<run_dir>/extraction.json` records where it ran. Returns the
    file's path.
    """
    if cfg.engine == "ray":
        from .ray_engine import extract_on_ray
        return extract_on_ray(dataset, cfg, run_dir, batch_size, on_shard, log)
    t0 = time.monotonic()
    threads = use_threads(cfg.threads)
    run_dir = Path(run_dir)
    teacher_dir = run_dir / "teacher"
    model, tokenizer, meta = load_for_extraction(teacher_dir, cfg.dtype, cfg.device)
    check_task(meta, dataset, teacher_dir)
    num_layers = model.backbone.config.num_hidden_layers
    layers = select_layers(list(cfg.layers), num_layers)
    attn_layers = [l for l in layers if l > 0] if cfg.attentions else []
    hidden, num_classes = model.backbone.config.hidden_size, len(meta["labels"])
    zero_shot = None
    if model.head is None:
        from .verbalize import zero_shot_from_meta
        zero_shot = lambda texts: zero_shot_from_meta(model, tokenizer, texts, meta, batch_size)  # noqa: E731
    teacher_hash = hash_folder(teacher_dir)
    settings = shard_settings(teacher_hash, layers, attn_layers, model.backbone.dtype, model.backbone.device.type,
                              batch_size, cfg.shard_size)
    plan = plan_shards(dataset, lambda split: split_inputs(tokenizer, split, dataset.kind, meta["max_tokens"]),
                       settings, run_dir / PARTS_DIR, cfg.shard_size, layers, attn_layers, hidden, num_classes)
    done = kept_shards(plan)
    todo = sum(len(s.mask) for i, s in enumerate(plan) if i not in done)
    progress = Progress("teacher extract", todo, probe=min(todo, 4 * batch_size), units="samples")
    with tqdm(total=sum(len(s.mask) for s in plan), initial=sum(len(plan[i].mask) for i in done), unit="sample",
              desc="teacher extract", leave=False, disable=None) as bar:  # None: off without a terminal
        for i, shard in enumerate(plan):
            if i in done:
                continue
            done[i] = _run_shard(model, shard, layers, attn_layers, batch_size, _Both(bar, progress), zero_shot)
            _write_shard(shard.path, done[i], shard.stamp)
            if on_shard is not None:
                on_shard(shard.split, shard.index, shard.path)
    write_record(run_dir, plan, computed=todo, engine="local", workers=1, threads=threads,
                 devices=[device_name(model.backbone.device)], redone=[], seconds=time.monotonic() - t0)
    return merge_shards(plan, done, run_dir, layers, attn_layers, hidden, num_classes, teacher_hash)


def check_task(meta: dict, dataset, teacher_dir: Path) -> None:
    """The teacher in `teacher_dir` (its teacher.json `meta`) was adapted to this task."""
    if list(meta["labels"]) != list(dataset.labels) or meta["kind"] != dataset.kind:
        raise TeacherError(
            f"the teacher in {teacher_dir} was adapted to a {meta['kind']} task with labels {meta['labels']}, "
            f"not to this {dataset.kind} task with labels {list(dataset.labels)}; run `tinyseek teacher --force`")


def shard_settings(teacher_hash: str, layers: list[int], attn_layers: list[int], dtype, device_type: str,
                   batch_size: int, shard_size: int) -> dict:
    """What every shard's stamp holds besides its inputs. The teacher's files include
    teacher.json: its labelling settings (head or zero-shot prompt and verbalisers) and, for
    lora/none, the base model's fingerprint."""
    return {"format": SHARD_FORMAT, "teacher": teacher_hash, "layers": layers, "attn_layers": attn_layers,
            "dtype": str(dtype), "device": device_type, "batch_size": batch_size, "shard_size": shard_size}


def plan_shards(dataset, inputs_of: Callable, settings: dict, parts: Path, shard_size: int, layers: list[int],
                attn_layers: list[int], hidden: int, num_classes: int) -> list[_Shard]:
    """Every split's shards, in order, each with its file, stamp, shapes and inputs.
    `inputs_of(split)` is the split's (inputs, mask) as the teacher reads them."""
    parts.mkdir(parents=True, exist_ok=True)
    plan: list[_Shard] = []
    for name in SPLITS:
        split = getattr(dataset, name)
        if len(split.y) == 0:
            continue
        inputs, mask = inputs_of(split)
        t_max = mask.shape[1]
        for k, start in enumerate(range(0, len(split.y), shard_size)):
            rows = slice(start, start + shard_size)
            n = len(mask[rows])
            shapes = {"logits": (n, num_classes), **{f"hidden.{l}": (n, hidden) for l in layers},
                      **{f"attn.{l}": (n, t_max, t_max) for l in attn_layers}}
            # Copies, not views: a pickled view carries its whole split, and Ray pickles each
            # shard it hands out.
            rows_in, rows_mask = inputs[rows].clone(), mask[rows].clone()
            plan.append(_Shard(name, k, parts / f"{name}-{k:05d}.safetensors",
                               _shard_stamp({**settings, "t_max": t_max}, name, start, rows_in, rows_mask),
                               shapes, rows_in, rows_mask,
                               list(split.texts[rows]) if dataset.kind == "text" else None, t_max))
    return plan


def kept_shards(plan: list[_Shard]) -> dict[int, dict[str, np.ndarray]]:
    """The tensors of the plan's shards already on disk, whole and of these inputs, by index."""
    return {i: t for i, shard in enumerate(plan) if (t := _read_shard(shard.path, shard.stamp, shard.shapes)) is not None}


def merge_shards(plan: list[_Shard], done: dict[int, dict[str, np.ndarray]], run_dir: Path, layers: list[int],
                 attn_layers: list[int], hidden: int, num_classes: int, teacher_hash: str) -> Path:
    """Merge every shard's tensors (`done`, emptied as it goes) into knowledge.safetensors and
    remove the parts folder."""
    tensors: dict[str, np.ndarray] = {}
    for name in SPLITS:
        shards = [done.pop(i) for i, shard in enumerate(plan) if shard.split == name]  # freed once merged
        part = ({key: np.concatenate([s[key] for s in shards]) for key in shards[0]} if shards
                else _empty_split(hidden, num_classes, layers, attn_layers))
        tensors.update({f"{name}.{key}": np.ascontiguousarray(v) for key, v in part.items()})
    path = run_dir / KNOWLEDGE_FILE
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={
        "layers": ",".join(str(l) for l in layers), "num_classes": str(num_classes), "teacher_hash": teacher_hash})
    sort_metadata(tmp)
    os.replace(tmp, path)
    shutil.rmtree(run_dir / PARTS_DIR)
    return path


def sort_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata keys sorted. safetensors writes the
    metadata from a hash map, in an order that changes from one process to the next, so the same
    tensors and metadata came out as different bytes; sorted, the same knowledge is the same
    file. The header keeps its length (the same keys and values, only reordered)."""
    with open(path, "r+b") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            raise ValueError(f"{path}: the reordered safetensors header grew ({len(text)} > {size} bytes)")
        f.seek(8)
        f.write(text.ljust(size, b" "))


def device_name(device: torch.device) -> str:
    """"cpu", or "cuda:N (the GPU's name)"."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def write_record(run_dir: Path, plan: list[_Shard], computed: int, engine: str, workers: int, threads: int,
                 devices: list[str], redone: list[str], seconds: float, **extra) -> None:
    """`<run_dir>/extraction.json`: where the last extraction ran (the report shows it). Not in
    the knowledge file, which is the same whatever the engine."""
    record = {"engine": engine, **extra, "workers": workers, "threads_per_worker": threads, "devices": devices,
              "shards": len(plan), "samples": sum(len(s.mask) for s in plan), "samples_computed": computed,
              "shards_redone": redone, "seconds": round(seconds, 3)}
    (run_dir / EXTRACTION_FILE).write_text(json.dumps(record, indent=2) + "\n")


def teacher_accuracy(knowledge_path: str | Path, dataset) -> dict[str, float]:
    """Accuracy of the cached teacher logits per split, and `accuracy` = the test accuracy."""
    cache = load_file(str(knowledge_path))
    result = {}
    for name in SPLITS:
        y = np.asarray(getattr(dataset, name).y)
        logits = cache.get(f"{name}.logits")
        if logits is None or len(logits) != len(y):
            raise TeacherError(f"{knowledge_path} does not match the task's {name} split "
                               f"({len(y)} samples); run `tinyseek teacher --force`")
        labelled = y >= 0  # UNLABELED samples (a zero-shot teacher labels them) do not count
        result[name] = float(np.mean(logits.argmax(1)[labelled] == y[labelled])) if labelled.any() else 0.0
    result["accuracy"] = result["test"]
    return result
