"""The numpy integer reference (oracle) against docs/numerics.md."""
import math
from fractions import Fraction

import numpy as np
import pytest

from tinyseek.quant.model import HeadQ, LSTMLayerQ, QuantModel
from tinyseek.quant.reference import (
    InputError, Int8Runtime, QuantRangeError, check_model, encode_multiplier, encode_multipliers, infer_sequences,
    infer_tokens, make_tables, quantize_inputs, requant, rshift_round, sat, stream_logits, table_lookup, trace,
)
from tinyseek.quant.synthetic import random_model, random_sequences, random_token_ids


def exact_rshift_round(v: int, n: int) -> int:
    """floor(v / 2^n + 1/2) with unbounded integers: the spec's rounding, independent of numpy."""
    return math.floor(Fraction(v, 2**n) + Fraction(1, 2))


# -- rounding and requantization ------------------------------------------------------------

@pytest.mark.parametrize("v, n, want", [
    (1, 1, 1), (-1, 1, 0), (3, 1, 2), (-3, 1, -1), (-5, 1, -2), (-2, 1, -1),  # halves round up
    (6, 2, 2), (-6, 2, -1), (-7, 2, -2), (7, 0, 7), (-7, 0, -7),
])
def test_rshift_round_rounds_half_up(v, n, want):
    assert int(rshift_round(v, n)) == want == exact_rshift_round(v, n)


def test_rshift_round_random_against_exact_fractions():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 63, size=2000)
    v = rng.integers(-2**62, 2**62, size=2000)
    got = rshift_round(v, n)
    for vi, ni, gi in zip(v.tolist(), n.tolist(), got.tolist()):
        assert gi == exact_rshift_round(vi, ni)


@pytest.mark.parametrize("acc", [-2**31, -2**31 + 1, -1, 0, 1, 2**31 - 1])
@pytest.mark.parametrize("m", [2**30, 2**30 + 1, 2**31 - 1])
@pytest.mark.parametrize("n", [1, 2, 31, 61, 62])
def test_requant_at_the_extremes_is_exact(acc, m, n):
    # Largest product: 2^31 * (2^31 - 1) < 2^62, plus the rounding term 2^61: no int64 overflow.
    assert int(requant(acc, m, n)) == exact_rshift_round(acc * m, n)


def test_sat_clamps_to_signed_ranges():
    assert sat([-40000, -32768, 0, 32767, 40000], 16).tolist() == [-32768, -32768, 0, 32767, 32767]
    assert sat([-129, -128, 127, 128], 8).tolist() == [-128, -128, 127, 127]


# -- tables ---------------------------------------------------------------------------------

def test_tables_are_monotone_and_hit_the_documented_endpoints():
    sig, tanh = make_tables()
    assert sig.dtype == tanh.dtype == np.int16 and sig.shape == tanh.shape == (257,)
    assert np.all(np.diff(sig.astype(np.int64)) >= 0) and np.all(np.diff(tanh.astype(np.int64)) >= 0)
    for k in (0, 1, 64, 128, 200, 255, 256):
        x = (256 * k - 32768) / 4096
        assert sig[k] == min(32767, math.floor(32768 / (1 + math.exp(-x)) + 0.5))
        assert tanh[k] == max(-32767, min(32767, math.floor(32768 * math.tanh(x) + 0.5)))
    assert (sig[128], tanh[128], tanh[0], tanh[256]) == (16384, 0, -32767, 32767)
    assert sig[0] > 0 and sig[256] < 32767


def test_table_lookup_interpolates_between_samples():
    sig, tanh = make_tables()
    k = np.arange(256)
    assert np.array_equal(table_lookup(sig, 256 * k - 32768), sig[:256])  # on a sample point: f = 0
    z = np.arange(-32768, 32768)
    for t in (sig, tanh):
        y = table_lookup(t, z)
        kk = (z + 32768) >> 8
        assert np.all((y >= t[kk]) & (y <= t[kk + 1]))
        assert np.all(np.diff(y) >= 0)
    assert table_lookup(tanh, 32767) == tanh[255] + (((int(tanh[256]) - tanh[255]) * 255 + 128) >> 8)


