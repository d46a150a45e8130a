"""The distill stage: train TinyLSTM on the teacher's knowledge cache -> `<run>/student/`.

What is trained in which order is the schedule (schedule.py, docs/distillation.md): `joint`
(one loss: KL on the teacher's logits, hard labels, feature matching) or `progressive`
(features, then annealed logits, then a hard-label fine-tune), optionally followed by feedback
rounds on the samples where student and teacher disagree. Feature matching maps cached
teacher layers to student LSTM layers (distill.layer_map), each pair through its own learned
projection (student width -> teacher width); the projections are training-only.

The student is later quantized to int8 (docs/numerics.md): hidden state Q0.7, gate
pre-activations Q3.12 (saturating at +-8) and an int16 cell state whose range shrinks as its
precision grows. So training keeps values modest: decoupled weight decay (AdamW), gradient
clipping, and a small penalty on the cell state beyond `cell_bound`; the largest |c| the saved
student reaches on the training data is written to history.json for the quantizer to check.

The built-in task tests on phrasings never seen in training, so text training also drops
words at random (word dropout), which makes the student lean on several words, not one; an
audio student trains on shifted (and optionally masked) frames, SpecAugment (distill.spec_*).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.noise import augment_split, parse_recipe
from ..progress import Progress
from ..student.tinylstm import StudentSpec, TinyLSTM, export_params, exported_state, save_student, split_inputs
from .losses import stage_loss
from .schedule import DistillError, Stage, annealed_temperature, check, feedback_targets, logit_stages, plan, resolve_layer_map

EVAL_BATCH = 512


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


def read_cache(path: str | Path, split: str, pick=None, attention: bool = False
               ) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """(logits [N, C], {layer: hidden [N, D]} for the layers pick(cached layers) names,
    {layer: head-averaged attention float32 [N, T, T]}); pick = None reads no hidden states,
    attention = False no attention maps."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DistillError(f"knowledge cache {path} is missing: run `tinyseek teacher` first")
    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
            if f"{split}.logits" not in keys:
                raise DistillError(f"{path} has no '{split}.logits'; re-run `tinyseek teacher`")
            logits = f.get_tensor(f"{split}.logits").astype(np.float32)
            layers = cached_layers(f.metadata(), keys, split)
            hidden = {}
            for layer in (pick(layers) if pick is not None else []):
                key = f"{split}.hidden.{layer}"
                if key not in keys:
                    raise DistillError(f"{path} lists layer {layer} but has no '{key}'; re-run `tinyseek teacher`")
                hidden[layer] = f.get_tensor(key).astype(np.float32)
            prefix = f"{split}.attn."
            maps = {int(k[len(prefix):]): f.get_tensor(k).astype(np.float32)
                    for k in sorted(keys) if attention and k.startswith(prefix)}
    except DistillError:
        raise
    except Exception as e:  # safetensors' own errors for a corrupt file
        raise DistillError(f"{path} is not a readable knowledge cache ({e}); re-run `tinyseek teacher`") from e
    for layer, h in hidden.items():
        if h.ndim != 2 or h.shape[0] != logits.shape[0]:
            raise DistillError(f"{path}: '{split}.hidden.{layer}' has shape {list(h.shape)}, "
                               f"expected [{logits.shape[0]}, D]")
    return logits, hidden, maps


def load_knowledge(path: str | Path, split: str, feature_layer: int | None) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """(logits [N, C], hidden [N, D] of one cached layer or None, that layer's number).

    feature_layer indexes the cached layers (-1 = the last one); None skips the hidden states.
    """
    def pick(layers):
        if not layers:
            raise DistillError(f"{path} caches no hidden states ('{split}.hidden.<layer>'); set distill.beta = 0 "
                               "or re-run `tinyseek teacher` with teacher.layers")
        if not -len(layers) <= feature_layer < len(layers):
            raise DistillError(f"feature_layer = {feature_layer} is out of range: the cache holds "
                               f"{len(layers)} layers {layers} (use 0..{len(layers) - 1} or -1 for the last)")
        return [layers[feature_layer]]

    logits, hidden, _ = read_cache(path, split, pick if feature_layer is not None else None)
    if not hidden:
        return logits, None, None
    (layer, h), = hidden.items()
    return logits, h, layer


