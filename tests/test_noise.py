"""Seeded corruptions (tinyseek.data.noise) and the robustness evaluation on tiny trained runs."""
import json
import math
import random

import numpy as np
import pytest

from tinyseek.cli import main
from tinyseek.data import Split
from tinyseek.data.intents import generate
from tinyseek.data.noise import (EN_SOUNDALIKES, KEYBOARD_NEIGHBOURS, LEVELS, SEQUENCE_KINDS, TEXT_KINDS,
                                 ZH_FILLERS, ZH_SOUNDALIKES, NoiseError, asr_noise, augment_split, corrupt,
                                 corrupt_split, drift, drop_samples, gaussian_noise, is_cjk, typos)


@pytest.fixture(scope="module")
def texts():
    ds = generate(["en", "zh"], 8, 0.1, 0)
    return list(ds.train.texts) + list(ds.test.texts)


@pytest.fixture(scope="module")
def windows():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 4 * np.pi, 64)
    return (np.sin(t)[None, :, None] * rng.uniform(0.5, 2.0, (40, 1, 3)) + rng.normal(0, 0.1, (40, 64, 3))
            ).astype(np.float32)


def _osa(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment): one typo edit is one step."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


# -- determinism and level 0 --------------------------------------------------------------------

@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_text_noise_is_deterministic_per_seed(texts, kind):
    level = LEVELS[kind][-1]
    a, b = corrupt(kind, texts, level, seed=3), corrupt(kind, texts, level, seed=3)
    assert a == b
    assert a != corrupt(kind, texts, level, seed=4)
    assert a != texts


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_sequence_noise_is_deterministic_keeps_shape_and_dtype(windows, kind):
    level = LEVELS[kind][-1]
    for dtype in (np.float32, np.float64):
        x = windows.astype(dtype)
        a, b = corrupt(kind, x, level, seed=3), corrupt(kind, x, level, seed=3)
        assert a.shape == x.shape and a.dtype == x.dtype
        assert np.array_equal(a, b)
        assert not np.array_equal(a, corrupt(kind, x, level, seed=4))
        assert not np.array_equal(a, x)
        assert np.all(np.isfinite(a))


@pytest.mark.parametrize("kind", TEXT_KINDS + SEQUENCE_KINDS)
def test_level_zero_is_the_identity(texts, windows, kind):
    zero = math.inf if kind == "gaussian" else 0.0
    data = texts if kind in TEXT_KINDS else windows
    out = corrupt(kind, data, zero, seed=1)
    if kind in TEXT_KINDS:
        assert out == texts
    else:
        assert np.array_equal(out, windows) and out is not windows


def test_the_input_is_never_modified(texts, windows):
    before_t, before_x = list(texts), windows.copy()
    corrupt("asr", texts, 0.2)
    for kind in SEQUENCE_KINDS:
        corrupt(kind, windows, LEVELS[kind][-1])
    assert texts == before_t and np.array_equal(windows, before_x)


# -- rates --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.02, 0.1])
def test_typo_rate_is_one_edit_per_eligible_character(rate):
    rng = random.Random(0)
    english = "turn off the lights in the living room please"
    chinese = "把客厅的灯打开然后拉上窗帘，再把空调调到二十六度，音乐声音小一点"
    for text in (english, chinese):
        eligible = sum(c.isalpha() for c in text)  # ASCII letters or CJK characters
        edits = sum(_osa(text, typos(text, rate, rng)) for _ in range(800))
        measured = edits / (800 * eligible)
        # A swap takes its partner's turn and a few edits cancel out: slightly under the rate.
        assert 0.85 * rate < measured < 1.1 * rate, (text, measured)


def test_typos_use_keyboard_neighbours_and_keep_spaces_digits_punctuation():
    rng = random.Random(1)
    text = "Set 22 degrees, now!"
    for _ in range(300):
        out = typos(text, 0.3, rng)
        assert "22" in out and "," in out and "!" in out and out.count(" ") == 3
    # A lone letter can only be deleted, substituted by a neighbour key or get one typed after it.
    near = KEYBOARD_NEIGHBOURS["a"]
    seen = {typos("a", 1.0, random.Random(s)) for s in range(200)}
    assert seen <= {""} | set(near) | {"a" + k for k in near} and len(seen) > 5
    upper = {typos("Q", 1.0, random.Random(s)) for s in range(100)} - {""}
    assert upper and all(out.isupper() for out in upper)


def test_word_drop_rate_and_one_word_always_survives():
    rng = random.Random(2)
    text = " ".join(["lamp"] * 20)
    kept = [len(asr_noise(text, rng, drop=0.25).split()) for _ in range(500)]
    assert 0.22 < 1 - np.mean(kept) / 20 < 0.28
    assert all(asr_noise("lights", random.Random(s), drop=1.0) == "lights" for s in range(20))


