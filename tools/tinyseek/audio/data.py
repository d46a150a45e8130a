"""task.kind = "audio": 16 kHz mono int16 clips with a label each, as front-end feature sequences.

Bring your own as a folder with one subfolder of WAV files per label (`task.train`, and
optionally `task.test` / `task.val` folders of the same shape), or a JSONL manifest with one
`{"audio": path, "label": ..., "text": transcript?}` per line (paths relative to the manifest).
With `task.train` empty, the built-in spoken commands (synth.py) are used. Clips are cut or
zero-padded to `task.clip_seconds`; the student's input is the front end's int8 frames.
"""
from __future__ import annotations

import json
import warnings
import wave
from pathlib import Path

import numpy as np

from ..config import TaskConfig
from ..data.byo import _assemble, _label_order
from ..data.dataset import DataError, Dataset, Split
from .frontend import FrontendConfig, features
from .synth import SAMPLE_RATE, SpokenSplit, spoken_intents

# The student sees features * FEATURE_SCALE: inputs of order 1 train well, and a power of two
# makes the int8 model's input scale exactly this, so the device feeds the front end's int8 as is.
FEATURE_SCALE = 1.0 / 64
SOX_FIX = "sox IN.wav -r 16000 -c 1 -b 16 -e signed-integer OUT.wav"


