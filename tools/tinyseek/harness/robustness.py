"""Accuracy under noise: the adapted teacher, the float student and the int8 student (the
integer reference) on the clean test split and on seeded noisy copies of it (or on the
validation split, `--split val`, to choose noise settings without reading the test).

Writes `robustness.json` and `robustness.md` into the run folder. Each noise kind of
`tinyseek.data.noise` is measured at its documented levels; a model's drop is its clean
accuracy minus its noisy accuracy, in percentage points. The goal (`max_drop_points`) is
judged at the reference (medium) level of every kind measured.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch

from ..data.noise import DEFAULT_KINDS, LEVELS, REFERENCE_LEVEL, SEQUENCE_KINDS, TEXT_KINDS, corrupt_split, is_cjk

MODELS = ("teacher", "student_float", "student_int8")
MODEL_NAMES = {"teacher": "teacher", "student_float": "student, float", "student_int8": "student, int8"}


class RobustnessError(ValueError):
    """The run is incomplete or a noise kind does not fit its task."""


@torch.no_grad()
def teacher_logits(model, tokenizer, meta: dict, split, kind: str, batch_size: int = 64) -> np.ndarray:
    """The adapted teacher's logits [N, C] for a split, computed as the knowledge cache's are:
    the head on the mean-pooled last hidden state (extract.head_logits), or for a zero-shot
    teacher (no head) the verbalisers' scores with the prompt recorded in teacher.json."""
    from ..teacher.classifier import split_inputs, trim
    from ..teacher.extract import head_logits
    if model.head is None:
        from ..teacher.verbalize import zero_shot_logits
        z = meta["zero_shot"]
        return zero_shot_logits(model, tokenizer, list(split.texts), list(meta["labels"]), z["verbalizers"],
                                z["prompt"], score=z["score"], max_tokens=meta["max_tokens"])
    inputs, mask = split_inputs(tokenizer, split, kind, meta["max_tokens"])
    device, out = model.backbone.device, []
    for i in range(0, len(inputs), batch_size):
        inp, m = (t.to(device) for t in trim(inputs[i:i + batch_size], mask[i:i + batch_size]))
        if inp.is_floating_point():
            inp = inp.to(model.backbone.dtype)
        out.append(head_logits(model, model.encode(inp, m).last_hidden_state, m).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(meta["labels"])), np.float32)


class _Models:
    """The three models of a run, loaded once."""

    def __init__(self, run):
        from ..quant.float_model import FloatStudent
        from ..quant.model import QuantModel
        from ..teacher.classifier import load_adapted
        missing = [p for p in (run.teacher_dir / "teacher.json", run.student_dir / "student.json",
                               run.int8_dir / "model.json") if not p.is_file()]
        if missing:
            raise RobustnessError(f"run {run.dir} is incomplete ({', '.join(map(str, missing))} missing): "
                                  f"run `tinyseek build` (at least up to quantize) first")
        t = run.cfg.teacher
        self.teacher, self.tokenizer, self.meta = load_adapted(run.teacher_dir, t.dtype, t.device)
        self.student = FloatStudent.from_folder(run.student_dir)
        self.int8 = QuantModel.load(run.int8_dir)
        self.kind = run.dataset.kind

    def predictions(self, split) -> dict[str, np.ndarray]:
        from .evaluate import oracle_logits
        return {
            "teacher": teacher_logits(self.teacher, self.tokenizer, self.meta, split, self.kind).argmax(1),
            "student_float": self.student.predict(split).argmax(1),
            "student_int8": oracle_logits(self.int8, split).argmax(1),
        }


def _accuracies(pred: dict[str, np.ndarray], y: np.ndarray, groups: dict[str, np.ndarray]) -> dict:
    acc = {m: float(np.mean(p == y)) if len(y) else 0.0 for m, p in pred.items()}
    if groups:
        acc["by_language"] = {lang: {m: float(np.mean(p[sel] == y[sel])) for m, p in pred.items()}
                              for lang, sel in groups.items()}
    return acc


def _language_groups(split) -> dict[str, np.ndarray]:
    """Text tasks: boolean masks of the Chinese (any CJK character) and English samples."""
    if split.texts is None:
        return {}
    zh = np.array([any(is_cjk(c) for c in t) for t in split.texts], dtype=bool)
    return {lang: sel for lang, sel in (("en", ~zh), ("zh", zh)) if sel.any()}


def check_kinds(kinds: list[str], task_kind: str) -> list[str]:
    """The noise kinds to measure: `kinds`, or DEFAULT_KINDS of the task's modality when empty."""
    if not kinds:
        return list(DEFAULT_KINDS[task_kind])
    fits = TEXT_KINDS if task_kind == "text" else SEQUENCE_KINDS
    bad = [k for k in kinds if k not in fits]
    if bad:
        raise RobustnessError(f"robustness.kinds {bad} do not fit a {task_kind} task; choose from {', '.join(fits)}")
    return list(dict.fromkeys(kinds))