# -- multipliers ----------------------------------------------------------------------------

def test_encode_multiplier_round_trip():
    rng = np.random.default_rng(1)
    for r in 2.0 ** rng.uniform(-31.5, 29.5, size=3000):
        m, n = encode_multiplier(r)
        if 2.0**-16 <= r < 2.0**-2:  # the n = 32 window: M = round(r * 2^32), 16 to 30 bits
            assert n == 32 and 2**16 <= m <= 2**30 and abs(m * 2.0**-n - r) <= 2.0**-33
        else:
            assert 2**30 <= m < 2**31 and 1 <= n <= 62
            assert abs(m * 2.0**-n - r) <= r * 2.0**-31
    assert encode_multiplier(1.0) == (2**30, 30)
    assert encode_multiplier(0.5) == (2**30, 31)
    assert encode_multiplier(1 - 2**-40) == (2**30, 30)  # q * 2^31 rounds to 2^31: M = 2^30, e + 1
    assert encode_multiplier(2.0**-32) == (2**30, 62)
    assert encode_multiplier(2.0**-16) == (2**16, 32) and encode_multiplier(2.0**-16 * 0.75) == (3 * 2**29, 47)
    assert encode_multiplier(0.25 * (1 - 2**-40)) == (2**30, 32)  # rounds up to the window's top
    ms, ns = encode_multipliers([1.0, 0.25])
    assert ms.dtype == ns.dtype == np.int32 and ms.tolist() == [2**30, 2**30] and ns.tolist() == [30, 32]


@pytest.mark.parametrize("r", [2.0**-33, 2.0**31, 0.0, -1.0, float("nan"), float("inf")])
def test_encode_multiplier_rejects_what_it_cannot_encode(r):
    with pytest.raises(QuantRangeError, match="lstm0.mx"):
        encode_multiplier(r, "lstm0.mx")
    assert issubclass(QuantRangeError, ValueError)


def test_encode_multipliers_names_the_bad_index():
    with pytest.raises(QuantRangeError, match=r"head\.m\[2\]"):
        encode_multipliers([1.0, 2.0, 1e-30], "head.m")


# -- stepping -------------------------------------------------------------------------------

def _per_sample(model, samples):
    out = []
    for s in samples:
        rt = Int8Runtime(model)
        for x in s:
            rt.step(x)
        out.append(rt.logits())
    return np.array(out, dtype=np.int16).reshape(len(samples), model.num_classes)


@pytest.mark.parametrize("seed, hidden, weights, scales", [
    (0, [5], "normal", "normal"), (1, [7, 3], "extreme", "mixed"), (2, [16, 9], "normal", "huge"),
    (3, [4], "extreme", "tiny"),
])
def test_vectorised_text_equals_per_sample_stepping(seed, hidden, weights, scales):
    m = random_model(seed, kind="text", hidden=hidden, weights=weights, scales=scales, biases=weights)
    ids = random_token_ids(m, np.random.default_rng(seed), 12, 25)  # lengths 0..25, masked
    got = infer_tokens(m, ids)
    assert got.dtype == np.int16 and got.shape == (12, m.num_classes)
    assert np.array_equal(got, _per_sample(m, ids))


@pytest.mark.parametrize("seed, hidden, weights, scales", [
    (4, [6], "normal", "normal"), (5, [5, 11], "extreme", "mixed"), (6, [3, 3], "normal", "huge"),
])
def test_vectorised_sequences_equal_per_sample_stepping(seed, hidden, weights, scales):
    m = random_model(seed, kind="sequence", hidden=hidden, weights=weights, scales=scales, biases=weights)
    rng = np.random.default_rng(seed)
    x = random_sequences(m, rng, 9, 20, extreme=weights == "extreme")
    assert np.array_equal(infer_sequences(m, x), _per_sample(m, x))
    ragged = [x[k, : int(rng.integers(0, 21))] for k in range(9)]
    assert np.array_equal(infer_sequences(m, ragged), _per_sample(m, ragged))


