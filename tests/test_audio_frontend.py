"""The fixed-point audio front end: the numpy integer reference against float arithmetic and
against its own streaming form, and the C rendered from templates/audio/ bit for bit against
the reference, on the host (gcc with UBSan and ASan) and on the emulated Arm boards."""
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinyseek.audio import mcu
from tinyseek.audio.codegen import render_frontend
from tinyseek.audio.mcu import ARM_BOARDS
from tinyseek.audio.frontend import (FrontendConfig, FrontendError, StreamingFrontend, features,
                                     float_features)
from tinyseek.codegen.render import GENERATED_MARK

ROOT = Path(__file__).resolve().parents[1]
DRIVERS = ROOT / "tests" / "audio"
SR = 16000
CONFIGS = [FrontendConfig(),
           FrontendConfig(window=400, hop=160, fft=512, channels=32, fmin=60, fmax=8000, log_offset=80),
           FrontendConfig(window=256, hop=256, fft=256, channels=20, fmin=200, fmax=6000)]  # no history


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(16)
    t = np.arange(SR) / SR
    sine = lambda f, a=32767: np.round(a * np.sin(2 * np.pi * f * t)).astype(np.int16)  # noqa: E731
    impulses = np.zeros(SR, np.int16)
    impulses[::777] = 32767
    impulses[5::1234] = -32768
    chirp = np.round(20000 * np.sin(2 * np.pi * (100 * t + 3900 * t * t))).astype(np.int16)
    return {
        "silence": np.zeros(SR, np.int16),
        "sine 1 kHz full scale": sine(1000),
        "sine 7.99 kHz full scale": sine(7990),
        "sine 150 Hz quiet": sine(150, 40),
        "clipped (4x full scale)": np.clip(np.round(4 * 32767 * np.sin(2 * np.pi * 440 * t)), -32768, 32767)
        .astype(np.int16),
        "square -32768/32767": np.where(np.sin(2 * np.pi * 300 * t) >= 0, 32767, -32768).astype(np.int16),
        "dc -32768": np.full(SR, -32768, np.int16),
        "white noise full scale": rng.integers(-32768, 32768, SR).astype(np.int16),
        "white noise quiet": np.round(rng.normal(0, 3, SR)).astype(np.int16),
        "impulses": impulses,
        "chirp": chirp,
        "odd length": rng.integers(-3000, 3000, 5 * 320 + 77).astype(np.int16),
    }


