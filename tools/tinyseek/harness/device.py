"""The device stage: the default test split on a board (emulated or on a port), every logit
checked against the integer reference, written to the run's device.json for the report."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np


def run_on_device(run, env: str, port: str | None = None, limit: int = 0) -> dict:
    from ..quant.model import QuantModel
    from .bench import check_port, run_device_bench
    from .boards import load_profile
    from .evaluate import device_inputs, device_oracle_logits, labeled_accuracy

    from ..data.dataset import stratified_first, take

    if limit < 0:
        raise ValueError(f"--limit must be >= 0 (0: the whole test split), not {limit}")
    check_port(load_profile(env), port)
    qm = QuantModel.load(run.int8_dir)
    test = run.dataset.test
    n = len(test.y) if not limit else min(limit, len(test.y))
    # A limit takes every class in turn, so a short run still measures all of them.
    test = take(test, stratified_first(test.y, n))
    run.log(f"[device] {env}: building and sending {n} samples"
            + (f" (of {len(run.dataset.test.y)}, stratified by class)" if n < len(run.dataset.test.y) else ""))
    result = run_device_bench(env, run.lib_dir, device_inputs(qm, test), port=port,
                              subwords=getattr(qm, "subwords", 0))
    logits = np.asarray(result["logits"], dtype=np.int64)
    expected = device_oracle_logits(qm, test).astype(np.int64)
    mismatches = int(np.sum(np.any(logits != expected, axis=1)))
    per = np.asarray(result["latency"]["per_input"], dtype=float)
    profile = load_profile(env)
    clock = profile.reference_clock_hz if profile.emulated else profile.clock_hz
    mem = result["memory"]
    device = {
        "target": env, "board": result["board"], "cpu": result["cpu"], "emulated": result["emulated"],
        "samples": n, "bitexact": mismatches == 0 and n > 0, "mismatches": mismatches,
        "accuracy": labeled_accuracy(logits.argmax(axis=1), test.y),
        "latency": {"value": float(np.median(per)), "p99": float(np.percentile(per, 99)),
                    "unit": result["latency"]["unit"], "timer": result["timer"]["source"],
                    "note": result["timer"]["note"],
                    "ms_at_clock": float(np.median(per)) / clock * 1e3, "clock_hz": clock},
        "memory": {"flash_model": mem["elf"]["flash"]["model"], "flash_runtime": mem["elf"]["flash"]["runtime"],
                   "flash_model_data": mem["elf"]["flash"]["model_data"], "flash_code": mem["elf"]["flash"]["code"],
                   "ram_static": mem["elf"]["ram"]["static"], "stack_peak": mem["stack_peak"]},
        "energy_uj_estimate": (result["energy"] or {}).get("per_inference_uj"),
        "kernel": result["model"]["kernel"],
    }
    if result["audio_chunks"]:
        device["audio"] = audio_timing(result, [len(a) for a in test.audio], qm.frontend.sample_rate, clock)
    if run.cfg.wake.keyword:
        device["listen"] = listen_on_device(run, env, port, test, clock)
    (run.dir / "device.json").write_text(json.dumps(device, indent=2, sort_keys=True) + "\n")
    run.log(f"[device] {env}: bit-exact {device['bitexact']} on {n} samples, median "
            f"{device['latency']['value']:.0f} {device['latency']['unit']} per inference")
    if "audio" in device:
        a = device["audio"]
        run.log(f"[device] {env}: {a['per_second_of_audio']:.0f} {a['unit']} per second of audio "
                f"({100 * a['share_of_clock']:.1f} % of {clock / 1e6:.0f} MHz), "
                f"{a['after_last_sample']['ms_at_clock']:.2f} ms from the last sample to the decision")
    return device


def listen_on_device(run, env: str, port: str | None, test, clock: float) -> dict:
    """The wake word and the command model on the device at once: the test clips sent (at most
    the first 30) one after another with a test voice's keyword before every third, streamed hop
    by hop to the listener; every event checked against the integer reference
    (tinyseek.audio.listen), the keywords it wakes on, the commands it then hears, the response
    (the hop that decides a command, from its last sample) and the cost per second of audio."""
    from ..audio.listen import ListenConfig, event_mismatches, listen
    from ..audio.wakeword import keyword_clips, score, stream
    from ..quant.model import QuantModel
    from .bench import run_device_listen

    wake, command = QuantModel.load(run.wake_dir / "int8"), QuantModel.load(run.int8_dir)
    clips = test.audio[:30]
    kws = keyword_clips("test", max(1, len(clips) // 3), run.cfg.wake.seed, (run.cfg.wake.keyword,),
                        run.cfg.wake.keyword)
    pcm, spans, before = stream(clips, kws, run.cfg.wake.seed)
    fe = command.frontend
    cfg = ListenConfig.of(wake, capture=len(clips[0]) // fe.hop)  # the command model hears a clip's length
    want = listen(wake, command, pcm, cfg)
    run.log(f"[device] {env}: the listener on {len(pcm) / fe.sample_rate:.0f} s of test clips with "
            f"{len(kws)} keywords ({len(pcm) // fe.hop:,} hops)")
    out = run_device_listen(env, run.lib_dir, run.wake_lib_dir, pcm, cfg, port=port)
    mismatches = event_mismatches(out["events"], want)
    wakes = [e["frame"] for e in want if e["event"] == "wake"]
    found, false = score(wakes, spans)  # the bench's rule (tinyseek.audio.wakeword.detect)
    heard = {j: next((c["class"] for c in want if c["event"] == "command" and c["frame"] > w), None)
             for j, w in found.items()}  # keyword -> the command decided after its wake
    right = sum(before[j] < len(clips) and c == int(test.y[before[j]]) for j, c in heard.items())
    times = [c["time"] for c in out["chunks"]]
    decisions = [c["time"] for c in out["chunks"] if "command" in c["events"]]
    elf = out["memory"]["elf"]
    seconds = len(times) * fe.hop / fe.sample_rate
    return {"keyword": run.cfg.wake.keyword, "config": asdict(cfg),
            "seconds": seconds, "keywords": len(kws), "events": len(want), "mismatches": mismatches,
            "bitexact": mismatches == 0 and len(want) > 0, "wakes": len(wakes), "keywords_detected": len(heard),
            "false_wakes": len(false), "commands_right": int(right), "unit": out["unit"],
            "per_second_of_audio": sum(times) / seconds, "share_of_clock": sum(times) / seconds / clock,
            "response": None if not decisions else {"max": max(decisions), "ms_at_clock": max(decisions) / clock * 1e3},
            "flash_total": elf["flash"]["total"], "flash_wake_model": out["memory"]["wake_model"],
            "ram_static": elf["ram"]["static"], "stack_peak": out["device_mem"].get("stack_peak")}


def audio_timing(result: dict, clip_samples: list[int], sample_rate: int, clock: float) -> dict:
    """An audio model's figures from the chunk times of run_device_bench: the cost of a second
    of audio (and the share of the clock it takes), the time from a clip's last sample to its
    decision (the last chunk: its front-end frame, any LSTM step it completes, the head), and
    the slowest chunk (a frame that completes an LSTM step). Medians over the clips."""
    chunks = result["audio_chunks"]
    per = result["audio_chunk_samples"]
    seconds = [n / sample_rate for n in clip_samples]
    per_second = float(np.median([sum(c) / s for c, s in zip(chunks, seconds)]))
    last = float(np.median([c[-1] for c in chunks]))
    worst = float(max(max(c) for c in chunks))
    at_clock = lambda v: v / clock * 1e3  # noqa: E731
    return {"unit": result["latency"]["unit"], "chunk_samples": per, "clock_hz": clock,
            "per_second_of_audio": per_second, "share_of_clock": per_second / clock,
            "after_last_sample": {"value": last, "ms_at_clock": at_clock(last)},
            "worst_chunk": {"value": worst, "ms_at_clock": at_clock(worst),
                            "chunk_ms": 1e3 * per / sample_rate}}
