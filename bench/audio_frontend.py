"""The fixed-point audio front end on the emulated Arm boards: instructions per 20 ms frame
(QEMU -icount counts instructions, not cycles) of the FFT variant each board builds (Cortex-M
DSP, Helium) and of the portable C, the share of a real-time budget, code and table bytes, RAM.
Writes bench/results/audio_frontend.json and a table in bench/RESULTS.md.

    .venv/bin/python bench/audio_frontend.py [--envs qemu_m4,qemu_m7,qemu_m55]

Input: 1 s of a chirp with noise (50 frames), streamed hop by hop; every frame's features are
also checked against the integer reference (tinyseek.audio.frontend), in both builds.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from tinyseek.audio import mcu  # noqa: E402
from tinyseek.audio.frontend import FrontendConfig, features  # noqa: E402

from results_md import replace_section  # noqa: E402

# The FFT variant each board's build selects (templates/audio/frontend.c.j2).
VARIANTS = {"qemu_m4": "Cortex-M DSP", "qemu_m7": "Cortex-M DSP", "qemu_m55": "Helium"}
HEADING = "## Audio front end on the emulated boards (`python bench/audio_frontend.py`)"
RESULTS_JSON = ROOT / "bench" / "results" / "audio_frontend.json"


def front_end_bytes(map_file: Path) -> dict:
    """Bytes of the front end's kept .text (code) and .rodata (tables) input sections."""
    text = map_file.read_text()
    text = text[text.index("Linker script and memory map"):]
    out = {"code": 0, "tables": 0}
    for m in re.finditer(r"^ (\.(?:text|rodata)\S*)\s*\n?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+)", text, re.M):
        if "audio_frontend" in m.group(4):
            out["code" if m.group(1).startswith(".text") else "tables"] += int(m.group(3), 16)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", default="qemu_m4,qemu_m7,qemu_m55")
    args = ap.parse_args()
    cfg = FrontendConfig()
    t = np.arange(16000) / 16000
    rng = np.random.default_rng(0)
    x = np.round(12000 * np.sin(2 * np.pi * (100 * t + 3900 * t * t)) + rng.normal(0, 300, len(t))).astype(np.int16)
    want = features(x, cfg)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for env in args.envs.split(","):
            clock = int(mcu.board(env)["f_cpu"].rstrip("L"))
            results[env] = {"variant": VARIANTS[env]}
            for build, defines in (("board", ()), ("portable", ("TINYSEEK_KERNEL_PORTABLE",))):
                work = Path(tmp) / env / build
                got, ticks = mcu.run(env, mcu.build(env, x, work, defines=defines))
                if not np.array_equal(got, want):
                    raise SystemExit(f"{env} ({build}): the features differ from the integer reference")
                per_frame = float(np.median(ticks)) * 1e9 / clock
                per_second = per_frame * 16000 / cfg.hop
                results[env][build] = {"instructions_per_frame": round(per_frame), "instructions_per_second": round(per_second),
                                       "share_of_160MHz": per_second / 160e6, "bytes": front_end_bytes(work / "frontend.map")}
            results[env].update(state_bytes=2 * (cfg.window - cfg.hop), scratch_bytes=4 * 2 * cfg.fft)
            print(env, json.dumps(results[env]))
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps({"config": asdict(cfg), "envs": results}, indent=2) + "\n")
    def row(e: str, r: dict) -> str:
        b, p = r["board"], r["portable"]
        return (f"| {e} | {r['variant']} | {b['instructions_per_frame']:,} | {p['instructions_per_frame']:,} | "
                f"{100 * (1 - b['instructions_per_frame'] / p['instructions_per_frame']):.0f} % | "
                f"{b['instructions_per_second'] / 1e6:.2f} M | {100 * b['share_of_160MHz']:.2f} % | "
                f"{b['bytes']['code']:,} ({p['bytes']['code']:,}) | {b['bytes']['tables']:,} |")
    rows = "\n".join(row(e, r) for e, r in results.items())
    replace_section(HEADING, f"""{HEADING}

The front end of docs/numerics.md (30 ms windows every 20 ms, 512-point radix-2 FFT in int32 computed
in radix-4 passes, 40 mel channels), `-O2`, 1 s of a noisy chirp streamed frame by frame, bit-exact against
the integer reference on every board in both builds: the FFT variant the board's build selects
(Cortex-M DSP: SMUSD/SMUADX on split halfword pairs; Helium: four butterflies a vector) and the
portable C (`-DTINYSEEK_KERNEL_PORTABLE`). QEMU counts instructions, not cycles: "share" is
instructions per second of audio over a 160 MHz clock, a lower bound on the real load (an
instruction takes a cycle or more). RAM: 320 B of state kept between frames, 4,096 B of scratch
free between frames, as on every board.

| board | FFT variant | instructions per frame | portable C | fewer | per second of audio | share of 160 MHz | code (B) (portable) | tables (B) |
|---|---|---|---|---|---|---|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
