"""Spoken commands: cross-modal distillation from the text teacher into an audio student, against
hard labels alone, on the built-in spoken commands (voices held out per split, docs/audio.md).
Writes bench/results/voice.json and the "Spoken commands" table of bench/RESULTS.md.

    .venv/bin/python bench/voice.py --teacher models/demo/teacher   # the default's teacher, made by `make demo`

The teacher is the built-in default's (made by `tinyseek build` / `make demo` in
models/<run>/teacher; it is not committed). It reads each clip's transcript and its logits and
hidden states (knowledge cache) are the targets of the audio student, a TinyLSTM over the
fixed-point front end's int8 frames that never sees text:
  hard        the student on the hard labels alone (joint schedule, alpha 0, beta 0)
  distilled   the default progressive schedule: the teacher's hidden states (features), then its
              annealed soft labels with a little hard-label loss, then a hard-label fine-tune
Both train with the default SpecAugment of the training batches (distill.spec_*: shifts, time and
frequency masks); where it is on, "hard, no augmentation" is the hard-label student without it.
All: the same student (hidden 64, 1 layer), epochs and seed, no noisy copies; the best epoch is
chosen on validation (voices and phrasings held out like the test's); int8 by the quantizer with
the input scale fixed at the front end's 1/64, evaluated with the integer reference. For scale:
the teacher and the committed default's text student on the same transcripts.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from tinyseek.audio.data import FEATURE_SCALE, feature_dataset, load_audio, transcript_dataset  # noqa: E402
from tinyseek.config import load  # noqa: E402
from tinyseek.data.dataset import Dataset  # noqa: E402
from tinyseek.distill.train import predict_logits, train_student  # noqa: E402
from tinyseek.quant.quantize import quantize  # noqa: E402
from tinyseek.quant.reference import infer_sequences  # noqa: E402
from tinyseek.student.tinylstm import save_student  # noqa: E402
from tinyseek.teacher.extract import extract, teacher_accuracy  # noqa: E402

from results_md import replace_section, rewrite_from_json  # noqa: E402

HEADING = "## Spoken commands: cross-modal distillation (`python bench/voice.py`)"
RESULTS_JSON = ROOT / "bench" / "results" / "voice.json"
SPLITS = ("train", "val", "test")
AUGMENT = ("spec_shift_frames", "spec_time_masks", "spec_time_frames", "spec_freq_masks", "spec_freq_channels")


def text_student(run_dir: Path, text: Dataset) -> dict:
    """The committed default's float text student on the transcripts (the issue's yardstick)."""
    from tinyseek.student.tinylstm import load_student
    model, spec = load_student(run_dir / "student")
    return {s: float(np.mean(predict_logits(model, spec, getattr(text, s)).argmax(1) == getattr(text, s).y))
            for s in ("val", "test")}


def augment_text(aug: dict) -> str:
    """The SpecAugment settings in use, in words (those set to 0 are off and not named)."""
    parts = [f"a shift of up to {aug['spec_shift_frames']} frames" if aug["spec_shift_frames"] else "",
             f"{aug['spec_time_masks']} time masks of up to {aug['spec_time_frames']} frames"
             if aug["spec_time_masks"] and aug["spec_time_frames"] else "",
             f"{aug['spec_freq_masks']} frequency masks of up to {aug['spec_freq_channels']} channels"
             if aug["spec_freq_masks"] and aug["spec_freq_channels"] else ""]
    return ", ".join(p for p in parts if p)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(logits).argmax(1) == y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, default=ROOT / "models" / "demo" / "teacher")
    ap.add_argument("--run", type=Path, default=ROOT / "build" / "voice", help="work folder (clips, knowledge)")
    # 800 gave 34.9 % on validation (hard labels), 1,200 38.5 %: more clips is the lever (docs/audio.md)
    ap.add_argument("--clips-per-intent", type=int, default=1200)
    ap.add_argument("--frames-per-step", type=int, default=None, help="front-end frames per student step "
                    "(default: task.frames_per_step)")
    # at 800 clips per intent, 30 epochs gave 30.4 % on validation (hard labels), 60 gave 34.9 %
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--md-only", action="store_true", help="rewrite the RESULTS.md section from "
                    "bench/results/voice.json (the settings it records, else these arguments)")
    args = ap.parse_args()
    if args.md_only:
        rewrite_from_json(RESULTS_JSON, args, write_section)
        return
    if not (args.teacher / "teacher.json").is_file():
        raise SystemExit(f"{args.teacher} holds no adapted teacher: run `tinyseek build` (or `make demo`) first, "
                         "or pass --teacher models/<run>/teacher")
    overrides = {"task.kind": "audio", "task.clips_per_intent": args.clips_per_intent, "teacher.threads": 1,
                 "student.hidden": args.hidden}
    if args.frames_per_step:
        overrides["task.frames_per_step"] = args.frames_per_step
    cfg = load(overrides=overrides)
    k = cfg.task.frames_per_step
    args.run.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    labels, splits = load_audio(cfg.task, cache_dir=args.run)
    t_synth = time.time() - t0
    audio = feature_dataset(labels, splits, split_by="voices", frames_per_step=k)
    text = transcript_dataset(labels, splits, "voices")
    teacher_dir = args.run / "teacher"
    if teacher_dir.exists():
        shutil.rmtree(teacher_dir)
    shutil.copytree(args.teacher, teacher_dir)
    knowledge = extract(text, cfg.teacher, args.run)
    teacher = teacher_accuracy(knowledge, text)
    out = {"settings": {name: getattr(args, name) for name in ("clips_per_intent", "epochs", "hidden", "seed")},
           "clips": {s: len(splits[s].y) for s in SPLITS}, "steps": int(audio.train.x.shape[1]), "frames_per_step": k,
           "voices_heard": {s: len(set(splits[s].voices)) for s in SPLITS},
           "held_out_voices": {s: sorted(set(splits[s].voices)) for s in ("val", "test")}, "synthesis_s": round(t_synth, 1),
           "teacher": {s: teacher[s] for s in ("val", "test")},
           "text_student": text_student(args.teacher.parent, text), "students": {}}
    print(f"{out['clips']} clips, teacher on the transcripts: {out['teacher']}, text student: {out['text_student']}")
    aug = {k: getattr(cfg.distill, k) for k in AUGMENT}
    out["augment"] = aug
    variants = {"hard": dict(schedule="joint", alpha=0.0, beta=0.0), "distilled": dict(schedule="progressive")}
    if any(aug.values()):  # the ablation: what the augmentation adds
        variants = {"hard, no augmentation": dict(variants["hard"], **{k: 0 for k in aug}), **variants}
    for name, kw in variants.items():
        d = replace(cfg.distill, epochs=args.epochs, noise_copies=0, seed=args.seed, feedback_rounds=0, **kw)
        t = time.time()
        result = train_student(audio, knowledge, replace(cfg, distill=d), progress=False)
        folder = save_student(result.model, result.spec, args.run / f"student-{name}")
        qm = quantize(folder, audio.train.x[:256], name=f"voice_{name}", input_scale=FEATURE_SCALE)
        row = {"train_s": round(time.time() - t, 1), "best_epoch": result.summary["best_epoch"],
               "train_accuracy": result.summary["train_accuracy"]}
        for s in ("val", "test"):
            split = getattr(audio, s)
            frames = np.round(split.x / FEATURE_SCALE).astype(np.int8)  # the front end's int8 output
            row[f"{s}_float"] = accuracy(predict_logits(result.model, result.spec, split), split.y)
            row[f"{s}_int8"] = accuracy(infer_sequences(qm, frames), split.y)
        row["retention"] = row["test_int8"] / out["teacher"]["test"]
        row["vs_text_student"] = row["test_int8"] / out["text_student"]["test"]
        out["students"][name] = row
        print(name, json.dumps(row))
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    write_section(out, args)


def write_section(out: dict, args) -> None:
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    aug, k = out["augment"], out["frames_per_step"]
    rows = "\n".join(
        f"| {n} | {pct(r['train_accuracy'])} | {pct(r['val_float'])} | {pct(r['val_int8'])} | {pct(r['test_float'])} | "
        f"{pct(r['test_int8'])} | "
        f"{pct(r['retention'])} | {pct(r['vs_text_student'])} |" for n, r in out["students"].items())
    c, h, d = out["clips"], out["students"]["hard"], out["students"]["distilled"]
    v = out["voices_heard"]
    gap = (f"The hard-label student fits its training clips far better than unheard voices and phrasings "
           f"({pct(h['train_accuracy'])} against {pct(h['val_int8'])} on validation). "
           if h["train_accuracy"] - h["val_int8"] > 0.15 else "")
    plain = out["students"].get("hard, no augmentation")
    augmented = ("" if plain is None else
                 f"Every student but \"hard, no augmentation\" trains on SpecAugmented batches, drawn anew each epoch "
                 f"(distill.spec_*: {augment_text(aug)}); it moves the hard-label student's validation by "
                 f"{100 * (h['val_int8'] - plain['val_int8']):+.1f} points. ")
    replace_section(HEADING, f"""{HEADING}