def read_wav(path: str | Path) -> np.ndarray:
    """A 16 kHz mono 16-bit PCM WAV as int16 samples; anything else is refused with the sox
    command that converts it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such audio file")
    try:
        with wave.open(str(p), "rb") as w:
            rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as e:
        what = "a float WAV" if "unknown format: 3" in str(e) else "not a PCM WAV file"
        raise DataError(f"{p}: {what} ({e}); tinyseek reads 16 kHz mono 16-bit PCM WAV: convert it with "
                        f"{SOX_FIX}") from e
    problems = [f"{rate} Hz (need 16000)" if rate != SAMPLE_RATE else "",
                f"{channels} channels (need 1)" if channels != 1 else "",
                f"{8 * width}-bit samples (need 16-bit)" if width != 2 else ""]
    problems = [q for q in problems if q]
    if problems:
        raise DataError(f"{p}: {', '.join(problems)}; convert it with {SOX_FIX}")
    return np.frombuffer(raw, "<i2").astype(np.int16)


CLIPPED_SHARE = 0.01  # a clip with more of its samples at full scale is reported as clipped


def fit_clip(samples: np.ndarray, clip_samples: int, where: str) -> np.ndarray:
    """Cut or zero-pad to the clip length; a silent clip (all zeros) is refused, a clipped one
    (over 1 % of its samples at full scale) is kept with a warning naming it."""
    if not np.any(samples):
        raise DataError(f"{where}: the clip is silent (all samples 0): nothing to learn from; remove it")
    full = np.count_nonzero((samples == 32767) | (samples == -32768))
    if full > CLIPPED_SHARE * len(samples):
        warnings.warn(f"{where}: {full} of {len(samples)} samples are at full scale (clipped); kept as it is, "
                      "record it again at a lower gain if you can", stacklevel=2)
    out = np.zeros(clip_samples, np.int16)
    out[:min(len(samples), clip_samples)] = samples[:clip_samples]
    return out


def _folder(root: Path, setting: str, clip_samples: int, labels: list[str] | None) -> tuple[list[str], Split]:
    subs = sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob("*.wav")))
    if not subs:
        raise DataError(f"{setting} = {root}: no subfolder with .wav files; the layout is {root}/<label>/<clip>.wav")
    names = labels or _label_order({d.name for d in subs})
    unknown = [d.name for d in subs if d.name not in names]
    if unknown:
        raise DataError(f"{setting} = {root}: labels {unknown} are not among the training labels {names}")
    files = [(f, names.index(d.name)) for d in subs for f in sorted(d.glob("*.wav"))]
    audio = np.stack([fit_clip(read_wav(f), clip_samples, str(f)) for f, _ in files])
    return names, Split(y=np.array([c for _, c in files], np.int64), texts=None, x=audio)


def _manifest(path: Path, setting: str, clip_samples: int, labels: list[str] | None) -> tuple[list[str], Split]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio, label = row["audio"], str(row["label"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path} line {lineno}: expected {{\"audio\": \"clip.wav\", \"label\": \"...\", "
                            f"\"text\": \"optional transcript\"}} ({e})") from e
        f = (path.parent / audio) if not Path(audio).is_absolute() else Path(audio)
        if not f.is_file():
            raise DataError(f"{path} line {lineno}: audio file {f} does not exist (paths are relative to the manifest)")
        rows.append((f, label, row.get("text"), lineno))
    if not rows:
        raise DataError(f"{setting} = {path}: the manifest has no lines")
    names = labels or _label_order({r[1] for r in rows})
    unknown = sorted({r[1] for r in rows} - set(names))
    if unknown:
        raise DataError(f"{path}: labels {unknown} are not among the training labels {names}")
    texts = [r[2] for r in rows]
    return names, Split(y=np.array([names.index(r[1]) for r in rows], np.int64),
                        texts=texts if all(isinstance(t, str) for t in texts) else None,
                        x=np.stack([fit_clip(read_wav(r[0]), clip_samples, f"{path} line {r[3]}") for r in rows]))


def _read(source: str, setting: str, clip_samples: int, labels: list[str] | None) -> tuple[list[str], Split]:
    p = Path(source)
    if p.is_dir():
        return _folder(p, setting, clip_samples, labels)
    if p.is_file() and p.suffix == ".jsonl":
        return _manifest(p, setting, clip_samples, labels)
    raise DataError(f"{setting} = {source}: expected a folder of <label>/<clip>.wav or a .jsonl manifest")


def load_audio(cfg: TaskConfig, cache_dir: str | Path | None = None) -> tuple[list[str], dict[str, SpokenSplit]]:
    """(labels, {"train", "val", "test": SpokenSplit}) of an audio task: the built-in spoken
    commands when task.train is empty (cached in cache_dir), else your folder or manifest."""
    clip_samples = int(round(cfg.clip_seconds * SAMPLE_RATE))
    if not cfg.train:
        return spoken_intents(cache_dir, cfg.languages, cfg.clips_per_intent, cfg.clip_seconds, cfg.seed,
                              cfg.val_fraction)
    labels, full = _read(cfg.train, "task.train", clip_samples, None)
    test = _read(cfg.test, "task.test", clip_samples, labels)[1] if cfg.test else None
    val = _read(cfg.val, "task.val", clip_samples, labels)[1] if cfg.val else None
    ds = _assemble("audio", "audio", labels, full, test, cfg, val)
    return labels, {s: SpokenSplit(p.x, p.y, p.texts if p.texts is not None else [""] * len(p.y), ["?"] * len(p.y))
                    for s, p in (("train", ds.train), ("val", ds.val), ("test", ds.test))}


def stack_frames(frames: np.ndarray, frames_per_step: int) -> np.ndarray:
    """[N, T, C] frames as [N, T // k, k * C] steps: k consecutive frames side by side, oldest
    first (a trailing part step is dropped). The device does the same: the LSTM steps once per
    k frames, on their concatenation."""
    n, t, c = frames.shape
    t_k = t // frames_per_step
    return frames[:, :t_k * frames_per_step].reshape(n, t_k, frames_per_step * c)


def feature_dataset(labels: list[str], splits: dict[str, SpokenSplit], fe: FrontendConfig = FrontendConfig(),
                    name: str = "audio", split_by: str = "samples", frames_per_step: int = 1) -> Dataset:
    """The sequence task the student trains on: each clip's int8 front-end frames times
    FEATURE_SCALE, `frames_per_step` frames to a step (stack_frames)."""
    def one(s: SpokenSplit) -> Split:
        x = np.stack([features(a, fe) for a in s.audio]) if len(s.y) else np.zeros((0, 1, fe.channels), np.int8)
        x = stack_frames(x, frames_per_step)
        return Split(y=s.y, texts=None, x=x.astype(np.float32) * np.float32(FEATURE_SCALE), audio=s.audio)
    return Dataset(name=name, kind="sequence", labels=list(labels), train=one(splits["train"]), val=one(splits["val"]),
                   test=one(splits["test"]), split_by=split_by)


def transcript_dataset(labels: list[str], splits: dict[str, SpokenSplit], split_by: str = "samples") -> Dataset | None:
    """The clips' transcripts as a text task, clip for clip: what the teacher reads in
    cross-modal distillation. None where any clip has no transcript."""
    if not all(t for s in splits.values() for t in s.texts):
        return None
    return Dataset(name="transcripts", kind="text", labels=list(labels), split_by=split_by,
                   **{name: Split(y=s.y, texts=list(s.texts), x=None) for name, s in splits.items()})
