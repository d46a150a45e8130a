"""Audio tasks: the built-in spoken commands (synthesised, voices held out per split,
repeatable) and bring-your-own WAV folders and manifests, with their errors."""
import json
import subprocess
import wave
from dataclasses import replace

import numpy as np
import pytest

from tinyseek.audio.data import FEATURE_SCALE, feature_dataset, load_audio, read_wav
from tinyseek.audio.frontend import features
from tinyseek.audio.synth import VOICES, spoken_clip, spoken_intents
from tinyseek.config import TaskConfig
from tinyseek.data import DataError, load_task

SYNTH = {"espeak-ng": "sudo apt-get install -y espeak-ng", "flite": "sudo apt-get install -y flite",
         "sox": "sudo apt-get install -y sox"}


def _wav(path, samples, rate=16000, channels=1, width=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples).astype("<i2" if width == 2 else np.uint8).tobytes())
    return path


def _tone(n=8000, f=440.0, seed=0):
    t = np.arange(n) / 16000
    return np.round(8000 * np.sin(2 * np.pi * f * t) + np.random.default_rng(seed).normal(0, 50, n)).astype(np.int16)


@pytest.mark.parametrize("kw, words", [({"rate": 8000}, "8000 Hz"), ({"channels": 2}, "2 channels"),
                                       ({"width": 1}, "8-bit")])
def test_wrong_wav_formats_name_the_sox_fix(tmp_path, kw, words):
    n = 1600 * kw.get("channels", 1)
    f = _wav(tmp_path / "bad.wav", np.full(n, 100) if kw.get("width") == 1 else _tone(n), **kw)
    with pytest.raises(DataError, match=f"{words}.*sox IN.wav -r 16000 -c 1 -b 16"):
        read_wav(f)


def test_float_wav_and_non_wav_are_refused(tmp_path, need_tools):
    need_tools({"sox": SYNTH["sox"]}, pio=False)
    f = tmp_path / "float.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-e", "floating-point", "-b", "32", str(f), "synth", "0.1", "sine",
                    "440"], check=True)
    with pytest.raises(DataError, match="float WAV.*sox IN.wav"):
        read_wav(f)
    (tmp_path / "x.wav").write_text("not audio")
    with pytest.raises(DataError, match="not a PCM WAV"):
        read_wav(tmp_path / "x.wav")


def test_folder_per_label_becomes_front_end_sequences(tmp_path):
    for label, f in (("off", 300.0), ("on", 1200.0)):
        for k in range(6):
            _wav(tmp_path / "clips" / label / f"{k}.wav", _tone(6000 + 500 * k, f, k))
    cfg = TaskConfig(kind="audio", train=str(tmp_path / "clips"), clip_seconds=0.5, test_fraction=0.2,
                     val_fraction=0.2, frames_per_step=1)
    labels, splits = load_audio(cfg)
    assert labels == ["off", "on"] and sum(len(s.y) for s in splits.values()) == 12
    ds = load_task(cfg)
    assert ds.kind == "sequence" and ds.train.x.shape[1:] == (25, 40)  # 0.5 s = 25 hops of 20 ms
    clip = splits["train"].audio[0]
    assert np.array_equal(ds.train.x[0] / FEATURE_SCALE, features(clip))  # exactly the int8 frames
    paired = load_task(replace(cfg, frames_per_step=2))  # two frames a step: 12 steps, the 25th frame dropped
    assert np.array_equal(paired.train.x[0].reshape(-1, 40) / FEATURE_SCALE, features(clip)[:24])


def test_manifest_with_transcripts_and_its_errors(tmp_path):
    rows = []
    for k in range(8):
        _wav(tmp_path / "a" / f"{k}.wav", _tone(4000, 300.0 + 200 * (k % 2), k))
        rows.append({"audio": f"a/{k}.wav", "label": ["stop", "go"][k % 2], "text": ["stop it", "go on"][k % 2]})
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels, splits = load_audio(TaskConfig(kind="audio", train=str(m), clip_seconds=0.3))
    assert labels == ["go", "stop"]
    s = splits["train"]
    assert all(t == ("go on" if y == 0 else "stop it") for t, y in zip(s.texts, s.y))
    m.write_text(m.read_text() + json.dumps({"audio": "a/missing.wav", "label": "go"}) + "\n")
    with pytest.raises(DataError, match="line 9: audio file .*missing.wav does not exist"):
        load_audio(TaskConfig(kind="audio", train=str(m)))
    _wav(tmp_path / "a" / "1.wav", np.clip(_tone(4000).astype(np.int64) * 8, -32768, 32767))
    m.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
    with pytest.warns(UserWarning, match="line 2: .* samples are at full scale"):
        load_audio(TaskConfig(kind="audio", train=str(m), clip_seconds=0.3, test_fraction=0.0, val_fraction=0.0))
    _wav(tmp_path / "a" / "0.wav", np.zeros(4000))
    with pytest.raises(DataError, match="line 1: the clip is silent"):
        load_audio(TaskConfig(kind="audio", train=str(m)))


def test_spoken_commands_hold_out_voices_and_repeat_byte_for_byte(tmp_path, need_tools):
    need_tools(SYNTH, pio=False)
    labels, splits = spoken_intents(tmp_path, ("en", "zh"), samples_per_intent=3, clip_seconds=2.0)
    assert len(labels) == 15 and {len(s.y) for s in splits.values()} == {30}  # one clip per intent, language, split
    heard = {name: set(s.voices) for name, s in splits.items()}
    assert not heard["test"] & (heard["train"] | heard["val"]) and not heard["val"] & heard["train"]
    assert heard["train"] <= {str(v) for lang in VOICES.values() for v in lang["train"]}
    zh = [i for i, t in enumerate(splits["test"].texts) if any(ord(c) >= 0x2E80 for c in t)]
    assert zh and all(splits["test"].voices[i].startswith("espeak-ng:cmn") for i in zh)
    for s in splits.values():  # speech, not silence or noise alone: loud parts well above the quiet ones
        rms = np.sqrt((s.audio.astype(np.float64).reshape(len(s.y), -1, 320) ** 2).mean(-1))
        assert (np.percentile(rms, 95, axis=1) > 4 * np.percentile(rms, 10, axis=1)).mean() > 0.8
    for i in (0, 7, 29):  # the same recipe again gives the same bytes
        again, voice = spoken_clip(splits["test"].texts[i], "test", i, 0, 32000)
        assert str(voice) == splits["test"].voices[i] and again.tobytes() == splits["test"].audio[i].tobytes()
    cached = spoken_intents(tmp_path, ("en", "zh"), samples_per_intent=3, clip_seconds=2.0)[1]
    assert all(np.array_equal(cached[k].audio, splits[k].audio) and cached[k].texts == splits[k].texts for k in splits)
    ds = feature_dataset(labels, splits, split_by="voices")
    assert ds.test.x.shape == (30, 100, 40)
    stacked = feature_dataset(labels, splits, split_by="voices", frames_per_step=3)  # 33 steps of 3 frames, oldest first
    assert stacked.test.x.shape == (30, 33, 120)
    assert np.array_equal(stacked.test.x[:, 5, 40:80], ds.test.x[:, 16]) and np.array_equal(stacked.test.x[:, 32, 80:], ds.test.x[:, 98])
