"""Domain adaptation: fit the teacher to the task before its knowledge is extracted.

Text tasks: continued pretraining (causal LM loss on the training texts, cfg.pretrain_epochs),
then a classification head on the mean-pooled last hidden state (cfg.finetune_epochs).
Sequence tasks: no pretraining (there are no tokens to predict); an input projection
Linear(F -> hidden) feeds `inputs_embeds`, trained together with the head.

What is trained, by cfg.adapt ("auto", the default: "full" for the built-in teacher trained from
scratch, "lora" for a pretrained model loaded from a folder or a GGUF file):
- "full": the backbone's own weights.
  - the built-in tiny teacher: backbone + head (+ projection), all of it;
  - a loaded teacher (HF folder or GGUF): continued pretraining updates the backbone, then the
    backbone is frozen and only the head (+ projection) is trained (`train_backbone`); for a
    text task its pooled features are then computed once and the head trains on those.
  The whole backbone is saved: for a model of billions of parameters, a full copy.
- "lora": low-rank adapters (peft) in the attention and MLP projections (cfg.lora_targets,
  rank cfg.lora_rank, scale cfg.lora_alpha / cfg.lora_rank) on a frozen backbone, loaded in
  cfg.dtype on cfg.device: continued pretraining trains the adapters, fine-tuning the adapters
  and the head. Only the adapter is saved (classifier.py), megabytes instead of gigabytes.
- "none": the backbone as it is (no continued pretraining); only the head (+ projection) trains.
Set pretrain_epochs = 0 to skip continued pretraining.

Labels, by cfg.labels: "head" trains the head on the task's labels (training samples without
one are read by the continued pretraining only, and labelled by the head at extraction);
"zero-shot" trains no head: the extraction scores the label words after a prompt
(verbalize.py), so the training texts need no labels. The prompt and verbalisers are checked
here and recorded in teacher.json.

When the backbone (or its adapters) trains on a text task, its training texts are noised
(`_augment`: half of them with their words shuffled, then 30% of the tokens replaced by unk),
because the test phrasings of the built-in task are templates never seen in training. After
every fine-tuning epoch the validation accuracy is measured and the best epoch's weights are
kept (the last epoch's when there is no validation split).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..progress import Progress
from .build import build_default_teacher
from .classifier import (BASE_DIR, TeacherClassifier, add_lora, base_fingerprint, mean_pool, save_adapted,
                         split_inputs, trim)
from .extract import select_layers
from .load import TeacherError, gguf_to_folder, load_teacher, use_threads
from .verbalize import SCORES, check_prompt, resolve_verbalizers

ADAPT_MODES = ("auto", "full", "lora", "none")
LABEL_SOURCES = ("head", "zero-shot")


def _check_dataset(dataset, labelled: bool = True) -> None:
    """Labels in 0..C-1, or -1 (no label) where the teacher labels the sample itself: anywhere
    for a zero-shot teacher (`labelled` False); in the training split only for a head, which
    trains on the labelled samples and labels the others (validation and test measure against
    labels). Inputs that fit the task's kind."""
    c = len(dataset.labels)
    if c < 2:
        raise TeacherError(f"task {dataset.name!r} has {c} label(s); a classifier needs at least 2")
    for name in ("train", "val", "test"):
        split = getattr(dataset, name)
        y = np.asarray(split.y)
        if len(y) and labelled and name == "train" and not (y >= 0).any():
            raise TeacherError(
                f"task {dataset.name!r}: none of the {len(y):,} training samples has a label; a classification head "
                f"(teacher.labels = \"head\") learns from the labelled ones: label some of them, or let the teacher "
                f"label the texts with teacher.labels = \"zero-shot\" (docs/teachers.md)")
        if len(y) and labelled and name != "train" and y.min() < 0:
            raise TeacherError(
                f"task {dataset.name!r}: {int((y < 0).sum())} {name} samples have no label; with a classification "
                f"head (teacher.labels = \"head\") unlabeled samples belong in the training split only, where the "
                f"head labels them: give labelled task.val and task.test files (otherwise they are held out of "
                f"task.train with the unlabeled lines), or label those samples")
        if len(y) and (y.min() < -1 or y.max() >= c):
            raise TeacherError(f"task {dataset.name!r}: {name} labels must be in 0..{c - 1}, found {y.min()}..{y.max()}")
        if dataset.kind == "text" and (split.texts is None or len(split.texts) != len(y)):
            raise TeacherError(f"task {dataset.name!r}: the {name} split needs one text per label")
        if dataset.kind == "sequence" and (split.x is None or np.ndim(split.x) != 3 or len(split.x) != len(y)):
            raise TeacherError(f"task {dataset.name!r}: the {name} split needs x of shape [N, T, F] with N = {len(y)}")
    if len(dataset.train.y) == 0:
        raise TeacherError(f"task {dataset.name!r} has no training samples")