def test_streaming_frames_equal_the_whole_clip():
    cfg = FrontendConfig()
    x = _signals()["chirp"][:20 * cfg.hop]
    stream = StreamingFrontend(cfg)
    got = np.stack([stream.frame(x[i:i + cfg.hop]) for i in range(0, len(x), cfg.hop)])
    assert np.array_equal(got, features(x, cfg))
    assert stream.history.shape == (cfg.window - cfg.hop,)  # all it keeps between frames


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "25ms", "nohistory"])
def test_integers_track_exact_arithmetic(cfg):
    """Wherever the energy is well above the FFT's rounding noise (energy > 2^24, i.e. |X| >
    about 2^8 per bin, 84 dB under a full-scale sine's peak) and not clamped, the int8
    feature is the float pipeline's value rounded, give or take one quarter-octave step."""
    for name, x in _signals().items():
        got = features(x, cfg).astype(np.int64)
        want = float_features(x, cfg)
        assert got.shape == want.shape == (len(x) // cfg.hop, cfg.channels)
        ok = (want + cfg.log_offset > 96) & (want < 126)  # energy > 2^24
        assert np.abs(got[ok] - want[ok]).max(initial=0) <= 1, name
        if name == "silence":
            assert (got == -128).all()


def test_a_sine_peaks_in_the_channel_that_holds_its_frequency():
    cfg = FrontendConfig()
    t = cfg.tables
    for f in (200, 1000, 3000, 7000):
        x = np.round(16000 * np.sin(2 * np.pi * f * np.arange(SR) / SR)).astype(np.int16)
        peak = int(np.argmax(features(x, cfg)[10]))
        k = round(f * cfg.fft / SR)
        assert t["mel_start"][peak] <= k < t["mel_start"][peak] + t["mel_length"][peak], f


@pytest.mark.parametrize("kw, words", [({"fft": 500}, "power of two"), ({"hop": 600}, "hop <= window"),
                                       ({"fft": 64, "window": 64, "hop": 32, "channels": 60}, "covers no FFT bin"), ({"fmax": 9000}, "sample_rate/2")])
def test_bad_configurations_say_what_to_change(kw, words):
    with pytest.raises(FrontendError, match=words):
        FrontendConfig(**kw).tables


def test_bad_samples_are_refused():
    with pytest.raises(FrontendError, match="int16"):
        features(np.zeros(1000, np.float32))
    with pytest.raises(FrontendError, match="exactly hop"):
        StreamingFrontend().frame(np.zeros(100, np.int16))


def test_rendering_is_deterministic_and_stamped(tmp_path):
    a = render_frontend(CONFIGS[0], tmp_path / "a")
    b = render_frontend(CONFIGS[0], tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert all(GENERATED_MARK in p.read_text() and CONFIGS[0].digest in p.read_text() for p in a)
    c = render_frontend(CONFIGS[1], tmp_path / "c")
    assert c[1].read_bytes() != a[1].read_bytes()


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "25ms", "nohistory"])
def test_host_c_is_bit_exact(cfg, tmp_path, need_tools):
    need_tools({"gcc": "sudo apt-get install -y gcc"}, pio=False)
    render_frontend(cfg, tmp_path)
    exe = tmp_path / "fe"
    subprocess.run(["gcc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wconversion",
                    "-fsanitize=undefined,address", "-fno-sanitize-recover=all", "-I", str(tmp_path),
                    str(tmp_path / "audio_frontend.c"), str(DRIVERS / "frontend_host.c"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    for name, x in _signals().items():
        proc = subprocess.run([str(exe)], input=x.astype("<i2").tobytes(), capture_output=True, check=True)
        got = np.frombuffer(proc.stdout, np.int8).reshape(-1, cfg.channels)
        assert np.array_equal(got, features(x, cfg)), name


# The NEON FFT on Linux-class Arm cores, under qemu-user: (compiler, its flags, qemu, an instruction
# only the NEON variant has, the objdump that reads it).
NEON_TARGETS = {
    "aarch64": ("aarch64-linux-gnu-gcc", ["-march=armv8-a"], "qemu-aarch64", "ld4", "aarch64-linux-gnu-objdump"),
    "armv7": ("arm-linux-gnueabihf-gcc", ["-march=armv7-a", "-mfpu=neon", "-mfloat-abi=hard"], "qemu-arm", "vld4.32",
              "arm-linux-gnueabihf-objdump"),
}


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "25ms", "nohistory"])
@pytest.mark.parametrize("target", sorted(NEON_TARGETS))
def test_neon_c_is_bit_exact(target, cfg, tmp_path, need_tools):
    cc, flags, qemu, mark, objdump = NEON_TARGETS[target]
    need_tools({cc: "sudo apt-get install -y gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf",
                qemu: "sudo apt-get install -y qemu-user"}, pio=False)
    render_frontend(cfg, tmp_path)
    exe = tmp_path / "fe"
    subprocess.run([cc, *flags, "-static", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(tmp_path),
                    str(tmp_path / "audio_frontend.c"), str(DRIVERS / "frontend_host.c"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    assert mark in subprocess.run([objdump, "-d", str(exe)], capture_output=True, text=True, check=True).stdout
    for name, x in _signals().items():
        proc = subprocess.run([qemu, str(exe)], input=x.astype("<i2").tobytes(), capture_output=True, check=True)
        got = np.frombuffer(proc.stdout, np.int8).reshape(-1, cfg.channels)
        assert np.array_equal(got, features(x, cfg)), name


# The FFT variant each board builds, by an instruction only that variant has (and objdump's
# architecture option that decodes it).
VARIANT_MARK = {"qemu_m4": ("smusd", []), "qemu_m7": ("smusd", []), "qemu_m55": ("vld40.32", ["-marmv8.1-m.main"])}


@pytest.mark.slow
@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "25ms", "nohistory"])
@pytest.mark.parametrize("env", sorted(ARM_BOARDS))
def test_c_is_bit_exact_on_the_emulated_arm_boards(env, cfg, tmp_path, need_tools):
    need_tools({"arm-none-eabi-gcc": "sudo apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi",
                "qemu-system-arm": "sudo apt-get install -y qemu-system-arm"}, pio=False)
    x = np.concatenate([s[:8 * cfg.hop] for s in _signals().values()])
    elf = mcu.build(env, x, tmp_path, cfg)
    mark, arch = VARIANT_MARK[env]
    code = subprocess.run(["arm-none-eabi-objdump", "-d", *arch, str(elf)], capture_output=True, text=True,
                          check=True).stdout
    assert mark in code
    got, ticks = mcu.run(env, elf)
    assert len(ticks) == len(x) // cfg.hop and min(ticks) > 0
    assert np.array_equal(got, features(x, cfg))
