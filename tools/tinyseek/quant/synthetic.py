"""Random QuantModels and inputs for tests: every shape, value and scale range the integer
spec allows, including the extremes (int8 -128/127 everywhere, shifts of 1 and 62, int32
biases at their limits), without training anything."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .model import EMBEDDING_GAIN_MAX, INT4_MAX, HeadQ, LSTMLayerQ, QuantModel
from .reference import INT32_MAX, MAX_PRODUCT, encode_multiplier, make_tables

WEIGHT_MODES = ("normal", "extreme")
WIDTHS = ("int8", "int4", "binary")
SCALE_MODES = ("normal", "tiny", "huge", "mixed", "pow2")


def _int8(rng: np.random.Generator, shape, mode: str) -> np.ndarray:
    if mode == "extreme":
        return rng.choice(np.array([-128, -127, 127, 0, 1, -1], np.int8), size=shape,
                          p=[0.35, 0.1, 0.35, 0.1, 0.05, 0.05])
    return np.clip(np.round(rng.normal(0, 45, size=shape)), -128, 127).astype(np.int8)


def _gate_weights(rng: np.random.Generator, shape, mode: str, width: str) -> np.ndarray:
    """LSTM gate weights of a width: int8 as _int8; int4 -8..7 (`extreme`: mostly -8 and 7);
    binary -1/+1 (`extreme`: mostly one sign)."""
    if width == "int8":
        return _int8(rng, shape, mode)
    if width == "int4":
        if mode == "extreme":
            return rng.choice(np.array([-8, 7, -7, 0, 1, -1], np.int8), size=shape, p=[0.35, 0.35, 0.1, 0.1, 0.05, 0.05])
        return rng.integers(-8, 8, size=shape).astype(np.int8)
    p_plus = rng.choice([0.03, 0.97]) if mode == "extreme" else 0.5
    return np.where(rng.random(shape) < p_plus, 1, -1).astype(np.int8)


def _embedding(rng: np.random.Generator, shape, mode: str, width: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(int8 rows, gains): int8 as _int8; int4 and binary rows are a gain 0..max per row times
    codes (-7..7, or signs), `extreme`: mostly the largest gain and codes, and a zero row."""
    if width == "int8":
        return _int8(rng, shape, mode), None
    top = EMBEDDING_GAIN_MAX[width]
    if mode == "extreme":
        gain = rng.choice(np.array([top, top - 1, 1, 0]), size=shape[0], p=[0.7, 0.1, 0.1, 0.1])
    else:
        gain = rng.integers(0, top + 1, size=shape[0])
    gain[0] = 0  # the padding row of a trained student
    codes = (_gate_weights(rng, shape, mode, width).clip(-INT4_MAX, INT4_MAX) if width == "int4"
             else _gate_weights(rng, shape, mode, width))
    return (codes.astype(np.int64) * gain[:, None]).astype(np.int8), gain.astype(np.uint8)


