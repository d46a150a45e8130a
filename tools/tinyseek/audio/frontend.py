"""The fixed-point audio front end's integer reference (docs/numerics.md, "Audio front end").

16 kHz mono int16 samples in, one frame of int8 log-mel features per hop out. Every step is
integer arithmetic on tables made once from the configuration (Hann window, FFT twiddles, mel
filterbank, log2 mantissa table), so the C rendered from templates/audio/ reproduces it bit
for bit. Floats appear only where the tables are made.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

LOG_TABLE_BITS = 6  # mantissa bits after the leading one that index the log2 table
LOG_FRAC_BITS = 2   # the features are log2(energy) in quarter steps (0.75 dB of power)


class FrontendError(ValueError):
    """A front-end configuration the integer pipeline cannot run exactly."""


@dataclass(frozen=True)
class FrontendConfig:
    """30 ms Hann windows every 20 ms (50 frames per second), zero-padded to a 512-point FFT,
    40 mel channels between 125 and 7500 Hz: the framing of TFLite Micro's micro_speech front end."""
    sample_rate: int = 16000
    window: int = 480
    hop: int = 320
    fft: int = 512
    channels: int = 40
    fmin: float = 125.0
    fmax: float = 7500.0
    log_offset: int = 96  # subtracted from 4*log2(energy): energy 1 gives -96, a full-scale sine ~ +109

    def validate(self) -> None:
        if self.fft < 4 or self.fft & (self.fft - 1) or self.fft > 4096:
            raise FrontendError(f"fft = {self.fft}: it must be a power of two in [4, 4096] (a radix-2 FFT)")
        if not 1 <= self.hop <= self.window <= self.fft:
            raise FrontendError(f"hop = {self.hop}, window = {self.window}, fft = {self.fft}: "
                                "need 1 <= hop <= window <= fft")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise FrontendError(f"fmin = {self.fmin}, fmax = {self.fmax}: need 0 <= fmin < fmax <= sample_rate/2")
        if not 1 <= self.channels <= 128:
            raise FrontendError(f"channels = {self.channels}: need 1..128")

    @property
    def bins(self) -> int:
        return self.fft // 2 + 1

    @cached_property
    def tables(self) -> dict[str, np.ndarray]:
        self.validate()
        return make_tables(self)

    @property
    def digest(self) -> str:
        """Hash of the configuration and its tables: the generated C's stamp names it."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for k, v in sorted(self.tables.items()):
            h.update(k.encode() + np.ascontiguousarray(v).tobytes())
        return h.hexdigest()[:16]


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def make_tables(cfg: FrontendConfig) -> dict[str, np.ndarray]:
    n = np.arange(cfg.window)
    hann = np.round(32767 * 0.5 * (1 - np.cos(2 * np.pi * n / cfg.window))).astype(np.int16)  # periodic Hann, Q15
    k = np.arange(cfg.fft // 2)
    tw_re = np.round(32767 * np.cos(2 * np.pi * k / cfg.fft)).astype(np.int16)  # e^(-2 pi i k/N), Q15
    tw_im = np.round(-32767 * np.sin(2 * np.pi * k / cfg.fft)).astype(np.int16)
    # HTK-mel triangles over the FFT bins, rounded to Q15; only the nonzero span of each is kept.
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.channels + 2))
    freqs = np.arange(cfg.bins) * cfg.sample_rate / cfg.fft
    start, length, weights = [], [], []
    for m in range(cfg.channels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        tri = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
        w = np.round(tri * 32767).astype(np.int64)
        nz = np.flatnonzero(w)
        if len(nz) == 0:
            raise FrontendError(f"mel channel {m} ({lo:.0f}-{hi:.0f} Hz) covers no FFT bin: use fewer channels, "
                                "a higher fmin or a longer fft")
        start.append(nz[0])
        length.append(nz[-1] - nz[0] + 1)
        weights.append(w[nz[0]:nz[-1] + 1])
    # The mel sum must fit int64: power >> 8 is below 2^41 (|X| <= 2^24, see the spec).
    if max(int(w.sum()) for w in weights) >= 1 << 22:
        raise FrontendError("a mel channel spans too many FFT bins for the int64 sum: use more channels")
    frac = np.arange(1 << LOG_TABLE_BITS)
    log_table = np.round((1 << LOG_TABLE_BITS) * np.log2(1 + frac / (1 << LOG_TABLE_BITS))).astype(np.int16)
    return {"hann": hann, "tw_re": tw_re, "tw_im": tw_im,
            "mel_start": np.array(start, np.int16), "mel_length": np.array(length, np.int16),
            "mel_offset": np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int16),
            "mel_weights": np.concatenate(weights).astype(np.uint16), "log_table": log_table}


def _bit_reverse(n: int) -> np.ndarray:
    bits = n.bit_length() - 1
    idx = np.arange(n)
    rev = np.zeros(n, np.int64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev


def fft_q(re: np.ndarray, im: np.ndarray, cfg: FrontendConfig) -> tuple[np.ndarray, np.ndarray]:
    """The radix-2 decimation-in-time FFT of [frames, fft] int32 rows, unscaled (see the spec)."""
    t = cfg.tables
    order = _bit_reverse(cfg.fft)
    re, im = re[:, order].astype(np.int64), im[:, order].astype(np.int64)
    half = 1
    while half < cfg.fft:
        j = np.arange(cfg.fft).reshape(-1, 2 * half)[:, :half].reshape(-1)  # top of each butterfly
        w = (j % half) * (cfg.fft // (2 * half))
        wr, wi = t["tw_re"][w].astype(np.int64), t["tw_im"][w].astype(np.int64)
        br, bi = re[:, j + half], im[:, j + half]
        tr = (br * wr - bi * wi + (1 << 14)) >> 15
        ti = (br * wi + bi * wr + (1 << 14)) >> 15
        ar, ai = re[:, j], im[:, j]
        re[:, j], im[:, j] = ar + tr, ai + ti
        re[:, j + half], im[:, j + half] = ar - tr, ai - ti
        half *= 2
    assert np.abs(re).max(initial=0) < 1 << 31 and np.abs(im).max(initial=0) < 1 << 31
    return re, im


def log_features(energy: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """int8 = clamp(round(4 * log2(energy)) - log_offset); energy 0 gives -128."""
    e = energy.astype(np.int64)
    n = np.zeros(e.shape, np.int64)  # floor(log2 e), by halving steps as the C does
    v = e.copy()
    for s in (32, 16, 8, 4, 2, 1):
        big = v >= (1 << s)
        n += np.where(big, s, 0)
        v = np.where(big, v >> s, v)
    lt = LOG_TABLE_BITS
    mant = np.where(n >= lt, e >> np.maximum(n - lt, 0), e << np.maximum(lt - n, 0)) & ((1 << lt) - 1)
    log_q = (n << lt) + cfg.tables["log_table"][mant]
    shift = lt - LOG_FRAC_BITS
    out = ((log_q + (1 << (shift - 1))) >> shift) - cfg.log_offset
    return np.where(e > 0, np.clip(out, -128, 127), -128).astype(np.int8)


def frames_q(windows: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """[frames, window] int16 samples -> [frames, channels] int8 features."""
    t = cfg.tables
    x = (windows.astype(np.int64) * t["hann"] + (1 << 14)) >> 15
    re = np.zeros((len(x), cfg.fft), np.int64)
    re[:, :cfg.window] = x
    re, im = fft_q(re, np.zeros_like(re), cfg)
    power = (re[:, :cfg.bins] ** 2 + im[:, :cfg.bins] ** 2) >> 8
    energy = np.zeros((len(x), cfg.channels), np.int64)
    for m in range(cfg.channels):
        s, L, o = int(t["mel_start"][m]), int(t["mel_length"][m]), int(t["mel_offset"][m])
        energy[:, m] = power[:, s:s + L] @ t["mel_weights"][o:o + L].astype(np.int64)
    return log_features(energy, cfg)


def features(samples: np.ndarray, cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """A whole clip as the streaming front end sees it: window - hop zero samples before the
    first, one frame per complete hop (a trailing partial hop gives none). [frames, channels] int8."""
    s = np.asarray(samples)
    if s.dtype != np.int16 or s.ndim != 1:
        raise FrontendError(f"samples must be a 1-D int16 array (got {s.dtype} {s.shape})")
    cfg.validate()
    count = len(s) // cfg.hop
    padded = np.concatenate([np.zeros(cfg.window - cfg.hop, np.int16), s[:count * cfg.hop]])
    idx = np.arange(count)[:, None] * cfg.hop + np.arange(cfg.window)[None, :]
    return frames_q(padded[idx], cfg) if count else np.zeros((0, cfg.channels), np.int8)


class StreamingFrontend:
    """Frame by frame, as the device runs it: keeps only the last window - hop samples."""

    def __init__(self, cfg: FrontendConfig = FrontendConfig()):
        cfg.validate()
        self.cfg = cfg
        self.history = np.zeros(cfg.window - cfg.hop, np.int16)

    def frame(self, hop: np.ndarray) -> np.ndarray:
        hop = np.asarray(hop, np.int16)
        if hop.shape != (self.cfg.hop,):
            raise FrontendError(f"a frame takes exactly hop = {self.cfg.hop} samples (got {hop.shape})")
        window = np.concatenate([self.history, hop])
        self.history = window[self.cfg.hop:].copy()
        return frames_q(window[None, :], self.cfg)[0]


def float_features(samples: np.ndarray, cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """The same pipeline in float64 (for tests: how far the integers are from exact arithmetic),
    on the same scale as the int8 features but neither rounded nor clamped."""
    t = cfg.tables
    count = len(samples) // cfg.hop
    padded = np.concatenate([np.zeros(cfg.window - cfg.hop), np.asarray(samples, np.float64)[:count * cfg.hop]])
    idx = np.arange(count)[:, None] * cfg.hop + np.arange(cfg.window)[None, :]
    spec = np.fft.rfft(padded[idx] * (t["hann"] / 32768.0), n=cfg.fft)
    power = np.abs(spec) ** 2 / 256.0
    energy = np.zeros((count, cfg.channels))
    for m in range(cfg.channels):
        s, L, o = int(t["mel_start"][m]), int(t["mel_length"][m]), int(t["mel_offset"][m])
        energy[:, m] = power[:, s:s + L] @ t["mel_weights"][o:o + L].astype(np.float64)
    with np.errstate(divide="ignore"):
        return (1 << LOG_FRAC_BITS) * np.log2(energy) - cfg.log_offset
