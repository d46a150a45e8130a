"""An audio model's library: the front end inside it (`<name>_feed_audio` on int16 samples), bit
for bit against the integer reference (front end, frames stacked k to a step, the LSTM) on the
host under ASan/UBSan, through the serial interpreter on the host, and in the firmware on the
emulated boards, the clip streamed chunk by chunk over the serial protocol."""
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from test_firmware_boards import _need
from test_firmware_protocol import HostDut, _field, _load_cmds
from tinyseek.audio.frontend import FrontendConfig
from tinyseek.codegen.render import render
from tinyseek.codegen.verify import VerifyError, verify_audio_host
from tinyseek.harness.bench import run_device_bench
from tinyseek.harness.device import audio_timing
from tinyseek.harness.protocol import parse_ints, parse_kv
from tinyseek.quant.model import ModelFileError, QuantModel
from tinyseek.quant.reference import audio_inputs, infer_audio
from tinyseek.quant.synthetic import random_audio_model

ROOT = Path(__file__).resolve().parents[1]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def audio_model(seed: int, frames_per_step: int = 4, fe: FrontendConfig = FrontendConfig()):
    return random_audio_model(seed, frames_per_step=frames_per_step, frontend=fe, hidden=[16, 12], num_classes=5,
                              name="ears")


def clips(seed: int = 0) -> list[np.ndarray]:
    """Noise, a chirp, full-scale extremes, and lengths that end inside a hop and inside a step."""
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    chirp = np.round(20000 * np.sin(2 * np.pi * (100 * t + 3000 * t * t))).astype(np.int16)
    return [rng.integers(-8000, 8000, 16000).astype(np.int16), chirp,
            np.where(rng.random(9 * 320 + 5) < 0.5, -32768, 32767).astype(np.int16),
            rng.integers(-300, 300, 100).astype(np.int16), np.zeros(4 * 320, np.int16)]


def test_the_model_file_keeps_the_front_end_and_refuses_a_mismatch(tmp_path):
    m = audio_model(1)
    m.save(tmp_path / "m")
    back = QuantModel.load(tmp_path / "m")
    assert back.audio == m.audio and back.frontend == FrontendConfig() and back.model_hash() == m.model_hash()
    m.audio = {"frontend": asdict(FrontendConfig()), "frames_per_step": 3}  # 3 x 40 != 160 features
    with pytest.raises(ModelFileError, match="num_features 160 is not frames_per_step 3 x 40"):
        m.validate()
    m.audio = {"frontend": {**asdict(FrontendConfig()), "fft": 500}, "frames_per_step": 4}
    with pytest.raises(ModelFileError, match="fft = 500"):
        m.validate()


@pytest.mark.parametrize("k,fe", [(4, FrontendConfig()), (1, FrontendConfig(window=256, hop=256, fft=256,
                                                                            channels=20, fmin=200, fmax=6000))],
                         ids=["default", "one-frame-steps-no-history"])
def test_feed_audio_matches_the_reference_in_any_chunking(tmp_path, k, fe):
    m = audio_model(3, k, fe)
    lib = tmp_path / m.name
    files = {p.name for p in render(m, lib)}
    assert {"ears_frontend.h", "ears_frontend.c"} <= files
    xs = clips()
    result = verify_audio_host(m, lib, xs, cflags=("-g", *SANITIZE))
    assert result.bitexact and result.samples == len(xs), result.first_mismatch
    assert np.array_equal(result.logits, infer_audio(m, xs))


def test_verify_audio_host_catches_a_wrong_library(tmp_path):
    """A library from another model is refused by its hash; one whose front end differs (log
    offset one step off) under the right hash, as a hand edit would leave it, fails the check."""
    m, other = audio_model(3), audio_model(3)
    other.audio = {**other.audio, "frontend": {**other.audio["frontend"], "log_offset": 95}}
    lib = tmp_path / m.name
    render(other, lib)
    with pytest.raises(VerifyError, match="generated from model hash"):
        verify_audio_host(m, lib, clips()[:1])
    for f in lib.iterdir():
        f.write_text(f.read_text().replace(other.model_hash(), m.model_hash()))
    result = verify_audio_host(m, lib, clips()[:2])
    assert not result.bitexact and result.mismatches >= 1
    assert result.first_mismatch["path"] == "logits of feed_audio in chunks"


def test_the_interpreter_streams_samples_and_reports_an_audio_model(tmp_path):
    m = audio_model(5)
    dut = HostDut(m, tmp_path)
    x = clips()[1][:12 * 320]
    hops = [x[i:i + 320] for i in range(0, len(x), 320)]
    cmds = ["info"]
    for hop in hops:
        cmds += _load_cmds(hop.astype("<i2").tobytes(), 120) + ["stream"]
    cmds += ["reset"] + _load_cmds(x[:320].astype("<i2").tobytes(), 120) + ["infer 1 0", "db load 641", "db load 3",
                                                                             "db 010203", "stream", "cls on"]
    replies = dut.session(*cmds)
    info = parse_kv(_field(replies[0], "info"))
    assert info["kind"] == "audio" and info["buffer"] == 640  # one hop of int16 samples
    streamed = [parse_ints(_field(r, "logits")) for r in replies if any(s.startswith("m-logits") for s in r)]
    assert streamed[len(hops) - 1] == infer_audio(m, [x])[0].tolist()
    assert streamed[len(hops)] == infer_audio(m, [x[:320]])[0].tolist()  # infer resets first
    errors = [line for r in replies[-5:] for line in r if line.startswith("e-[")]
    assert "exceed the input buffer of 640 bytes" in errors[0]
    assert "samples are int16 little-endian, 2 bytes each; 3 bytes is odd" in errors[1]
    assert "this is an audio model; load int16 samples" in errors[2]


