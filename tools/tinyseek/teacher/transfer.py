"""The generated transfer set: in-domain utterances a language model writes, the teacher labels.

Who writes:
- by default the adapted teacher's own language model, prompted with the first words of a
  training example of each class in turn; it samples a continuation;
- with teacher.transfer_writer, a pretrained language model (a local folder or a .gguf file,
  base or instruct) prompted with a list of a class's training examples (all in the script of
  the first, so a list does not switch languages) and asked for the next item: it writes
  phrasings and words the training texts never had, which the teacher's own LM cannot.
What is kept: the teacher's head labels every text (soft targets through the knowledge cache,
the argmax as the hard label); a text is kept when the head is confident
(teacher.transfer_confidence), new (no duplicate, no training, validation or test text) and,
for a writer's text, labelled with the class it was asked for; kept texts are balanced over
the labels. They go to `<run>/transfer.jsonl`; the pipeline adds them to the training split
before the extraction, so the student distills on phrasings no example showed it
(docs/teachers.md).

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
import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .classifier import load_adapted, tokenize
from .load import TeacherError, cache_arg, cache_of

TRANSFER_FILE = "transfer.jsonl"
RECOMBINE = "recombine"  # teacher.transfer_writer: recombined training texts instead of a language model
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
    num_classes = len(dataset.labels)
    quota = -(-cfg.transfer_samples // num_classes)
    known = set(dataset.train.texts) | set(dataset.val.texts) | set(dataset.test.texts)
    by_class = {c: [t for t, y in zip(dataset.train.texts, dataset.train.y) if y == c] for c in range(num_classes)}
    rng = random.Random(f"tinyseek-transfer:{cfg.seed}")
    kept: dict[int, list[tuple[str, float]]] = {c: [] for c in range(num_classes)}
    written = 0
    if cfg.transfer_writer == RECOMBINE:
        written = _write_recombined(cfg, model, tokenizer, by_class, known, kept, quota, rng, log)
    elif cfg.transfer_writer:
        written = _write_with_writer(cfg, Path(run_dir), model, tokenizer, by_class, known, kept, quota, rng, log)
    else:
        written = _write_with_teacher(cfg, run_dir, model, tokenizer, by_class, known, kept, quota, rng, log)
    rows = [{"text": t, "label": dataset.labels[c], "confidence": round(p, 4)}
            for c in range(num_classes) for t, p in kept[c]]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    short = [dataset.labels[c] for c in range(num_classes) if len(kept[c]) < quota]
    log(f"[teacher] transfer set: {written:,} generated utterances (asked {cfg.transfer_samples:,}, confidence >= "
        f"{cfg.transfer_confidence:g})" + (f"; fewer than {quota} for {', '.join(short)}" if short else "")
        + f" -> {out}")
    return out


def _write_with_teacher(cfg, run_dir, model, tokenizer, by_class, known, kept, quota, rng, log) -> int:
    """The teacher's own LM continues the first one or two tokens of training examples."""
    lm, written = model.backbone, 0
    if tokenizer.eos_token_id is None:
        raise TeacherError("teacher.transfer_samples: the teacher's tokenizer has no end-of-sequence token, so "
                           "nothing tells where a generated utterance ends")
    with _generators(cfg, run_dir, lm, tokenizer, log) as generate:
        for r in range(MAX_ROUNDS):
            open_classes = [c for c in range(len(kept)) if len(kept[c]) < quota and by_class[c]]
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
    return written


# A word, or one CJK character (Chinese has no spaces between words).
_PIECE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]|[^\\s\u3400-\u4dbf"
                    "\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]+")


def _pieces(text: str) -> list[str]:
    return _PIECE.findall(text)


def _join(pieces: list[str]) -> str:
    """Pieces back into text: a space between two that are not CJK, none next to a CJK one."""
    out = ""
    for p in pieces:
        if out and not _CJK.match(p) and not _CJK.match(out[-1]):
            out += " "
        out += p
    return out


