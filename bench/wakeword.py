"""A wake word ("hey tiny") on continuous audio: a TinyLSTM over the fixed-point front end's
frames, run every 200 ms on the last second, int8 by the integer reference; false rejects and
false accepts on streams of held-out voices. Writes bench/results/wakeword.json and a table in
bench/RESULTS.md.

    .venv/bin/python bench/wakeword.py --speech build/voice   # after bench/voice.py (its clips)

Data (synthetic, docs/audio.md): the keyword spoken by each split's English voices (espeak-ng
and flite, seeded speed, pitch, room, level and noise as the spoken commands), over other speech
(a spoken-command window 6-30 dB down) or noise; negatives are 1 s windows of the spoken
commands (English and Chinese, other speech) and of noise alone.
Training uses training voices only. Streams: the validation (test) split's command clips one
after another with the validation (test) voices' keywords put between them at random; the
threshold on the int8 model's logit margin is the lowest with no false accept on the validation stream,
and the test stream is read once with it. A detection within 1 s after a keyword's end (or in
its last 100 ms) is a hit; any other is a false accept; after a detection the detector rests 1 s.
The streams are minutes long, so a false-accept rate per hour is an estimate with that
resolution: the counts and hours are reported with it.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from safetensors.numpy import save_file  # noqa: E402

from tinyseek.audio.data import FEATURE_SCALE, load_audio  # noqa: E402
from tinyseek.audio.frontend import FrontendConfig, features  # noqa: E402
from tinyseek.audio.synth import SAMPLE_RATE, VOICES, place, room, speak  # noqa: E402
from tinyseek.config import load  # noqa: E402
from tinyseek.data.dataset import Dataset, Split  # noqa: E402
from tinyseek.distill.train import train_student  # noqa: E402
from tinyseek.quant.quantize import quantize  # noqa: E402
from tinyseek.quant.reference import infer_sequences  # noqa: E402
from tinyseek.student.tinylstm import save_student  # noqa: E402

from results_md import replace_section  # noqa: E402

KEYWORD = "hey tiny"
HEADING = "## Wake word on continuous audio (`python bench/wakeword.py`)"
RESULTS_JSON = ROOT / "bench" / "results" / "wakeword.json"
FE = FrontendConfig()
WINDOW = 50    # frames: 1 s
STRIDE = 10    # frames between detector runs: 200 ms
REST = 50      # frames the detector rests after a detection
SPLITS = ("train", "val", "test")


def keyword_clips(split: str, n: int, seed: int) -> list[np.ndarray]:
    """n utterances of the keyword by `split`'s English voices, each trimmed to its speech."""
    out = []
    for i in range(n):
        rng = random.Random(f"tinyseek-wakeword:{seed}:{split}:{i}")
        pool = VOICES["en"][split]
        voice = pool[rng.randrange(len(pool))]
        speech = room(speak(KEYWORD, voice, rng), rng)
        loud = np.flatnonzero(np.abs(speech) > 0.05 * np.abs(speech).max())
        speech = speech[loud[0]:loud[-1] + 1][:SAMPLE_RATE - 800]
        clip = place(speech, len(speech) + 1600, np.random.default_rng([seed, 7, SPLITS.index(split), i]))
        out.append(clip)
    return out


