"""A wake word gating spoken commands on one stream (tools/tinyseek/audio/listen.py and its C
twin firmware/lib/harness/ts_listen.c): the rules on hand-made margins, the settings' errors,
and the two models linked side by side, event for event against the integer reference, in the
serial interpreter on the host under ASan/UBSan (any chunking) and in the firmware on emulated
boards with the stream sent over the serial line."""
import numpy as np
import pytest

from test_firmware_boards import _need
from test_firmware_protocol import HostDut, _field, _load_cmds
from tinyseek.audio.frontend import FrontendConfig, features
from tinyseek.audio.listen import (ListenConfig, ListenError, event_mismatches, listen, listen_frames, wake_checks,
                                   wake_margins)
from tinyseek.codegen.render import render
from tinyseek.harness.bench import run_device_listen
from tinyseek.harness.protocol import parse_kv
from tinyseek.quant.synthetic import random_audio_model

SMALL = dict(window=8, stride=2, rest=6, capture=12)  # frames: short, so a few seconds hold many events


def models(seed: int = 0, fe: FrontendConfig = FrontendConfig()):
    wake = random_audio_model(seed, frames_per_step=2, frontend=fe, hidden=[12], num_classes=2, name="wake")
    command = random_audio_model(seed + 1, frames_per_step=4, frontend=fe, hidden=[16, 10], num_classes=5,
                                 name="ears")
    return wake, command


def stream(seed: int = 0, seconds: float = 3.0) -> np.ndarray:
    """Noise of changing level with tones in it: the random wake model's margin moves."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    level = 300 + 6000 * (np.sin(2 * np.pi * 0.7 * t) > 0)
    x = rng.standard_normal(n) * level + 8000 * np.sin(2 * np.pi * (300 + 900 * (t % 1)) * t)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def threshold_for(wake, pcm, cfg: ListenConfig) -> int:
    """The median margin at the wake checks: about half of them wake."""
    feats = features(pcm, wake.frontend)
    return int(np.median(wake_margins(wake, feats, wake_checks(len(feats), cfg), cfg.window)))


def test_the_rules_on_given_margins():
    """Checks every stride frames from the window on; after a wake none for max(rest, capture)
    frames; the command decided capture frames after its wake, before a wake on the same frame."""
    wake, command = models()
    feats = np.zeros((60, 40), np.int8)
    cfg = ListenConfig(threshold=0, **SMALL)
    at = wake_checks(60, cfg)
    assert at.tolist() == list(range(8, 61, 2))
    events = listen_frames(wake, command, feats, cfg, margins=np.full(len(at), 5))
    assert [(e["event"], e["frame"]) for e in events] == [
        ("wake", 8), ("command", 20), ("wake", 20), ("command", 32), ("wake", 32), ("command", 44), ("wake", 44),
        ("command", 56), ("wake", 56)]  # the last capture would end at 68, after the stream
    assert all(len(e["logits"]) == 5 and e["class"] == int(np.argmax(e["logits"])) for e in events
               if e["event"] == "command")
    alone = listen_frames(wake, None, feats, ListenConfig(threshold=5, window=8, stride=2, rest=6, capture=0),
                          margins=np.full(len(at), 5))
    assert [e["frame"] for e in alone] == list(range(8, 61, 6))  # no command: rest alone keeps checks away
    assert listen_frames(wake, command, feats, ListenConfig(threshold=6, **SMALL), margins=np.full(len(at), 5)) == []
    with pytest.raises(ListenError, match="3 margins for 27 wake checks"):
        listen_frames(wake, command, feats, ListenConfig(**SMALL), margins=np.zeros(3))


def test_confirm_wakes_at_the_nth_check_in_a_row_over_the_threshold():
    """confirm=2: one check over the threshold alone wakes nothing; the second in a row wakes
    (its margin reported); the count starts again after a check under the threshold and after
    a wake's rest."""
    wake, _ = models()
    feats = np.zeros((60, 40), np.int8)
    cfg = ListenConfig(threshold=5, window=8, stride=2, rest=6, capture=0, confirm=2)
    at = wake_checks(60, cfg)  # 8, 10, ..., 60
    m = np.zeros(len(at), np.int64)
    m[[0, 2, 3, 4, 5, 6, 7, 8, 10]] = [9, 5, 7, 8, 6, 9, 9, 5, 9]  # frames 8, 12-24, 28
    events = listen_frames(wake, None, feats, cfg, margins=m)
    # 8 alone; 12 and 14: a wake at 14 (margin 7); 16-18 rest; 20, 22: a wake at 22; 28 alone
    assert [(e["frame"], e["margin"]) for e in events] == [(14, 7), (22, 9)]
    one = listen_frames(wake, None, feats, ListenConfig(**{**cfg.__dict__, "confirm": 1}), margins=m)
    assert [e["frame"] for e in one] == [8, 14, 20, 28]


