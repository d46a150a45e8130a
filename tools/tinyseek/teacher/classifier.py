"""The adapted teacher: a causal LM backbone, mean pooling, a linear classification head and,
for sequence tasks, an input projection into the backbone's embedding space.

On disk (`<run>/teacher/`): the backbone as a Hugging Face folder, `classifier.safetensors`
(`head.weight`, `head.bias`; sequence tasks also `proj.weight`, `proj.bias`, `proj.mean`,
`proj.std`) and `teacher.json`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .load import TeacherError, load_teacher

CLASSIFIER_FILE = "classifier.safetensors"
META_FILE = "teacher.json"


class InputProjection(nn.Module):
    """Standardize each feature with the training set's statistics, then Linear(F -> hidden)."""

    def __init__(self, num_features: int, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden, num_features))
        self.bias = nn.Parameter(torch.zeros(hidden))
        nn.init.xavier_uniform_(self.weight)
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def fit(self, x: np.ndarray) -> None:
        flat = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1]))
        self.mean.copy_(flat.mean(0))
        # A constant feature keeps std 1 instead of dividing by zero.
        self.std.copy_(torch.where(flat.std(0) > 1e-6, flat.std(0), torch.ones_like(self.std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear((x - self.mean) / self.std, self.weight, self.bias)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens: hidden [B, T, D], mask [B, T] of 0/1 -> [B, D]."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class TeacherClassifier(nn.Module):
    """backbone (decoder without LM head) -> mean pool of the last hidden state -> head."""

    def __init__(self, backbone, num_classes: int, num_features: int = 0):
        super().__init__()
        hidden = backbone.config.hidden_size
        self.backbone = backbone
        self.head = nn.Linear(hidden, num_classes)
        self.proj = InputProjection(num_features, hidden) if num_features else None

    def encode(self, inputs: torch.Tensor, mask: torch.Tensor, **outputs):
        """Run the decoder: `inputs` are token ids [B, T], or features [B, T, F] when the
        model has an input projection. `outputs` are passed on (output_hidden_states, ...)."""
        decoder = self.backbone.base_model
        if self.proj is not None:
            return decoder(inputs_embeds=self.proj(inputs), attention_mask=mask, use_cache=False, **outputs)
        return decoder(input_ids=inputs, attention_mask=mask, use_cache=False, **outputs)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(mean_pool(self.encode(inputs, mask).last_hidden_state, mask))

    def classifier_state(self) -> dict[str, torch.Tensor]:
        keys = ("head", "proj")
        return {k: v.detach().clone().contiguous() for k, v in self.state_dict().items() if k.split(".")[0] in keys}


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask [N, T] of `texts`, right-padded to the longest (at most max_tokens).

    A text that gives no tokens at all (possible without a bos token) is read as one pad
    token, so every row has something to attend to and to pool.
    """
    enc = tokenizer(list(texts), truncation=True, max_length=max_tokens, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if ids.shape[1] == 0:
        ids = torch.full((len(texts), 1), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
    mask[mask.sum(1) == 0, 0] = 1
    return ids, mask


def split_inputs(tokenizer, split, kind: str, max_tokens: int):
    """(inputs, mask) of a whole split: token ids for text, float features for sequences."""
    if kind == "text":
        return tokenize(tokenizer, split.texts, max_tokens)
    x = torch.from_numpy(np.asarray(split.x, dtype=np.float32))
    return x, torch.ones(x.shape[:2], dtype=torch.long)


def trim(inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing columns that are padding in every row of a batch."""
    t = max(int(mask.sum(1).max()), 1)
    return inputs[:, :t], mask[:, :t]


def save_adapted(model: TeacherClassifier, tokenizer, out_dir: Path, meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.backbone.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    save_file(model.classifier_state(), str(out_dir / CLASSIFIER_FILE))
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def load_adapted(teacher_dir: Path):
    """(TeacherClassifier in eval mode, tokenizer, teacher.json) from `<run>/teacher/`."""
    meta_file, head_file = teacher_dir / META_FILE, teacher_dir / CLASSIFIER_FILE
    if not meta_file.is_file() or not head_file.is_file():
        raise TeacherError(f"{teacher_dir} is not an adapted teacher (no {META_FILE} or {CLASSIFIER_FILE}); "
                           f"run `tinyseek teacher` first")
    meta = json.loads(meta_file.read_text())
    backbone, tokenizer = load_teacher(teacher_dir)
    model = TeacherClassifier(backbone, len(meta["labels"]), meta.get("num_features", 0))
    missing, unexpected = model.load_state_dict(load_file(str(head_file)), strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise TeacherError(f"{head_file} does not match teacher.json: missing {missing}, unexpected {unexpected}")
    return model.eval(), tokenizer, meta