def test_streaming_equals_infer_and_logits_do_not_change_the_state():
    m = random_model(7, kind="text", hidden=[6, 5])
    ids = random_token_ids(m, np.random.default_rng(7), 6, 15)
    steps = stream_logits(m, ids)
    final = infer_tokens(m, ids)
    for k, s in enumerate(ids):
        assert steps[k].shape == (len(s), m.num_classes)
        rt = Int8Runtime(m)
        for t, tok in enumerate(s):
            rt.step(tok)
            assert np.array_equal(rt.logits(), steps[k][t])
            assert np.array_equal(rt.logits(), steps[k][t])  # reading logits twice changes nothing
        if s:
            assert np.array_equal(steps[k][-1], final[k])
        rt.reset()
        assert all(not h.any() and not c.any() for h, c in rt.state)


def test_trace_records_the_state_of_every_layer_after_every_step():
    m = random_model(14, kind="sequence", hidden=[4, 6])
    x = random_sequences(m, np.random.default_rng(14), 3, 9)
    ragged = [x[0], x[1, :4], x[2, :0]]
    for sample, rec in zip(ragged, trace(m, ragged)):
        assert rec["logits"].shape == (len(sample), m.num_classes)
        rt = Int8Runtime(m)
        for t, v in enumerate(sample):
            rt.step(v)
            for k, (h, c) in enumerate(rt.state):
                assert rec["h"][k].dtype == np.int8 and rec["c"][k].dtype == np.int16
                assert np.array_equal(rec["h"][k][t], h) and np.array_equal(rec["c"][k][t], c)


def test_empty_sequence_gives_the_head_on_the_zero_state():
    m = random_model(8, kind="text", hidden=[4])
    want = sat(requant(m.head.bias, m.head.m, m.head.n), 16)
    assert np.array_equal(infer_tokens(m, [[]])[0], want)
    assert np.array_equal(Int8Runtime(m).logits(), want)


def test_extreme_weights_saturate_to_defined_values():
    """All weights 127, huge multipliers: every gate saturates, h reaches 127 and c 32767 within a
    few steps, and logits clamp to 32767 -- defined, never wrapped."""
    sig, tanh = make_tables()
    H, I, C = 3, 2, 2
    layer = LSTMLayerQ(I, H, 12, np.full((4 * H, I), 127, np.int8), np.full((4 * H, H), 127, np.int8),
                       np.full(4 * H, 2**31 - 1, np.int32), np.ones(4 * H, np.int32),
                       np.full(4 * H, 2**31 - 1, np.int32), np.ones(4 * H, np.int32),
                       np.full(4 * H, 2**31 - 1, np.int32))
    head = HeadQ(np.full((C, H), 127, np.int8), np.full(C, 1000, np.int32), np.full(C, 2**31 - 1, np.int32),
                 np.ones(C, np.int32))
    m = QuantModel("sat", "sequence", ["a", "b"], 1.0, 1.0, [layer], head, sig, tanh, num_features=I)
    rt = Int8Runtime(m)
    for _ in range(40):
        rt.step(np.full(I, 127, np.int8))
    h, c = rt.state[0]
    assert h.tolist() == [127] * H and c.tolist() == [32767] * H
    assert rt.logits().tolist() == [32767] * C
    rt.reset()
    for _ in range(3):
        rt.step(np.full(I, -128, np.int8))  # z saturates at -32768: every table's first entry
    h, c = rt.state[0]
    assert np.all((h >= -128) & (h <= 127))


# -- inputs and model checks ----------------------------------------------------------------

def test_quantize_inputs_rounds_half_up_clips_and_names_bad_samples():
    m = random_model(9, kind="sequence", input_size=3)
    s = m.input_scale
    x = np.array([[[2.5 * s, -2.5 * s, 1000 * s]], [[-1000 * s, 0.49 * s, -0.5 * s]]], np.float64)
    assert quantize_inputs(m, x).tolist() == [[[3, -2, 127]], [[-128, 0, 0]]]
    bad = np.zeros((4, 2, 3), np.float32)
    bad[2, 1, 0] = np.nan
    with pytest.raises(InputError, match="sample 2, step 1, feature 0"):
        quantize_inputs(m, bad)
    with pytest.raises(InputError, match=r"\[N, T, 3\]"):
        quantize_inputs(m, np.zeros((2, 2, 4)))