def _check_settings(dataset, cfg) -> dict | None:
    """Fail before anything is loaded or trained; returns the zero-shot settings (or None)."""
    if cfg.adapt not in ADAPT_MODES:
        raise TeacherError(f"teacher.adapt {cfg.adapt!r} is unknown; choose {', '.join(ADAPT_MODES)}")
    if cfg.labels not in LABEL_SOURCES:
        raise TeacherError(f"teacher.labels {cfg.labels!r} is unknown; choose {', '.join(LABEL_SOURCES)}")
    zero_shot = cfg.labels == "zero-shot"
    _check_dataset(dataset, labelled=not zero_shot)
    if cfg.adapt == "lora" and (cfg.lora_rank < 1 or cfg.lora_alpha <= 0 or not cfg.lora_targets):
        raise TeacherError(f"LoRA needs teacher.lora_rank >= 1, teacher.lora_alpha > 0 and some "
                           f"teacher.lora_targets; got {cfg.lora_rank}, {cfg.lora_alpha}, {list(cfg.lora_targets)}")
    if not zero_shot:
        return None
    if dataset.kind != "text":
        raise TeacherError(f"teacher.labels = \"zero-shot\" scores label words after a text prompt; task "
                           f"{dataset.name!r} is a {dataset.kind} task: use teacher.labels = \"head\"")
    check_prompt(cfg.prompt)
    if cfg.verbalizer_score not in SCORES:
        raise TeacherError(f"teacher.verbalizer_score {cfg.verbalizer_score!r} is unknown; choose mean or sum")
    verbalizers = resolve_verbalizers(list(dataset.labels), cfg.verbalizers)
    out = {"prompt": prompt_with_examples(dataset, cfg, verbalizers), "verbalizers": verbalizers,
           "score": cfg.verbalizer_score}
    return out | ({"shots": cfg.shots} if cfg.shots else {})


def prompt_with_examples(dataset, cfg, verbalizers: dict) -> str:
    """teacher.prompt with teacher.shots labelled training examples per class (seeded by
    teacher.seed, the classes interleaved so none is always nearest the text) at {examples},
    or before the prompt when it has no {examples}; each is teacher.example with the text and
    the label's first verbaliser. Zero-shot (shots 0): the prompt, {examples} removed."""
    if not cfg.shots:
        return cfg.prompt.replace("{examples}", "")
    rng = np.random.default_rng(cfg.seed)
    y = np.asarray(dataset.train.y)
    picks = []
    for c, label in enumerate(dataset.labels):
        rows = np.flatnonzero(y == c)
        if len(rows) < cfg.shots:
            raise TeacherError(f"teacher.shots = {cfg.shots}: the training split has {len(rows)} labelled "
                               f"example(s) of {label!r}; label more of them or lower teacher.shots")
        picks.append(rng.choice(rows, cfg.shots, replace=False))
    order = [int(p[k]) for k in range(cfg.shots) for p in rng.permutation(np.array(picks, dtype=object))]
    examples = "".join(cfg.example.replace("{label}", verbalizers[dataset.labels[y[i]]][0])
                       .replace("{text}", dataset.train.texts[i]) for i in order)
    return cfg.prompt.replace("{examples}", examples) if "{examples}" in cfg.prompt else examples + cfg.prompt


