"""A streaming wake word ("hey tiny") for the device's listener (tinyseek.audio.listen): its
training windows, hard-negative mining on a stream, training (a TinyLSTM on hard labels), int8,
and its false rejects and false accepts on continuous audio.

Data (synthetic, docs/audio.md): the keyword spoken by a split's English voices (espeak-ng and
flite, seeded speed, pitch, room, level and noise as the spoken commands), over other speech
(a command window 6-30 dB down), over noise or between two commands as in a stream; other
windows are 1 s of the commands (any language), across two commands, of noise alone and of near
misses ("hey tony"). A first model then reads a stream of training voices (commands with
keywords between them), and the windows it gets wrong are added (hard-negative mining) for the
model that is kept. Streams of the held-out splits measure it under the listener's rules.
"""
from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..config import WakeConfig
from ..data.dataset import Dataset, Split
from .data import FEATURE_SCALE, stack_frames
from .frontend import FrontendConfig, features
from .listen import ListenConfig, wake_checks, wake_margins, wakes
from .synth import SAMPLE_RATE, VOICES, place, room, speak

# Near misses, spoken by training voices and trained on as "other": words that share a part of
# the keyword, so the detector learns the whole of it rather than "hey" or a vowel.
NEAR_MISSES = ("hey", "tiny", "hey tony", "hi tina", "hey timmy", "a tiny one", "hey there", "say tiny",
               "hey time", "heighten me")
SPLITS = ("train", "val", "test")
FE = FrontendConfig()
WINDOW = 50    # frames: 1 s
# The listener's rule, chosen on the validation stream (bench/wakeword.py, hidden 48; keywords
# found at 1 and at 0 false accepts an hour allowed, docs/audio.md): a check every STRIDE frames,
# a detection at CONFIRM checks in a row over the threshold. Every 200 ms: 1 check 94 % and
# 61 %, 2 in a row 93/89, 3 81/60; every 100 ms: 1 check 95/55, 2 97/52, 3 97/91, 4 96/88.
STRIDE = 5     # frames between detector runs: 100 ms
CONFIRM = 3
MINING_STRIDE = 10  # frames between the checks hard-negative mining reads: its own, so the training
                    # set (and the model) stay the same whichever rule the listener takes
REST = 50      # frames the detector rests after a detection
# Scoring on a stream, as MLPerf Tiny's streaming wake word does (str_ww_util.py's
# get_true_and_false_detections): a wake from a keyword's start to 0.5 s after its end finds it;
# a wake from its start to 1 s after its end is never a false accept.
HIT_AFTER, MASK_AFTER = 25, 50
KEYWORD_END = 19  # a training window is the keyword when it ends 0-19 frames after the keyword does
KEYWORD_SAMPLES = SAMPLE_RATE - 800  # the longest keyword kept: 950 ms, so with its padding it fits the window
KEYWORD_PAD = 1600  # a keyword clip is its speech and 100 ms of noise, before it (0 to 100 ms) and after


def _speech(x: np.ndarray) -> np.ndarray:
    """x from its first to its last sample above 5 % of its peak: the utterance, without the
    silence around it."""
    level = np.abs(x.astype(np.int32))
    loud = np.flatnonzero(level > 0.05 * level.max())
    return x[loud[0]:loud[-1] + 1]


def keyword_clips(split: str, n: int, seed: int, texts: tuple[str, ...], keyword: str) -> list[np.ndarray]:
    """n utterances of `texts` in turn by `split`'s English voices, each trimmed to its speech
    and placed whole in a clip 100 ms longer (at most 1.05 s). Each is seeded by its index, so they are made in
    parallel (the synthesisers are separate processes) and come out the same in any order."""
    def one(i: int) -> np.ndarray:
        text = texts[i % len(texts)]
        tag = "" if text == keyword else f"{text}:"  # the keyword's own clips keep their seeds
        rng = random.Random(f"tinyseek-wakeword:{tag}{seed}:{split}:{i}")
        pool = VOICES["en"][split]
        voice = pool[rng.randrange(len(pool))]
        speech = _speech(room(speak(text, voice, rng), rng))[:KEYWORD_SAMPLES]
        return place(speech, len(speech) + KEYWORD_PAD, np.random.default_rng([seed, 7, SPLITS.index(split), i]),
                     max_lead=KEYWORD_PAD)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(one, range(n)))