@pytest.mark.slow
@pytest.mark.parametrize("env", ["qemu_m4", "qemu_m7", "qemu_m55", "qemu_stm32f4", "qemu_m0", "qemu_rv32", "qemu_esp8266"])
def test_firmware_hears_clips_bit_exactly(env, tmp_path):
    """The PlatformIO firmware with the audio library on an emulated board: each clip streamed
    hop by hop over the serial line; every logit equals the reference's."""
    _need(env)
    m = audio_model(7)
    render(m, tmp_path / m.name)
    xs = [c for c in clips(1) if len(c) >= 1280][:3]
    out = run_device_bench(env, tmp_path / m.name, xs, build_dir=tmp_path / "build")
    assert out["model"]["kind"] == "audio" and out["input_modes"] == ["audio"]
    assert out["logits"] == infer_audio(m, xs).tolist()
    assert [len(c) for c in out["audio_chunks"]] == [-(-len(x) // 320) for x in xs]
    timing = audio_timing({**out, "latency": out["latency"]}, [len(x) for x in xs], 16000, 160e6)
    assert 0 < timing["after_last_sample"]["value"] <= timing["worst_chunk"]["value"]


def test_audio_timing_and_its_report_rows():
    """Two clips of 0.1 s streamed in 20 ms chunks: cost per second of audio, the last chunk as
    the latency after the last sample, the slowest chunk; the report prints them."""
    from test_report import _report
    from tinyseek.harness.report import render_markdown
    result = {"audio_chunks": [[100, 100, 100, 100, 500], [100, 100, 100, 300, 300]], "audio_chunk_samples": 320,
              "latency": {"unit": "instructions"}}
    a = audio_timing(result, [1600, 1600], 16000, 1e6)
    assert a["per_second_of_audio"] == pytest.approx((9000 + 9000) / 2)
    assert a["after_last_sample"]["value"] == 400 and a["worst_chunk"]["value"] == 500
    assert a["share_of_clock"] == pytest.approx(0.009) and a["after_last_sample"]["ms_at_clock"] == pytest.approx(0.4)
    device = {"target": "qemu_m4", "board": "b", "cpu": "c", "emulated": True, "samples": 2, "mismatches": 0,
              "accuracy": 0.5, "kernel": "dsp", "energy_uj_estimate": 1.0, "audio": a,
              "latency": {"value": 1, "p99": 1, "unit": "instructions", "timer": "t", "clock_hz": 1e6,
                          "ms_at_clock": 1, "note": "n"},
              "memory": {"flash_model": 1, "flash_runtime": 1, "ram_static": 1, "stack_peak": 1}}
    text = render_markdown({**_report({"samples": 0}), "device": device})
    assert "| per second of audio (front end + LSTM), share of 1 MHz | 9,000 instructions, 0.9 % |" in text
    assert "| last sample to decision, median (at 1 MHz) | 400 instructions (0.40 ms) |" in text


def _wav(path: Path, samples: np.ndarray, rate: int = 16000, channels: int = 1, width: int = 2) -> Path:
    import wave
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def test_the_linux_runtime_classifies_wav_files_like_the_reference(tmp_path):
    """runtime/linux's classify on an audio model: WAV files (and raw samples on stdin) through
    feed_audio, logits equal to the integer reference; a clip in another format is refused with
    the sox conversion, and the other files are still classified."""
    import subprocess
    import shutil
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc and make are needed")
    model = audio_model(5)
    render(model, tmp_path / "lib")
    subprocess.run(["make", "-s", "-C", str(Path(__file__).resolve().parents[1] / "runtime" / "linux"),
                    f"MODEL_DIR={tmp_path / 'lib'}", f"BUILD={tmp_path / 'build'}", "CC=gcc",
                    "CFLAGS=-O1 -Werror"], check=True, capture_output=True, text=True)
    exe = str(tmp_path / "build" / "classify")
    some = clips(3)[:3]
    files = [str(_wav(tmp_path / f"{k}.wav", c)) for k, c in enumerate(some)]
    out = subprocess.run([exe, *files], capture_output=True, text=True, check=True).stdout
    want = infer_audio(model, some)
    rows = [line.split("\t") for line in out.splitlines()]
    assert [[int(v) for v in r[2].split()] for r in rows] == want.tolist()
    assert [int(r[1]) for r in rows] == np.argmax(want, axis=1).tolist()
    raw = subprocess.run([exe, "-"], input=some[0].astype("<i2").tobytes(), capture_output=True, check=True).stdout
    assert [int(v) for v in raw.decode().split("\t")[2].split()] == want[0].tolist()
    stereo = _wav(tmp_path / "stereo.wav", np.repeat(some[0], 2), channels=2)
    slow = _wav(tmp_path / "8k.wav", some[0], rate=8000)
    (tmp_path / "not.wav").write_bytes(b"hello")
    bad = subprocess.run([exe, str(stereo), files[1], str(slow), str(tmp_path / "not.wav")], capture_output=True,
                         text=True)
    assert bad.returncode == 2
    assert [int(v) for v in bad.stdout.split("\t")[2].split()] == want[1].tolist()  # the good clip still counts
    assert "2-channel" in bad.stderr and "8000 Hz" in bad.stderr and "sox IN.wav -r 16000 -c 1" in bad.stderr
    assert "not.wav is not a WAV file" in bad.stderr