def test_bad_inputs_are_named():
    text = random_model(10, kind="text", vocab_size=20)
    with pytest.raises(InputError, match="sample 1: token id 20 at position 2"):
        infer_tokens(text, [[1, 2], [3, 4, 20]])
    with pytest.raises(InputError, match="outside the vocabulary"):
        Int8Runtime(text).step(20)
    seq = random_model(11, kind="sequence")
    with pytest.raises(InputError, match="quantize_inputs"):
        infer_sequences(seq, np.zeros((2, 3, seq.num_features), np.float32))
    with pytest.raises(InputError, match="text model"):
        infer_sequences(text, np.zeros((1, 1, 1), np.int8))


def test_check_model_rejects_overflowing_head_bias_and_bad_multipliers():
    m = random_model(12, kind="sequence", hidden=[4])
    m.head.bias[1] = 2**31 - 1
    with pytest.raises(QuantRangeError, match=r"head.bias\[1\]"):
        check_model(m)
    m = random_model(12, kind="sequence", hidden=[4])
    m.layers[0].mh[3] = 5
    with pytest.raises(QuantRangeError, match=r"lstm0.mh\[3\]"):
        check_model(m)


# -- sanity against a float LSTM ------------------------------------------------------------

def _float_lstm(E, Wx, Wh, b, Wo, bo, ids):
    H = Wh.shape[1]
    h, c = np.zeros(H), np.zeros(H)
    for t in ids:
        z = Wx @ E[t] + Wh @ h + b
        i, f, g, o = (1 / (1 + np.exp(-z[:H])), 1 / (1 + np.exp(-z[H:2 * H])), np.tanh(z[2 * H:3 * H]),
                      1 / (1 + np.exp(-z[3 * H:])))
        c = f * c + i * g
        h = o * np.tanh(c)
    return Wo @ h + bo


def test_oracle_tracks_a_float_lstm():
    """Sanity only: quantize a random float LSTM by the spec's rules and compare (loosely)."""
    rng = np.random.default_rng(13)
    V, D, H, C = 50, 8, 16, 5
    E, Wx, Wh = rng.normal(0, 0.5, (V, D)), rng.normal(0, 0.4, (4 * H, D)), rng.normal(0, 0.3, (4 * H, H))
    b, Wo, bo = rng.normal(0, 0.2, 4 * H), rng.normal(0, 0.8, (C, H)), rng.normal(0, 0.1, C)
    samples = [list(rng.integers(1, V, size=int(rng.integers(1, 20)))) for _ in range(150)]
    ref = np.array([_float_lstm(E, Wx, Wh, b, Wo, bo, s) for s in samples])

    def rows(W):
        s = np.abs(W).max(axis=1) / 127
        return np.round(W / s[:, None]).astype(np.int8), s
    s_x = np.abs(E).max() / 127
    wx, s_wx = rows(Wx)
    wh, s_wh = rows(Wh)
    wo, s_wo = rows(Wo)
    s_out = np.abs(ref).max() / 32000
    mx, nx = encode_multipliers(s_wx * s_x * 4096)
    mh, nh = encode_multipliers(s_wh / 128 * 4096)
    mo, no = encode_multipliers((s_wo / 128) / s_out)
    sig, tanh = make_tables()
    m = QuantModel("fl", "text", [str(k) for k in range(C)], s_x, s_out,
                   [LSTMLayerQ(D, H, 11, wx, wh, mx, nx, mh, nh, np.round(b * 4096).astype(np.int32))],
                   HeadQ(wo, np.round(bo / (s_wo / 128)).astype(np.int32), mo, no), sig, tanh,
                   embedding=np.round(E / s_x).astype(np.int8), vocab_size=V, max_len=32)
    got = infer_tokens(m, samples) * s_out
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    assert np.mean(got.argmax(1) == ref.argmax(1)) > 0.95
