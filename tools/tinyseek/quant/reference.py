"""The integer reference (the oracle): docs/numerics.md in numpy, integers only.

Every generated C kernel must reproduce these functions bit for bit. All arithmetic is done
on int64 arrays whose values provably stay inside the ranges the spec gives (int32
accumulators, int64 requantization products); `check_model` rejects models for which that
proof does not hold, so the oracle never relies on wrap-around that C would treat as
undefined behaviour.

Batch functions are vectorised over samples; samples of different lengths are padded and
masked so that each sample's state stops advancing after its own length.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .model import QuantModel

INT32_MAX = 2**31 - 1
# |w * x| <= 128 * 128 for int8 operands: the largest term of any int8 dot product.
MAX_PRODUCT = 128 * 128


class QuantRangeError(ValueError):
    """A real multiplier, bias or shape cannot be represented by the integer spec."""


class InputError(ValueError):
    """An input (token id, feature vector, float sample) the model cannot consume."""


# -- the primitives of docs/numerics.md ----------------------------------------------------

def rshift_round(v, n):
    """`(v + (1 << (n-1))) >> n` with a flooring shift (round half up); `n = 0` returns `v`."""
    v = np.asarray(v, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if np.any(n < 0) or np.any(n > 62):
        raise ValueError("rshift_round: shift must be in 0..62")
    half = np.where(n > 0, np.left_shift(np.int64(1), np.maximum(n - 1, 0)), 0)
    return np.right_shift(v + half, n)


def requant(acc, m, n):
    """`rshift_round((int64)acc * M, n)`: an int32 accumulator times a real multiplier M * 2^-n."""
    return rshift_round(np.asarray(acc, dtype=np.int64) * np.asarray(m, dtype=np.int64), n)


def sat(v, bits: int):
    """Clamp to the signed `bits`-bit range."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(np.asarray(v, dtype=np.int64), lo, hi)


def table_lookup(table: np.ndarray, z):
    """A 257-entry Q0.15 table on a Q3.12 input, interpolated on the low 8 bits."""
    t = table.astype(np.int64)
    u = np.asarray(z, dtype=np.int64) + 32768
    k, f = u >> 8, u & 255
    return t[k] + (((t[k + 1] - t[k]) * f + 128) >> 8)


def make_tables() -> tuple[np.ndarray, np.ndarray]:
    """The sigmoid and tanh tables (int16[257]) sampled at x_k = (256k - 32768) / 4096."""
    x = (256.0 * np.arange(257) - 32768.0) / 4096.0
    sig = np.minimum(32767, np.floor(32768.0 / (1.0 + np.exp(-x)) + 0.5))
    tanh = np.clip(np.floor(32768.0 * np.tanh(x) + 0.5), -32767, 32767)
    return sig.astype(np.int16), tanh.astype(np.int16)


def encode_multiplier(r: float, name: str = "multiplier") -> tuple[int, int]:
    """Encode a real multiplier `r > 0` as `(M, n)`, `r ~= M * 2^-n` (docs/numerics.md).

    Normally `M` in [2^30, 2^31), `n = 31 - e`. A multiplier in [2^-16, 2^-2), whose normal
    shift would exceed 32, is encoded with n = 32 and M = round(r * 2^32) in [2^16, 2^30]
    instead: still 16 or more significant bits, and 32-bit kernels requantize it with one
    rounding high multiply (SMMULR). `round` rounds half to even; `q * 2^31` and `r * 2^32` are
    exact in float64, so the result does not depend on the platform.
    """
    r = float(r)
    if not (math.isfinite(r) and r > 0.0):
        raise QuantRangeError(f"{name}: the real multiplier {r!r} must be positive and finite; "
                              "a scale feeding it is zero or not a number (an all-zero or NaN tensor?)")
    q, e = math.frexp(r)  # r = q * 2**e with 0.5 <= q < 1
    m = round(q * 2**31)
    if m == 2**31:
        m, e = 2**30, e + 1
    n = 31 - e
    if n > 32 and r >= 2.0**-16:
        m, n = round(r * 2**32), 32
    if not 1 <= n <= 62:
        raise QuantRangeError(
            f"{name}: the real multiplier {r:.6g} needs a shift of {n}, outside 1..62 (encodable: about "
            f"2^-32 to 2^30); the scales that produce it are degenerate (a near-zero or exploding tensor): "
            "retrain with weight decay / gradient clipping, or recalibrate")
    return m, n


