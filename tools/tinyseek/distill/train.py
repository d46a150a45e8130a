"""The distill stage: train TinyLSTM on the teacher's knowledge cache -> `<run>/student/`.

The student is later quantized to int8 (docs/numerics.md): hidden state Q0.7, gate
pre-activations Q3.12 (saturating at +-8) and an int16 cell state whose range shrinks as its
precision grows. So training keeps values modest: decoupled weight decay (AdamW), gradient
clipping, and a small penalty on the cell state beyond `cell_bound`; the largest |c| the saved
student reaches on the training data is written to history.json for the quantizer to check.

The built-in task tests on phrasings never seen in training, so text training also drops
words at random (word dropout), which makes the student lean on several words, not one.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..student.tinylstm import StudentSpec, TinyLSTM, export_params, exported_state, save_student, split_inputs
from .losses import distill_loss

EVAL_BATCH = 512


class DistillError(ValueError):
    """The knowledge cache or the dataset does not fit the distillation."""


# -- knowledge cache ----------------------------------------------------------------------

def cached_layers(meta: dict[str, str] | None, keys, split: str = "train") -> list[int]:
    """The teacher layers whose hidden states are cached, in cache order: metadata `layers`
    (a JSON list or comma-separated), else the `<split>.hidden.<layer>` keys sorted."""
    raw = (meta or {}).get("layers")
    if raw is not None:
        try:
            value = json.loads(raw)
            layers = [int(v) for v in (value if isinstance(value, list) else [value])]
        except (json.JSONDecodeError, TypeError, ValueError):
            try:
                layers = [int(v) for v in raw.split(",") if v.strip()]
            except ValueError as e:
                raise DistillError(f"knowledge cache metadata 'layers' = {raw!r} is not a list of integers") from e
        return layers
    prefix = f"{split}.hidden."
    return sorted(int(k[len(prefix):]) for k in keys if k.startswith(prefix) and k[len(prefix):].isdigit())


def load_knowledge(path: str | Path, split: str, feature_layer: int | None) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """(logits [N, C], hidden [N, D] of the chosen layer or None, that layer's number).

    feature_layer indexes the cached layers (-1 = the last one); None skips the hidden states.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DistillError(f"knowledge cache {path} is missing: run `tinyseek teacher` first")
    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
            meta = f.metadata()
            if f"{split}.logits" not in keys:
                raise DistillError(f"{path} has no '{split}.logits'; re-run `tinyseek teacher`")
            logits = f.get_tensor(f"{split}.logits").astype(np.float32)
            if feature_layer is None:
                return logits, None, None
            layers = cached_layers(meta, keys, split)
            if not layers:
                raise DistillError(f"{path} caches no hidden states ('{split}.hidden.<layer>'); set distill.beta = 0 "
                                   "or re-run `tinyseek teacher` with teacher.layers")
            if not -len(layers) <= feature_layer < len(layers):
                raise DistillError(f"distill.feature_layer = {feature_layer} is out of range: the cache holds "
                                   f"{len(layers)} layers {layers} (use 0..{len(layers) - 1} or -1 for the last)")
            layer = layers[feature_layer]
            key = f"{split}.hidden.{layer}"
            if key not in keys:
                raise DistillError(f"{path} lists layer {layer} but has no '{key}'; re-run `tinyseek teacher`")
            hidden = f.get_tensor(key).astype(np.float32)
    except DistillError:
        raise
    except Exception as e:  # safetensors' own errors for a corrupt file
        raise DistillError(f"{path} is not a readable knowledge cache ({e}); re-run `tinyseek teacher`") from e
    if hidden.ndim != 2 or hidden.shape[0] != logits.shape[0]:
        raise DistillError(f"{path}: '{key}' has shape {list(hidden.shape)}, expected [{logits.shape[0]}, D]")
    return logits, hidden, layer


# -- inference ----------------------------------------------------------------------------

@torch.no_grad()
def predict_logits(model: TinyLSTM, spec: StudentSpec, split) -> np.ndarray:
    """The float student's logits for a data split, float32 [N, C]."""
    model.eval()
    x, lengths = split_inputs(split, spec)
    out = [model(x[i : i + EVAL_BATCH], lengths[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)]
    return torch.cat(out).numpy() if out else np.zeros((0, spec.num_classes), np.float32)


def evaluate(model: TinyLSTM, spec: StudentSpec, split) -> float:
    """Accuracy of the float student on a data split (0.0 for an empty split)."""
    y = np.asarray(split.y)
    return float(np.mean(predict_logits(model, spec, split).argmax(axis=1) == y)) if len(y) else 0.0


@torch.no_grad()
def max_abs_cell(model: TinyLSTM, x: torch.Tensor, lengths: torch.Tensor) -> list[float]:
    """Largest |c| per LSTM layer over every real step of the inputs."""
    model.eval()
    peak = torch.zeros(model.spec.layers)
    for i in range(0, len(x), EVAL_BATCH):
        _, cells = model.cell_states(x[i : i + EVAL_BATCH], lengths[i : i + EVAL_BATCH])
        if cells.numel():
            peak = torch.maximum(peak, cells.abs().amax(dim=(0, 1, 3)))
    return [float(v) for v in peak]


# -- training -----------------------------------------------------------------------------

def make_spec(dataset, cfg) -> StudentSpec:
    s = cfg.student
    if dataset.kind == "text":
        return StudentSpec(kind="text", labels=list(dataset.labels), hidden=s.hidden, layers=s.layers,
                           embed_dim=s.embed_dim, vocab_size=s.vocab_size, max_len=s.max_len)
    x = dataset.train.x
    if x is None or x.ndim != 3:
        raise DistillError("a sequence dataset needs train.x of shape [N, T, F]")
    return StudentSpec(kind="sequence", labels=list(dataset.labels), hidden=s.hidden, layers=s.layers,
                       embed_dim=s.embed_dim, max_len=int(x.shape[1]), num_features=int(x.shape[2]))


def _standardize(h: np.ndarray) -> torch.Tensor:
    """Per-dimension z-scores over the training set: removes the direction every sample shares."""
    mean, std = h.mean(axis=0, keepdims=True), h.std(axis=0, keepdims=True)
    return torch.from_numpy((h - mean) / np.maximum(std, 1e-6)).float()


def drop_tokens(ids: torch.Tensor, lengths: torch.Tensor, p: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove each real token with probability p and close the gaps (word dropout): the
    student learns not to hang on any one word, which is what carries it to unseen phrasings."""
    real = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    keep = real & (torch.rand(ids.shape, generator=gen) >= p)
    pos = torch.where(keep, keep.cumsum(1) - 1, ids.shape[1] - 1)
    out = torch.zeros_like(ids).scatter_(1, pos, torch.where(keep, ids, 0))
    return out, keep.sum(1)


def distill(dataset, knowledge_path: str | Path, cfg, run_dir: str | Path, *,
            weight_decay: float = 1e-2, clip_norm: float = 1.0, min_lr_ratio: float = 0.05,
            word_dropout: float = 0.2,
            cell_bound: float = 4.0, cell_weight: float = 1.0, progress: bool = True) -> Path:
    """Train the student from the knowledge cache; write `<run_dir>/student/` (student.safetensors,
    student.json, history.json) with the epoch of best validation accuracy, and return it.

    AdamW (cfg.distill.lr, weight_decay), gradient norm clipped to clip_norm, cosine decay of
    the learning rate to min_lr_ratio * lr. word_dropout (text tasks) removes each token of a
    training sample with that probability. cell_weight scales mean(relu(|c| - cell_bound)^2)
    over every layer's cell state at every real step (0 turns it off and trains with the
    ~3x faster fused LSTM). Deterministic for a given distill.seed: one thread, deterministic
    algorithms, seeded shuffling and dropout.
    """
    d = cfg.distill
    run_dir = Path(run_dir)
    spec = make_spec(dataset, cfg)
    train, val = dataset.train, dataset.val
    y = torch.as_tensor(np.asarray(train.y), dtype=torch.long)
    n = len(y)
    if n == 0:
        raise DistillError("the training split is empty")
    if d.epochs < 1 or d.batch_size < 1 or d.lr <= 0:
        raise DistillError(f"distill.epochs and distill.batch_size must be >= 1 and distill.lr > 0 "
                           f"(got {d.epochs}, {d.batch_size}, {d.lr})")
    if int(y.min()) < 0 or int(y.max()) >= spec.num_classes:
        raise DistillError(f"training labels must be in 0..{spec.num_classes - 1}")

    t_logits, t_hidden, layer = load_knowledge(knowledge_path, "train", d.feature_layer if d.beta else None)
    if t_logits.shape != (n, spec.num_classes):
        raise DistillError(f"{knowledge_path}: 'train.logits' has shape {list(t_logits.shape)}, expected "
                           f"[{n}, {spec.num_classes}] for this dataset; the cache is from another task or "
                           "split, re-run `tinyseek teacher`")
    teacher_logits = torch.from_numpy(t_logits)
    teacher_feat = _standardize(t_hidden) if t_hidden is not None else None

    x, lengths = split_inputs(train, spec)
    vx, vlen = split_inputs(val, spec) if len(val.y) else (None, None)
    vy = torch.as_tensor(np.asarray(val.y), dtype=torch.long)

    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # one thread: bit-identical reruns, and the other core stays free
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(d.seed)
        gen = torch.Generator().manual_seed(d.seed)
        model = TinyLSTM(spec, teacher_dim=teacher_feat.shape[1] if teacher_feat is not None else None)
        opt = torch.optim.AdamW(model.parameters(), lr=d.lr, weight_decay=weight_decay)
        batches = math.ceil(n / d.batch_size)
        total_steps = max(1, d.epochs * batches)
        # Cosine decay from lr to min_lr_ratio * lr over all steps.
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))

        history: list[dict] = []
        best_key, best_state, best_epoch = None, None, 0
        bar = tqdm(total=total_steps, desc="distill", unit="step", disable=not progress, leave=False)
        for epoch in range(1, d.epochs + 1):
            model.train()
            sums = {"total": 0.0, "kl": 0.0, "ce": 0.0, "feature": 0.0, "cell": 0.0}
            perm = torch.randperm(n, generator=gen)
            for b in range(batches):
                idx = perm[b * d.batch_size : (b + 1) * d.batch_size]
                xb, lb = x[idx], lengths[idx]
                if word_dropout and spec.kind == "text":
                    xb, lb = drop_tokens(xb, lb, word_dropout, gen)
                if cell_weight:
                    last, cells = model.cell_states(xb, lb)
                    real = max(1, int(lb.sum()) * spec.layers * spec.hidden)
                    cell_pen = F.relu(cells.abs() - cell_bound).pow(2).sum() / real
                else:
                    last, cell_pen = model.encode(xb, lb), torch.zeros(())
                logits = model.head(last)
                feat = model.feature_proj(last) if teacher_feat is not None else None
                loss, parts = distill_loss(logits, teacher_logits[idx], y[idx], feat,
                                           teacher_feat[idx] if teacher_feat is not None else None,
                                           alpha=d.alpha, T=d.temperature, beta=d.beta)
                loss = loss + cell_weight * cell_pen
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
                opt.step()
                sched.step()
                w = len(idx) / n
                parts["total"] = float(loss.detach())
                parts["cell"] = float(cell_pen.detach())
                for k in sums:
                    sums[k] += w * parts[k]
                bar.update(1)

            row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], **{f"loss_{k}": v for k, v in sums.items()}}
            if vx is not None:
                model.eval()
                with torch.no_grad():
                    vlogits = torch.cat([model(vx[i : i + EVAL_BATCH], vlen[i : i + EVAL_BATCH])
                                         for i in range(0, len(vx), EVAL_BATCH)])
                row["val_accuracy"] = float((vlogits.argmax(1) == vy).float().mean())
                row["val_ce"] = float(F.cross_entropy(vlogits, vy))
                # Best accuracy; among equal accuracies the lower validation loss (more margin).
                key = (row["val_accuracy"], -row["val_ce"])
            else:
                key = (epoch, 0.0)  # no validation split: keep the last epoch
            history.append(row)
            if best_key is None or key > best_key:
                best_key, best_epoch = key, epoch
                best_state = {k: v.clone() for k, v in exported_state(model).items()}
            bar.set_postfix(loss=f"{sums['total']:.3f}", val=f"{row.get('val_accuracy', float('nan')):.3f}")
        bar.close()

        model.load_state_dict(best_state, strict=False)
        model.eval()
        cells = max_abs_cell(model, x, lengths)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)

    out = save_student(model, spec, run_dir / "student")
    summary = {
        "epochs": history,
        "best_epoch": best_epoch,
        "best_val_accuracy": history[best_epoch - 1].get("val_accuracy"),
        "train_accuracy": evaluate(model, spec, train),
        "max_abs_cell": cells,
        "cell_bound": cell_bound,
        "teacher_layer": layer,
        "params": export_params(model),
    }
    (out / "history.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out