def recombine(a: str, b: str, rng: random.Random) -> str:
    """A new text from two training texts of one class: a's start and b's end (spliced), a with
    one piece swapped for one of b's, a with one of b's pieces inserted, or a with one piece left
    out (the data augmentation of Tang et al., 2019, without a part-of-speech tagger)."""
    pa, pb = _pieces(a), _pieces(b)
    op = rng.randrange(4)
    if op == 0 and len(pa) > 1 and len(pb) > 1:
        return _join(pa[:rng.randrange(1, len(pa))] + pb[rng.randrange(1, len(pb)):])
    if op == 1 and pa and pb:
        i = rng.randrange(len(pa))
        return _join(pa[:i] + [rng.choice(pb)] + pa[i + 1:])
    if op == 2 and pb:
        i = rng.randrange(len(pa) + 1)
        return _join(pa[:i] + [rng.choice(pb)] + pa[i:])
    if len(pa) > 2:
        i = rng.randrange(len(pa))
        return _join(pa[:i] + pa[i + 1:])
    return a


def _write_recombined(cfg, model, tokenizer, by_class, known, kept, quota, rng, log) -> int:
    """Recombined pairs of a class's training texts (recombine), in the script of the first;
    each is a candidate for that class. No language model writes: the teacher's head alone
    decides what is kept, so this costs the head's passes only."""
    written = 0
    for r in range(MAX_ROUNDS):
        open_classes = [c for c in range(len(kept)) if len(kept[c]) < quota and by_class[c]]
        if not open_classes:
            break
        texts, asked = [], []
        for c in open_classes:
            for _ in range(2 * (quota - len(kept[c]))):  # enough if half are kept
                a = rng.choice(by_class[c])
                same = [t for t in by_class[c] if bool(_CJK.search(t)) == bool(_CJK.search(a))]
                texts.append(recombine(a, rng.choice(same), rng))
                asked.append(c)
        written += _keep(model, tokenizer, cfg, texts, known, kept, quota, asked)
        log(f"[teacher] transfer set, round {r + 1}: {len(texts):,} recombined texts, "
            f"{sum(len(k) for k in kept.values()):,} kept so far")
    return written


def _keep(model, tokenizer, cfg, texts: list[str], known: set, kept: dict, quota: int,
          asked: list[int] | None = None) -> int:
    """Label the new texts among `texts` with the teacher's head and keep the confident ones in
    `kept` (per label, up to `quota`); with `asked` (the class each text was written for), only
    those the head gives that class. Returns how many were kept."""
    asked_for = dict(zip(texts, asked)) if asked is not None else {}
    fresh = list(dict.fromkeys(t for t in texts if t and t not in known))
    if not fresh:
        return 0
    ids, mask = tokenize(tokenizer, fresh, cfg.max_tokens)
    probs = torch.cat([model(ids[i:i + 128], mask[i:i + 128]).softmax(-1) for i in range(0, len(fresh), 128)]).numpy()
    written = 0
    for text, p in zip(fresh, probs):
        label, conf = int(np.argmax(p)), float(np.max(p))
        if asked is not None and asked_for[text] != label:
            continue
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


# -- a pretrained writer (teacher.transfer_writer) ----------------------------------------------