def encode_multipliers(r, name: str = "multiplier") -> tuple[np.ndarray, np.ndarray]:
    """`encode_multiplier` over an array; errors name the first bad index as `name[i]`."""
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    ms, ns = np.empty(r.shape, np.int32), np.empty(r.shape, np.int32)
    for i, v in enumerate(r):
        ms[i], ns[i] = encode_multiplier(v, f"{name}[{i}]")
    return ms, ns


# -- model checks ---------------------------------------------------------------------------

def check_model(model: QuantModel) -> None:
    """Validate the model and prove that no accumulator can overflow int32.

    Raises QuantRangeError when an int32 accumulation could wrap (C would be undefined there)
    or a multiplier is outside [2^16, 2^31).
    """
    model.validate()
    for i, layer in enumerate(model.layers):
        for size, what in ((layer.input_size, "input"), (layer.hidden, "hidden")):
            if MAX_PRODUCT * size > INT32_MAX:
                raise QuantRangeError(f"lstm{i}: {what} size {size} can overflow the int32 accumulator; "
                                      f"use at most {INT32_MAX // MAX_PRODUCT}")
        for k in ("mx", "mh"):
            _check_m(getattr(layer, k), f"lstm{i}.{k}")
    h = model.layers[-1].hidden
    limit = INT32_MAX - MAX_PRODUCT * h
    bad = np.flatnonzero(np.abs(model.head.bias.astype(np.int64)) > limit)
    if bad.size:
        k = int(bad[0])
        raise QuantRangeError(f"head.bias[{k}] = {int(model.head.bias[k])}: bias plus a {h}-term dot product "
                              f"can overflow int32 (|bias| must be <= {limit}); the head's bias is huge "
                              "relative to its weight scale: retrain with weight decay")
    _check_m(model.head.m, "head.m")


def _check_m(m: np.ndarray, what: str) -> None:
    bad = np.flatnonzero((m.astype(np.int64) < 2**16) | (m.astype(np.int64) >= 2**31))
    if bad.size:
        raise QuantRangeError(f"{what}[{int(bad[0])}] = {int(m[bad[0]])} is not in [2^16, 2^31); "
                              "encode multipliers with encode_multiplier")


# -- the layers -----------------------------------------------------------------------------

def int_matmul(x, w) -> np.ndarray:
    """`x @ w.T` in int64 (exact: int8 products summed over K <= 131071 terms stay < 2^31)."""
    return np.asarray(x, dtype=np.int64) @ np.asarray(w, dtype=np.int64).T


def lstm_step(layer, x, h, c, sigmoid_table, tanh_table):
    """One LSTM step for a batch: x int [B, I], h int [B, H] (int8 values), c [B, H] (int16
    values) -> (h', c'). Every gate reads the old h."""
    H, cf = layer.hidden, layer.cell_frac_bits
    x, h, c = (np.asarray(a, dtype=np.int64) for a in (x, h, c))
    acc_x = int_matmul(x, layer.w_x)
    acc_h = int_matmul(h, layer.w_h)
    z = sat(requant(acc_x, layer.mx, layer.nx) + requant(acc_h, layer.mh, layer.nh) + layer.bias.astype(np.int64), 16)
    i = table_lookup(sigmoid_table, z[:, 0:H])
    f = table_lookup(sigmoid_table, z[:, H:2 * H])
    g = table_lookup(tanh_table, z[:, 2 * H:3 * H])
    o = table_lookup(sigmoid_table, z[:, 3 * H:4 * H])
    c_new = sat(rshift_round(f * c, 15) + rshift_round(i * g, 30 - cf), 16)
    t = table_lookup(tanh_table, sat(c_new * (1 << (12 - cf)), 16))
    h_new = sat(rshift_round(o * t, 23), 8)
    return h_new, c_new


