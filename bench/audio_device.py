"""A whole audio model on the emulated boards: the firmware with the generated library (front end
+ int8 TinyLSTM of the audio student's default shape), each clip streamed hop by hop over the
serial protocol as `tinyseek bench` does. Per board: bit-exact against the integer reference,
instructions per second of audio and their share of the reference clock, the time from the last
sample to the decision, the slowest hop, flash, static RAM and stack. Writes
bench/results/audio_device.json and a table in bench/RESULTS.md.

    .venv/bin/python bench/audio_device.py [--envs qemu_m4,qemu_m7,qemu_m55,qemu_rv32] [--clips 3]

The model's weights are random (seeded): instruction counts depend on its shape (hidden 64,
4 frames of 40 a step, 15 classes, as `task.kind = "audio"` trains it), not on its values.
The clips are 3 s of a noisy chirp with pauses, the built-in clips' length.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from tinyseek.audio.frontend import FrontendConfig  # noqa: E402
from tinyseek.codegen.render import render  # noqa: E402
from tinyseek.harness.bench import run_device_bench  # noqa: E402
from tinyseek.harness.boards import load_profile  # noqa: E402
from tinyseek.harness.device import audio_timing  # noqa: E402
from tinyseek.quant.reference import infer_audio  # noqa: E402
from tinyseek.quant.synthetic import random_audio_model  # noqa: E402

from results_md import replace_section  # noqa: E402

HEADING = "## Audio model on the emulated boards (`python bench/audio_device.py`)"
RESULTS_JSON = ROOT / "bench" / "results" / "audio_device.json"
HIDDEN, FRAMES_PER_STEP, CLASSES, CLIP = 64, 4, 15, 48000


def test_clips(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(CLIP) / 16000
    out = []
    for i in range(n):
        tone = 12000 * np.sin(2 * np.pi * ((150 + 50 * i) * t + 600 * t * t)) * (np.sin(2 * np.pi * 1.5 * t) > -0.3)
        out.append(np.clip(np.round(tone + rng.normal(0, 300, CLIP)), -32768, 32767).astype(np.int16))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", default="qemu_m4,qemu_m7,qemu_m55,qemu_rv32")
    ap.add_argument("--clips", type=int, default=3)
    args = ap.parse_args()
    fe = FrontendConfig()
    model = random_audio_model(16, frames_per_step=FRAMES_PER_STEP, frontend=fe, hidden=HIDDEN,
                               num_classes=CLASSES, name="voice")
    clips = test_clips(args.clips)
    want = infer_audio(model, clips).tolist()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / model.name
        render(model, lib)
        for env in args.envs.split(","):
            out = run_device_bench(env, lib, clips, build_dir=Path(tmp) / "build" / env)
            if out["logits"] != want:
                raise SystemExit(f"{env}: the logits differ from the integer reference")
            clock = load_profile(env).reference_clock_hz
            a = audio_timing(out, [len(c) for c in clips], fe.sample_rate, clock)
            mem = out["memory"]
            results[env] = {"bitexact": True, "clips": len(clips), "kernel": out["model"]["kernel"],
                            "reference_clock_hz": clock, **a,
                            "flash": {"model": mem["elf"]["flash"]["model"], "runtime": mem["elf"]["flash"]["runtime"]},
                            "ram_static": mem["elf"]["ram"]["static"], "stack_peak": mem["stack_peak"]}
            print(env, json.dumps(results[env]))
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps({"frontend": asdict(fe), "hidden": HIDDEN, "frames_per_step": FRAMES_PER_STEP,
                                        "classes": CLASSES, "clip_samples": CLIP, "envs": results}, indent=2) + "\n")
    rows = "\n".join(
        f"| {e} | {r['kernel']} | {r['per_second_of_audio'] / 1e6:.2f} M ({100 * r['share_of_clock']:.1f} % of "
        f"{r['reference_clock_hz'] / 1e6:g} MHz) | {r['after_last_sample']['value']:,.0f} "
        f"({r['after_last_sample']['ms_at_clock']:.2f} ms) | {r['worst_chunk']['value']:,.0f} "
        f"({r['worst_chunk']['ms_at_clock']:.2f} ms) | {r['flash']['model']:,} / {r['flash']['runtime']:,} | "
        f"{r['ram_static']:,} / {r['stack_peak']:,} |" for e, r in results.items())
    replace_section(HEADING, f"""{HEADING}

The firmware with an audio model's library (docs/audio.md: the front end and an int8 TinyLSTM,
hidden {HIDDEN}, {FRAMES_PER_STEP} frames of 40 a step, {CLASSES} classes; seeded random weights, as the cost
depends on the shape only), {args.clips} clips of 3 s streamed hop by hop (320 samples a `stream`) over the
serial protocol, every logit bit-exact against the integer reference. QEMU counts instructions,
not cycles: milliseconds and shares take one instruction a cycle at the board profile's
reference clock (a lower bound on the real load). "Last sample to decision": the last hop's
frame and the head, the median over the clips; "slowest hop": 20 ms of audio that completes an
LSTM step. Static RAM counts everything the firmware keeps (the model's state, the front end's
4 KiB FFT scratch, the 640 B sample buffer, the serial interpreter's line and results).

| board | kernel | instructions per second of audio | last sample to decision | slowest hop | flash: model / runtime (B) | static RAM / stack peak (B) |
|---|---|---|---|---|---|---|
{rows}
""")


if __name__ == "__main__":
    main()
