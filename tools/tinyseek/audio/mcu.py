"""Run the rendered front end on an emulated Arm board (QEMU mps2-an386 / an500, mps3-an547)
through a small bare-metal driver (tests/audio/frontend_mcu.c): features and SysTick ticks per
frame. Used by tests/test_audio_frontend.py and bench/audio_frontend.py."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np

from .codegen import render_frontend
from .frontend import FrontendConfig

ROOT = Path(__file__).resolve().parents[3]
DRIVER = ROOT / "tests" / "audio" / "frontend_mcu.c"
PLATFORM = ROOT / "firmware" / "platform" / "tinyseek-qemu"
ARM_BOARDS = {"qemu_m4": "qemu_mps2_an386", "qemu_m7": "qemu_mps2_an500", "qemu_m55": "qemu_mps3_an547"}


def board(env: str) -> dict:
    return json.loads((PLATFORM / "boards" / f"{ARM_BOARDS[env]}.json").read_text())["build"]


def build(env: str, samples: np.ndarray, work: Path, cfg: FrontendConfig = FrontendConfig(),
          defines: tuple[str, ...] = ()) -> Path:
    """The driver and the front end, with `samples` compiled in, as an ELF for `env`; `defines`
    are passed as -D (TINYSEEK_KERNEL_PORTABLE builds the portable C FFT)."""
    b = board(env)
    work.mkdir(parents=True, exist_ok=True)
    render_frontend(cfg, work)
    (work / "frontend_input.h").write_text(
        "#include <stdint.h>\n"
        f"#define NUM_SAMPLES {len(samples)}u\n#define UART_BASE {b['uart_base']}u\n"
        f"static const int16_t samples[NUM_SAMPLES] = {{{','.join(map(str, np.asarray(samples).tolist()))}}};\n")
    elf, obj = work / "frontend.elf", work / "audio_frontend.o"
    flags = [*b["cpu_flags"], "--specs=nano.specs", "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror",
             "-ffunction-sections", "-fdata-sections", *(f"-D{d}" for d in defines), "-I", str(work)]
    for cmd in (["arm-none-eabi-gcc", *flags, "-c", str(work / "audio_frontend.c"), "-o", str(obj)],
                ["arm-none-eabi-gcc", *flags, "--specs=nosys.specs", "-nostartfiles", "-Wl,--gc-sections",
                 f"-L{PLATFORM / 'ldscripts'}", "-T", b["ldscript"], f"-Wl,-Map={work / 'frontend.map'}", str(obj),
                 str(DRIVER), "-o", str(elf)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"building the front-end driver for {env} failed:\n{proc.stderr[-3000:]}")
    return elf


def run(env: str, elf: Path) -> tuple[np.ndarray, list[int]]:
    """(features int8 [frames, channels], SysTick ticks per frame) printed by the driver."""
    b = board(env)
    proc = subprocess.run(["qemu-system-arm", "-M", b["qemu_machine"], "-nographic", "-monitor", "none",
                           "-serial", "stdio", "-semihosting-config", "enable=on,target=native",
                           "-icount", "shift=0,align=off,sleep=off", "-kernel", str(elf)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise RuntimeError(f"the front-end driver failed on {env} (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    rows = [[int(v) for v in m.group(1).split()] for m in re.finditer(r"^f (.*?)\s*$", proc.stdout, re.M)]
    return np.array([r[1:] for r in rows], np.int8), [r[0] for r in rows]
