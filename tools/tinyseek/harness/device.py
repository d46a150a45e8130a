"""The device stage: the default test split on a board (emulated or on a port), every logit
checked against the integer reference, written to the run's device.json for the report."""
from __future__ import annotations

import json

import numpy as np


def run_on_device(run, env: str, port: str | None = None, limit: int = 0) -> dict:
    from ..quant.model import QuantModel
    from .bench import check_port, run_device_bench
    from .boards import load_profile
    from .evaluate import int8_inputs, labeled_accuracy, oracle_logits

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
    result = run_device_bench(env, run.lib_dir, int8_inputs(qm, test), port=port,
                              subwords=getattr(qm, "subwords", 0))
    logits = np.asarray(result["logits"], dtype=np.int64)
    expected = oracle_logits(qm, test).astype(np.int64)
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
    (run.dir / "device.json").write_text(json.dumps(device, indent=2, sort_keys=True) + "\n")
    run.log(f"[device] {env}: bit-exact {device['bitexact']} on {n} samples, median "
            f"{device['latency']['value']:.0f} {device['latency']['unit']} per inference")
    return device
