"""The generated transfer set: in-domain utterances the adapted teacher writes itself.

After the adaptation, the teacher's language model is prompted with the first words of a
training example of each class in turn and samples a continuation; what it writes is labelled
by its own head (soft targets through the knowledge cache, the argmax as the hard label), kept
when the head is confident (teacher.transfer_confidence) and new (no duplicate, no training,
validation or test text), balanced over the labels the head gives. The texts go to
`<run>/transfer.jsonl`; the pipeline adds them to the training split before the extraction,
so the student distills on phrasings no example showed it (docs/teachers.md).

A language model only stops where it learned texts end: with transfer samples asked for, the
continued pretraining puts an end-of-sequence token after every training text (adapt.py).

The prompts go to the language model in batches of 64, each sampled with a seed of its own
(from teacher.seed, the round and the batch), so a batch writes the same texts wherever it
runs: in this process, or with teacher.engine = "ray" on Ray workers (ray_engine.py), which
write the batches while this process labels and keeps them in the same order.
"""
from __future__ import annotations

import hashlib
import json
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .classifier import load_adapted, tokenize
from .load import TeacherError

TRANSFER_FILE = "transfer.jsonl"
MAX_ROUNDS = 8  # prompting rounds before giving up on classes the teacher rarely writes


@torch.no_grad()
def write_transfer_set(dataset, cfg, run_dir: str | Path, log=print) -> Path | None:
    """Write cfg.transfer_samples generated, teacher-labelled texts to `<run_dir>/transfer.jsonl`
    (seeded by cfg.seed); returns its path, or None (and removes a stale file) when none are
    asked for."""
    out = Path(run_dir) / TRANSFER_FILE
    if not cfg.transfer_samples:
        out.unlink(missing_ok=True)
        return None
    if dataset.kind != "text":
        raise TeacherError("teacher.transfer_samples: only a text task's teacher writes utterances; set it to 0")
    model, tokenizer, meta = load_adapted(Path(run_dir) / "teacher", "float32", "cpu")
    if model.head is None:
        raise TeacherError("teacher.transfer_samples needs a teacher with a classification head to label what it "
                           "writes (teacher.labels = \"head\")")
    lm = model.backbone
    if tokenizer.eos_token_id is None:
        raise TeacherError("teacher.transfer_samples: the teacher's tokenizer has no end-of-sequence token, so "
                           "nothing tells where a generated utterance ends")
    num_classes = len(dataset.labels)
    quota = -(-cfg.transfer_samples // num_classes)
    known = set(dataset.train.texts) | set(dataset.val.texts) | set(dataset.test.texts)
    by_class = {c: [t for t, y in zip(dataset.train.texts, dataset.train.y) if y == c] for c in range(num_classes)}
    rng = random.Random(f"tinyseek-transfer:{cfg.seed}")
    kept: dict[int, list[tuple[str, float]]] = {c: [] for c in range(num_classes)}
    written = 0
    with _generators(cfg, run_dir, lm, tokenizer, log) as generate:
        for r in range(MAX_ROUNDS):
            open_classes = [c for c in range(num_classes) if len(kept[c]) < quota and by_class[c]]
            if not open_classes:
                break
            for words in (1, 2):  # prompts of one or two leading tokens: equal lengths batch without padding
                prompts = _prompts(tokenizer, [rng.choice(by_class[c]) for c in open_classes for _ in range(quota)],
                                   words)
                if not len(prompts):
                    continue
                batches = [(prompts[i:i + 64], _batch_seed(cfg.seed, r, words, i)) for i in range(0, len(prompts), 64)]
                written += _keep(model, tokenizer, cfg, [t for texts in generate(batches) for t in texts], known,
                                 kept, quota)
    rows = [{"text": t, "label": dataset.labels[c], "confidence": round(p, 4)}
            for c in range(num_classes) for t, p in kept[c]]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    short = [dataset.labels[c] for c in range(num_classes) if len(kept[c]) < quota]
    log(f"[teacher] transfer set: {written:,} generated utterances (asked {cfg.transfer_samples:,}, confidence >= "
        f"{cfg.transfer_confidence:g})" + (f"; fewer than {quota} for {', '.join(short)}" if short else "")
        + f" -> {out}")
    return out


def _keep(model, tokenizer, cfg, texts: list[str], known: set, kept: dict, quota: int) -> int:
    """Label the new texts among `texts` with the teacher's head and keep the confident ones in
    `kept` (per label, up to `quota`); returns how many were kept."""
    fresh = list(dict.fromkeys(t for t in texts if t and t not in known))
    if not fresh:
        return 0
    ids, mask = tokenize(tokenizer, fresh, cfg.max_tokens)
    probs = torch.cat([model(ids[i:i + 128], mask[i:i + 128]).softmax(-1) for i in range(0, len(fresh), 128)]).numpy()
    written = 0
    for text, p in zip(fresh, probs):
        label, conf = int(np.argmax(p)), float(np.max(p))
        if conf >= cfg.transfer_confidence and len(kept[label]) < quota:
            kept[label].append((text, conf))
            known.add(text)
            written += 1
    return written


def _batch_seed(seed: int, round_: int, words: int, start: int) -> int:
    """The sampling seed of one batch of prompts: its own, so a batch writes the same texts
    wherever it runs (this process or a Ray worker) and in whatever order."""
    return int.from_bytes(hashlib.sha256(f"tinyseek-transfer:{seed}:{round_}:{words}:{start}".encode()).digest()[:7],
                          "little")


def generate_batch(lm, tokenizer, prompts: torch.Tensor, cfg, seed: int) -> list[str]:
    """The texts the language model writes after each prompt of one batch, sampled with `seed`."""
    torch.manual_seed(seed)
    ids = lm.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                      temperature=cfg.transfer_temperature, top_p=0.95,
                      max_new_tokens=max(1, cfg.max_tokens - prompts.shape[1]),
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


@contextmanager
def _generators(cfg, run_dir, lm, tokenizer, log):
    """A function from [(prompts, seed), ...] to each batch's texts, in order: in this process,
    or with teacher.engine = "ray" on Ray workers (ray_engine.ray_generators)."""
    if cfg.engine != "ray":
        yield lambda batches: [generate_batch(lm, tokenizer, p, cfg, seed) for p, seed in batches]
        return
    from .ray_engine import ray_generators
    with ray_generators(cfg, Path(run_dir), log) as generate:
        yield generate


def _prompts(tokenizer, texts: list[str], words: int) -> torch.Tensor:
    """The first `words` tokens of each text (after a bos token, when the tokenizer adds one),
    as one [N, L] batch of the texts long enough for it."""
    bos = 1 if tokenizer.bos_token_id is not None else 0
    rows = [ids[:bos + words] for ids in tokenizer(texts)["input_ids"] if len(ids) > bos + words]
    return torch.tensor(rows, dtype=torch.long) if rows else torch.zeros((0, bos + words), dtype=torch.long)


def read_transfer_set(path: Path, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """(texts, labels as indices) of a transfer.jsonl."""
    texts, y = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            texts.append(row["text"])
            y.append(labels.index(row["label"]))
    return texts, np.array(y, dtype=np.int64)
