"""Seeded corruptions of test (or training) data: what a classifier on a device meets after
an imperfect front end. Pure Python and numpy; the same seed always gives the same output.

Text (strings, English and Chinese, mixed is fine):
- `typos(text, rate, rng)`: keyboard slips, `rate` = probability of one edit per letter
  (ASCII letters and CJK characters; spaces, digits and punctuation are never edited);
- `asr_noise(text, rng, drop=, soundalike=, filler=, punct=, lower=)`: speech-recognition
  errors on words (English) and characters (Chinese); `asr_rates(level)` maps one level to
  the five rates.

Sequences (float [N, T, F] sensor windows; shape and dtype are kept):
- `gaussian_noise(x, snr_db, rng)`: white noise at a signal-to-noise ratio;
- `drift(x, magnitude, rng, mode)`: a slow offset, linear or a random walk;
- `gain_error(x, error, rng)`: each channel of each window scaled by 1 +- error;
- `drop_samples(x, rate, rng, hold)`: lost time steps, held or zeroed.

Every corruption at level 0 (SNR = inf for the noise) returns its input unchanged.
`LEVELS` lists the documented levels of every kind (docs/datasets.md, "Robustness"),
`corrupt` applies one kind to a whole split's data, `augment_split` adds noisy copies of a
training split for noise-aware training.
"""
from __future__ import annotations

import math
import random
import re
import unicodedata
import zlib
from collections.abc import Sequence

import numpy as np

from .dataset import DataError, Split


class NoiseError(DataError):
    """An unknown noise kind, a level outside its range, or data of the wrong modality."""


# -- the levels every kind is measured at (light, medium, heavy) ------------------------------
# Text: per-character or per-word probabilities. Sequences: SNR in dB (lower is noisier),
# offsets in units of each feature's standard deviation, gain error as a fraction, drop rate.
LEVELS: dict[str, tuple[float, ...]] = {
    "typo": (0.01, 0.02, 0.05),
    "asr": (0.05, 0.10, 0.20),
    "word_drop": (0.05, 0.10, 0.20),
    "soundalike": (0.10, 0.20, 0.40),
    "filler": (0.05, 0.10, 0.20),
    "gaussian": (30.0, 20.0, 10.0),
    "drift": (0.25, 0.5, 1.0),
    "walk": (0.25, 0.5, 1.0),
    "gain": (0.05, 0.10, 0.20),
    "dropout": (0.05, 0.10, 0.20),
}
TEXT_KINDS = ("typo", "asr", "word_drop", "soundalike", "filler")
SEQUENCE_KINDS = ("gaussian", "drift", "walk", "gain", "dropout")
# The level a robustness goal is judged at: the middle ("medium") one of each kind.
REFERENCE_LEVEL = 1
# The kinds a robustness run measures by default; word_drop / soundalike / filler are the parts
# of asr, measured on their own when asked for.
DEFAULT_KINDS = {"text": ("typo", "asr"), "sequence": SEQUENCE_KINDS}

# -- tables -----------------------------------------------------------------------------------
_KEY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """Keys next to each letter on a QWERTY keyboard: left/right on its row and the two keys
    touching it on the rows above and below (the rows are staggered by half a key)."""
    out: dict[str, str] = {}
    for r, row in enumerate(_KEY_ROWS):
        for i, ch in enumerate(row):
            near = [row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)]
            if r > 0:
                near += [_KEY_ROWS[r - 1][j] for j in (i, i + 1) if j < len(_KEY_ROWS[r - 1])]
            if r + 1 < len(_KEY_ROWS):
                near += [_KEY_ROWS[r + 1][j] for j in (i - 1, i) if 0 <= j < len(_KEY_ROWS[r + 1])]
            out[ch] = "".join(near)
    return out


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()

