"""The built-in spoken commands: the intents task's utterances spoken by the speech synthesisers
Debian ships (espeak-ng with voice variants, speeds and pitches; flite's English voices), put
through a room (sox reverb) and mixed with noise, as 16 kHz mono int16 clips.

Synthetic speech is a proxy: it tells whether the pipeline (front end, cross-modal distillation,
int8 student, C) works end to end and compares training methods on voices held out, not how a
model does on people; real recordings come in through the bring-your-own path (task.kind =
"audio"). Each split has its own voices: the test clips are spoken by voices (synthesiser and
variant) that training and validation never heard, and validation's voices are held out from
training the same way; the texts come from the intents task's own held-out-template splits.

Everything is seeded: the same settings and tool versions give the same bytes. Clips are cached
in the given folder under a key of the settings and the tools' versions.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import DataError
from ..data.intents import generate

SAMPLE_RATE = 16000
MAX_LEAD = SAMPLE_RATE // 5  # the latest an utterance starts in its clip
SYNTH_VERSION = 2  # bump when the recipe below changes, so caches are remade
APT = "sudo apt-get install -y espeak-ng flite sox"


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak-ng" | "flite"
    name: str    # espeak-ng voice+variant, or a flite voice

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}"


_E, _F = "espeak-ng", "flite"
# Voices are held out by speaker: an espeak-ng variant (formants, pitch range, voice quality) or a
# flite voice belongs to one split only. Training draws from many variants and accents, so the
# student meets speaker variety rather than a handful of speakers; validation and test variants
# are never heard in training, in any accent. Chinese has one synthesiser (espeak-ng's Mandarin),
# so its held-out voices differ in variant only.
_HELD_OUT = {"val": ["m5", "f3", "belinda", "edward", "Andy"], "test": ["m2", "f4", "steph", "john", "Mike"]}
_VARIANTS = ["m1", "m3", "m4", "m6", "m7", "m8", "f1", "f2", "f5", "klatt", "klatt2", "klatt3", "klatt4", "klatt5",
             "klatt6", "Alex", "Alicia", "Andrea", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2",
             "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Nguyen", "Storm", "Tweaky", "adam",
             "anika", "announcer", "antonio", "aunty", "benjamin", "boris", "caleb", "croak", "david", "ed",
             "edward2", "grandma", "grandpa", "gustave", "iven", "iven2", "iven3", "iven4", "kaukovalta", "linda",
             "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert",
             "sandro", "shelby", "steph2", "steph3", "travis", "victor", "zac"]
_ACCENTS = {"en": ["en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp"], "zh": ["cmn"]}


def _espeak(lang: str, variants: list[str]) -> list[Voice]:
    return [Voice(_E, f"{accent}+{v}") for v in variants for accent in _ACCENTS[lang]]


VOICES: dict[str, dict[str, list[Voice]]] = {
    "en": {"train": _espeak("en", _VARIANTS) + [Voice(_F, "kal16"), Voice(_F, "slt")],
           "val": _espeak("en", _HELD_OUT["val"]) + [Voice(_F, "awb")],
           "test": _espeak("en", _HELD_OUT["test"]) + [Voice(_F, "rms")]},
    "zh": {split: _espeak("zh", _VARIANTS if split == "train" else _HELD_OUT[split])
           for split in ("train", "val", "test")},
}
# espeak-ng's speed in words per minute, per language: its Mandarin is slow at English rates.
_RATE = {"en": (140, 195), "zh": (200, 260)}


@dataclass
class SpokenSplit:
    audio: np.ndarray   # int16 [N, clip_samples]
    y: np.ndarray       # int64 [N]
    texts: list[str]    # the transcript each clip speaks
    voices: list[str]


def _need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise DataError(f"{program} is not installed (the built-in spoken commands synthesise speech with "
                        f"espeak-ng, flite and sox); install them with: {APT}")
    return path


def tool_versions() -> dict[str, str]:
    def first_line(*cmd):
        out = subprocess.run(cmd, capture_output=True, text=True)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    return {"espeak-ng": first_line(_need("espeak-ng"), "--version"),
            "flite": first_line(_need("flite"), "--version").strip(),
            "sox": first_line(_need("sox"), "--version")}


def speak(text: str, voice: Voice, rng: random.Random) -> bytes:
    """A WAV of `text` in `voice` at a seeded speed and pitch (the synthesiser's own rate)."""
    if voice.engine == _E:
        lo, hi = _RATE["zh" if voice.name.startswith("cmn") else "en"]
        proc = subprocess.run(["espeak-ng", "-v", voice.name, "-s", str(rng.randint(lo, hi)), "-p",
                               str(rng.randint(30, 70)), "--stdout", text], capture_output=True)
        wav = proc.stdout
    else:  # flite seeks in its output: a file, not a pipe
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "speech.wav"
            proc = subprocess.run(["flite", "-voice", voice.name, "--setf",
                                   f"duration_stretch={rng.uniform(0.85, 1.2):.3f}", "-t", text, "-o", str(out)],
                                  capture_output=True)
            wav = out.read_bytes() if out.is_file() else b""
    if proc.returncode or len(wav) < 100:
        raise DataError(f"{voice} failed on {text!r}: {proc.stderr.decode(errors='replace')[-300:]}")
    return wav


def room(wav: bytes, rng: random.Random, fit: int | None = None) -> np.ndarray:
    """sox: to 16 kHz mono int16 (no dither, so it is repeatable), peak-normalised, and in two
    clips of three through a seeded room (reverb: reverberance, HF damping, room scale). An
    utterance longer than `fit` samples is sped up to fit (sox tempo keeps the pitch): a clip
    never loses the end of its command."""
    effects = ["gain", "-n", "-1"]
    if rng.random() < 2 / 3:
        effects += ["reverb", str(rng.randint(10, 60)), "50", str(rng.randint(20, 90)), "gain", "-n", "-1"]

    def sox(*pre: str) -> np.ndarray:
        proc = subprocess.run(["sox", "-D", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-b",
                               "16", "-e", "signed-integer", "-L", "-", *pre, *effects], input=wav, capture_output=True)
        if proc.returncode:
            raise DataError(f"sox failed: {proc.stderr.decode(errors='replace')[-300:]}")
        return np.frombuffer(proc.stdout, "<i2").astype(np.int16)

    out = sox()
    if fit is not None and len(out) > fit:
        out = sox("tempo", "-s", f"{len(out) / fit * 1.01:.4f}")[:fit]
    return out


def place(speech: np.ndarray, clip_samples: int, rng: np.random.Generator, max_lead: int = MAX_LEAD) -> np.ndarray:
    """The utterance at a seeded level and start (before `max_lead` samples) in a fixed-length
    clip, with seeded noise (white or brown-ish, 5 to 30 dB under the speech) over the whole
    clip. What does not fit after the start is cut off."""
    lead = int(rng.integers(0, max_lead))
    speech = speech[:clip_samples - lead].astype(np.float64) * 10 ** (rng.uniform(-18, -1) / 20)
    clip = np.zeros(clip_samples)
    clip[lead:lead + len(speech)] = speech
    noise = rng.standard_normal(clip_samples)
    if rng.random() < 0.5:  # rumble: integrated white noise less its moving average (no drift)
        walk = np.cumsum(noise)
        noise = walk - np.convolve(walk, np.ones(257) / 257, "same")
    speech_rms = np.sqrt(np.mean(speech ** 2)) if len(speech) else 1.0
    noise *= speech_rms / (np.sqrt(np.mean(noise ** 2)) + 1e-12) * 10 ** (-rng.uniform(5, 30) / 20)
    return np.clip(np.round(clip + noise), -32768, 32767).astype(np.int16)


def spoken_clip(text: str, split: str, index: int, seed: int, clip_samples: int) -> tuple[np.ndarray, Voice]:
    """Clip `index` of `split`: its voice drawn from the split's voices of the text's language,
    its speed, pitch, room, level, start and noise from seeds of (seed, split, index)."""
    lang = "zh" if any(ord(c) >= 0x2E80 for c in text) else "en"
    rng = random.Random(f"tinyseek-speech:{seed}:{split}:{index}")
    pool = VOICES[lang][split]
    voice = pool[rng.randrange(len(pool))]
    audio = place(room(speak(text, voice, rng), rng, fit=clip_samples - MAX_LEAD), clip_samples,
                  np.random.default_rng([seed, ("train", "val", "test").index(split), index]))
    return audio, voice


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def spoken_intents(cache_dir: str | Path | None, languages=("en", "zh"), samples_per_intent: int = 40,
                   clip_seconds: float = 3.0, seed: int = 0, val_fraction: float = 0.15,
                   log=None) -> tuple[list[str], dict[str, SpokenSplit]]:
    """(labels, {"train", "val", "test": SpokenSplit}): the intents task's texts of each split
    spoken by that split's voices; cached in `cache_dir` (None: not cached)."""
    text = generate(tuple(languages), samples_per_intent, val_fraction, seed)
    clip_samples = int(round(clip_seconds * SAMPLE_RATE))
    settings = {"version": SYNTH_VERSION, "tools": tool_versions(), "languages": list(languages),
                "samples_per_intent": samples_per_intent, "clip_samples": clip_samples, "seed": seed,
                "val_fraction": val_fraction, "voices": {k: {s: list(map(str, v)) for s, v in d.items()}
                                                         for k, d in VOICES.items()}}
    folder = Path(cache_dir) / f"speech-{_key(settings)}" if cache_dir is not None else None
    if folder is not None and (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        return text.labels, {s: SpokenSplit(np.load(folder / f"{s}.npy"), np.array(meta[s]["y"], np.int64),
                                             meta[s]["texts"], meta[s]["voices"]) for s in ("train", "val", "test")}
    splits = {}
    for name in ("train", "val", "test"):
        part = getattr(text, name)
        audio, voices = np.zeros((len(part), clip_samples), np.int16), []
        # Each clip is seeded by its own index, so clips are made in parallel (the synthesisers
        # are separate processes) and come out the same in any order.
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            clips = pool.map(lambda it: spoken_clip(it[1], name, it[0], seed, clip_samples), enumerate(part.texts))
            for i, (audio[i], voice) in enumerate(clips):
                voices.append(str(voice))
                if log and (i + 1) % 200 == 0:
                    log(f"speech: {name} {i + 1}/{len(part)} clips")
        splits[name] = SpokenSplit(audio, part.y.copy(), list(part.texts), voices)
    if folder is not None:
        tmp = folder.with_name(folder.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, s in splits.items():
            np.save(tmp / f"{name}.npy", s.audio)
        meta = {name: {"y": s.y.tolist(), "texts": s.texts, "voices": s.voices} for name, s in splits.items()}
        (tmp / "meta.json").write_text(json.dumps(meta | {"settings": settings}, ensure_ascii=False, sort_keys=True,
                                                  indent=1) + "\n")
        tmp.rename(folder)
    return text.labels, splits