@pytest.mark.parametrize("change,message", [
    (dict(window=7), "window=7 must be a positive multiple of the wake model's 2 frames"),
    (dict(stride=0), "stride must be at least 1"),
    (dict(capture=2), "capture=2 is shorter than one step of the command model"),
    (dict(threshold=2**31), "does not fit in int32"),
    (dict(rest=70000), "rest=70000 is not a frame count"),
    (dict(confirm=0), "confirm=0 is not a count of checks"),
])
def test_settings_that_cannot_run_are_refused(change, message):
    wake, command = models()
    with pytest.raises(ListenError, match=message):
        ListenConfig(**{**SMALL, **change}).check(wake, command)


def test_models_that_cannot_listen_together_are_refused():
    wake, command = models()
    other = random_audio_model(1, frames_per_step=4, frontend=FrontendConfig(channels=20), hidden=[8],
                               num_classes=3, name="other")
    with pytest.raises(ListenError, match="different front ends"):
        ListenConfig(**SMALL).check(wake, other)
    with pytest.raises(ListenError, match="has 5 classes; the listener reads two"):
        ListenConfig(**SMALL).check(command, wake)
    with pytest.raises(ListenError, match="capture=12 needs a command model"):
        ListenConfig(**SMALL).check(wake, None)


def _listen_session(dut: HostDut, pcm: np.ndarray, cfg: ListenConfig, sizes) -> tuple[list[dict], list[list[str]]]:
    """`listen set`, then the stream in chunks of the given sizes; the events as the reference
    writes them (labels dropped, logits where the reply carries them)."""
    cmds, marks, i = [f"listen set {cfg.threshold} {cfg.window} {cfg.stride} {cfg.rest} {cfg.capture} {cfg.confirm}"], [], 0
    for n in sizes:
        cmds += _load_cmds(pcm[i:i + n].astype("<i2").tobytes(), 200)
        cmds.append("listen")
        marks.append(len(cmds) - 1)
        i += n
    replies = dut.session(*cmds)
    events = []
    for k in marks:
        r = replies[k]
        got = []
        for line in r:
            if line.startswith(("m-wake-[", "m-command-[")):
                kv = parse_kv(line[line.index("[") + 1:-1])
                e = {"event": line[2:line.index("-[")], "frame": kv["frame"]}
                e.update({"margin": kv["margin"]} if "margin" in kv else {"class": kv["class"]})
                got.append(e)
        commands = [e for e in got if e["event"] == "command"]
        if commands:
            commands[-1]["logits"] = [int(v) for v in _field(r, "logits").split(",")]
        assert parse_kv(_field(r, "listen"))["dropped"] == 0
        events += got
    return events, replies


def _same(device: list[dict], reference: list[dict]) -> None:
    assert event_mismatches(device, reference) == 0, (device, reference)


