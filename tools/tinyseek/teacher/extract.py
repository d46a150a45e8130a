"""Knowledge extraction: run the adapted teacher over every split once and cache what the
student learns from in `<run>/knowledge.safetensors`.

Per split `s` in train, val, test:
  `s.logits`         float32 [N, C]  the classifier's logits
  `s.hidden.<l>`     float32 [N, D]  layer l's hidden states, mean-pooled over real tokens
  `s.attn.<l>`       float16 [N, T, T] (only with cfg.attentions) layer l's attention,
                     averaged over heads; T is the split's longest input (in teacher tokens for
                     text), rows and columns of padding are 0, so each real row sums to 1
Metadata: `layers` (comma-separated), `num_classes`, `teacher_hash` (of `<run>/teacher/`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from .classifier import load_adapted, mean_pool, split_inputs, trim
from .load import TeacherError

SPLITS = ("train", "val", "test")
KNOWLEDGE_FILE = "knowledge.safetensors"


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


@torch.no_grad()
def _split_knowledge(model, tokenizer, split, kind: str, layers: list[int], attentions: bool,
                     max_tokens: int, batch_size: int) -> dict[str, np.ndarray]:
    n = len(split.y)
    hidden = model.backbone.config.hidden_size
    num_classes = model.head.out_features
    if n == 0:
        out = {"logits": np.zeros((0, num_classes), np.float32)}
        out.update({f"hidden.{l}": np.zeros((0, hidden), np.float32) for l in layers})
        if attentions:
            out.update({f"attn.{l}": np.zeros((0, 0, 0), np.float16) for l in layers if l > 0})
        return out
    inputs, mask = split_inputs(tokenizer, split, kind, max_tokens)
    t_max = mask.shape[1]
    logits = torch.zeros(n, num_classes)
    pooled = {l: torch.zeros(n, hidden) for l in layers}
    attn = {l: torch.zeros(n, t_max, t_max, dtype=torch.float16) for l in layers if l > 0} if attentions else {}
    for start in range(0, n, batch_size):
        inp, m = trim(inputs[start:start + batch_size], mask[start:start + batch_size])
        stop, t = start + len(m), m.shape[1]
        out = model.encode(inp, m, output_hidden_states=True, output_attentions=attentions)
        logits[start:stop] = model.head(mean_pool(out.last_hidden_state, m))
        for l in layers:
            pooled[l][start:stop] = mean_pool(out.hidden_states[l], m)
        for l in attn:
            real = m.to(torch.float32)
            a = out.attentions[l - 1].mean(1) * real[:, :, None] * real[:, None, :]
            attn[l][start:stop, :t, :t] = a.to(torch.float16)
    result = {"logits": logits.numpy()}
    result.update({f"hidden.{l}": v.numpy() for l, v in pooled.items()})
    result.update({f"attn.{l}": v.numpy() for l, v in attn.items()})
    return result


def extract(dataset, cfg, run_dir: str | Path, batch_size: int = 64) -> Path:
    """Cache the adapted teacher's knowledge of every split in `<run_dir>/knowledge.safetensors`.

    Layers: `cfg.layers`, or `default_layers` of the teacher's depth when empty. Attention
    maps (cfg.attentions) are cached for the chosen layers >= 1 only: layer 0 is the
    embedding output, which has none. Returns the file's path.
    """
    from ..pipeline import hash_files

    torch.set_num_threads(min(2, torch.get_num_threads()))
    run_dir = Path(run_dir)
    teacher_dir = run_dir / "teacher"
    model, tokenizer, meta = load_adapted(teacher_dir)
    if list(meta["labels"]) != list(dataset.labels) or meta["kind"] != dataset.kind:
        raise TeacherError(
            f"the teacher in {teacher_dir} was adapted to a {meta['kind']} task with labels {meta['labels']}, "
            f"not to this {dataset.kind} task with labels {list(dataset.labels)}; run `tinyseek teacher --force`")
    layers = select_layers(list(cfg.layers), model.backbone.config.num_hidden_layers)
    tensors: dict[str, np.ndarray] = {}
    for name in SPLITS:
        part = _split_knowledge(model, tokenizer, getattr(dataset, name), dataset.kind, layers,
                                cfg.attentions, meta["max_tokens"], batch_size)
        tensors.update({f"{name}.{k}": np.ascontiguousarray(v) for k, v in part.items()})
    path = run_dir / KNOWLEDGE_FILE
    save_file(tensors, str(path), metadata={
        "layers": ",".join(str(l) for l in layers), "num_classes": str(len(dataset.labels)),
        "teacher_hash": hash_files(teacher_dir)})
    return path


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
        result[name] = float(np.mean(logits.argmax(1) == y)) if len(y) else 0.0
    result["accuracy"] = result["test"]
    return result