The built-in spoken commands (docs/audio.md: the intents utterances synthesised by espeak-ng and
flite, rooms and noise by sox; {c['train']} training clips in {v['train']} voices, {c['val']} validation, {c['test']} test clips of
3 s, English and Chinese; validation and test voices and phrasings never heard in training).
Synthetic speech is a proxy, not people. The teacher (the default's, adapted on text) reads the
transcripts: {pct(out['teacher']['test'])} on the test transcripts ({pct(out['teacher']['val'])} on validation);
the default's text student {pct(out['text_student']['test'])}. The audio student (TinyLSTM, hidden {args.hidden}, over the
front end's int8 frames of 40 mel channels, {k} frames to a step: {out['steps']} steps a clip) never
sees text; {args.epochs} epochs, seed {args.seed}, best epoch on validation. "train" is the accuracy on
the training clips.

| audio student | train | val float | val int8 | test float | test int8 | retention (int8 / teacher) | int8 / text student |
|---|---|---|---|---|---|---|---|
{rows}

{gap}{augmented}Cross-modal distillation moves validation by
{100 * (d['val_int8'] - h['val_int8']):+.1f} points against hard labels. The issue's goal (int8 at 90 % of the text
student's accuracy) is {'met' if min(h['vs_text_student'], d['vs_text_student']) >= 0.9 else 'not met'}.

`python bench/voice.py --teacher models/demo/teacher --clips-per-intent {args.clips_per_intent} --epochs {args.epochs}`
(one thread; `make demo` makes the teacher); results in bench/results/voice.json.
""")


if __name__ == "__main__":
    main()