def evaluate_robustness(run, kinds: list[str] | None = None, seed: int = 0, max_drop_points: float = 3.0,
                        split: str = "test") -> dict:
    """Measure every model on the clean `split` (test, or val to choose settings on) and on each
    (kind, level); write robustness.json and robustness.md (robustness_val.* for val) into the
    run folder and return the JSON's content."""
    from ..teacher.load import use_threads
    if split not in ("test", "val"):
        raise RobustnessError(f"the split to measure is test or val, not {split!r}")
    use_threads(run.cfg.teacher.threads)
    t0 = time.monotonic()
    ds = run.dataset
    kinds = check_kinds(list(kinds or []), ds.kind)
    models = _Models(run)
    test = getattr(ds, split)
    y = np.asarray(test.y)
    if not len(y):
        raise RobustnessError(f"the {split} split is empty; set task.val_fraction > 0" if split == "val" else
                              "the test split is empty")
    groups = _language_groups(test)
    clean = _accuracies(models.predictions(test), y, groups)

    conditions = []
    for kind in kinds:
        for index, level in enumerate(LEVELS[kind]):
            noisy = corrupt_split(test, kind, level, seed)
            acc = _accuracies(models.predictions(noisy), y, groups)
            changed = (np.mean([a != b for a, b in zip(noisy.texts, test.texts)]) if noisy.texts is not None
                       else float(np.mean(np.any(noisy.x != test.x, axis=(1, 2)))))
            conditions.append({
                "noise": kind, "level": level, "level_index": index, "samples_changed": float(changed),
                "accuracy": acc,
                "drop_points": {m: 100.0 * (clean[m] - acc[m]) for m in MODELS},
            })
    reference = [c for c in conditions if c["level_index"] == REFERENCE_LEVEL]
    goal = {}
    for m in MODELS:
        worst = max(reference, key=lambda c: c["drop_points"][m]) if reference else None
        goal[m] = {"worst_drop_points": worst["drop_points"][m] if worst else 0.0,
                   "worst_noise": worst["noise"] if worst else None,
                   "met": bool(worst is None or worst["drop_points"][m] < max_drop_points)}
    result = {
        "task": {"name": ds.name, "kind": ds.kind, "split": split, "samples": int(len(y)), "split_by": ds.split_by},
        "model": {"name": models.int8.name, "hash": models.int8.model_hash()},
        "seed": seed,
        "clean": clean,
        "conditions": conditions,
        "goal": {"max_drop_points": max_drop_points, "level_index": REFERENCE_LEVEL, "models": goal},
    }
    stem = "robustness" if split == "test" else "robustness_val"
    (run.dir / f"{stem}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (run.dir / f"{stem}.md").write_text(render_markdown(result))
    run.log(f"[robustness] {len(conditions)} noisy {split} sets in {time.monotonic() - t0:.1f} s; worst drop at the "
            "reference level: " + ", ".join(f"{m} {g['worst_drop_points']:.1f}" for m, g in goal.items()))
    return result


_LEVEL_UNITS = {"typo": "/char", "asr": "", "word_drop": "/word", "soundalike": "/word", "filler": "/word",
                "gaussian": " dB SNR", "drift": " std", "walk": " std", "gain": "", "dropout": "/step"}


def _level(kind: str, level: float) -> str:
    return f"{level:g}{_LEVEL_UNITS.get(kind, '')}"


def render_markdown(result: dict) -> str:
    """The table of robustness.json: accuracy (drop in points) of each model per condition."""
    clean = result["clean"]
    head = "| noise | level | " + " | ".join(MODEL_NAMES[m] for m in MODELS) + " |"
    lines = [
        f"# Robustness: {result['model']['name']}",
        "",
        f"Task `{result['task']['name']}` ({result['task']['kind']}), {result['task']['samples']} "
        f"{'test' if result['task']['split'] == 'test' else 'validation'} samples, "
        f"noise seed {result['seed']}. Accuracy, and in brackets its change from clean in percentage points.",
        "",
        head,
        "|---|---|" + "---|" * len(MODELS),
        "| clean | | " + " | ".join(f"{100 * clean[m]:.2f} %" for m in MODELS) + " |",
    ]
    for c in result["conditions"]:
        cells = [f"{100 * c['accuracy'][m]:.2f} % ({-c['drop_points'][m]:+.2f})" for m in MODELS]
        lines.append(f"| {c['noise']} | {_level(c['noise'], c['level'])} | " + " | ".join(cells) + " |")
    g = result["goal"]
    lines += ["", f"Goal: a drop under {g['max_drop_points']:g} points at the medium level of every noise kind."]
    for m in MODELS:
        s = g["models"][m]
        verdict = "met" if s["met"] else "NOT met"
        worst = f"worst {s['worst_drop_points']:.2f} points ({s['worst_noise']})" if s["worst_noise"] else "no noise"
        lines.append(f"- {MODEL_NAMES[m]}: {verdict}, {worst}")
    return "\n".join(lines) + "\n"