def _schedule(opt, total_steps: int, steps_per_epoch: int | None = None):
    """Linear warm-up over the first 5% of steps (at most one epoch: early stopping may end the
    training long before `total_steps`), then linear decay to 0."""
    warm = max(1, min(total_steps // 20, steps_per_epoch or total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1.0 - s / total_steps))


def _batches(n: int, batch_size: int, gen: torch.Generator):
    return torch.randperm(n, generator=gen).split(batch_size)


def _update(loss: torch.Tensor, opt, sched, params: list) -> float:
    """One optimizer step with gradient clipping and the schedule; returns the loss."""
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


def _with_eos(ids: torch.Tensor, mask: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids [N, T] with an end-of-sequence token after each text's last token
    (one column more where a text fills the row), so the language model learns where texts end."""
    ids = torch.cat([ids, torch.full((len(ids), 1), eos_id, dtype=ids.dtype)], 1)
    mask = torch.cat([mask, torch.zeros((len(mask), 1), dtype=mask.dtype)], 1)
    rows, ends = torch.arange(len(ids)), mask.sum(1)
    ids[rows, ends] = eos_id
    mask[rows, ends] = 1
    return ids, mask


def _pretrain(backbone, ids: torch.Tensor, mask: torch.Tensor, cfg, gen: torch.Generator, eos_id=None) -> None:
    if eos_id is not None:
        ids, mask = _with_eos(ids, mask, eos_id)
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps_per_epoch = -(-len(ids) // cfg.batch_size)
    sched = _schedule(opt, cfg.pretrain_epochs * steps_per_epoch)
    backbone.train()
    progress = Progress("teacher pretrain", cfg.pretrain_epochs * steps_per_epoch, units="batches")
    for epoch in range(cfg.pretrain_epochs):
        total = 0.0
        for idx in _batches(len(ids), cfg.batch_size, gen):
            b_ids, b_mask = (t.to(backbone.device) for t in trim(ids[idx], mask[idx]))
            loss = backbone(input_ids=b_ids, attention_mask=b_mask, use_cache=False,
                            labels=b_ids.masked_fill(b_mask == 0, -100)).loss
            total += _update(loss, opt, sched, params) * len(idx)
            progress.step()
        progress.epoch(f"epoch {epoch + 1}/{cfg.pretrain_epochs}", f"language-model loss {total / len(ids):.4f}")
    backbone.eval()


@torch.no_grad()
def _logits(forward: Callable, inputs: torch.Tensor, mask: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([forward(inputs[i:i + batch_size], mask[i:i + batch_size])
                      for i in range(0, len(inputs), batch_size)])


def _fit(forward: Callable, module: nn.Module, params: list, snapshot: Callable[[], dict], train, val,
         cfg, gen: torch.Generator, epochs: int, what: str) -> tuple[float, int]:
    """Cross-entropy training of `params` for at most `epochs`; keeps the state (from
    `snapshot`, restored into `module`) of the epoch with the best validation accuracy (a lower
    validation loss, by more than 0.001, among equals) and stops early after cfg.patience epochs
    without a better one.
    Returns (that accuracy or -1 without a validation split, epochs run)."""
    (inputs, mask, y), (v_inputs, v_mask, v_y) = train, val
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps_per_epoch = -(-len(y) // cfg.batch_size)
    sched = _schedule(opt, epochs * steps_per_epoch, steps_per_epoch)
    progress = Progress(what, epochs * steps_per_epoch, units="batches")
    best_key, best_state, best_epoch, run = None, None, 0, 0
    for epoch in range(1, epochs + 1):
        module.train()
        total = 0.0
        for idx in _batches(len(y), cfg.batch_size, gen):
            logits = forward(inputs[idx], mask[idx])
            loss = nn.functional.cross_entropy(logits, y[idx].to(logits.device))
            total += _update(loss, opt, sched, params) * len(idx)
            progress.step()
        module.eval()
        run = epoch
        text = f"loss {total / len(y):.4f}"
        if len(v_y):
            v_logits = _logits(forward, v_inputs, v_mask, 2 * cfg.batch_size).float().cpu()
            acc = float((v_logits.argmax(1) == v_y).float().mean())
            key = (acc, -float(nn.functional.cross_entropy(v_logits, v_y)))
            # Better: a higher accuracy, or the same with a validation loss lower by > 0.001.
            if best_key is None or key[0] > best_key[0] or (key[0] == best_key[0] and key[1] > best_key[1] + 1e-3):
                best_key, best_state, best_epoch = key, snapshot(), epoch
            text += f", val accuracy {acc:.4f} (best {best_key[0]:.4f}, epoch {best_epoch})"
        progress.epoch(f"epoch {epoch}/{epochs}", text)
        if best_key is not None and cfg.patience and epoch - best_epoch >= cfg.patience:
            progress.log(f"[{what}] stopped early: no better validation accuracy for {cfg.patience} epochs "
                         f"(teacher.patience)")
            break
    if best_state is not None:
        module.load_state_dict(best_state, strict=False)
    module.eval()
    return (best_key[0] if best_key else -1.0), run


@torch.no_grad()
def _pooled(model: TeacherClassifier, inputs: torch.Tensor, mask: torch.Tensor, batch_size: int,
            what: str) -> torch.Tensor:
    """The frozen backbone's mean-pooled last hidden state of every input (a pretrained model's
    pass over the split: minutes on a CPU, so it says how long)."""
    progress = Progress(f"teacher {what} features", -(-len(inputs) // batch_size), units="batches", probe=4)

    def pool(inp, m):
        inp, m = (t.to(model.backbone.device) for t in trim(inp, m))
        out = mean_pool(model.encode(inp, m).last_hidden_state.float(), m)
        progress.step()
        return out
    return _logits(pool, inputs, mask, batch_size)


def _base_path(base: Path, teacher_dir: Path, run_dir: Path) -> str:
    """teacher.json's "base": relative to the teacher folder when it lies in the run (a GGUF's
    dequantized base/), so the run folder can move; else absolute, so the current directory
    does not matter."""
    base, run_dir = base.resolve(), run_dir.resolve()
    if base.is_relative_to(run_dir):
        return os.path.relpath(base, teacher_dir.resolve())
    return str(base)


def _augment(ids: torch.Tensor, mask: torch.Tensor, dropout: float, shuffle: float, unk_id: int,
             gen: torch.Generator) -> torch.Tensor:
    """Training-time noise on token ids [B, T] (right-padded). The first token (bos, when
    the tokenizer adds one) and the padding stay in place.

    - shuffle: with this probability per text, its real tokens are put in random order;
    - dropout: each real token is then replaced by `unk_id` with this probability.

    Test phrasings are templates never seen in training; without this noise the teacher
    learns the training templates' word order instead of the words that carry the intent.
    """
    b, t = ids.shape
    real = (mask == 1) & (torch.arange(t) > 0)
    pos = torch.arange(t).expand(b, t)
    keys = torch.where(real, torch.rand(b, t, generator=gen), pos + 2.0)  # padding sorts after real tokens
    keys[:, 0] = -1.0  # the first token stays first
    chosen = torch.rand(b, 1, generator=gen) < shuffle
    order = torch.where(chosen, keys.argsort(1), pos)
    out = ids.gather(1, order)
    drop = (torch.rand(b, t, generator=gen) < dropout) & real
    return out.masked_fill(drop, unk_id)


def base_dtype(cfg) -> str:
    """The dtype the backbone loads in: float32 when its weights train (adapt = "full"), else
    teacher.dtype ("auto" not yet resolved counts as frozen: a pretrained source gets LoRA)."""
    return "float32" if cfg.adapt == "full" else cfg.dtype


def gguf_base(cfg, run_dir: Path, log=print) -> Path:
    """The .gguf teacher.source dequantized once into `<run_dir>/base/`, in base_dtype."""
    return gguf_to_folder(Path(cfg.source).expanduser().resolve(), Path(run_dir) / "base", cfg.tokenizer or None,
                          base_dtype(cfg), log=log)


def _load(dataset, cfg, tmp: str, run_dir: Path):
    """(backbone, tokenizer, base path) of cfg.source; the built-in teacher is built in `tmp`, a
    .gguf file is dequantized once into `<run_dir>/base/` (gguf_base) and loaded from there.
    "full" loads float32 on the CPU (its weights train); "lora" and "none" keep the backbone
    frozen, so it loads in cfg.dtype on cfg.device."""
    kwargs = {"dtype": cfg.dtype, "device": cfg.device} if cfg.adapt != "full" else {}
    if cfg.source == "default":
        base = build_default_teacher(dataset, cfg, tmp)
        return (*load_teacher(base, **kwargs), base)
    source, tokenizer = Path(cfg.source).expanduser().resolve(), cfg.tokenizer or None
    if source.suffix.lower() == ".gguf" and source.is_file():
        source, tokenizer = gguf_base(cfg, run_dir), None
    model, tok = load_teacher(source, tokenizer, **kwargs)
    return model, tok, source


def adapt(dataset, cfg, run_dir: str | Path, train_backbone: bool | None = None,
          token_dropout: float = 0.3, word_shuffle: float = 0.5) -> Path:
    """Adapt the teacher named by `cfg.source` to `dataset` and save it to `<run_dir>/teacher/`.

    cfg.adapt (full | lora | none) and cfg.labels (head | zero-shot) choose what trains; see
    the module docstring. `train_backbone` (None: True for the built-in teacher, False for a
    loaded one; "full" only) chooses whether fine-tuning updates the backbone or only the head
    (+ input projection). `token_dropout` and `word_shuffle` set the training noise of
    `_augment` (text tasks whose backbone or adapters train). Seeded by cfg.seed. Returns the
    teacher folder; classifier.load_adapted reads it back. With cfg.noise_copies the training
    split also holds that many corrupted copies of every sample (data/noise.py, cfg.noise), so
    the teacher learns to read noisy input; validation and extraction stay clean.
    """
    from dataclasses import replace

    from ..config import scaled_teacher
    use_threads(cfg.threads)
    cfg = scaled_teacher(cfg, len(dataset.train.y))  # automatic noise_copies resolved
    if cfg.adapt == "auto":  # a pretrained model keeps its knowledge best under low-rank adapters
        cfg = replace(cfg, adapt="full" if cfg.source == "default" else "lora")
    zero_shot = _check_settings(dataset, cfg)
    unlabeled = 0 if zero_shot else int((np.asarray(dataset.train.y) < 0).sum())  # the head labels them
    if cfg.noise_copies:
        from ..data.noise import augment_split, parse_recipe

        train, _ = augment_split(dataset.train, cfg.noise_copies, parse_recipe(cfg.noise, dataset.kind), seed=cfg.seed)
        dataset = replace(dataset, train=train)
    out = Path(run_dir) / "teacher"
    with tempfile.TemporaryDirectory() as tmp:
        backbone, tokenizer, base = _load(dataset, cfg, tmp, Path(run_dir))
        if train_backbone is None or cfg.adapt != "full":
            train_backbone = cfg.adapt == "full" and cfg.source == "default"
        layers = select_layers(list(cfg.layers), backbone.config.num_hidden_layers)  # fail before training
        device = backbone.device

        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        sequence = dataset.kind == "sequence"
        model = TeacherClassifier(backbone, 0 if zero_shot else len(dataset.labels),
                                  int(dataset.train.x.shape[-1]) if sequence else 0)
        if sequence:
            model.proj.fit(dataset.train.x)
        for part in (model.head, model.proj):
            if part is not None:
                part.to(device)
        lora = add_lora(backbone, cfg.lora_rank, cfg.lora_alpha, list(cfg.lora_targets)) if cfg.adapt == "lora" \
            else None
        inputs, mask = split_inputs(tokenizer, dataset.train, dataset.kind, cfg.max_tokens)
        v_inputs, v_mask = (split_inputs(tokenizer, dataset.val, dataset.kind, cfg.max_tokens) if len(dataset.val.y)
                            else (inputs[:0], mask[:0]))
        y, v_y = torch.as_tensor(dataset.train.y, dtype=torch.long), torch.as_tensor(dataset.val.y, dtype=torch.long)

        if not sequence and cfg.pretrain_epochs > 0 and cfg.adapt != "none":
            # A teacher that writes a transfer set must learn where texts end.
            writes = cfg.transfer_samples and not cfg.transfer_writer
            _pretrain(backbone, inputs, mask, cfg, gen, tokenizer.eos_token_id if writes else None)
        # Continued pretraining reads every text; the head learns from the labelled ones only and
        # labels the others at extraction (semi-supervised: a few labels, many unlabeled texts).
        if unlabeled:
            labelled = y >= 0
            inputs, mask, y = inputs[labelled], mask[labelled], y[labelled]

        if zero_shot:
            val_acc, epochs_run = -1.0, 0  # no head to train: the extraction scores the verbalisers (verbalize.py)
        elif train_backbone or sequence or lora is not None:
            if lora is None:
                backbone.requires_grad_(train_backbone)
            params = [p for p in model.parameters() if p.requires_grad]
            kept = {n for n, p in model.named_parameters() if p.requires_grad} | set(model.classifier_state())
            unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
            noise = not sequence and (train_backbone or lora is not None)

            def snapshot():
                return {k: v.detach().clone() for k, v in model.state_dict().items() if k in kept}

            def forward(i, m):
                if model.training and noise:
                    i = _augment(i, m, token_dropout, word_shuffle, unk, gen)
                i, m = trim(i, m)
                return model(i.to(device), m.to(device))
            val_acc, epochs_run = _fit(forward, model, params, snapshot, (inputs, mask, y), (v_inputs, v_mask, v_y),
                                       cfg, gen, cfg.finetune_epochs, "teacher finetune")
        else:
            # Frozen backbone on text: its pooled features never change, so compute them once.
            backbone.requires_grad_(False)
            feats = _pooled(model, inputs, mask, 2 * cfg.batch_size, "training")
            v_feats = _pooled(model, v_inputs, v_mask, 2 * cfg.batch_size, "validation") if len(v_y) else feats[:0]
            ones, v_ones = torch.ones(len(feats), 1), torch.ones(len(v_feats), 1)
            # Only the head trains, on features computed once: cheap, so it trains to convergence
            # (teacher.head_epochs at most, early stopping on validation).
            val_acc, epochs_run = _fit(lambda f, m: model.head(f), model.head, list(model.head.parameters()),
                                       lambda: {k: v.clone() for k, v in model.head.state_dict().items()},
                                       (feats, ones, y), (v_feats, v_ones, v_y), cfg, gen, cfg.head_epochs,
                                       "teacher head")

        meta = {
            "labels": list(dataset.labels), "kind": dataset.kind, "pooling": "mean", "source": cfg.source,
            "layers": layers,
            "model_type": backbone.config.model_type, "num_layers": backbone.config.num_hidden_layers,
            "hidden_size": backbone.config.hidden_size, "num_features": model.proj.weight.shape[1] if sequence else 0,
            "max_tokens": cfg.max_tokens, "adapt": cfg.adapt, "labels_from": cfg.labels,
            "train_backbone": train_backbone,
            "pretrain_epochs": 0 if sequence or cfg.adapt == "none" else cfg.pretrain_epochs,
            "finetune_epochs": epochs_run,
            "val_accuracy": val_acc if val_acc >= 0 else None, "seed": cfg.seed,
            "train_samples": len(dataset.train.y), "noise_copies": cfg.noise_copies, "noise": cfg.noise,
        }
        if unlabeled:
            meta["unlabeled_samples"] = unlabeled  # of the task's training samples; the head's labels are their targets
        if cfg.adapt != "full":
            meta["base"] = BASE_DIR if cfg.source == "default" else _base_path(Path(base), out, Path(run_dir))
            meta["base_fingerprint"] = base_fingerprint(base)
        if lora is not None:
            meta["lora"] = {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha,
                            "targets": sorted({t.rsplit(".", 1)[-1] for t in lora.target_modules}),
                            "expert_parameters": sorted({t.rsplit(".", 1)[-1] for t in lora.target_parameters or []}),
                            "adapter_parameters": sum(p.numel() for n, p in backbone.named_parameters() if "lora_" in n),
                            "backbone_parameters": sum(p.numel() for n, p in backbone.named_parameters()
                                                       if "lora_" not in n)}
        if zero_shot:
            meta["zero_shot"] = zero_shot
        if out.exists():
            shutil.rmtree(out)  # stale shards of an earlier, different teacher must not linger
        save_adapted(model, tokenizer, out, meta, lora)
        if cfg.adapt != "full" and cfg.source == "default":
            shutil.copytree(base, out / BASE_DIR)  # the built base lives only in `tmp`
    return out