def _multipliers(rng: np.random.Generator, size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(M, n) pairs: `normal` encodes realistic reals, `pow2` exact powers 2^-1..2^-8 (so that
    rounding ties are frequent), the others draw shifts at the ends of 1..62."""
    if mode == "normal":
        pairs = [encode_multiplier(2.0 ** rng.uniform(-9, 0)) for _ in range(size)]
        return np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32)
    if mode == "pow2":
        return np.full(size, 2**30, np.int32), rng.integers(31, 39, size=size).astype(np.int32)
    lo, hi = {"tiny": (55, 62), "huge": (1, 6), "mixed": (1, 62)}[mode]
    m = rng.integers(2**30, 2**31, size=size, dtype=np.int64)
    # The very ends of the valid range in every drawn vector: M = 2^30 and M = 2^31 - 1.
    m[rng.integers(0, size)] = 2**31 - 1
    m[rng.integers(0, size)] = 2**30
    return m.astype(np.int32), rng.integers(lo, hi + 1, size=size).astype(np.int32)


def _int32(rng: np.random.Generator, size: int, mode: str, limit: int = INT32_MAX) -> np.ndarray:
    if mode == "extreme":
        v = rng.integers(-limit, limit + 1, size=size, dtype=np.int64)
        v[rng.integers(0, size)] = limit
        v[rng.integers(0, size)] = -limit if limit < INT32_MAX else -2**31
        return np.clip(v, -2**31, INT32_MAX).astype(np.int32)
    return np.clip(np.round(rng.normal(0, 3000, size=size)), -limit, limit).astype(np.int32)


def random_model(seed: int, *, kind: str = "sequence", hidden: int | Sequence[int] = 8, input_size: int = 6,
                 num_classes: int = 4, vocab_size: int = 64, max_len: int = 16, weights: str = "normal",
                 scales: str = "normal", biases: str = "normal", cell_frac_bits: int | Sequence[int] | None = None,
                 labels: Sequence[str] | None = None, name: str = "synth", width: str = "int8",
                 embedding_width: str | None = None) -> QuantModel:
    """A valid random QuantModel. `hidden` is one size per layer (an int: one layer); text
    models use `input_size` as the embedding width; `width` is the LSTM gate weights' width,
    `embedding_width` the stored embedding's (None: the same, as the quantizer does)."""
    if weights not in WEIGHT_MODES or scales not in SCALE_MODES or biases not in WEIGHT_MODES or width not in WIDTHS:
        raise ValueError(f"weights/biases must be one of {WEIGHT_MODES}, scales one of {SCALE_MODES}, width one of {WIDTHS}")
    rng = np.random.default_rng(seed)
    sizes = [hidden] if isinstance(hidden, int) else list(hidden)
    if cell_frac_bits is None:
        cfs = [int(rng.integers(7, 13)) for _ in sizes]
    else:
        cfs = [cell_frac_bits] * len(sizes) if isinstance(cell_frac_bits, int) else list(cell_frac_bits)
    sig, tanh = make_tables()
    layers, prev = [], input_size
    for H, cf in zip(sizes, cfs):
        mx, nx = _multipliers(rng, 4 * H, scales)
        mh, nh = _multipliers(rng, 4 * H, scales)
        layers.append(LSTMLayerQ(input_size=prev, hidden=H, cell_frac_bits=cf,
                                 w_x=_gate_weights(rng, (4 * H, prev), weights, width),
                                 w_h=_gate_weights(rng, (4 * H, H), weights, width),
                                 mx=mx, nx=nx, mh=mh, nh=nh, bias=_int32(rng, 4 * H, biases)))
        prev = H
    mo, no = _multipliers(rng, num_classes, scales)
    head = HeadQ(w=_int8(rng, (num_classes, prev), weights) if width != "binary" else
                 _gate_weights(rng, (num_classes, prev), weights, "binary"),
                 bias=_int32(rng, num_classes, biases, limit=INT32_MAX - MAX_PRODUCT * prev), m=mo, n=no)
    scale_in, scale_out = float(2.0 ** rng.uniform(-10, 2)), float(2.0 ** rng.uniform(-12, 0))
    embedding_width = embedding_width or width  # drawn after the rest: int8 models as before
    embedding, gain = _embedding(rng, (vocab_size, input_size), weights, embedding_width) if kind == "text" else (None, None)
    model = QuantModel(
        name=name, kind=kind, labels=list(labels) if labels is not None else [f"class{k}" for k in range(num_classes)],
        input_scale=scale_in, output_scale=scale_out,
        layers=layers, head=head, sigmoid_table=sig, tanh_table=tanh,
        embedding=embedding, embedding_width=embedding_width if kind == "text" else "int8", embedding_gain=gain,
        num_features=input_size if kind == "sequence" else None,
        vocab_size=vocab_size if kind == "text" else None,
        max_len=max_len,
        meta={"synthetic": {"seed": seed, "weights": weights, "scales": scales, "biases": biases}}, weights=width,
    )
    model.validate()
    return model


def random_audio_model(seed: int, *, frames_per_step: int = 4, frontend=None, **kwargs) -> QuantModel:
    """random_model as an audio model (QuantModel.audio): frames_per_step frames of the front
    end's channels a step (`frontend`: a FrontendConfig, None: the default); kwargs go to
    random_model."""
    from dataclasses import asdict

    from ..audio.frontend import FrontendConfig
    fe = frontend or FrontendConfig()
    model = random_model(seed, kind="sequence", input_size=frames_per_step * fe.channels, **kwargs)
    model.audio = {"frontend": asdict(fe), "frames_per_step": frames_per_step}
    model.validate()
    return model


def random_token_ids(model: QuantModel, rng: np.random.Generator, n: int, max_steps: int) -> list[list[int]]:
    """n token-id lists of lengths 0..max_steps (the first one empty), ids over the whole vocabulary."""
    lengths = [0] + [int(v) for v in rng.integers(0, max_steps + 1, size=n - 1)] if n else []
    return [[int(t) for t in rng.integers(0, model.vocab_size, size=L)] for L in lengths]


def random_sequences(model: QuantModel, rng: np.random.Generator, n: int, steps: int,
                     extreme: bool = False) -> np.ndarray:
    """int8 [n, steps, F] feature sequences; `extreme` draws mostly -128 and 127."""
    return _int8(rng, (n, steps, model.num_features), "extreme" if extreme else "normal")