# A few examples per prompt, a few items sampled after each (the prompt's cache shared by them).
WRITER_EXAMPLES = 5  # training examples listed in each prompt
WRITER_SAMPLES = 4  # items sampled after each prompt
WRITER_PROMPTS = 12  # prompts per batch: 48 sequences generated together
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def _write_with_writer(cfg, run_dir: Path, model, tokenizer, by_class, known, kept, quota, rng, log) -> int:
    """A pretrained LM continues lists of a class's training examples (cfg.transfer_prompt, then
    "- example" lines, then "-"); each new line is a candidate for that class."""
    writer, wtok = load_writer(cfg, run_dir, log)
    newline = wtok.encode("\n", add_special_tokens=False)
    stops = ([newline[0]] if len(newline) == 1 else []) + ([wtok.eos_token_id] if wtok.eos_token_id is not None else [])
    written, t0, done_batches = 0, time.monotonic(), 0
    logged = t0
    for r in range(MAX_ROUNDS):
        open_classes = [c for c in range(len(kept)) if len(kept[c]) < quota and by_class[c]]
        if not open_classes:
            break
        # Enough prompts that every open class could fill its quota if half of what is written is kept.
        need = {c: -(-2 * (quota - len(kept[c])) // WRITER_SAMPLES) for c in open_classes}
        jobs = [(c, _writer_prompt(cfg, rng, by_class[c])) for c in open_classes for _ in range(need[c])]
        rng.shuffle(jobs)
        batches = [jobs[i:i + WRITER_PROMPTS] for i in range(0, len(jobs), WRITER_PROMPTS)]
        for b, batch in enumerate(batches):
            texts = write_batch(writer, wtok, [p for _, p in batch], cfg, stops, _batch_seed(cfg.seed, r, 0, b))
            asked = [c for c, _ in batch for _ in range(WRITER_SAMPLES)]
            written += _keep(model, tokenizer, cfg, texts, known, kept, quota, asked)
            done_batches += 1
            now = time.monotonic()
            if done_batches == 2 or now - logged >= 60 or b == len(batches) - 1:  # about a line a minute
                per_batch, logged = (now - t0) / done_batches, now
                log(f"[teacher] transfer set, round {r + 1}: batch {b + 1}/{len(batches)}, "
                    f"{sum(len(k) for k in kept.values()):,} kept so far, about "
                    f"{per_batch * (len(batches) - b - 1) / 60:.1f} min left in this round")
    return written


def load_writer(cfg, run_dir: Path, log=print):
    """(model, tokenizer) of teacher.transfer_writer on the CPU, in teacher.dtype (auto: what
    this CPU runs fastest); a .gguf file is dequantized once into `<run>/writer/`, or read from
    the teacher's `<run>/base/` when it is also the teacher's source (and dtype)."""
    from .load import gguf_to_folder, load_teacher, use_threads
    use_threads(cfg.threads)
    source = Path(cfg.transfer_writer).expanduser()
    if not source.exists():
        raise TeacherError(f"teacher.transfer_writer {cfg.transfer_writer} does not exist; give a local Hugging Face "
                           f"folder or .gguf file of a pretrained language model, or \"\" to let the teacher write")
    dtype = cfg.dtype
    if source.is_file() and source.suffix.lower() == ".gguf":
        if cfg.source not in ("", "default") and Path(cfg.source).expanduser().resolve() == source.resolve():
            from .adapt import base_dtype, gguf_base
            dtype, source = base_dtype(cfg), gguf_base(cfg, run_dir, log)  # the teacher's own dequantized copy
        else:
            source = gguf_to_folder(source, run_dir / "writer", None, dtype, log=log)
    model, tok = load_teacher(source, None, dtype=dtype, device="cpu")
    tok.padding_side = "left"  # generation continues every prompt from its last token
    return model, tok


def _writer_prompt(cfg, rng: random.Random, examples: list[str]) -> str:
    """cfg.transfer_prompt, then up to WRITER_EXAMPLES examples in the script of the first drawn
    one as "- text" lines, then "-" for the writer to go on."""
    first = rng.choice(examples)
    script = bool(_CJK.search(first))
    same = [t for t in examples if t != first and bool(_CJK.search(t)) == script]
    chosen = [first] + rng.sample(same, min(len(same), WRITER_EXAMPLES - 1))
    return cfg.transfer_prompt + "".join(f"- {t}\n" for t in chosen) + "-"


@torch.no_grad()
def write_batch(writer, wtok, prompts: list[str], cfg, stops: list[int], seed: int) -> list[str]:
    """WRITER_SAMPLES lines the writer samples after each prompt (seeded), in prompt order."""
    enc = wtok(prompts, return_tensors="pt", padding=True)
    examples = [line for p in prompts for line in p.split("\n")[1:-1]]  # the "- text" lines
    longest = max(len(ids) for ids in wtok(examples, add_special_tokens=False)["input_ids"])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    # Read each prompt once (all but its last token, whose logits generate() needs) and give
    # every sample a copy of its cache, instead of generate() reading it WRITER_SAMPLES times:
    # the same texts, about 10 % less time with Gemma 3 270M (the decoding steps, each through
    # its 262k-entry output layer, are the rest).
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every prompt's tokens from 0
    read = writer(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True)
    cache = cache_of(read)
    cache.batch_repeat_interleave(WRITER_SAMPLES)
    ids, mask = ids.repeat_interleave(WRITER_SAMPLES, 0), mask.repeat_interleave(WRITER_SAMPLES, 0)
    torch.manual_seed(seed)
    # top-k, not top-p: top-p sorts the whole vocabulary (262k entries for Gemma 3) at every step.
    out = writer.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                          temperature=cfg.transfer_temperature, top_k=40, top_p=1.0,
                          max_new_tokens=min(cfg.max_tokens, longest * 3 // 2 + 2),
                          eos_token_id=stops or None, pad_token_id=wtok.pad_token_id, **{cache_arg(writer): cache})
    lines = wtok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [line.split("\n")[0].strip().lstrip("-").strip() for line in lines]
