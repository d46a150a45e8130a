"""Front end + wake word + commands on the emulated boards: the firmware with two generated
libraries (an audio command model and a wake-word model beside it) and the listener
(firmware/lib/harness/ts_listen.c), a stream sent hop by hop over the serial protocol to
`listen`. Per board: every event bit-exact against the integer reference
(tools/tinyseek/audio/listen.py), instructions per second of audio and their share of the
reference clock, the hop that decides a command (response after the last sample), the
slowest hop, flash and static RAM of the whole image, stack. Writes
bench/results/listen_device.json and a table in bench/RESULTS.md.

    .venv/bin/python bench/listen_device.py [--envs qemu_m4,qemu_m55,qemu_rv32] [--seconds 20]

The weights are random (seeded): the cost depends on the shapes (the wake word of
bench/wakeword.py: hidden 48, 2 frames a step, a 1 s window every 100 ms, a wake at three checks
in a row over the threshold; the commands of
`task.kind = "audio"`: hidden 64, 4 frames a step, 15 classes, 3 s after a wake), not on the
values. The threshold is the 80th percentile of the wake model's margins on this stream, so it
wakes now and then and both paths run. qemu_esp8266 is left out: its simulated board keeps
constant data in its 96 KiB of RAM, and the two models' 100 KB of weights do not fit beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from tinyseek.audio.frontend import FrontendConfig, features  # noqa: E402
from tinyseek.audio.listen import (ListenConfig, event_mismatches, listen_frames, wake_checks,  # noqa: E402
                                   wake_margins)
from tinyseek.audio.wakeword import listener  # noqa: E402
from tinyseek.codegen.render import render  # noqa: E402
from tinyseek.config import WakeConfig  # noqa: E402
from tinyseek.harness.bench import run_device_listen  # noqa: E402
from tinyseek.harness.boards import load_profile  # noqa: E402
from tinyseek.quant.synthetic import random_audio_model  # noqa: E402

from results_md import replace_section  # noqa: E402

HEADING = "## Wake word + commands on the emulated boards (`python bench/listen_device.py`)"
RESULTS_JSON = ROOT / "bench" / "results" / "listen_device.json"
GOALS = {"ram": 16 * 1024, "flash": 128 * 1024, "response_ms": 23.0}  # issue 16's bar on qemu_m4


def test_stream(seconds: float) -> np.ndarray:
    """Tones gliding and pausing over noise of changing level."""
    rng = np.random.default_rng(0)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    tone = 12000 * np.sin(2 * np.pi * (150 * t + 300 * (t % 2) ** 2)) * (np.sin(2 * np.pi * 0.4 * t) > -0.2)
    noise = rng.normal(0, 1, n) * (300 + 3000 * (np.sin(2 * np.pi * 0.13 * t) > 0.5))
    return np.clip(np.round(tone + noise), -32768, 32767).astype(np.int16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", default="qemu_m4,qemu_m55,qemu_rv32")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    fe = FrontendConfig()
    shape = {"hidden": WakeConfig.hidden, "frames_per_step": WakeConfig.frames_per_step}  # the wakeword stage's
    wake = random_audio_model(21, frontend=fe, num_classes=2, name="wake", **shape)
    command = random_audio_model(16, frames_per_step=4, frontend=fe, hidden=64, num_classes=15, name="voice")
    pcm = test_stream(args.seconds)
    feats = features(pcm, fe)
    cfg = replace(listener(0), capture=ListenConfig.capture)  # the wakeword stage's rule, with a command model
    margins = wake_margins(wake, feats, wake_checks(len(feats), cfg), cfg.window)
    cfg = replace(cfg, threshold=int(np.percentile(margins, 80)))
    want = listen_frames(wake, command, feats, cfg, margins)
    seconds = len(feats) * fe.hop / fe.sample_rate
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in (wake, command):
            render(m, Path(tmp) / m.name)
        for env in args.envs.split(","):
            out = run_device_listen(env, Path(tmp) / command.name, Path(tmp) / wake.name, pcm, cfg,
                                    build_dir=Path(tmp) / "build" / env)
            if event_mismatches(out["events"], want):
                raise SystemExit(f"{env}: the events differ from the integer reference")
            clock = load_profile(env).reference_clock_hz
            times = [c["time"] for c in out["chunks"]]
            decisions = [c["time"] for c in out["chunks"] if "command" in c["events"]]
            ms = lambda v: 1000 * v / clock  # noqa: E731  (one instruction a cycle)
            # hop i gives frame i + 1; it belongs to a capture when a wake at frame w has w < i + 1 <= w + capture
            capturing = np.zeros(len(times), bool)
            for e in want:
                if e["event"] == "wake":
                    capturing[e["frame"]:e["frame"] + cfg.capture] = True
            hop_seconds = fe.hop / fe.sample_rate
            per_second = {name: float(np.asarray(times)[mask].sum() / (mask.sum() * hop_seconds))
                          for name, mask in (("waiting", ~capturing), ("capturing", capturing))}
            elf = out["memory"]["elf"]
            results[env] = {
                "bitexact": True, "events": len(want), "wakes": sum(e["event"] == "wake" for e in want),
                "commands": len(decisions), "reference_clock_hz": clock, "unit": out["unit"],
                "per_second_of_audio": sum(times) / seconds, "share_of_clock": sum(times) / seconds / clock,
                "per_second_waiting": per_second["waiting"], "per_second_capturing": per_second["capturing"],
                "response": {"median": float(np.median(decisions)), "max": max(decisions),
                             "ms_at_clock": ms(max(decisions))},
                "slowest_hop": {"value": max(times), "ms_at_clock": ms(max(times))},
                "flash": {"total": elf["flash"]["total"], "command_model": elf["flash"]["model"],
                          "wake_model": out["memory"]["wake_model"]},
                "ram_static": elf["ram"]["static"], "stack_peak": out["device_mem"].get("stack_peak"),
            }
            print(env, json.dumps(results[env]))
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps({"frontend": asdict(fe), "listen": asdict(cfg), "seconds": seconds,
                                        "wake": shape,
                                        "command": {"hidden": 64, "frames_per_step": 4, "classes": 15},
                                        "goals": GOALS, "envs": results}, indent=2) + "\n")
    rows = "\n".join(
        f"| {e} | {r['per_second_of_audio'] / 1e6:.2f} M ({100 * r['share_of_clock']:.1f} % of "
        f"{r['reference_clock_hz'] / 1e6:g} MHz) | {r['per_second_waiting'] / 1e6:.2f} M / "
        f"{r['per_second_capturing'] / 1e6:.2f} M | {r['response']['max']:,.0f} ({r['response']['ms_at_clock']:.2f} ms) | "
        f"{r['slowest_hop']['value']:,.0f} ({r['slowest_hop']['ms_at_clock']:.2f} ms) | "
        f"{r['flash']['total']:,} ({r['flash']['command_model']:,} + {r['flash']['wake_model']:,}) | "
        f"{r['ram_static']:,} / {r['stack_peak']:,} |" for e, r in results.items())
    m4 = results.get("qemu_m4")
    verdict = "" if m4 is None else (
        f"On qemu_m4 against the issue's bar: static RAM + stack {m4['ram_static'] + m4['stack_peak']:,} B "
        f"(≤ {GOALS['ram']:,}: {'met' if m4['ram_static'] + m4['stack_peak'] <= GOALS['ram'] else 'not met'}), "
        f"flash {m4['flash']['total']:,} B (≤ {GOALS['flash']:,}: {'met' if m4['flash']['total'] <= GOALS['flash'] else 'not met'}), "
        f"response {m4['response']['ms_at_clock']:.2f} ms at {m4['reference_clock_hz'] / 1e6:g} MHz "
        f"(≤ {GOALS['response_ms']:g} ms: {'met' if m4['response']['ms_at_clock'] <= GOALS['response_ms'] else 'not met'}).")
    replace_section(HEADING, f"""{HEADING}