def test_the_interpreter_listens_as_the_reference_in_any_chunking(tmp_path):
    wake, command = models(3)
    pcm = stream(1)
    cfg = ListenConfig(threshold=0, **SMALL)
    cfg = ListenConfig(threshold=threshold_for(wake, pcm, cfg), **SMALL)
    reference = listen(wake, command, pcm, cfg)
    kinds = [e["event"] for e in reference]
    assert kinds.count("wake") >= 4 and kinds.count("command") >= 3, kinds
    dut = HostDut(command, tmp_path, flags=["-DTINYSEEK_INPUT_SAMPLES=1000"], wake=wake)
    rng = np.random.default_rng(0)
    sizes = []
    while sum(sizes) < len(pcm):
        sizes.append(int(rng.integers(1, 1001)))
    events, replies = _listen_session(dut, pcm, cfg, sizes)
    _same(events, reference)
    assert parse_kv(_field(replies[0], "listen-config")) == {
        "wake": "wake", "threshold": cfg.threshold, "window": 8, "stride": 2, "rest": 6, "capture": 12, "confirm": 1,
        "ring": 50, "hop": 320}
    # hop by hop, as the harness sends it: every command's logits
    events, _ = _listen_session(dut, pcm, cfg, [320] * -(-len(pcm) // 320))
    _same(events, reference)
    assert sum("logits" in e for e in events) == kinds.count("command")
    # two checks in a row to wake: fewer wakes, the same ones in C
    twice = ListenConfig(**{**cfg.__dict__, "confirm": 2})
    reference2 = listen(wake, command, pcm, twice)
    assert 1 <= sum(e["event"] == "wake" for e in reference2) and reference2 != reference
    events, _ = _listen_session(dut, pcm, twice, sizes)
    _same(events, reference2)


def test_the_interpreter_reports_listen_errors(tmp_path):
    wake, command = models(4)
    dut = HostDut(command, tmp_path, wake=wake)
    replies = dut.session("listen", "listen config", "listen set 0 7 2 6 12 1", "listen set 0 52 2 6 12 1",
                          "listen set 0 8 2 6 2 1", "listen set -5 8 2 6 0 3", "listen set x 8 2 6 0 1", "listen set 1 2",
                          "listen louder", "listen reset", "listen set 0 8 2 6 0 0")
    errors = [line for r in replies for line in r if line.startswith("e-[")]
    assert "listen: no input loaded" in errors[0]
    assert parse_kv(_field(replies[1], "listen-config"))["window"] == 50  # the firmware's defaults
    assert "window must be a positive multiple of the wake model's frames per step" in errors[1]
    assert "window is longer than the frame ring" in errors[2]
    assert "capture is shorter than one step of the command model" in errors[3]
    assert {k: v for k, v in parse_kv(_field(replies[5], "listen-config")).items() if k in ("threshold", "confirm")} == \
        {"threshold": -5, "confirm": 3}
    assert "THRESHOLD must be a whole number that fits in int32" in errors[4]
    assert "WINDOW, STRIDE, REST and CAPTURE must be frame counts" in errors[5]
    assert "unknown subcommand louder" in errors[6]
    assert replies[-2] == ["m-listen-reset-done"]
    assert "CONFIRM must be a count of checks from 1 to 255" in errors[7]
    (tmp_path / "alone").mkdir()
    alone = HostDut(command, tmp_path / "alone")
    assert "this firmware has no wake-word model" in alone.session("listen")[0][0]


@pytest.mark.slow
@pytest.mark.parametrize("env", ["qemu_m4", "qemu_m0", "qemu_rv32"])
def test_firmware_listens_bit_exactly(env, tmp_path):
    """Both libraries in the PlatformIO firmware of an emulated board, the stream sent hop by
    hop over the serial line: every wake (frame and margin) and command (frame, class,
    logits) as the reference has them."""
    _need(env)
    wake, command = models(5)
    for m in (wake, command):
        render(m, tmp_path / m.name)
    pcm = stream(2, seconds=2.5)
    cfg = ListenConfig(threshold=0, **SMALL)
    cfg = ListenConfig(threshold=threshold_for(wake, pcm, cfg), **SMALL)
    reference = listen(wake, command, pcm, cfg)
    assert sum(e["event"] == "command" for e in reference) >= 2
    out = run_device_listen(env, tmp_path / "ears", tmp_path / "wake", pcm, cfg, build_dir=tmp_path / "build")
    _same(out["events"], reference)
    assert out["frames"] == len(pcm) // 320 and out["config"]["wake"] == "wake"
    assert len(out["chunks"]) == -(-len(pcm) // 320) and all(c["time"] > 0 for c in out["chunks"])
    assert out["memory"]["wake_model"] > 0 and out["memory"]["elf"]["flash"]["model"] > 0


def test_event_mismatches_counts_every_differing_field_and_the_count():
    ref = [{"event": "wake", "frame": 60, "margin": 131},
           {"event": "command", "frame": 210, "class": 4, "logits": np.array([1, 2, 9], np.int16)}]
    dev = [dict(ref[0]), {**ref[1], "logits": [1, 2, 9], "label": "lights_on"}]  # the device's label is extra
    assert event_mismatches(dev, ref) == 0
    assert event_mismatches([dev[0], {**dev[1], "logits": [1, 3, 9]}], ref) == 1
    assert event_mismatches([{**dev[0], "margin": 130}, dev[1]], ref) == 1
    assert event_mismatches(dev[:1], ref) == 1 and event_mismatches(dev + dev[:1], ref) == 1