RECORDING_COPIES = 10  # placements of each training recording (level, noise), so a few dozen are heard


def keyword_recordings(folder: str | Path, seed: int, val_fraction: float, test_fraction: float
                       ) -> dict[str, list[np.ndarray]]:
    """Your own recordings of the keyword (wake.recordings): <folder>/{train,val,test}/*.wav
    where those subfolders exist (split by speaker, as you know them), else <folder>/*.wav split
    by file (seeded; val_fraction and test_fraction of them, at least one each when there are
    three or more). 16 kHz mono 16-bit PCM; each is trimmed to its speech like the synthesised
    keywords and cut to 950 ms with a warning."""
    import warnings

    from .data import DataError, read_wav
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"wake.recordings = {root}: no such folder; it holds <name>.wav recordings of the keyword "
                        "(or train/, val/ and test/ folders of them)")

    def one(path: Path) -> np.ndarray:
        x = read_wav(path)
        if not np.any(x):
            raise DataError(f"{path}: the recording is silent (all samples 0); remove it")
        speech = _speech(x)
        if len(speech) > KEYWORD_SAMPLES:
            warnings.warn(f"{path}: {len(speech) / SAMPLE_RATE:.2f} s of speech; the detector hears 1 s, so it is "
                          "cut to 0.95 s", stacklevel=3)
        return speech[:KEYWORD_SAMPLES]

    if any((root / s).is_dir() for s in SPLITS):
        out = {s: [one(p) for p in sorted((root / s).glob("*.wav"))] for s in SPLITS}
    else:
        files = sorted(root.glob("*.wav"))
        order = np.random.default_rng([seed, 17]).permutation(len(files))
        n_test = max(int(round(test_fraction * len(files))), 1 if len(files) >= 3 else 0)
        n_val = max(int(round(val_fraction * len(files))), 1 if len(files) >= 3 else 0)
        picks = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        out = {s: [one(files[i]) for i in sorted(picks[s])] for s in SPLITS}
    if not out["train"]:
        raise DataError(f"wake.recordings = {root}: no .wav recordings to train on")
    return out


def placed_recordings(speech: list[np.ndarray], split: str, seed: int, copies: int) -> list[np.ndarray]:
    """Recordings as the synthesised keywords are made: 100 ms of noise split at random before and
    after, a seeded level (tinyseek.audio.synth.place); `copies` placements of each."""
    return [place(x, len(x) + KEYWORD_PAD, np.random.default_rng([seed, 19, SPLITS.index(split), i, c]),
                  max_lead=KEYWORD_PAD)
            for i, x in enumerate(speech) for c in range(copies)]