The firmware with two libraries and the listener (docs/audio.md, "Wake word and commands on the
device"): one front end; a wake-word model (hidden {shape['hidden']}, {shape['frames_per_step']} frames a step) re-run on the last
{cfg.window} frames every {cfg.stride} frames; after a wake a command model (hidden 64, 4 frames a step,
15 classes) hears the next {cfg.capture} frames. Seeded random weights (the cost depends on the shapes),
{seconds:.0f} s of synthetic sound streamed hop by hop (320 samples a `listen`), the threshold at the 80th
percentile of the wake margins so both paths run ({next(iter(results.values()))['wakes'] if results else 0} wakes); every event bit-exact
against the integer reference. QEMU counts instructions, not cycles: milliseconds and shares
take one instruction a cycle at the profile's reference clock (a lower bound on the real
load). "Waiting": the front end and a wake check every {cfg.stride * fe.hop * 1000 // fe.sample_rate} ms; "capturing": the front end and
the command model, no wake checks. "Response": the hop whose frame completes a command's
capture, from its last sample to the decision (the slowest of them); with the default settings
(a capture of {cfg.capture} frames, a multiple of the {cfg.stride}-frame stride) that hop also runs the first wake
check after the capture, so it equals the slowest hop: 20 ms of audio that runs a wake check
(the wake model over its whole window). Flash and RAM are the whole image's: both models, the
listener's ring of {cfg.window} frames (2,000 B), the 4 KiB FFT scratch (the command library's, shared),
the serial interpreter.

| board | instructions per second of audio | of it: waiting for the wake word / capturing a command | response after the last sample | slowest hop | flash: image (command + wake model) (B) | static RAM / stack peak (B) |
|---|---|---|---|---|---|---|
{rows}

{verdict}
""")


if __name__ == "__main__":
    main()
