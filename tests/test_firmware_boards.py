"""The other emulated boards (Cortex-M7, Cortex-M55, RISC-V rv32imc): the same firmware and the
same generated library reproduce the integer oracle bit for bit on each, through
run_device_bench (PlatformIO build, QEMU, the serial protocol)."""
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyseek.codegen.render import render
from tinyseek.harness.bench import run_device_bench
from tinyseek.harness.boards import load_profile
from tinyseek.quant.reference import infer_tokens, probabilities_text
from tinyseek.quant.synthetic import random_model, random_token_ids
from tinyseek.student.tokenizer import HashTokenizer

TOOLS = {
    "qemu_m7": {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi", "qemu-system-arm": "qemu-system-arm"},
    "qemu_m55": {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi", "qemu-system-arm": "qemu-system-arm"},
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


@pytest.mark.parametrize("env", ["qemu_m7", "qemu_m55", "qemu_rv32"])
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