def head_logits(model: QuantModel, h) -> np.ndarray:
    """The dense head on the top layer's h (int [B, H]) -> int16 [B, C]."""
    hd = model.head
    acc = int_matmul(h, hd.w) + hd.bias.astype(np.int64)
    return sat(requant(acc, hd.m, hd.n), 16).astype(np.int16)


class _State:
    """h and c of every layer for a batch of B samples."""

    def __init__(self, model: QuantModel, batch: int):
        self.model = model
        self.h = [np.zeros((batch, L.hidden), np.int64) for L in model.layers]
        self.c = [np.zeros((batch, L.hidden), np.int64) for L in model.layers]

    def advance(self, x: np.ndarray, active: np.ndarray | None = None) -> None:
        """Step every layer on input x [B, I]; samples where `active` is False keep their state."""
        m = self.model
        for k, layer in enumerate(m.layers):
            h, c = lstm_step(layer, x, self.h[k], self.c[k], m.sigmoid_table, m.tanh_table)
            if active is not None:
                h = np.where(active[:, None], h, self.h[k])
                c = np.where(active[:, None], c, self.c[k])
            self.h[k], self.c[k] = h, c
            x = h

    def logits(self) -> np.ndarray:
        return head_logits(self.model, self.h[-1])


class Int8Runtime:
    """The model as the device runs it: reset, step one input at a time, read logits."""

    def __init__(self, model: QuantModel):
        check_model(model)
        self.model = model
        self.reset()

    def reset(self) -> None:
        self._state = _State(self.model, 1)

    def step(self, x) -> None:
        """Advance by one input: a token id or an id group (text) or an int8 feature vector [F]
        (sequence)."""
        m = self.model
        if m.kind == "text":
            v, _ = _token_batch(m, [[x]])
            v = v[:, 0]
        else:
            v = np.asarray(x)
            if v.dtype != np.int8 or v.shape != (m.num_features,):
                raise InputError(f"a step needs an int8 feature vector of shape ({m.num_features},), got "
                                 f"{v.dtype} {v.shape}; quantize float features with quantize_inputs")
            v = v[None, :]
        self._state.advance(v)

    def logits(self) -> np.ndarray:
        """The head on the current state (int16 [C]); the state is unchanged."""
        return self._state.logits()[0]

    @property
    def state(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(h, c) of every layer, as int8 and int16 copies."""
        return [(h[0].astype(np.int8), c[0].astype(np.int16)) for h, c in zip(self._state.h, self._state.c)]


# -- batch inference ------------------------------------------------------------------------

def mean_rows(rows) -> np.ndarray:
    """The int8 step input of an id group (docs/numerics.md, "Subwords"): the embedding rows
    [..., K, E] of its K ids summed to S and divided by K rounding half up, floor((2S + K) / 2K).
    A group of one id is its row unchanged."""
    rows = np.asarray(rows, dtype=np.int64)
    k = rows.shape[-2]
    return (2 * rows.sum(axis=-2) + k) // (2 * k)


def _token_batch(model: QuantModel, ids: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray]:
    """The int8 inputs [N, T, E] of samples whose steps are token ids or id groups (tuples of
    ids: their rows' mean, see mean_rows)."""
    if model.kind != "text":
        raise InputError(f"model '{model.name}' is a sequence model: use infer_sequences")
    lengths = np.array([len(s) for s in ids], dtype=np.int64)
    T = int(lengths.max()) if len(ids) else 0
    table = model.embedding.astype(np.int64)
    if not any(isinstance(g, (tuple, list, np.ndarray)) for s in ids for g in s):  # plain ids: one row each
        padded = np.zeros((len(ids), T), dtype=np.int64)
        for n, s in enumerate(ids):
            row = np.asarray(s, dtype=np.int64).reshape(-1)
            bad = np.flatnonzero((row < 0) | (row >= model.vocab_size))
            if bad.size:
                raise InputError(f"sample {n}: token id {int(row[bad[0]])} at position {int(bad[0])} is outside "
                                 f"the vocabulary 0..{model.vocab_size - 1}")
            padded[n, :len(row)] = row
        return table[padded], lengths
    out = np.zeros((len(ids), T, model.input_size), dtype=np.int64)
    for n, s in enumerate(ids):
        if not any(isinstance(g, (tuple, list, np.ndarray)) for g in s):
            s = [(g,) for g in np.asarray(s, dtype=np.int64).reshape(-1).tolist()]
        for t, group in enumerate(s):
            row = np.asarray(group, dtype=np.int64).reshape(-1)
            bad = np.flatnonzero((row < 0) | (row >= model.vocab_size))
            if bad.size or not row.size:
                what = f"token id {int(row[bad[0]])}" if bad.size else "an empty id group"
                raise InputError(f"sample {n}: {what} at position {t} is outside the vocabulary "
                                 f"0..{model.vocab_size - 1}")
            out[n, t] = mean_rows(table[row])
    return out, lengths


def _sequence_batch(model: QuantModel, x) -> tuple[np.ndarray, np.ndarray]:
    if model.kind != "sequence":
        raise InputError(f"model '{model.name}' is a text model: use infer_tokens")
    F = model.num_features
    if isinstance(x, np.ndarray):
        if x.dtype != np.int8 or x.ndim != 3 or x.shape[2] != F:
            raise InputError(f"sequence inputs must be int8 [N, T, {F}], got {x.dtype} {x.shape}; "
                             "quantize float features with quantize_inputs")
        return x.astype(np.int64), np.full(len(x), x.shape[1], np.int64)
    samples = [np.asarray(s) for s in x]
    for n, s in enumerate(samples):
        if s.dtype != np.int8 or s.ndim != 2 or s.shape[1] != F:
            raise InputError(f"sample {n}: expected int8 [T, {F}], got {s.dtype} {s.shape}; "
                             "quantize float features with quantize_inputs")
    lengths = np.array([len(s) for s in samples], dtype=np.int64)
    out = np.zeros((len(samples), int(lengths.max()) if samples else 0, F), np.int64)
    for n, s in enumerate(samples):
        out[n, :len(s)] = s
    return out, lengths


def _run(model: QuantModel, xs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    check_model(model)
    state = _State(model, len(lengths))
    for t in range(xs.shape[1]):
        active = lengths > t
        state.advance(xs[:, t], None if active.all() else active)
    return state.logits()


def infer_tokens(model: QuantModel, ids: Sequence[Sequence[int]]) -> np.ndarray:
    """reset, step over each sample's token ids, logits: int16 [N, C]."""
    return _run(model, *_token_batch(model, ids))


def infer_sequences(model: QuantModel, x) -> np.ndarray:
    """Same for int8 feature sequences: [N, T, F], or a list of [T_n, F] of different lengths."""
    return _run(model, *_sequence_batch(model, x))


def audio_inputs(model: QuantModel, clips) -> list[np.ndarray]:
    """What an audio model's LSTM steps on for each int16 clip: the front end's frames,
    frames_per_step to a step (a trailing part step and part hop are not stepped), as the
    library's feed_audio builds them. One int8 [T_n, F] per clip."""
    from ..audio.data import stack_frames
    from ..audio.frontend import features
    if model.audio is None:
        raise InputError(f"model '{model.name}' takes feature vectors, not audio")
    fe, k = model.frontend, model.audio["frames_per_step"]
    return [stack_frames(features(np.asarray(c), fe)[None], k)[0] for c in clips]


def infer_audio(model: QuantModel, clips) -> np.ndarray:
    """reset, feed each int16 clip's samples, logits: int16 [N, C] (the library's infer_audio)."""
    return infer_sequences(model, audio_inputs(model, clips))


def trace(model: QuantModel, inputs) -> list[dict]:
    """Everything after every step, per sample (token-id lists for text models, int8 sequences
    for sequence models): {"logits": int16 [T_n, C], "h": [int8 [T_n, H_l] per layer],
    "c": [int16 [T_n, H_l] per layer]}."""
    xs, lengths = _token_batch(model, inputs) if model.kind == "text" else _sequence_batch(model, inputs)
    check_model(model)
    state = _State(model, len(lengths))
    logits, hs, cs = [], [], []
    for t in range(xs.shape[1]):
        state.advance(xs[:, t], lengths > t)
        logits.append(state.logits())
        hs.append([h.astype(np.int8) for h in state.h])
        cs.append([c.astype(np.int16) for c in state.c])
    out = []
    for n, T in enumerate(lengths.tolist()):
        out.append({
            "logits": np.array([logits[t][n] for t in range(T)], np.int16).reshape(T, model.num_classes),
            "h": [np.array([hs[t][k][n] for t in range(T)], np.int8).reshape(T, L.hidden)
                  for k, L in enumerate(model.layers)],
            "c": [np.array([cs[t][k][n] for t in range(T)], np.int16).reshape(T, L.hidden)
                  for k, L in enumerate(model.layers)],
        })
    return out


def stream_logits(model: QuantModel, inputs) -> list[np.ndarray]:
    """The logits after every step: one int16 [T_n, C] per sample."""
    return [s["logits"] for s in trace(model, inputs)]


def quantize_inputs(model: QuantModel, x) -> np.ndarray:
    """Float features [N, T, F] (or [T, F]) -> int8 by `clip(floor(x / s_x + 0.5), -128, 127)`,
    computed in float64."""
    if model.kind != "sequence":
        raise InputError(f"model '{model.name}' is a text model; only sequence inputs are quantized")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in (2, 3) or x.shape[-1] != model.num_features:
        raise InputError(f"float inputs must be [N, T, {model.num_features}] or [T, {model.num_features}], "
                         f"got shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        where = np.argwhere(bad)[0]
        pos = f"sample {where[0]}, step {where[1]}, feature {where[2]}" if x.ndim == 3 else \
            f"step {where[0]}, feature {where[1]}"
        raise InputError(f"input {pos} is {x[tuple(where)]}: NaN/inf features cannot be quantized; "
                         "clean or impute the data first")
    return np.clip(np.floor(x / float(model.input_scale) + 0.5), -128, 127).astype(np.int8)


# -- class probabilities (the firmware's m-results line; docs/numerics.md) ------------------

# 2^(-j/32) in Q0.15, j = 0..32: the fraction part of 2^-y, interpolated on 11 more bits.
EXP2_Q15 = np.array([round(32768 * 2.0 ** (-j / 32)) for j in range(33)], dtype=np.int64)
PROB_ONE = 100_000  # probabilities in units of 10^-5: printed with five decimals
MAX_SOFTMAX_CLASSES = 1024  # keeps e * 10^5 + sum / 2 below 2^32 with room to spare


def softmax_multiplier(output_scale: float) -> int:
    """K = round(s_out * log2(e) * 2^32): `(d * K + 2^15) >> 16` is s_out * d * log2(e) in Q16."""
    # Saturated to 32 bits: above s_out = 0.69 (real logits beyond +-22,000) a logit step counts
    # as one halving, which leaves the order of the classes intact.
    return min(round(float(output_scale) * math.log2(math.e) * 2.0**32), 2**32 - 1)


def softmax_fixed(model: QuantModel, logits) -> np.ndarray:
    """Class probabilities of int16 logits [..., C] in units of 10^-5, as the firmware computes them:
    d = max - logit, y = rshift_round(d * K, 16) (Q16), e = 2^-y in Q0.15 from EXP2_Q15 (0 from
    2^-16 on), p = round(e * 10^5 / sum(e)) (half up)."""
    z = np.asarray(logits, dtype=np.int64)
    if z.shape[-1] > MAX_SOFTMAX_CLASSES:
        raise QuantRangeError(f"softmax: {z.shape[-1]} classes; at most {MAX_SOFTMAX_CLASSES} are supported")
    y = rshift_round((z.max(axis=-1, keepdims=True) - z) * softmax_multiplier(model.output_scale), 16)
    f = y & 0xFFFF
    j, r = f >> 11, f & 0x7FF
    v = EXP2_Q15[j] - (((EXP2_Q15[j] - EXP2_Q15[j + 1]) * r + 1024) >> 11)
    i = y >> 16
    e = np.where(i < 16, v >> np.minimum(i, 15), 0)
    s = e.sum(axis=-1, keepdims=True)
    return (e * PROB_ONE + s // 2) // s


def probabilities_text(model: QuantModel, logits) -> str:
    """The `m-results-[...]` field of one inference: probabilities with five decimals."""
    return ",".join(f"{p // PROB_ONE}.{p % PROB_ONE:05d}" for p in softmax_fixed(model, logits).tolist())