# Near-sound substitutions a recognizer makes on this domain's words (words it outputs
# instead, all real words). Kept apart from the data generator's own homophones
# (intents.EN_HOMOPHONES) on purpose, so the test noise is not the noise the models trained on.
EN_SOUNDALIKES: dict[str, tuple[str, ...]] = {
    "to": ("two", "too"), "for": ("four", "far"), "on": ("an", "in"), "off": ("of", "up"), "up": ("app", "of"),
    "down": ("town", "done"), "set": ("said", "sit"), "heat": ("hit", "heed"), "lock": ("luck", "look"),
    "door": ("dore", "more"), "lamp": ("lamb", "lump"), "light": ("lite", "like"), "lights": ("likes", "lice"),
    "play": ("pray", "plate"), "stop": ("shop", "top"), "pause": ("paws", "pose"), "song": ("sung", "son"),
    "loud": ("cloud", "allowed"), "louder": ("lower", "powder"), "quiet": ("quite", "quit"),
    "rain": ("reign", "rein"), "weather": ("whether", "feather"), "close": ("clothes", "clause"),
    "open": ("often", "oven"), "shut": ("shot", "shed"), "blinds": ("blends", "binds"),
    "time": ("thyme", "tame"), "timer": ("tamer", "timber"), "hour": ("our", "hire"), "minutes": ("minute's", "minuets"),
    "what": ("watt", "wet"), "the": ("a", "da"), "in": ("inn", "and"), "kitchen": ("chicken", "kitten"),
    "bedroom": ("bad room", "bathroom"), "dim": ("them", "dame"), "degrees": ("decrees", "digress"),
    "lower": ("lore", "louder"), "higher": ("hire", "hear"), "tomorrow": ("to morrow", "tomato"),
    "music": ("muse ick", "magic"), "turn": ("tern", "earn"), "switch": ("which", "stitch"),
    "volume": ("valium", "column"), "warmer": ("warner", "farmer"), "cooler": ("color", "collar"),
}
# Chinese: a character and the characters a recognizer confuses it with (same or near pinyin).
ZH_SOUNDALIKES: dict[str, str] = {
    "开": "凯揩", "关": "官观", "灯": "登等", "调": "条跳", "度": "渡肚", "音": "因阴", "乐": "月勒",
    "窗": "床闯", "帘": "连莲", "锁": "所索", "门": "们闷", "温": "文问", "亮": "量两", "低": "滴底",
    "高": "搞告", "放": "房方", "停": "亭听", "几": "己挤", "点": "店典", "天": "添田", "气": "汽器",
    "雨": "语鱼", "时": "是十", "间": "见件", "分": "份纷", "钟": "中终", "秒": "妙", "计": "记寄",
    "明": "名鸣", "声": "生升", "大": "打达", "小": "晓笑", "空": "孔", "拉": "啦", "上": "尚伤",
    "下": "吓夏", "播": "波拨", "报": "抱暴", "的": "得地", "在": "再", "吗": "嘛马", "把": "吧爸",
}
EN_FILLERS = ("uh", "um")
ZH_FILLERS = ("嗯", "呃", "那个")

_CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF))
# One token per CJK character, per run of ASCII letters/digits/apostrophes, per whitespace run,
# and per any other character (punctuation, symbols).
_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[A-Za-z0-9']+|\s+|.", re.S)


def is_cjk(ch: str) -> bool:
    return len(ch) == 1 and any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES)


def _is_punct(ch: str) -> bool:
    return len(ch) == 1 and unicodedata.category(ch).startswith("P") and ch != "'"


