"""The wake word in `tinyseek build` (tools/tinyseek/audio/wakeword.py, the wakeword stage): its
settings' errors, the hard-negative mining's windows, the stage on a small task (trained,
threshold chosen on the validation stream, library rendered and checked bit for bit, the
report's section), and the listener settings a wake model records becoming the firmware's
defaults."""
import json
import wave

import numpy as np
import pytest

from test_firmware_protocol import HostDut, _field
from test_listen import models
from tinyseek.audio import wakeword
from tinyseek.audio.listen import ListenConfig
from tinyseek.config import ConfigError, load
from tinyseek.data.dataset import Split
from tinyseek.harness.protocol import parse_kv
from tinyseek.pipeline import Run
from tinyseek.quant.model import ModelFileError, QuantModel


def _clips(tmp_path, n: int = 24, seconds: float = 1.2):
    """A manifest of two labels of noisy tones, as an audio task's own clips (other speech for
    the wake word)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    rows = []
    for k in range(n):
        path = tmp_path / "clips" / f"{k}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        x = rng.uniform(2000, 9000) * np.sin(2 * np.pi * (400 if k % 2 else 2500) * t) + rng.normal(0, 300, len(t))
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(np.round(x).astype(np.int16).tobytes())
        rows.append(json.dumps({"audio": f"clips/{k}.wav", "label": ["high", "low"][k % 2]}) + "\n")
    (tmp_path / "train.jsonl").write_text("".join(rows))
    return tmp_path / "train.jsonl"


SMALL = {"wake.keyword": "hey tiny", "wake.keywords": 12, "wake.near_misses": 4, "wake.mining_keywords": 6,
         "wake.hard_negatives": 20, "wake.val_keywords": 4, "wake.test_keywords": 4, "wake.epochs": 2,
         "wake.hidden": 8}


@pytest.mark.parametrize("change, message", [
    ({"wake.keyword": "hey tiny"}, "is for audio tasks"),
    ({"task.kind": "audio", "wake.keyword": "hey tiny!"}, "English words"),
    ({"task.kind": "audio", "wake.keyword": "hey tiny", "wake.frames_per_step": 3}, "divide the 50-frame window"),
    ({"task.kind": "audio", "wake.keyword": "hey tiny", "wake.keywords": 0}, "must be >= 1"),
])
def test_wake_settings_that_cannot_work_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        load(overrides=change)


def test_the_wakeword_stage_runs_only_when_asked_for(tmp_path, capsys):
    from tinyseek.cli import main
    plain = Run(load(overrides={"task.kind": "audio", "models_dir": str(tmp_path)}), log=lambda *a: None)
    assert "wakeword" not in plain.stages()
    assert "wakeword" in Run(load(overrides={"task.kind": "audio", "models_dir": str(tmp_path), **SMALL})).stages()
    assert main(["wakeword", "--set", "task.kind=audio", "--set", f"models_dir={tmp_path}"]) == 2
    assert "no wake word to train: set wake.keyword" in capsys.readouterr().err


def test_mining_keeps_the_keyword_windows_and_the_hardest_others(monkeypatch):
    """Every check 0-19 frames after a keyword ends is a keyword window; the others are the
    `hard` highest-margin checks whose window holds no part of a keyword."""
    rng = np.random.default_rng(1)
    hop = wakeword.FE.hop
    commands = [np.round(rng.normal(0, 500, 16000 * 3)).astype(np.int16) for _ in range(12)]
    keywords = [np.round(rng.normal(0, 500, int(hop * rng.integers(20, 45)))).astype(np.int16) for _ in range(4)]
    seen = {}

    def margins(qm, feats, stride):
        assert stride == wakeword.MINING_STRIDE  # mining reads the stream at its own stride
        at = np.arange(wakeword.WINDOW, len(feats) + 1, stride)
        seen["m"] = rng.integers(-1000, 1000, len(at))
        seen["at"] = at
        return at, seen["m"]
    monkeypatch.setattr(wakeword, "margins", margins)
    split = wakeword.mined(None, commands, keywords, seed=3, k=2, hard=15)
    _, spans, _ = wakeword.stream(commands, keywords, seed=3)
    at, m = seen["at"], seen["m"]
    is_kw = np.array([any(0 <= a - e <= wakeword.KEYWORD_END for _, e in spans) for a in at])
    clear = np.array([all(a <= s or a - wakeword.WINDOW > e for s, e in spans) for a in at])
    assert int(split.y.sum()) == int(is_kw.sum()) == 2 * len(keywords)  # checks every 10 frames, 20 frames each
    others = np.sort(m[clear])[::-1][:15]
    assert (split.y == 0).sum() == 15
    assert split.x.shape == (len(split.y), wakeword.WINDOW // 2, 2 * wakeword.FE.channels)
    # The other windows are the highest margins among clear ones: compare by value.
    assert sorted(others.tolist()) == sorted(m[np.flatnonzero(clear)][np.argsort(-m[clear], kind="stable")[:15]].tolist())


def test_the_stage_trains_chooses_renders_and_reports(tmp_path, monkeypatch):
    import tinyseek.distill.train as distill_train
    trained, real = [], distill_train.train_student
    monkeypatch.setattr(distill_train, "train_student",
                        lambda ds, k, cfg, **kw: trained.append((ds.name, cfg.distill)) or real(ds, k, cfg, **kw))
    cfg_overrides = {"task.kind": "audio", "task.train": str(_clips(tmp_path)), "task.clip_seconds": 1.2,
                     "models_dir": str(tmp_path / "models"), "codegen.out_dir": str(tmp_path / "lib" / "ears"),
                     "run": "ears", "teacher.hidden_size": 32, "teacher.num_layers": 2, "teacher.num_heads": 2,
                     "teacher.pretrain_epochs": 1, "teacher.finetune_epochs": 1, **SMALL}
    _recordings(tmp_path / "takes", 5)
    cfg = load(overrides={**cfg_overrides, "wake.recordings": str(tmp_path / "takes")})
    run = Run(cfg, log=lambda *a: None)
    assert run.stage("wakeword")
    out = json.loads((run.wake_dir / "wakeword.json").read_text())
    qm = QuantModel.load(run.wake_dir / "int8")
    assert qm.name == "ears_wake" and qm.num_classes == 2
    assert qm.audio["wake"] == {"threshold": out["threshold"], "window": 50, "stride": 5, "rest": 50, "confirm": 3}
    # 5 recordings: 3 train (10 placements each), 1 val, 1 test beside the synthesised ones.
    assert out["recordings"] == {"train": 3, "val": 1, "test": 1}
    assert out["train_windows"]["keyword"] == 12 + 30 and out["mined_windows"]["keyword"] > 0
    for split, n in (("val", 5), ("test", 5)):
        assert out[split]["keywords"] == n and out[split]["threshold"] == out["threshold"]
    assert out["host_check"]["bitexact"] and out["host_check"]["clips"] == 5
    header = (tmp_path / "lib" / "ears_wake" / "ears_wake_model.h").read_text()
    assert f"#define EARS_WAKE_WAKE_THRESHOLD {out['threshold']}" in header
    assert "#define TINYSEEK_WAKE_THRESHOLD EARS_WAKE_WAKE_THRESHOLD" in header
    assert "#define EARS_WAKE_WAKE_CONFIRM 3" in header
    assert "#define EARS_WAKE_WAKE_STRIDE 5" in header
    assert not run.stage("wakeword")  # unchanged inputs: skipped
    # The command model's SpecAugment is not the wake word's: a shift would move its keyword out.
    wake = [d for name, d in trained if name == "wakeword"]
    assert len(wake) == 2 and all(d.spec_shift_frames == d.spec_time_masks == d.spec_freq_masks == 0 for d in wake)
    from tinyseek.harness.report import _wake_lines
    text = "\n".join(_wake_lines(out))
    assert 'Wake word "hey tiny"' in text and f"3 checks in a row over threshold {out['threshold']}" in text
    assert "Your recordings of the keyword (wake.recordings): 3 in training, 1 and 1" in text
    # Without the keyword the build drops the measurement, so the report shows no stale wake word.
    Run(load(overrides={k: v for k, v in cfg_overrides.items() if not k.startswith("wake.")}),
        log=lambda *a: None).build(until="teacher")
    assert not (run.wake_dir / "wakeword.json").exists() and (run.wake_dir / "int8" / "model.json").exists()


def test_a_wake_model_records_its_listener_settings_and_the_firmware_takes_them(tmp_path):
    wake, command = models(6)
    settings = {"threshold": 1234, "window": 20, "stride": 4, "rest": 8, "confirm": 2}
    wake.audio = {**wake.audio, "wake": settings}
    wake.validate()
    wake.save(tmp_path / "int8")
    assert QuantModel.load(tmp_path / "int8").audio["wake"] == settings
    assert ListenConfig.of(wake, capture=12) == ListenConfig(**settings, capture=12)
    dut = HostDut(command, tmp_path / "dut", wake=wake)
    config = parse_kv(_field(dut.session("listen config")[0], "listen-config"))
    assert {k: config[k] for k in settings} == settings and config["ring"] == 20
    older = {k: v for k, v in settings.items() if k != "confirm"}  # saved before confirm existed: 1
    wake.audio = {**wake.audio, "wake": older}
    wake.validate()
    assert ListenConfig.of(wake).confirm == 1
    for bad, message in (({**settings, "window": 21}, "window a multiple of 2"),
                         ({"threshold": 1}, "integers"), ({**settings, "stride": True}, "integers"),
                         ({**settings, "confirm": 0}, "confirm 1..255")):
        wake.audio = {**wake.audio, "wake": bad}
        with pytest.raises(ModelFileError, match=message):
            wake.validate()
    command.audio = {**command.audio, "wake": settings}
    with pytest.raises(ModelFileError, match="a wake word has 2 classes"):
        command.validate()


def test_joined_keeps_both():
    a = Split(y=np.array([1, 0]), texts=None, x=np.zeros((2, 3, 4), np.float32))
    b = Split(y=np.array([0]), texts=None, x=np.ones((1, 3, 4), np.float32))
    j = wakeword.joined(a, b)
    assert j.y.tolist() == [1, 0, 0] and j.x[2].sum() == 12


def test_chunked_stream_features_equal_one_pass() -> None:
    """Hours of audio become front-end frames a chunk at a time, exactly as one pass would."""
    from tinyseek.audio.frontend import features
    audio = (np.random.default_rng(0).standard_normal(320 * 2501 + 77) * 2000).astype(np.int16)
    one_pass = features(audio)
    for chunk in (1, 7, 1000, 5000):
        assert np.array_equal(wakeword.stream_features(audio, chunk_hops=chunk), one_pass)


def test_detection_counts_hits_false_accepts_and_rests() -> None:
    assert (wakeword.STRIDE, wakeword.CONFIRM) == (5, 3)  # a check every 100 ms; a detection: three in a row
    at = np.arange(50, 1000, wakeword.STRIDE)
    margin = np.zeros(len(at), np.int64)
    margin[(at >= 290) & (at <= 320)] = 9  # one keyword ending at frame 300: a wake at 300, then rest
    margin[(at == 500) | (at == 505)] = 9  # two checks in a row: nothing
    margin[(at >= 700) & (at <= 710)] = 9  # no keyword near frame 700: a false accept
    got = wakeword.detect(at, margin, 5, spans=[(260, 300), (860, 900)], other_seconds=3600)
    assert (got["detected"], got["false_accepts"], got["keywords"], got["false_accepts_per_hour"]) == (1, 1, 2, 1.0)


@pytest.mark.slow
def test_build_and_bench_put_both_models_on_the_emulated_board(tmp_path):
    """`tinyseek build` with wake.keyword, then `tinyseek bench --env qemu_m4`: the command model
    on the test clips, and the listener on a stream of them with keywords, every event equal to
    the integer reference; the report has both."""
    from tinyseek.cli import main
    sets = {"task.kind": "audio", "task.train": str(_clips(tmp_path, 30)), "task.clip_seconds": 1.2,
            "models_dir": str(tmp_path / "models"), "codegen.out_dir": str(tmp_path / "lib" / "ears"), "run": "ears",
            "teacher.hidden_size": 32, "teacher.num_layers": 2, "teacher.num_heads": 2, "teacher.pretrain_epochs": 1,
            "teacher.finetune_epochs": 2, "student.hidden": 8, "distill.epochs": 2, **SMALL,
            "wake.false_accepts_per_hour": 1e6}  # a low threshold: it wakes, so both models run
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v) if isinstance(v, str) else v}")]
    assert main(["build", *args]) == 0
    assert main(["bench", "--env", "qemu_m4", "--limit", "6", *args]) == 0
    run = tmp_path / "models" / "ears"
    listen = json.loads((run / "device.json").read_text())["listen"]
    assert listen["bitexact"] and listen["mismatches"] == 0 and listen["wakes"] > 0 and listen["keywords"] == 2
    assert listen["config"]["threshold"] == json.loads((run / "wakeword" / "wakeword.json").read_text())["threshold"]
    assert listen["per_second_of_audio"] > 0 and listen["flash_wake_model"] > 0
    text = (run / "report.md").read_text()
    assert 'Wake word "hey tiny"' in text and "listener: per second of audio" in text


def test_a_stream_takes_more_keywords_than_it_has_gaps():
    commands = [np.full(16000, k, np.int16) for k in range(3)]
    keywords = [np.full(4000 + 320 * k, 100 + k, np.int16) for k in range(9)]
    audio, spans, before = wakeword.stream(commands, keywords, seed=0)
    assert len(audio) == 3 * 16000 + sum(len(k) for k in keywords)
    assert len(spans) == 9 and spans == sorted(spans) and sorted(before) == before and max(before) <= 3
    for j, (s, e) in enumerate(spans):  # keyword j's samples are 100 + j: its span is the frames they fall in
        first = int(np.flatnonzero(audio == 100 + j)[0])
        assert (s, e) == (first // 320, (first + len(keywords[j])) // 320)


def _recordings(folder, n: int, seconds: float = 0.6):
    """Stand-ins for your recordings of the keyword: chirps with silence around them."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    for k in range(n):
        x = np.zeros(int((seconds + 0.4) * 16000))
        x[3200:3200 + len(t)] = 9000 * np.sin(2 * np.pi * (300 + 40 * k + 800 * t) * t)
        with wave.open(str(folder / f"take{k}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(np.round(x).astype(np.int16).tobytes())


def test_your_recordings_join_the_keywords_of_their_split(tmp_path):
    _recordings(tmp_path / "flat", 10)
    split = wakeword.keyword_recordings(tmp_path / "flat", seed=0, val_fraction=0.2, test_fraction=0.2)
    assert {s: len(v) for s, v in split.items()} == {"train": 6, "val": 2, "test": 2}
    assert all(len(x) < 0.6 * 16000 + 10 for x in split["train"])  # trimmed to the speech
    placed = wakeword.placed_recordings(split["train"], "train", 0, wakeword.RECORDING_COPIES)
    assert len(placed) == 60 and not np.array_equal(placed[0], placed[1])  # each copy placed anew
    # Each copy holds the whole recording: it starts 0 to 100 ms into a clip 100 ms longer.
    leads = []
    for k, x in enumerate(placed):
        speech = split["train"][k // wakeword.RECORDING_COPIES].astype(np.float64)
        assert len(x) == len(speech) + wakeword.KEYWORD_PAD
        leads.append(int(np.argmax(np.correlate(np.pad(x.astype(np.float64), (0, 3200)), speech, "valid"))))
    assert 0 <= min(leads) and max(leads) < wakeword.KEYWORD_PAD and len(set(leads)) > 10
    for s, n in (("train", 3), ("val", 1), ("test", 1)):
        _recordings(tmp_path / "split" / s, n)
    assert {s: len(v) for s, v in wakeword.keyword_recordings(tmp_path / "split", 0, 0.2, 0.2).items()} == \
           {"train": 3, "val": 1, "test": 1}
    _recordings(tmp_path / "long", 3, seconds=1.5)
    with pytest.warns(UserWarning, match="cut to 0.95 s"):
        wakeword.keyword_recordings(tmp_path / "long", 0, 0.2, 0.2)
    from tinyseek.audio.data import DataError
    with pytest.raises(DataError, match="no such folder"):
        wakeword.keyword_recordings(tmp_path / "nowhere", 0, 0.2, 0.2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .wav recordings to train on"):
        wakeword.keyword_recordings(tmp_path / "empty", 0, 0.2, 0.2)
    with wave.open(str(tmp_path / "flat" / "stereo.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.ones(3200, np.int16).tobytes())
    with pytest.raises(DataError, match="2 channels"):
        wakeword.keyword_recordings(tmp_path / "flat", 0, 0.2, 0.2)


def test_detections_are_scored_as_mlperf_tiny_scores_them():
    """A wake after a keyword's start and at most 0.5 s (25 frames) after its end finds it (the
    first keyword in reach not yet found); another wake up to 1 s (50 frames) after its end is
    neither a hit nor a false accept; any other wake is a false accept."""
    spans = [(260, 300), (300, 330), (860, 900)]
    # 270: mid-keyword, finds it; 280: keyword 0 is found and 1 has not begun; 320 finds 1
    assert wakeword.score([270, 280, 320, 600], spans) == ({0: 270, 1: 320}, [600])
    assert wakeword.score([260, 926], spans) == ({}, [260])  # at the start frame: nothing heard yet; 26 late
    assert wakeword.score([261, 925], spans) == ({0: 261, 2: 925}, [])
    assert wakeword.score([925, 950, 951], spans) == ({2: 925}, [951])  # 950: masked, 951: past the mask