def test_dropped_samples_rate_and_hold(windows):
    rng = np.random.default_rng(0)
    x = np.arange(1, 2001, dtype=np.float32).reshape(1, 2000, 1)
    held = drop_samples(x, 0.2, rng)
    lost = held[0, 1:, 0] == held[0, :-1, 0]  # a held step repeats the one before it
    assert 0.17 < lost.mean() < 0.23
    assert np.all(np.diff(held[0, :, 0]) >= 0)  # holding never invents a value
    zeroed = drop_samples(x, 0.2, np.random.default_rng(0), hold=False)
    assert 0.17 < np.mean(zeroed == 0) < 0.23


@pytest.mark.parametrize("snr_db", [30.0, 10.0])
def test_gaussian_noise_meets_its_snr(windows, snr_db):
    noisy = gaussian_noise(windows, snr_db, np.random.default_rng(0)).astype(np.float64)
    signal = np.mean(windows.astype(np.float64) ** 2)
    measured = 10 * np.log10(signal / np.mean((noisy - windows) ** 2))
    assert abs(measured - snr_db) < 0.5


def test_linear_drift_is_monotone_and_reaches_its_magnitude(windows):
    flat = np.zeros((30, 50, 2), np.float32)
    out = drift(flat, 0.5, np.random.default_rng(0))
    steps = np.diff(out, axis=1)
    rising = np.all(steps >= 0, axis=1)
    falling = np.all(steps <= 0, axis=1)
    assert np.all(rising | falling) and rising.any() and falling.any()
    assert np.allclose(np.abs(out[:, -1]), 0.5) and np.all(out[:, 0] == 0)  # constant features: unit scale
    std = windows.reshape(-1, 3).std(axis=0)
    end = drift(windows, 1.0, np.random.default_rng(0))[:, -1] - windows[:, -1]
    assert np.allclose(np.abs(end), std, rtol=1e-4)


def test_random_walk_drift_spread(windows):
    x = np.zeros((400, 100, 1), np.float32)
    x[:, 0, 0] = 1.0  # a nonzero std; scale = std of the whole array
    scale = x.reshape(-1).std()
    end = drift(x, 1.0, np.random.default_rng(0), mode="walk")[:, -1, 0] - x[:, -1, 0]
    assert 0.85 < end.std() / scale < 1.15


# -- Chinese ------------------------------------------------------------------------------------

def test_chinese_asr_noise_stays_chinese_and_uses_its_tables():
    rng = random.Random(3)
    text = "把客厅的灯打开"
    outs = [asr_noise(text, rng, soundalike=0.5, filler=0.3, drop=0.1) for _ in range(300)]
    assert all(out and all(is_cjk(c) for c in out) for out in outs)  # no ASCII filler, no spaces
    swapped = {c for out in outs for c in out} - set(text) - set("".join(ZH_FILLERS))
    allowed = {c for ch in text for c in ZH_SOUNDALIKES.get(ch, "")}
    assert swapped and swapped <= allowed
    assert any(f in out for out in outs for f in ZH_FILLERS)


def test_mixed_and_punctuated_text():
    rng = random.Random(4)
    out = asr_noise("Hey, 打开 the Light。", rng, punct=1.0, lower=1.0)
    assert out == "hey 打开 the light"
    subs = {asr_noise("turn on the light", random.Random(s), soundalike=1.0) for s in range(40)}
    for out in subs:
        words = out.split()
        assert words[0] in EN_SOUNDALIKES["turn"] or " ".join(words[:2]) in EN_SOUNDALIKES["turn"]
    assert all(typos("", 0.5, rng) == "" and asr_noise("", rng, drop=0.5) == "" for _ in range(3))


# -- errors and splits --------------------------------------------------------------------------

def test_wrong_kinds_and_levels_are_named(texts, windows):
    with pytest.raises(NoiseError, match="unknown noise kind 'blur'"):
        corrupt("blur", texts, 0.1)
    with pytest.raises(NoiseError, match="is for texts"):
        corrupt("typo", windows, 0.1)
    with pytest.raises(NoiseError, match="is for sequences"):
        corrupt("gain", texts, 0.1)
    with pytest.raises(NoiseError, match="typo rate must be a probability"):
        typos("abc", 1.5, random.Random(0))
    with pytest.raises(NoiseError, match="float data"):
        gaussian_noise(np.zeros((2, 3), np.float32), 10, np.random.default_rng(0))
    assert issubclass(NoiseError, ValueError)