def windows(clips: np.ndarray, rng: np.random.Generator, per_clip: int) -> list[np.ndarray]:
    """Random hop-aligned 1 s windows of the clips."""
    n = WINDOW * FE.hop
    out = []
    for clip in clips:
        for _ in range(per_clip):
            start = int(rng.integers(0, (len(clip) - n) // FE.hop + 1)) * FE.hop
            out.append(clip[start:start + n])
    return out


def noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """White noise at a seeded level (amplitude 10 to 1000, i.e. -70 to -30 dB of full scale)."""
    return rng.standard_normal(n) * 10 ** rng.uniform(1, 3)


def as_steps(frames: np.ndarray, k: int) -> np.ndarray:
    """[N, WINDOW, C] int8 frames as the student's float input: k frames a step, times FEATURE_SCALE."""
    return stack_frames(frames, k).astype(np.float32) * np.float32(FEATURE_SCALE)


def training_set(keywords: list[np.ndarray], commands: np.ndarray, seed: int, k: int,
                 near_misses: list[np.ndarray] = ()) -> Split:
    """Keyword windows: the keyword ends in the window's last 400 ms, over a background of other
    speech (a command window 6 to 30 dB down) or noise, or between two commands at their own
    level as in a stream; other windows: a window of each command clip, windows across the
    boundary of two commands, noise, and near misses placed as the keywords are."""
    rng = np.random.default_rng([seed, 11])
    n = WINDOW * FE.hop
    backgrounds = windows(commands, rng, 1)

    def pick() -> np.ndarray:
        return commands[int(rng.integers(len(commands)))].astype(np.float64)

    def placed(clips: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for c in clips:
            end = n - int(rng.integers(0, 20)) * FE.hop
            mode = rng.random()
            if mode < 1 / 3:  # between two commands, back to back, as the streams have it
                before = pick()
                c_end = len(before) + len(c)
                window = np.concatenate([before, c, pick()])[c_end - end:c_end - end + n]
            else:
                back = (backgrounds[int(rng.integers(len(backgrounds)))] * 10 ** (-rng.uniform(6, 30) / 20)
                        if mode < 2 / 3 else noise(n, rng))
                back[max(0, end - len(c)):end] += c[-end:]
                window = back
            out.append(np.clip(np.round(window), -32768, 32767).astype(np.int16))
        return out

    def across() -> np.ndarray:  # the end of one command and the start of the next
        first = pick()
        seq = np.concatenate([first, pick()])
        start = len(first) - int(rng.integers(0, WINDOW)) * FE.hop
        return np.clip(np.round(seq[start:start + n]), -32768, 32767).astype(np.int16)

    pos = placed(keywords)
    neg = windows(commands, rng, 1) + [np.round(noise(n, rng)).astype(np.int16) for _ in range(len(keywords))]
    neg += [across() for _ in range(len(keywords))] + placed(list(near_misses))
    x = as_steps(np.stack([features(a, FE) for a in pos + neg]), k)
    return Split(y=np.array([1] * len(pos) + [0] * len(neg), np.int64), texts=None, x=x)


def stream(commands: np.ndarray, keywords: list[np.ndarray], seed: int) -> tuple[np.ndarray, list[int], list[int]]:
    """The command clips one after another with the keywords between them at random places (in
    the same gap, one after another, when there are more keywords than gaps);
    returns (samples, each keyword's (start, end) as frame counts (the frames heard when it
    begins and when it ends, its clip's padding included), the index of the command that follows
    each keyword: len(commands) after the last one)."""
    rng = np.random.default_rng([seed, 13])
    # One keyword to a gap between commands while there are gaps enough; else some share one.
    slots = sorted(rng.choice(len(commands) + 1, size=len(keywords), replace=len(keywords) > len(commands) + 1).tolist())
    parts, spans, at, k = [], [], 0, 0
    for i in range(len(commands) + 1):
        while k < len(slots) and slots[k] == i:
            parts.append(keywords[k])
            spans.append((at // FE.hop, (at + len(keywords[k])) // FE.hop))
            at += len(keywords[k])
            k += 1
        if i < len(commands):
            parts.append(commands[i])
            at += len(commands[i])
    return np.concatenate(parts), spans, slots


def stream_features(audio: np.ndarray, chunk_hops: int = 3000) -> np.ndarray:
    """features() of a long stream a minute at a time (hours at once do not fit in memory): each
    chunk starts one hop early and drops that frame, so every frame sees the samples before it
    exactly as in one pass."""
    hop = FE.hop
    count = len(audio) // hop
    parts = [features(audio[:min(count, chunk_hops) * hop], FE)]
    for start in range(chunk_hops, count, chunk_hops):
        stop = min(count, start + chunk_hops)
        parts.append(features(audio[(start - 1) * hop:stop * hop], FE)[1:])
    return np.concatenate(parts)


def listener(threshold: int) -> ListenConfig:
    """The device's listener (firmware/lib/harness/ts_listen.c) as a wake word alone: the
    detections measured here are the ones the firmware makes."""
    return ListenConfig(threshold=threshold, window=WINDOW, stride=STRIDE, rest=REST, capture=0, confirm=CONFIRM)


def margins(qm, feats: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(frame count of each detector run, int8 logit margin keyword - other) over a stream,
    a run every `stride` frames."""
    at = wake_checks(len(feats), replace(listener(0), stride=stride))
    return at, wake_margins(qm, feats, at, WINDOW)


def mined(qm, commands: np.ndarray, keywords: list[np.ndarray], seed: int, k: int, hard: int) -> Split:
    """The windows a first model gets wrong where it counts: a stream of training voices (built
    as the held-out streams are) is read every MINING_STRIDE frames; every window that ends 0 to 19 frames
    after a keyword ends is a keyword, and the `hard` windows of highest margin that hold no
    part of a keyword are other. Hard-negative mining, as wake-word trainers do: most of the
    first training set's other windows are easy."""
    audio, spans, _ = stream(commands, keywords, seed)
    feats = stream_features(audio)
    at, m = margins(qm, feats, MINING_STRIDE)
    start, end = np.array(spans).T
    j = np.searchsorted(end, at, side="right") - 1  # the last keyword to end at or before each check
    since = np.where(j >= 0, at - end[np.maximum(j, 0)], 1 << 30)
    upcoming = np.where(j + 1 < len(end), start[np.minimum(j + 1, len(end) - 1)], 1 << 30)
    keyword = np.flatnonzero(since <= KEYWORD_END)
    other = np.flatnonzero((since > WINDOW) & (at <= upcoming))  # the window holds no keyword at all
    other = other[np.argsort(-m[other], kind="stable")[:hard]]
    x = as_steps(np.stack([feats[a - WINDOW:a] for a in at[np.concatenate([keyword, other])]]), k)
    return Split(y=np.array([1] * len(keyword) + [0] * len(other), np.int64), texts=None, x=x)


def joined(a: Split, b: Split) -> Split:
    return Split(y=np.concatenate([a.y, b.y]), texts=None, x=np.concatenate([a.x, b.x]))


def score(fired: list[int], spans: list[tuple[int, int]]) -> tuple[dict[int, int], list[int]]:
    """({keyword index: the first wake that found it}, the false accepts) of wakes (frame counts)
    on a stream whose keywords span `spans`: a wake after a keyword's start and at most HIT_AFTER
    frames after its end finds it; a wake after its start and at most MASK_AFTER after its end
    that finds nothing (a second one) is not a false accept; any other wake is."""
    found: dict[int, int] = {}
    false = []
    for f in fired:
        near = [j for j, (s, e) in enumerate(spans) if s < f <= e + MASK_AFTER]
        hit = next((j for j in near if f <= spans[j][1] + HIT_AFTER and j not in found), None)
        if hit is not None:
            found[hit] = f
        elif not near:
            false.append(f)
    return found, false


def detect(at: np.ndarray, margin: np.ndarray, threshold: int, spans: list[tuple[int, int]],
           other_seconds: float) -> dict:
    """The listener's detections at `threshold` on a stream whose keywords span `spans`, scored
    by `score`; rates per hour of the audio that holds no keyword."""
    fired = [int(at[i]) for i in wakes(at, margin, listener(threshold))]
    hit, false = score(fired, spans)
    hours = other_seconds / 3600
    return {"threshold": threshold, "keywords": len(spans), "detected": len(hit), "false_accepts": len(false),
            "hours": hours, "detection_rate": len(hit) / len(spans), "false_accepts_per_hour": len(false) / hours}


@dataclass
class Measured:
    """A held-out stream read by a model: check counts, margins, keyword spans, other seconds."""
    at: np.ndarray
    margin: np.ndarray
    spans: list[tuple[int, int]]
    other_seconds: float

    def detect(self, threshold: int) -> dict:
        return detect(self.at, self.margin, threshold, self.spans, self.other_seconds)


def measure(qm, commands: np.ndarray, keywords: list[np.ndarray], seed: int) -> Measured:
    audio, spans, _ = stream(commands, keywords, seed)
    other = (len(audio) - sum(len(c) for c in keywords)) / SAMPLE_RATE
    return Measured(*margins(qm, stream_features(audio), STRIDE), spans, other)


def threshold_for(val: Measured, per_hour: float) -> int:
    """The lowest threshold that keeps the validation stream to `per_hour` false accepts an
    hour (bisection: false accepts fall as the threshold rises)."""
    candidates = sorted(set(val.margin.tolist())) + [int(val.margin.max()) + 1]
    allowed = per_hour * val.other_seconds / 3600
    lo, hi = 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if val.detect(candidates[mid])["false_accepts"] <= allowed:
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo]


def train_wakeword(commands: dict[str, np.ndarray], val_keywords: list[np.ndarray], settings: WakeConfig, cfg,
                   work: Path, log=print, recorded: list[np.ndarray] = ()):
    """Train the wake word on training voices against `commands` ({"train", "val": int16 clips}),
    and on `recorded` keywords (your recordings, placed); the validation windows (which pick the
    best epoch) hold `val_keywords`. Returns (the int8 QuantModel, a summary). The float student
    goes to work/student."""
    from safetensors.numpy import save_file

    from ..distill.train import train_student
    from ..quant.quantize import quantize
    from ..student.tinylstm import save_student

    s, k = settings, settings.frames_per_step
    kws = keyword_clips("train", s.keywords, s.seed, (s.keyword,), s.keyword) + list(recorded)
    near = keyword_clips("train", s.near_misses, s.seed, NEAR_MISSES, s.keyword)
    train = training_set(kws, commands["train"], s.seed, k, near)
    val = training_set(val_keywords, commands["val"], s.seed + 1, k)
    ds = Dataset(name="wakeword", kind="sequence", labels=["other", s.keyword.replace(" ", "_")], train=train,
                 val=val, test=val, split_by="voices")
    cfg = replace(cfg, student=replace(cfg.student, hidden=s.hidden),
                  distill=replace(cfg.distill, schedule="joint", alpha=0.0, beta=0.0, epochs=s.epochs,
                                  noise_copies=0, seed=s.seed, feedback_rounds=0,
                                  # the command model's SpecAugment is not the wake word's: its
                                  # windows end at the keyword, and a shift would move it out
                                  spec_shift_frames=0, spec_time_masks=0, spec_freq_masks=0))
    work.mkdir(parents=True, exist_ok=True)

    def trained(ds: Dataset):
        knowledge = work / "no-teacher.safetensors"  # hard labels only: the cache's logits are never read (alpha 0)
        save_file({f"{p}.logits": np.zeros((len(getattr(ds, p).y), 2), np.float32) for p in SPLITS}, str(knowledge))
        result = train_student(ds, knowledge, cfg, progress=False)
        folder = save_student(result.model, result.spec, work / "student")
        return result, quantize(folder, ds.train.x[:512], name="wakeword", input_scale=FEATURE_SCALE,
                                audio={"frontend": asdict(FE), "frames_per_step": k})

    log(f"[wakeword] {len(kws):,} keywords ({len(recorded):,} of them your recordings) and {len(near):,} near "
        f"misses; {len(train.y):,} training windows")
    result, qm = trained(ds)
    summary = {"keyword": s.keyword, "train_windows": {"keyword": int(train.y.sum()), "other": int((train.y == 0).sum())},
               "first_window_val_accuracy": result.summary["best_val_accuracy"], "mined_windows": None}
    if s.mining_keywords:
        extra = keyword_clips("train", s.mining_keywords, s.seed + 1, (s.keyword,), s.keyword)
        hard = mined(qm, commands["train"], extra, s.seed + 1, k, s.hard_negatives)
        log(f"[wakeword] mined {int(hard.y.sum()):,} keyword and {int((hard.y == 0).sum()):,} hard other windows "
            "from a stream of training voices; training again")
        summary["mined_windows"] = {"keyword": int(hard.y.sum()), "other": int((hard.y == 0).sum())}
        result, qm = trained(replace(ds, train=joined(train, hard)))
    summary.update(best_epoch=result.summary["best_epoch"], window_val_accuracy=result.summary["best_val_accuracy"])
    return qm, summary


def build_wakeword(cfg, ds: Dataset, work: Path, lib_dir: Path, log=print) -> dict:
    """`tinyseek build`'s wakeword stage: train cfg.wake.keyword against the task's clips, choose
    the threshold on the validation stream (cfg.wake.false_accepts_per_hour), measure the test
    stream with it, write the int8 model (its listener settings recorded) to work/int8 and its
    library to lib_dir, check the library bit for bit on the host; returns what it writes to
    work/wakeword.json."""
    import json

    from ..codegen.render import render
    from ..codegen.verify import VerifyError, verify_audio_host

    w = cfg.wake
    kws = {s: keyword_clips(s, n, w.seed, (w.keyword,), w.keyword)
           for s, n in (("val", w.val_keywords), ("test", w.test_keywords))}
    recorded, mine = {s: [] for s in SPLITS}, {s: [] for s in SPLITS}
    if w.recordings:  # your own recordings of the keyword: in training, and in the streams of their split
        mine = keyword_recordings(w.recordings, w.seed, cfg.task.val_fraction, cfg.task.test_fraction)
        recorded = {s: placed_recordings(mine[s], s, w.seed, RECORDING_COPIES if s == "train" else 1) for s in SPLITS}
        kws = {s: kws[s] + recorded[s] for s in kws}
        log(f"[wakeword] your recordings: {', '.join(f'{len(mine[s])} {s}' for s in SPLITS)}")
    qm, out = train_wakeword({"train": ds.train.audio, "val": ds.val.audio}, kws["val"], w, cfg, work, log,
                             recorded["train"])
    val = measure(qm, ds.val.audio, kws["val"], w.seed)
    threshold = threshold_for(val, w.false_accepts_per_hour)
    # The listener it was measured with, as the model records it (no command model: no capture).
    settings = {k: v for k, v in asdict(listener(threshold)).items() if k != "capture"}
    qm = replace(qm, name=f"{cfg.model_name}_wake", audio={**qm.audio, "wake": settings})
    qm.save(work / "int8")
    render(qm, lib_dir)
    checked = verify_audio_host(qm, lib_dir, kws["test"][:16])
    if not checked.bitexact:
        raise VerifyError(f"the wake-word library {lib_dir} differs from the integer reference on "
                          f"{checked.mismatches} of {checked.samples} clips ({checked.first_mismatch})")
    test = measure(qm, ds.test.audio, kws["test"], w.seed)  # the test stream: read once, for the report
    out.update(recordings={s: len(mine[s]) for s in SPLITS}, **settings,
               false_accepts_per_hour_allowed=w.false_accepts_per_hour, val=val.detect(threshold),
               test=test.detect(threshold),
               library=str(lib_dir), host_check={"clips": checked.samples, "compiler": checked.compiler, "bitexact": True})
    (work / "wakeword.json").write_text(json.dumps(out, indent=2) + "\n")
    for s in ("val", "test"):
        r = out[s]
        log(f"[wakeword] {s}: {r['detected']} of {r['keywords']} keywords detected, {r['false_accepts']} false "
            f"accepts in {r['hours']:.2f} h of other audio (threshold {threshold})")
    return out