def windows(split_audio: np.ndarray, rng: np.random.Generator, per_clip: int) -> list[np.ndarray]:
    """Random 1 s windows of 3 s clips (hop-aligned)."""
    n = WINDOW * FE.hop
    out = []
    for clip in split_audio:
        for _ in range(per_clip):
            start = int(rng.integers(0, (len(clip) - n) // FE.hop + 1)) * FE.hop
            out.append(clip[start:start + n])
    return out


def noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """White noise at a seeded level (amplitude 10 to 1000, i.e. -70 to -30 dB of full scale)."""
    return rng.standard_normal(n) * 10 ** rng.uniform(1, 3)


def training_set(keywords: list[np.ndarray], commands: np.ndarray, seed: int, per_clip: int) -> Split:
    """Keyword windows: the keyword ends in the window's last 400 ms, over a background of other
    speech (a command window 6 to 30 dB down) or noise; other windows: command windows and noise."""
    rng = np.random.default_rng([seed, 11])
    n = WINDOW * FE.hop
    backgrounds = windows(commands, rng, 1)
    pos = []
    for k in keywords:
        end = n - int(rng.integers(0, 20)) * FE.hop
        if rng.random() < 0.5:
            back = backgrounds[int(rng.integers(len(backgrounds)))] * 10 ** (-rng.uniform(6, 30) / 20)
        else:
            back = noise(n, rng)
        back[max(0, end - len(k)):end] += k[-end:]
        pos.append(np.clip(np.round(back), -32768, 32767).astype(np.int16))
    neg = windows(commands, rng, per_clip) + [np.round(noise(n, rng)).astype(np.int16) for _ in range(len(keywords))]
    x = np.stack([features(a, FE) for a in pos + neg]).astype(np.float32) * np.float32(FEATURE_SCALE)
    return Split(y=np.array([1] * len(pos) + [0] * len(neg), np.int64), texts=None, x=x)


def stream(commands: np.ndarray, keywords: list[np.ndarray], seed: int) -> tuple[np.ndarray, list[int]]:
    """The command clips one after another with the keywords between them at random places;
    returns (samples, the frame index at which each keyword ends)."""
    rng = np.random.default_rng([seed, 13])
    slots = sorted(rng.choice(len(commands) + 1, size=len(keywords), replace=False).tolist())
    parts, ends, at, k = [], [], 0, 0
    for i in range(len(commands) + 1):
        while k < len(slots) and slots[k] == i:
            parts.append(keywords[k])
            at += len(keywords[k])
            ends.append(at // FE.hop)
            k += 1
        if i < len(commands):
            parts.append(commands[i])
            at += len(commands[i])
    return np.concatenate(parts), ends


def margins(qm, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frame index of each detector run, int8 logit margin keyword - other) over a stream."""
    at = np.arange(WINDOW, len(feats) + 1, STRIDE)
    logits = np.concatenate([infer_sequences(qm, np.stack([feats[a - WINDOW:a] for a in at[i:i + 2048]]))
                             for i in range(0, len(at), 2048)])
    return at, logits[:, 1].astype(np.int64) - logits[:, 0]


def detect(at: np.ndarray, margin: np.ndarray, threshold: int, ends: list[int], other_seconds: float) -> dict:
    fired, rest_until = [], -1
    for a, m in zip(at.tolist(), margin.tolist()):
        if a >= rest_until and m >= threshold:
            fired.append(a)
            rest_until = a + REST
    hit = set()
    false = 0
    for f in fired:
        match = [j for j, e in enumerate(ends) if e - 5 <= f <= e + 50 and j not in hit]
        if match:
            hit.add(match[0])
        else:
            false += 1
    hours = other_seconds / 3600  # the audio that holds no keyword
    return {"threshold": threshold, "keywords": len(ends), "detected": len(hit), "false_accepts": false,
            "hours": hours, "detection_rate": len(hit) / len(ends), "false_accepts_per_hour": false / hours}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speech", type=Path, default=ROOT / "build" / "voice", help="bench/voice.py's work folder")
    ap.add_argument("--keywords", default="300,40,60", help="keyword clips for train,val,test")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = load(overrides={"task.kind": "audio", "student.hidden": args.hidden})
    _, speech = load_audio(cfg.task, cache_dir=args.speech)
    counts = dict(zip(SPLITS, map(int, args.keywords.split(","))))
    kws = {s: keyword_clips(s, counts[s], args.seed) for s in SPLITS}
    train = training_set(kws["train"], speech["train"].audio, args.seed, 2)
    val = training_set(kws["val"], speech["val"].audio, args.seed + 1, 1)
    ds = Dataset(name="wakeword", kind="sequence", labels=["other", "hey_tiny"], train=train, val=val,
                 test=val, split_by="voices")
    work = args.speech / "wakeword"
    work.mkdir(parents=True, exist_ok=True)
    knowledge = work / "no-teacher.safetensors"  # hard labels only: the cache's logits are never read (alpha 0)
    save_file({f"{s}.logits": np.zeros((len(getattr(ds, s).y), 2), np.float32) for s in SPLITS}, str(knowledge))
    d = replace(cfg.distill, schedule="joint", alpha=0.0, beta=0.0, epochs=args.epochs, noise_copies=0,
                seed=args.seed, feedback_rounds=0)
    result = train_student(ds, knowledge, replace(cfg, distill=d), progress=False)
    folder = save_student(result.model, result.spec, work / "student")
    qm = quantize(folder, train.x[:512], name="wakeword", input_scale=FEATURE_SCALE)
    out = {"keyword": KEYWORD, "train_windows": {"keyword": int(train.y.sum()), "other": int((train.y == 0).sum())},
           "student_hidden": args.hidden, "epochs": args.epochs, "best_epoch": result.summary["best_epoch"]}
    runs = {}
    for s in ("val", "test"):
        audio, ends = stream(speech[s].audio, kws[s], args.seed)
        other = (len(audio) - sum(len(k) for k in kws[s])) / SAMPLE_RATE
        runs[s] = (*margins(qm, features(audio, FE)), ends, other)
    at, m, ends, other = runs["val"]
    candidates = sorted(set(m.tolist()))
    threshold = next((t for t in candidates if detect(at, m, t, ends, other)["false_accepts"] == 0),
                     candidates[-1] + 1)
    out["val"] = detect(at, m, threshold, ends, other)
    t_at, t_m, t_ends, t_other = runs["test"]
    out["test"] = detect(t_at, t_m, threshold, t_ends, t_other)
    print(json.dumps(out, indent=1))
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(out, indent=2) + "\n")
    row = lambda s: (f"| {s} | {out[s]['detected']} / {out[s]['keywords']} ({100 * out[s]['detection_rate']:.1f} %) | "  # noqa: E731
                     f"{out[s]['false_accepts']} in {60 * out[s]['hours']:.1f} min ({out[s]['false_accepts_per_hour']:.1f} per hour) |")
    bar = out["test"]["detection_rate"] >= 0.98 and out["test"]["false_accepts_per_hour"] <= 1
    verdict = ("The issue's bar (98 % detection at no more than 1 false accept per hour) is "
               f"{'met' if bar else 'not met'} on the test stream.")
    replace_section(HEADING, f"""{HEADING}

"{KEYWORD}" (synthetic voices, docs/audio.md), a TinyLSTM (hidden {args.hidden}) over 1 s of the front
end's frames, run every 200 ms, int8 with the integer reference, hard labels only; trained on
{out['train_windows']['keyword']} keyword and {out['train_windows']['other']} other windows of training voices.
The streams are the held-out splits' spoken commands (English and Chinese) with the keywords of
held-out voices between them; threshold {threshold} (margin of the int8 model's int16 logits), the lowest with no false
accept on the validation stream. The streams are minutes, not hours: the per-hour rate has that
resolution. Synthetic speech is a proxy, not people.

| stream | keywords detected | false accepts |
|---|---|---|
{row('val')}
{row('test')}

{verdict} `python bench/wakeword.py --speech build/voice` (after bench/voice.py); results in
bench/results/wakeword.json.
""")


if __name__ == "__main__":
    main()