def load_features(path: str | Path, split: str, layer_map: str,
                  student_layers: int) -> tuple[np.ndarray, list[tuple[int, int]], dict[int, np.ndarray]]:
    """(logits [N, C], the (teacher layer, student layer) pairs of distill.layer_map checked
    against the cache, {teacher layer: hidden [N, D]})."""
    pairs: list[tuple[int, int]] = []

    def pick(layers):
        pairs.extend(resolve_layer_map(layer_map, layers, student_layers))
        return [t for t, _ in pairs]

    logits, hidden, _ = read_cache(path, split, pick)
    return logits, pairs, hidden


# -- inference ----------------------------------------------------------------------------

@torch.no_grad()
def predict_inputs(model: TinyLSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The float student's logits for model inputs, in evaluation batches."""
    model.eval()
    out = [model(x[i : i + EVAL_BATCH], lengths[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)]
    return torch.cat(out) if out else torch.zeros(0, model.spec.num_classes)


@torch.no_grad()
def predict_logits(model: TinyLSTM, spec: StudentSpec, split) -> np.ndarray:
    """The float student's logits for a data split, float32 [N, C]."""
    return predict_inputs(model, *split_inputs(split, spec)).numpy()


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
                           embed_dim=s.embed_dim, vocab_size=s.vocab_size, max_len=s.max_len,
                           subwords=s.subwords)
    x = dataset.train.x
    if x is None or x.ndim != 3:
        raise DistillError("a sequence dataset needs train.x of shape [N, T, F]")
    return StudentSpec(kind="sequence", labels=list(dataset.labels), hidden=s.hidden, layers=s.layers,
                       embed_dim=s.embed_dim, max_len=int(x.shape[1]), num_features=int(x.shape[2]))


def _standardize(h: np.ndarray) -> torch.Tensor:
    """Per-dimension z-scores over the training set: removes the direction every sample shares."""
    mean, std = h.mean(axis=0, keepdims=True), h.std(axis=0, keepdims=True)
    return torch.from_numpy((h - mean) / np.maximum(std, 1e-6)).float()


def input_norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of each feature over every sample and step of a sequence split [N, T, F]."""
    flat = x.reshape(-1, x.shape[-1]).double()
    return flat.mean(0).float(), flat.std(0).clamp(min=1e-3).float()


@torch.no_grad()
def fold_input_norm(model: TinyLSTM, norm: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Make a student trained on z-scores read the raw features: proj(W, b) on (x - mean) / std
    is proj(W / std, b - W @ (mean / std)) on x."""
    mean, std = norm
    w = model.proj.weight / std
    model.proj.bias -= w @ mean
    model.proj.weight.copy_(w)


def drop_tokens(ids: torch.Tensor, lengths: torch.Tensor, p: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove each real token with probability p and close the gaps (word dropout): the
    student learns not to hang on any one word, which is what carries it to unseen phrasings."""
    real = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    keep = real & (torch.rand(ids.shape[:2], generator=gen) >= p)
    pos = torch.where(keep, keep.cumsum(1) - 1, ids.shape[1] - 1)
    if ids.dim() == 3:  # id groups (subwords): a step's whole group goes or stays
        keep3, pos = keep.unsqueeze(2).expand_as(ids), pos.unsqueeze(2).expand_as(ids)
        return torch.zeros_like(ids).scatter_(1, pos, torch.where(keep3, ids, 0)), keep.sum(1)
    out = torch.zeros_like(ids).scatter_(1, pos, torch.where(keep, ids, 0))
    return out, keep.sum(1)


def spec_augment(x: torch.Tensor, frames_per_step: int, gen: torch.Generator, shift_frames: int = 0,
                 time_masks: int = 0, time_frames: int = 0, freq_masks: int = 0, freq_channels: int = 0,
                 fill: torch.Tensor | None = None) -> torch.Tensor:
    """SpecAugment of a batch of audio steps [B, T, frames_per_step * channels] (front-end frames
    stacked oldest first, standardized, so 0 is each feature's training mean): each sample is
    shifted by a whole number of frames in [-shift_frames, shift_frames] (the first or last
    frame repeated into the gap), then gets time_masks stretches of 0 to time_frames frames and
    freq_masks bands of 0 to freq_channels channels set to 0 (or, for raw features, to `fill`,
    each step feature's training mean), each drawn from `gen`. A new tensor; x is not changed."""
    b, steps, width = x.shape
    k = frames_per_step
    if width % k:
        raise DistillError(f"a step of {width} features does not hold {k} frames")
    n, c = steps * k, width // k
    f = x.reshape(b, n, c)
    if shift_frames:
        s = torch.randint(-shift_frames, shift_frames + 1, (b, 1), generator=gen)
        src = (torch.arange(n)[None, :] - s).clamp(0, n - 1)
        f = f.gather(1, src.unsqueeze(2).expand(b, n, c))
    else:
        f = f.clone()

    def bands(count: int, widest: int, size: int) -> torch.Tensor:
        hit = torch.zeros(b, size, dtype=torch.bool)
        pos = torch.arange(size)[None, :]
        for _ in range(count):
            w = torch.randint(0, min(widest, size) + 1, (b, 1), generator=gen)
            start = (torch.rand(b, 1, generator=gen) * (size - w + 1)).long()
            hit |= (pos >= start) & (pos < start + w)
        return hit

    value = torch.zeros(()) if fill is None else fill.reshape(k, c).repeat(steps, 1)  # [n, c] in frame space
    if time_masks and time_frames:
        f = torch.where(bands(time_masks, time_frames, n).unsqueeze(2), value, f)
    if freq_masks and freq_channels:
        f = torch.where(bands(freq_masks, freq_channels, c).unsqueeze(1), value, f)
    return f.reshape(b, steps, width)


def audio_augment(cfg, spec: StudentSpec) -> dict | None:
    """spec_augment's settings for a student of an audio task from distill.spec_* (None: no
    augmentation: another kind of task, or every setting 0)."""
    task, d = getattr(cfg, "task", None), cfg.distill
    if task is None or task.kind != "audio" or spec.kind != "sequence":
        return None
    out = {"shift_frames": d.spec_shift_frames, "time_masks": d.spec_time_masks, "time_frames": d.spec_time_frames,
           "freq_masks": d.spec_freq_masks, "freq_channels": d.spec_freq_channels}
    if not (out["shift_frames"] or (out["time_masks"] and out["time_frames"])
            or (out["freq_masks"] and out["freq_channels"])):
        return None
    return {"frames_per_step": task.frames_per_step, **out}


def layer_states(model: TinyLSTM, x: torch.Tensor, lengths: torch.Tensor,
                 cells: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(h, c): every LSTM layer's hidden state at each sample's last real step, [layers, N, H]
    (zeros for length 0; h[-1] is `TinyLSTM.encode`), and with cells=True every layer's cell
    state at every real step, [N, T, layers, H], as `TinyLSTM.cell_states` gives it.

    With cells the LSTM is stepped one element at a time (nn.LSTM returns only the final cell
    state); without, one packed call gives each layer's state at each sample's own last step.
    """
    n, L, H = x.shape[0], model.spec.layers, model.spec.hidden
    lengths = lengths.to(torch.long)
    t_max = int(lengths.max()) if n else 0
    if t_max == 0:
        return torch.zeros(L, n, H), (torch.zeros(n, 0, L, H) if cells else None)
    inp = model._input(x[:, :t_max])
    if not cells:
        packed = nn.utils.rnn.pack_padded_sequence(inp, lengths.clamp(min=1), batch_first=True, enforce_sorted=False)
        _, (h, _) = model.lstm(packed)
        return h * (lengths > 0).view(1, n, 1).to(h.dtype), None
    h = torch.zeros(L, n, H)
    c = torch.zeros_like(h)
    steps = []
    for t in range(t_max):
        _, (h_new, c_new) = model.lstm(inp[:, t : t + 1], (h, c))
        live = (t < lengths).view(1, n, 1)
        # Finished samples keep their state, so h ends at each sample's own last step.
        h, c = torch.where(live, h_new, h), torch.where(live, c_new, c)
        steps.append(torch.where(live, c_new, 0.0).permute(1, 0, 2))
    return h, torch.stack(steps, dim=1)


@dataclass
class Distilled:
    """What training returns: the float student (best epoch restored), its spec and the
    summary written to history.json."""
    model: TinyLSTM
    spec: StudentSpec
    summary: dict


class Trainer:
    """The state every stage shares: the model, the feature projections (one per mapped layer
    pair, student width -> teacher width, training-only), the training data with the teacher's
    logits and standardized features, the history and the best epoch so far. `prepare` makes
    one; `run` trains one stage."""

    def __init__(self, model: TinyLSTM, proj: nn.ModuleDict, pairs: list[tuple[int, int]], train: tuple,
                 val: tuple, t_logits: np.ndarray, t_feats: dict[int, torch.Tensor], d, *, weight_decay: float,
                 clip_norm: float, min_lr_ratio: float, word_dropout: float, cell_bound: float, cell_weight: float,
                 progress: bool):
        self.model, self.spec, self.proj, self.pairs, self.d = model, model.spec, proj, pairs, d
        self.x, self.lengths, self.y = train
        self.vx, self.vlen, self.vy = val
        self.t_logits_np, self.t_logits, self.t_feats = t_logits, torch.from_numpy(t_logits), t_feats
        self.gen = torch.Generator().manual_seed(d.seed)
        self.weight_decay, self.clip_norm, self.min_lr_ratio = weight_decay, clip_norm, min_lr_ratio
        self.word_dropout, self.cell_bound, self.cell_weight = word_dropout, cell_bound, cell_weight
        self.progress = Progress("distill", 0, print if progress else None, units="batches")
        self.augment: dict | None = None  # spec_augment's settings (audio_augment), set by prepare
        self.history: list[dict] = []
        self.best_key, self.best_state, self.best_epoch = None, None, 0

    def params(self, stage: Stage) -> list[nn.Parameter]:
        """What a stage trains: the encoder always, the head only with a logit term, the
        projections only with a feature term (AdamW would otherwise still decay the rest)."""
        m = self.model
        out = [p for name, p in m.named_parameters() if not name.startswith("head.")]
        if stage.trains_head:
            out += list(m.head.parameters())
        if stage.feature:
            out += list(self.proj.parameters())
        return out

    def run(self, stage: Stage, labels: torch.Tensor | None = None, weights: torch.Tensor | None = None,
            round_: int = 0) -> None:
        """Train one stage for its epochs: hard labels `labels` (None: the dataset's), per-sample
        loss weights `weights` (None: all 1)."""
        model, spec, d = self.model, self.spec, self.d
        labels = self.y if labels is None else labels
        n = len(labels)
        if stage.feature and not self.pairs:
            raise DistillError(f"stage '{stage.name}' matches features but no teacher layer is mapped")
        opt = torch.optim.AdamW(self.params(stage), lr=stage.lr, weight_decay=self.weight_decay)
        batches = math.ceil(n / d.batch_size)
        total = max(1, stage.epochs * batches)
        lo = self.min_lr_ratio
        # Cosine decay from the stage's lr to min_lr_ratio of it over the stage.
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        self.progress.add_total(stage.epochs * batches)
        for e in range(1, stage.epochs + 1):
            T = annealed_temperature(*stage.temperature, e, stage.epochs)
            model.train()
            sums = {"total": 0.0, "kl": 0.0, "ce": 0.0, "feature": 0.0, "cell": 0.0}
            perm = torch.randperm(n, generator=self.gen)
            for b in range(batches):
                idx = perm[b * d.batch_size : (b + 1) * d.batch_size]
                xb, lb = self.x[idx], self.lengths[idx]
                if self.word_dropout and spec.kind == "text":
                    xb, lb = drop_tokens(xb, lb, self.word_dropout, self.gen)
                if self.augment is not None:
                    xb = spec_augment(xb, gen=self.gen, **self.augment)
                if self.cell_weight or stage.feature:
                    h, cells = layer_states(model, xb, lb, cells=bool(self.cell_weight))
                    last = h[-1]
                else:
                    last, cells = model.encode(xb, lb), None
                if cells is not None:
                    real = max(1, int(lb.sum()) * spec.layers * spec.hidden)
                    cell_pen = F.relu(cells.abs() - self.cell_bound).pow(2).sum() / real
                else:
                    cell_pen = torch.zeros(())
                s_feat = t_feat = None
                if stage.feature:
                    s_feat = [self.proj[str(t)](h[s]) for t, s in self.pairs]
                    t_feat = [self.t_feats[t][idx] for t, _ in self.pairs]
                loss, parts = stage_loss(model.head(last), self.t_logits[idx], labels[idx], s_feat, t_feat,
                                         kl=stage.kl, ce=stage.ce, feature=stage.feature, T=T,
                                         feature_kind=d.feature_loss,
                                         sample_weight=weights[idx] if weights is not None else None)
                loss = loss + self.cell_weight * cell_pen
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], self.clip_norm)
                opt.step()
                sched.step()
                w = len(idx) / n
                parts["total"] = float(loss.detach())
                parts["cell"] = float(cell_pen.detach())
                for k in sums:
                    sums[k] += w * parts[k]
                self.progress.step()
            self._end_epoch(stage, e, round_, T, opt.param_groups[0]["lr"], sums)

    def _end_epoch(self, stage: Stage, e: int, round_: int, T: float, lr: float, sums: dict) -> None:
        row = {"epoch": len(self.history) + 1, "round": round_, "stage": stage.name, "stage_epoch": e,
               "lr": lr, "temperature": T, **{f"loss_{k}": v for k, v in sums.items()}}
        if self.vx is not None:
            vlogits = predict_inputs(self.model, self.vx, self.vlen)
            row["val_accuracy"] = float((vlogits.argmax(1) == self.vy).float().mean())
            row["val_ce"] = float(F.cross_entropy(vlogits, self.vy))
            # Best accuracy; among equal accuracies the lower validation loss (more margin).
            key = (row["val_accuracy"], -row["val_ce"])
        else:
            key = (row["epoch"], 0.0)  # no validation split: keep the last epoch
        self.history.append(row)
        if stage.select and (self.best_key is None or key > self.best_key):
            self.best_key, self.best_epoch = key, row["epoch"]
            self.best_state = {k: v.clone() for k, v in exported_state(self.model).items()}
        val = f", val accuracy {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
        self.progress.epoch(f"epoch {row['epoch']} ({stage.name} {e}/{stage.epochs})",
                            f"loss {sums['total']:.4f}{val}, best epoch {self.best_epoch}")

    def restore_best(self) -> None:
        """Load the best epoch so far into the model (a round ends there)."""
        self.model.load_state_dict(self.best_state, strict=False)
        self.model.eval()

    def train_accuracy(self) -> float:
        """The model's accuracy on the training split's hard labels (the teacher's where a
        sample had none)."""
        return float((predict_inputs(self.model, self.x, self.lengths).argmax(1) == self.y).float().mean())

    def feedback(self, labels: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The feedback step on the current model: (labels, weights, disagree mask) for the next
        round, from feedback_targets with distill.feedback and distill.feedback_weight."""
        student = predict_inputs(self.model, self.x, self.lengths).numpy()
        return feedback_targets(labels, weights, self.t_logits_np, student, self.d.feedback, self.d.feedback_weight)


def teacher_labels_where_missing(dataset, knowledge_path: str | Path):
    """The dataset with every UNLABELED sample (-1: a JSONL line without a label, for a teacher
    that labels zero-shot) given the teacher's most likely class as its hard label; the soft
    labels are the teacher's distribution anyway."""
    from safetensors.numpy import load_file

    splits, cache = {}, None
    for name in ("train", "val", "test"):
        split = getattr(dataset, name)
        y = np.asarray(split.y)
        if len(y) and (y < 0).any():
            cache = load_file(str(knowledge_path)) if cache is None else cache
            logits = cache.get(f"{name}.logits")
            if logits is None or len(logits) != len(y):
                raise DistillError(f"{knowledge_path} has no teacher logits for the {name} split's unlabeled "
                                   "samples; re-run `tinyseek teacher`")
            split = replace(split, y=np.where(y < 0, logits.argmax(1), y))
        splits[name] = split
    return replace(dataset, **splits)


def with_scaled_settings(cfg, dataset):
    """cfg with distill.epochs / distill.noise_copies resolved for the training split's size
    when they are automatic (config.scaled_settings)."""
    from dataclasses import replace as dc_replace

    from ..config import scaled_settings
    return dc_replace(cfg, distill=scaled_settings(cfg.teacher, cfg.distill, len(dataset.train.y))[1])


def prepare(dataset, knowledge_path: str | Path, cfg, *, weight_decay: float = 1e-2, clip_norm: float = 1.0,
            min_lr_ratio: float = 0.05, word_dropout: float = 0.2, cell_bound: float = 4.0,
            cell_weight: float = 1.0, progress: bool = True, cached_rows: int | None = None,
            rows: np.ndarray | None = None, standardize: bool = True) -> Trainer:
    """Check the settings against the dataset and the cache, read the teacher's train-split
    knowledge (the hidden states only if a stage matches features) and make the seeded student
    and its projections; train_student documents the options. cached_rows: the cache's training
    split has this many rows, of which the dataset's are the first (None: as many) or, given
    `rows`, those rows in that order. standardize:
    a sequence student trains on per-feature z-scores (tr.input_norm; False: on the raw
    features, as a saved student reads them)."""
    cfg = with_scaled_settings(cfg, dataset)
    d = cfg.distill
    spec = make_spec(dataset, cfg)
    dataset = teacher_labels_where_missing(dataset, knowledge_path)
    train, val = dataset.train, dataset.val
    y = torch.as_tensor(np.asarray(train.y), dtype=torch.long)
    n = len(y)
    if n == 0:
        raise DistillError("the training split is empty")
    if d.epochs < 1 or d.batch_size < 1 or d.lr <= 0 or d.stage3_lr <= 0:
        raise DistillError(f"distill.epochs and distill.batch_size must be >= 1, distill.lr and distill.stage3_lr > 0 "
                           f"(got {d.epochs}, {d.batch_size}, {d.lr}, {d.stage3_lr})")
    if int(y.min()) < 0 or int(y.max()) >= spec.num_classes:
        raise DistillError(f"training labels must be in 0..{spec.num_classes - 1}")
    check(d)
    if any(s.feature for s in plan(d) + logit_stages(d)):
        t_logits, pairs, hidden = load_features(knowledge_path, "train", d.layer_map, spec.layers)
    else:
        t_logits, pairs, hidden = load_knowledge(knowledge_path, "train", None)[0], [], {}
    if cached_rows is not None and t_logits.shape[0] == cached_rows >= n:
        keep = np.arange(n) if rows is None else rows
        t_logits, hidden = t_logits[keep], {t: h[keep] for t, h in hidden.items()}
    if t_logits.shape != (n, spec.num_classes):
        raise DistillError(f"{knowledge_path}: 'train.logits' has shape {list(t_logits.shape)}, expected "
                           f"[{n}, {spec.num_classes}] for this dataset; the cache is from another task or "
                           "split, re-run `tinyseek teacher`")
    if d.noise_copies:
        # The noisy copies learn the teacher's view of their clean sample (robustness to noise).
        recipe = parse_recipe(d.noise, spec.kind)
        train, source = augment_split(train, d.noise_copies, recipe, seed=d.seed)
        t_logits, hidden = t_logits[source], {t: h[source] for t, h in hidden.items()}
        y = torch.as_tensor(np.asarray(train.y), dtype=torch.long)
    x, lengths = split_inputs(train, spec)
    vx, vlen = split_inputs(val, spec) if len(val.y) else (None, None)
    vy = torch.as_tensor(np.asarray(val.y), dtype=torch.long)
    norm = None
    if spec.kind == "sequence" and standardize:
        # Features of very different offsets and spreads (log-mel channels, sensor axes) train
        # slowly: the student learns on per-feature z-scores, folded into `proj` at the end
        # (fold_input_norm), so the saved model reads the raw features.
        norm = input_norm(x)
        x = (x - norm[0]) / norm[1]
        vx = (vx - norm[0]) / norm[1] if vx is not None else None
    torch.manual_seed(d.seed)
    model = TinyLSTM(spec)
    proj = nn.ModuleDict({str(t): nn.Linear(spec.hidden, hidden[t].shape[1]) for t, _ in pairs})
    tr = Trainer(model, proj, pairs, (x, lengths, y), (vx, vlen, vy), t_logits,
                 {t: _standardize(h) for t, h in hidden.items()}, d, weight_decay=weight_decay,
                 clip_norm=clip_norm, min_lr_ratio=min_lr_ratio, word_dropout=word_dropout,
                 cell_bound=cell_bound, cell_weight=cell_weight, progress=progress)
    tr.input_norm = norm
    tr.augment = audio_augment(cfg, spec)
    if tr.augment is not None and norm is None:  # raw features (quantization-aware training): masks take the mean
        tr.augment["fill"] = input_norm(x)[0]
    return tr


def train_student(dataset, knowledge_path: str | Path, cfg, *,
                  weight_decay: float = 1e-2, clip_norm: float = 1.0, min_lr_ratio: float = 0.05,
                  word_dropout: float = 0.2, cell_bound: float = 4.0, cell_weight: float = 1.0,
                  progress: bool = True, cached_rows: int | None = None,
                  rows: np.ndarray | None = None) -> Distilled:
    """Train the student of cfg.student from the knowledge cache with the schedule of
    cfg.distill; no files written. The returned model is the epoch of best validation accuracy
    among the stages that train the classifier (every round's).

    Each stage: AdamW (its lr, weight_decay), gradient norm clipped to clip_norm, cosine decay
    of the learning rate to min_lr_ratio * lr over the stage. word_dropout (text tasks) removes
    each token of a training sample with that probability. cell_weight scales
    mean(relu(|c| - cell_bound)^2) over every layer's cell state at every real step (0 turns it
    off and trains with the ~3x faster fused LSTM). Each round ends at its best epoch; a
    feedback round starts from there. Deterministic for a given distill.seed: one thread,
    deterministic algorithms, seeded shuffling and dropout.
    """
    cfg = with_scaled_settings(cfg, dataset)
    d = cfg.distill
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # one thread: bit-identical reruns, and the other core stays free
    torch.use_deterministic_algorithms(True)
    try:
        tr = prepare(dataset, knowledge_path, cfg, weight_decay=weight_decay, clip_norm=clip_norm,
                     min_lr_ratio=min_lr_ratio, word_dropout=word_dropout, cell_bound=cell_bound,
                     cell_weight=cell_weight, progress=progress, cached_rows=cached_rows, rows=rows)
        labels, weights = tr.y.numpy(), np.ones(len(tr.y), np.float32)
        feedback = []
        for round_ in range(d.feedback_rounds + 1):
            stages = plan(d)
            if round_:
                before = tr.train_accuracy()
                labels, weights, disagree = tr.feedback(labels, weights)
                feedback.append({"round": round_, "mode": d.feedback, "disagree": int(disagree.sum()),
                                 "train_accuracy_before": before})
                stages = logit_stages(d)
            w = torch.from_numpy(weights) if d.feedback == "reweight" and round_ else None
            for stage in stages:
                tr.run(stage, torch.from_numpy(labels), w, round_)
            tr.restore_best()
        cells = max_abs_cell(tr.model, tr.x, tr.lengths)
        train_accuracy = tr.train_accuracy()
        if tr.input_norm is not None:
            fold_input_norm(tr.model, tr.input_norm)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)

    history, pairs, spec = tr.history, tr.pairs, tr.spec
    summary = {
        "schedule": d.schedule,
        "noise_copies": d.noise_copies,
        "epochs": history,
        "best_epoch": tr.best_epoch,
        "best_stage": history[tr.best_epoch - 1]["stage"],
        "best_val_accuracy": history[tr.best_epoch - 1].get("val_accuracy"),
        "train_accuracy": train_accuracy,
        "max_abs_cell": cells,
        "cell_bound": cell_bound,
        "layer_map": [list(p) for p in pairs],
        # The deepest teacher layer matched to the student's top layer (None: no feature matching).
        "teacher_layer": max((t for t, s in pairs if s == spec.layers - 1), default=None),
        "feedback": feedback,
        "params": export_params(tr.model),
    }
    return Distilled(tr.model, spec, summary)


def distill(dataset, knowledge_path: str | Path, cfg, run_dir: str | Path, **options) -> Path:
    """Train the student from the knowledge cache (train_student, whose keyword options this
    takes) and write `<run_dir>/student/` (student.safetensors, student.json, history.json);
    return that folder."""
    result = train_student(dataset, knowledge_path, cfg, **options)
    out = save_student(result.model, result.spec, Path(run_dir) / "student")
    (out / "history.json").write_text(json.dumps(result.summary, indent=2) + "\n")
    return out


def hard_label_baseline(dataset, knowledge_path: str | Path, cfg, cached_rows: int | None = None) -> dict:
    """The same student and schedule trained on the hard labels alone (no KL, no features): what
    the task's labels give without a teacher. `dataset` is the task's own (no generated transfer
    set: its labels come from the teacher); cached_rows as in prepare, when the cache also holds
    a transfer set. Training samples without a label (a head's teacher labels them) are left
    out: their labels would be the teacher's. Returns its float accuracies on validation (chosen
    on) and test (reported)."""
    from dataclasses import replace as dc_replace

    from ..data.dataset import take
    d = dc_replace(cfg.distill, alpha=0.0, beta=0.0, schedule="joint", feedback_rounds=0)
    rows = np.flatnonzero(np.asarray(dataset.train.y) >= 0)
    if not len(rows):
        raise DistillError("distill.hard_label_baseline: no training sample has a label, so there is no "
                           "hard-label student to compare with; set it to false")
    cached_rows = cached_rows or len(dataset.train.y)
    result = train_student(dc_replace(dataset, train=take(dataset.train, rows)), knowledge_path,
                           dc_replace(cfg, distill=d), progress=False, cached_rows=cached_rows, rows=rows)

    def accuracy(split) -> float | None:  # over the labeled samples, as the report counts
        y = np.asarray(split.y)
        if not (y >= 0).any():
            return None
        pred = predict_logits(result.model, result.spec, split).argmax(axis=1)
        return float(np.mean(pred[y >= 0] == y[y >= 0]))
    return {"val_accuracy": accuracy(dataset.val), "test_accuracy": accuracy(dataset.test),
            "best_epoch": result.summary["best_epoch"], "epochs": len(result.summary["epochs"])}
