"""The other emulated boards (Cortex-M7, Cortex-M55, RISC-V rv32imc, the STM32F405 and nRF51 real-chip
machines): the same firmware and the same generated library reproduce the integer oracle bit for
bit on each, through run_device_bench (PlatformIO build, QEMU, the serial protocol); the
bare-metal NUCLEO-F446RE build."""
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyseek.codegen.render import render
from tinyseek.harness.bench import BuildError, build_firmware, run_device_bench
from tinyseek.harness.boards import load_profile
from tinyseek.quant.reference import infer_tokens, probabilities_text
from tinyseek.quant.synthetic import random_model, random_token_ids
from tinyseek.student.tokenizer import HashTokenizer

TOOLS = {
    "qemu_m7": {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi", "qemu-system-arm": "qemu-system-arm"},
    "qemu_m55": {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi", "qemu-system-arm": "qemu-system-arm"},
    "qemu_stm32f4": {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi", "qemu-system-arm": "qemu-system-arm"},
    "qemu_m0": {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi", "qemu-system-arm": "qemu-system-arm"},
    "qemu_m4": {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi", "qemu-system-arm": "qemu-system-arm"},
    "nucleo_f446re": {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi"},
    "qemu_esp8266": {"xtensa-lx106-elf-gcc": "gcc-xtensa-lx106 picolibc-xtensa-lx106-elf",
                     "qemu-system-xtensa": "qemu-system-misc"},
    "qemu_rv32": {"riscv64-unknown-elf-gcc": "gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf",
                  "qemu-system-riscv32": "qemu-system-misc"},
}
# The last two do not fit one command line: the harness tokenizes them on the host.
TEXTS = ["turn off the bedroom lights", "明天天气怎么样", "play some jazz, please!", "lights " * 90, "!? " * 200]


def _need(env):
    missing = [f"{tool} (install: sudo apt-get install -y {pkg})" for tool, pkg in TOOLS[env].items()
               if shutil.which(tool) is None]
    if not Path(sys.executable).with_name("pio").is_file() and shutil.which("pio") is None:
        missing.append("pio (install: .venv/bin/pip install platformio scons)")
    if missing:
        msg = f"{env} needs: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def text_lib(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("boards")
    model = random_model(31, kind="text", hidden=[12, 9], input_size=7, num_classes=6, vocab_size=900, max_len=14,
                         name="brd")
    render(model, tmp / "brd")
    return model, tmp


@pytest.mark.parametrize("env", ["qemu_m7", "qemu_m55", "qemu_rv32", "qemu_stm32f4", "qemu_m0", "qemu_esp8266"])
def test_board_reproduces_the_oracle(env, text_lib, tmp_path):
    _need(env)
    model, tmp = text_lib
    ids = [x for x in random_token_ids(model, np.random.default_rng(8), 6, model.max_len) if x]
    out = run_device_bench(env, tmp / "brd", TEXTS + ids, build_dir=tmp_path / "build")
    tok = HashTokenizer(model.vocab_size, model.max_len)
    want = infer_tokens(model, [tok.encode(t) for t in TEXTS] + ids)
    assert out["logits"] == want.tolist()
    # m-results: the class probabilities of the integer reference, digit for digit
    assert out["results_text"] == [probabilities_text(model, w) for w in want]
    profile = load_profile(env)
    assert (out["cpu"], out["timer"]["unit"]) == (profile.cpu, "instructions")
    assert out["input_modes"] == ["text", "token_ids"]
    assert out["latency"]["min"] > 0 and out["memory"]["stack_peak"] > 0
    assert out["memory"]["elf"]["flash"]["model"] > 0


def test_stm32f4_port_counts_the_same_instructions_as_the_m4(text_lib, tmp_path):
    """netduinoplus2 runs its core at 168 MHz: 125/21 instructions per SysTick tick, converted by
    the port's long division. The same DSP kernels on mps2-an386 (40 instructions per tick) must
    give the same count to within one tick of each, and both reproduce the oracle."""
    _need("qemu_stm32f4")
    model, tmp = text_lib
    ids = [x for x in random_token_ids(model, np.random.default_rng(3), 5, model.max_len) if x]
    f4 = run_device_bench("qemu_stm32f4", tmp / "brd", ids, build_dir=tmp_path / "f4")
    m4 = run_device_bench("qemu_m4", tmp / "brd", ids, build_dir=tmp_path / "m4")
    assert f4["logits"] == m4["logits"] == infer_tokens(model, ids).tolist()
    assert (f4["board"], f4["timer"]["clock_hz"], f4["model"]["kernel"]) == ("stm32f405rg", 168_000_000, "dsp")
    for a, b in zip(f4["latency"]["per_input"], m4["latency"]["per_input"]):
        assert abs(a - b) <= 48, (a, b)


def test_stm32f4_energy_build_runs_bit_exact(text_lib, tmp_path):
    """The MLPerf Tiny energy build of the STM32F4 port (the IO Manager's USART at 9600 baud, the
    open-drain timestamp pin PA8; QEMU models neither baud rates nor GPIO): it boots in energy
    mode and reproduces the oracle; the performance build's laps are gone from its image."""
    _need("qemu_stm32f4")
    model, tmp = text_lib
    ids = [x for x in random_token_ids(model, np.random.default_rng(4), 4, model.max_len) if x]
    out = run_device_bench("qemu_stm32f4", tmp / "brd", ["lights on"] + ids, build_dir=tmp_path / "f4e",
                           extra_flags=["-DTINYSEEK_ENERGY_MODE=1"])
    tok = HashTokenizer(model.vocab_size, model.max_len)
    assert out["logits"] == infer_tokens(model, [tok.encode("lights on")] + ids).tolist()
    assert out["timer"]["timestamps"] == "energy"
    image = Path(out["elf"]).read_bytes()
    assert b"m-timestamp-mode-energy" in image and b"m-lap-us-" not in image


def test_energy_build_of_a_board_without_a_timestamp_pin_fails_clearly(text_lib, tmp_path):
    _need("qemu_m4")
    _, tmp = text_lib
    with pytest.raises(BuildError, match="no timestamp pin"):
        build_firmware("qemu_m4", tmp / "brd", build_dir=tmp_path / "m4e", extra_flags=["-DTINYSEEK_ENERGY_MODE=1"])


def test_m0_fits_its_16k_ram(text_lib, tmp_path):
    """The nRF51 build: the ARMv6-M kernels (no DSP instructions), the firmware within 16 KiB of RAM."""
    _need("qemu_m0")
    model, tmp = text_lib
    out = run_device_bench("qemu_m0", tmp / "brd", ["lights on"], build_dir=tmp_path / "m0")
    assert (out["cpu"], out["model"]["kernel"]) == ("cortex-m0", "v6m")
    ram = out["memory"]["elf"]["ram"]
    assert ram["static"] + out["memory"]["device"]["stack_size"] <= 16 * 1024
    assert 0 < out["memory"]["stack_peak"] < out["memory"]["device"]["stack_size"]


def test_nucleo_f446re_builds_offline_as_a_bootable_image(text_lib, tmp_path):
    """The real-board STM32F4 env needs no registry: the project's platform and Debian's compiler
    build an image whose vector table sits at the start of the F446's flash (0x08000000), with
    the DWT cycle counter as its timer, and a raw image for st-flash beside it."""
    _need("nucleo_f446re")
    _, tmp = text_lib
    elf = build_firmware("nucleo_f446re", tmp / "brd", build_dir=tmp_path / "nucleo")
    image = elf.with_name("firmware.bin").read_bytes()
    sp, reset = struct.unpack("<II", image[:8])
    assert 0x20000000 < sp <= 0x20000000 + 128 * 1024 and sp % 8 == 0
    assert 0x08000000 < reset < 0x08000000 + len(image) and reset & 1  # a Thumb address in the image
    assert b"dwt-cyccnt" in image and b"systick-icount" not in image


def test_esp8266_build_packs_into_a_valid_flash_image(text_lib, tmp_path):
    """The qemu_esp8266 ELF without the emulator's reset stub is what a board would get:
    esptool's elf2image packs it and image-info reads back an IRAM and a DRAM segment, the entry
    in IRAM and a valid checksum."""
    _need("qemu_esp8266")
    try:
        import esptool  # noqa: F401
    except ImportError:
        msg = "esptool is not installed; install it with: .venv/bin/pip install 'esptool>=5,<6'"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    _, tmp = text_lib
    elf = build_firmware("qemu_esp8266", tmp / "brd", build_dir=tmp_path / "esp")
    board_elf = tmp_path / "board.elf"
    subprocess.run(["xtensa-lx106-elf-objcopy", "--remove-section", ".sim_reset", str(elf), str(board_elf)],
                   check=True, capture_output=True)
    esptool = [sys.executable, "-m", "esptool", "--chip", "esp8266"]
    subprocess.run(esptool + ["elf2image", "--output", str(tmp_path / "fw-"), str(board_elf)], check=True,
                   capture_output=True)
    image = tmp_path / "fw-0x00000.bin"
    info = subprocess.run(esptool + ["image-info", str(image)], check=True, capture_output=True, text=True).stdout
    assert "Checksum" in info and "(valid)" in info
    assert re.search(r"Entry point: 0x401[0-9a-f]{5}", info)
    segments = re.findall(r"^\s+\d+\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s+(\w+)", info, re.M)
    assert [(int(a, 16) >> 20, kind) for a, kind in segments] == [(0x401, "IRAM"), (0x3FF, "DRAM")]