def _check_rate(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise NoiseError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


# -- text: typos --------------------------------------------------------------------------------

def _with_case(new: str, old: str) -> str:
    return new.upper() if old.isupper() else new


def typos(text: str, rate: float, rng: random.Random) -> str:
    """Keyboard slips: each letter (ASCII a-z, A-Z) or CJK character is edited with
    probability `rate`, by one of four equally likely edits:

    - substitution: a QWERTY neighbour key (case kept); for a CJK character a sound-alike
      from ZH_SOUNDALIKES (a pinyin IME's wrong candidate), or a doubled character if it has none;
    - deletion;
    - insertion: a neighbour key typed after it (CJK: the character committed twice);
    - transposition with the next character, when that is of the same script (otherwise a
      substitution). The swapped partner is not edited again, so each edit is one
      Damerau-Levenshtein operation.
    """
    rate = _check_rate(rate, "typo rate")
    if rate == 0.0:
        return text
    chars, out, i = list(text), [], 0
    while i < len(chars):
        ch = chars[i]
        ascii_letter = ch.isascii() and ch.isalpha()
        if not (ascii_letter or is_cjk(ch)) or rng.random() >= rate:
            out.append(ch)
            i += 1
            continue
        op = rng.randrange(4)
        nxt = chars[i + 1] if i + 1 < len(chars) else ""
        same_script = (nxt.isascii() and nxt.isalpha()) if ascii_letter else is_cjk(nxt)
        if op == 3 and same_script and nxt != ch:
            out += [nxt, ch]
            i += 2
            continue
        if op == 1:
            pass  # deleted
        elif op == 2:
            out += [ch, _with_case(rng.choice(KEYBOARD_NEIGHBOURS[ch.lower()]), ch) if ascii_letter else ch]
        elif ascii_letter:
            out.append(_with_case(rng.choice(KEYBOARD_NEIGHBOURS[ch.lower()]), ch))
        else:
            out += [rng.choice(ZH_SOUNDALIKES[ch])] if ch in ZH_SOUNDALIKES else [ch, ch]
        i += 1
    return "".join(out)


# -- text: ASR-like noise ----------------------------------------------------------------------

def asr_rates(level: float) -> dict[str, float]:
    """The rates `asr_noise` uses at one overall level p, chosen so that p is about the word
    error rate (Chinese: character error rate) it causes: each word dropped with p/2, a
    sound-alike swapped in with p where the table has one (about 40% of the built-in task's
    words), a filler before a word with p/5; each punctuation mark lost and the text
    lowercased with 5p (capped at 1; neither counts as an error)."""
    p = _check_rate(level, "asr level")
    return {"drop": p / 2, "soundalike": p, "filler": p / 5, "punct": min(1.0, 5 * p), "lower": min(1.0, 5 * p)}


def asr_noise(text: str, rng: random.Random, drop: float = 0.0, soundalike: float = 0.0, filler: float = 0.0,
              punct: float = 0.0, lower: float = 0.0) -> str:
    """Speech-recognition errors. Units are English words and Chinese characters:

    - drop: each unit is lost with this probability (at least one unit always survives);
    - soundalike: a unit in EN_SOUNDALIKES / ZH_SOUNDALIKES is replaced by one of its
      near-sound words/characters with this probability;
    - filler: "uh"/"um" (before an English word) or 嗯/呃/那个 (before a Chinese
      character) is inserted before each unit with this probability;
    - punct: each punctuation mark (ASCII or full-width) is lost with this probability;
    - lower: with this probability the whole text is lowercased (recognizers do not case).
    """
    rates = [_check_rate(v, name) for v, name in ((drop, "drop"), (soundalike, "soundalike"),
                                                  (filler, "filler"), (punct, "punct"), (lower, "lower"))]
    if not any(rates):
        return text
    tokens = _TOKEN.findall(text)
    units = [i for i, t in enumerate(tokens) if is_cjk(t) or t[0].isascii() and (t[0].isalnum() or t[0] == "'")]
    dropped = {i for i in units if rng.random() < drop}
    if units and len(dropped) == len(units):
        dropped.discard(units[0])
    units = set(units)
    out: list[str] = []
    for i, tok in enumerate(tokens):
        if i in dropped:
            continue
        if i in units:
            zh = is_cjk(tok)
            if rng.random() < filler:
                out += [rng.choice(ZH_FILLERS)] if zh else [rng.choice(EN_FILLERS), " "]
            if zh and tok in ZH_SOUNDALIKES and rng.random() < soundalike:
                tok = rng.choice(ZH_SOUNDALIKES[tok])
            elif not zh and tok.lower() in EN_SOUNDALIKES and rng.random() < soundalike:
                tok = _with_case(rng.choice(EN_SOUNDALIKES[tok.lower()]), tok)
        elif _is_punct(tok) and rng.random() < punct:
            # A lost mark between two words leaves a space, so the words stay apart.
            tok = " " if out and out[-1][-1:].isascii() and out[-1][-1:].isalnum() else ""
        out.append(tok)
    # A dropped word leaves its neighbours' spaces behind: collapse them.
    result = re.sub(r"\s+", " ", "".join(out)).strip()
    return result.lower() if lower and rng.random() < lower else result


# -- sequences -----------------------------------------------------------------------------------

def _check_x(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or not np.issubdtype(x.dtype, np.floating):
        raise NoiseError(f"sequence noise needs float data [N, T, F], got {x.dtype} {x.shape}")
    return x


def _feature_scale(x: np.ndarray) -> np.ndarray:
    """Each feature's standard deviation over all samples and steps, [F] (1 for a constant
    feature, so an offset is still visible)."""
    std = x.reshape(-1, x.shape[2]).astype(np.float64).std(axis=0)
    return np.where(std > 1e-12, std, 1.0)


def gaussian_noise(x, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise at `snr_db` dB per window and channel: noise power = mean(x^2)
    over the window's steps / 10^(snr/10). snr_db = inf returns x unchanged."""
    x = _check_x(x)
    if snr_db == math.inf:
        return x.copy()
    if not math.isfinite(snr_db):
        raise NoiseError(f"SNR must be a finite number of dB or inf, got {snr_db!r}")
    power = np.mean(x.astype(np.float64) ** 2, axis=1, keepdims=True)
    noise = rng.standard_normal(x.shape) * np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (x + noise).astype(x.dtype)


def drift(x, magnitude: float, rng: np.random.Generator, mode: str = "linear") -> np.ndarray:
    """A slow offset reaching `magnitude` feature standard deviations by the last step.

    mode "linear": a ramp from 0 at the first step to +-magnitude at the last, the sign drawn
    per window and channel (so each channel's offset is monotone). mode "walk": a Gaussian
    random walk from 0 whose spread at the last step is `magnitude`.
    """
    x = _check_x(x)
    if magnitude < 0 or not math.isfinite(magnitude):
        raise NoiseError(f"drift magnitude must be >= 0 (feature standard deviations), got {magnitude!r}")
    if mode not in ("linear", "walk"):
        raise NoiseError(f"drift mode must be 'linear' or 'walk', not {mode!r}")
    if magnitude == 0:
        return x.copy()
    n, t, f = x.shape
    scale = magnitude * _feature_scale(x)
    if mode == "linear":
        sign = rng.choice((-1.0, 1.0), size=(n, 1, f))
        ramp = (np.arange(t) / max(t - 1, 1))[None, :, None]
        offset = sign * ramp * scale
    else:
        steps = rng.standard_normal((n, t, f)) / math.sqrt(max(t - 1, 1))
        steps[:, 0] = 0.0
        offset = np.cumsum(steps, axis=1) * scale
    return (x + offset).astype(x.dtype)


def gain_error(x, error: float, rng: np.random.Generator) -> np.ndarray:
    """Each window's channels multiplied by 1 + u, u uniform in [-error, error]."""
    x = _check_x(x)
    if not 0 <= error < 1:
        raise NoiseError(f"gain error must be in [0, 1), got {error!r}")
    if error == 0:
        return x.copy()
    gain = 1.0 + rng.uniform(-error, error, size=(x.shape[0], 1, x.shape[2]))
    return (x * gain).astype(x.dtype)


def drop_samples(x, rate: float, rng: np.random.Generator, hold: bool = True) -> np.ndarray:
    """Each time step (all channels) is lost with probability `rate`; a lost step repeats the
    last received one (hold, a sample-and-hold front end) or is zero. Steps lost before the
    first received one are zero either way."""
    x = _check_x(x)
    rate = _check_rate(rate, "drop rate")
    if rate == 0:
        return x.copy()
    n, t, _ = x.shape
    keep = rng.random((n, t)) >= rate
    kept = np.where(keep[:, :, None], x, 0).astype(x.dtype)
    if not hold:
        return kept
    last = np.maximum.accumulate(np.where(keep, np.arange(t)[None, :], 0), axis=1)
    return np.take_along_axis(kept, last[:, :, None], axis=1)


# -- whole splits -----------------------------------------------------------------------------

def _text_rng(kind: str, seed: int) -> random.Random:
    # A string seed is hashed with sha512 by random.Random: stable across runs and platforms.
    return random.Random(f"tinyseek-noise:{kind}:{seed}")


def _array_rng(kind: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(kind.encode())])


def _text_one(kind: str, level: float, text: str, rng: random.Random) -> str:
    if kind == "typo":
        return typos(text, level, rng)
    if kind == "asr":
        return asr_noise(text, rng, **asr_rates(level))
    if kind == "word_drop":
        return asr_noise(text, rng, drop=level)
    if kind == "soundalike":
        return asr_noise(text, rng, soundalike=level)
    return asr_noise(text, rng, filler=level)


def corrupt(kind: str, data, level: float, seed: int = 0):
    """One kind of noise over a split's data: a list of texts or float sequences [N, T, F].
    The same (kind, seed) draws the same random numbers whatever the level, so the levels of a
    kind differ by their level only."""
    if kind not in LEVELS:
        raise NoiseError(f"unknown noise kind {kind!r}; kinds: {', '.join(LEVELS)}")
    if kind in TEXT_KINDS:
        if isinstance(data, np.ndarray) or not all(isinstance(t, str) for t in data):
            raise NoiseError(f"noise {kind!r} is for texts; for sequences use one of {', '.join(SEQUENCE_KINDS)}")
        rng = _text_rng(kind, seed)
        return [_text_one(kind, level, t, rng) for t in data]
    if isinstance(data, list) and data and isinstance(data[0], str):
        raise NoiseError(f"noise {kind!r} is for sequences; for texts use one of {', '.join(TEXT_KINDS)}")
    rng = _array_rng(kind, seed)
    if kind == "gaussian":
        return gaussian_noise(data, level, rng)
    if kind in ("drift", "walk"):
        return drift(data, level, rng, mode="linear" if kind == "drift" else "walk")
    if kind == "gain":
        return gain_error(data, level, rng)
    return drop_samples(data, level, rng)


def corrupt_split(split: Split, kind: str, level: float, seed: int = 0) -> Split:
    """A copy of `split` with its texts or x corrupted; labels and groups are kept."""
    if split.texts is not None:
        return Split(y=split.y, texts=corrupt(kind, list(split.texts), level, seed), x=None, groups=split.groups)
    return Split(y=split.y, texts=None, x=corrupt(kind, split.x, level, seed), groups=split.groups)


# The noise of each augmented copy, applied in order: ASR errors, then typos on what is left
# (text); sensor noise and drift (sequences). Medium levels; bench/RESULTS.md ("Robustness")
# has what two text copies gained for the default student.
DEFAULT_AUGMENT = {"text": (("asr", 0.10), ("typo", 0.02)), "sequence": (("gaussian", 20.0), ("walk", 0.5))}


def parse_recipe(text: str, modality: str) -> tuple[tuple[str, float], ...]:
    """distill.noise, e.g. "asr:0.1, typo:0.02", as (kind, level) pairs for augment_split;
    empty gives DEFAULT_AUGMENT of the modality ("text" or "sequence")."""
    if not text.strip():
        return DEFAULT_AUGMENT[modality]
    kinds = TEXT_KINDS if modality == "text" else SEQUENCE_KINDS
    recipe = []
    for part in text.split(","):
        kind, _, level = part.partition(":")
        kind = kind.strip()
        if kind not in kinds:
            raise NoiseError(f"distill.noise: {kind!r} is not a noise for {modality} tasks; use one of {', '.join(kinds)}")
        try:
            recipe.append((kind, float(level)))
        except ValueError:
            raise NoiseError(f"distill.noise: the level of {kind!r} must be a number, not {level.strip()!r}") from None
    return tuple(recipe)


def augment_split(split: Split, copies: int = 1, noise: Sequence[tuple[str, float]] | None = None,
                  seed: int = 0) -> tuple[Split, np.ndarray]:
    """The split followed by `copies` noisy copies of it, and `source` int64 [N * (1 + copies)]:
    the index of the clean sample each row came from (take the teacher's logits and hidden
    states of the clean sample for its copies: `teacher_logits[source]`).

    `noise`: (kind, level) pairs applied in order to every copy; None takes
    DEFAULT_AUGMENT for the split's modality. Copy k uses seed `seed + k`.
    """
    if copies < 0:
        raise NoiseError(f"copies must be >= 0, got {copies}")
    text = split.texts is not None
    recipe = DEFAULT_AUGMENT["text" if text else "sequence"] if noise is None else tuple(noise)
    n = len(split.y)
    parts = [list(split.texts) if text else split.x]
    for k in range(1, copies + 1):
        data = parts[0]
        for i, (kind, level) in enumerate(recipe):
            data = corrupt(kind, data, level, seed=(seed + k) * 1000 + i)
        parts.append(data)
    source = np.tile(np.arange(n, dtype=np.int64), copies + 1)
    groups = None if split.groups is None else np.asarray(split.groups)[source]
    if text:
        return Split(y=np.asarray(split.y)[source], texts=[t for p in parts for t in p], x=None, groups=groups), source
    return Split(y=np.asarray(split.y)[source], texts=None, x=np.concatenate(parts), groups=groups), source