def test_augment_split_appends_noisy_copies_with_their_sources(texts, windows):
    y = np.arange(len(texts)) % 3
    split = Split(y=y, texts=texts, x=None, groups=np.arange(len(texts)))
    aug, source = augment_split(split, copies=2, seed=0)
    n = len(texts)
    assert len(aug.texts) == len(aug.y) == len(source) == 3 * n
    assert aug.texts[:n] == texts and np.array_equal(aug.y, y[source]) and np.array_equal(aug.groups, source)
    assert aug.texts[n:2 * n] != texts and aug.texts[n:2 * n] != aug.texts[2 * n:]
    seq = Split(y=np.zeros(len(windows), np.int64), texts=None, x=windows)
    aug_x, src = augment_split(seq, copies=1, noise=[("gain", 0.1)], seed=5)
    assert aug_x.x.shape == (2 * len(windows),) + windows.shape[1:] and aug_x.x.dtype == windows.dtype
    assert np.array_equal(aug_x.x[:len(windows)], windows)
    assert np.array_equal(aug_x.x[len(windows):], corrupt("gain", windows, 0.1, seed=6000))
    assert corrupt_split(seq, "drift", 0.5).y is seq.y


# -- robustness on tiny trained runs ------------------------------------------------------------

TINY = {
    "task.samples_per_intent": 8,
    "teacher.hidden_size": 32, "teacher.num_layers": 2, "teacher.num_heads": 2,
    "teacher.pretrain_epochs": 1, "teacher.finetune_epochs": 1,
    "student.hidden": 12, "student.embed_dim": 8, "student.vocab_size": 256,
    "distill.epochs": 1, "quant.calibration_samples": 32, "teacher.noise_copies": 0, "distill.noise_copies": 0,
}


def _args(tmp_path, extra):
    out = []
    for k, v in {**TINY, "models_dir": str(tmp_path / "models"), **extra}.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    return out


@pytest.mark.slow
def test_robustness_on_tiny_text_and_sequence_runs(tmp_path, capsys):
    from tinyseek.config import load
    from tinyseek.harness.robustness import MODELS
    from tinyseek.pipeline import Run

    assert main(["robustness", *_args(tmp_path, {})]) == 2
    assert "tinyseek build" in capsys.readouterr().err

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    x = rng.normal(0, 0.5, (90, 8, 3)).astype(np.float32)
    x[np.arange(90), :, y] += 1.5
    np.savez(tmp_path / "seq.npz", x=x, y=y)
    runs = {"text": ({"run": "tiny_text", "robustness.kinds": ["typo"]}, "typo"),
            "sequence": ({"run": "tiny_seq", "task.kind": "npz", "task.train": str(tmp_path / "seq.npz"),
                          "robustness.kinds": ["gaussian", "drift"]}, "gaussian")}
    for task_kind, (extra, first) in runs.items():
        cfg = load(overrides={**TINY, "models_dir": str(tmp_path / "models"), **extra})
        Run(cfg, log=lambda s: None).build(until="quantize")
        assert main(["robustness", *_args(tmp_path, extra)]) == 0
        assert "| clean |" in capsys.readouterr().out
        result = json.loads((cfg.run_dir / "robustness.json").read_text())
        assert result["task"]["kind"] == task_kind
        assert set(MODELS) <= set(result["clean"])
        kinds = extra["robustness.kinds"]
        assert [c["noise"] for c in result["conditions"]] == [k for k in kinds for _ in LEVELS[k]]
        assert result["conditions"][0]["noise"] == first
        for c in result["conditions"]:
            for m in MODELS:
                assert 0.0 <= c["accuracy"][m] <= 1.0
                assert c["drop_points"][m] == pytest.approx(100 * (result["clean"][m] - c["accuracy"][m]))
        assert set(result["goal"]["models"]) == set(MODELS)
        md = (cfg.run_dir / "robustness.md").read_text()
        assert md.count("\n| ") == 1 + len(result["conditions"]) + 1  # header, clean, one row per condition

    # The teacher's clean accuracy is the cached one: robustness reruns the teacher as extract.py did.
    from safetensors.numpy import load_file
    text_cfg = load(overrides={**TINY, "models_dir": str(tmp_path / "models"), "run": "tiny_text"})
    run = Run(text_cfg)
    cached = load_file(str(run.knowledge))["test.logits"].argmax(1)
    result = json.loads((run.dir / "robustness.json").read_text())
    assert result["clean"]["teacher"] == pytest.approx(float(np.mean(cached == run.dataset.test.y)))
    assert set(result["clean"]["by_language"]) == {"en", "zh"}

    # Settings are chosen on validation: --split val corrupts the validation split instead.
    assert main(["robustness", "--split", "val", *_args(tmp_path, {"run": "tiny_text"})]) == 0
    val = json.loads((run.dir / "robustness_val.json").read_text())
    assert val["task"]["split"] == "val" and val["task"]["samples"] == len(run.dataset.val.y)
    cached_val = load_file(str(run.knowledge))["val.logits"].argmax(1)
    assert val["clean"]["teacher"] == pytest.approx(float(np.mean(cached_val == run.dataset.val.y)))
    assert "validation samples" in (run.dir / "robustness_val.md").read_text()
    assert json.loads((run.dir / "robustness.json").read_text()) == result  # the test's file is untouched

    assert main(["robustness", *_args(tmp_path, {"run": "tiny_text", "robustness.kinds": ["gain"]})]) == 2
    assert "do not fit a text task" in capsys.readouterr().err
