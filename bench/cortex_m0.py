"""The Cortex-M0 (ARMv6-M) build against the portable C on the Cortex-M4: instructions per
inference and memory of the committed default model on QEMU `microbit` (nRF51, 16 KiB RAM: the
v6m kernels, and the portable C for comparison) and on `mps2-an386` with the portable kernels
(-DTINYSEEK_KERNEL_PORTABLE).
Writes bench/results/cortex_m0.json and the section "Cortex-M0" of bench/RESULTS.md.

    .venv/bin/python bench/cortex_m0.py --samples 200

ARMv6-M has no DSP instructions and no 32x32->64 multiply (the portable C's int64
requantization calls libgcc's __aeabi_lmul; the v6m kernels build it from 16-bit halves).
Targets: at most 1.5x the M4's instructions, model RAM + stack peak within 4 KiB. Figures are QEMU -icount instructions, not cycles; every run is bit-exact
against the integer reference or the script stops.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from results_md import replace_section
from tinyseek.config import load
from tinyseek.data import load_task
from tinyseek.harness.bench import run_device_bench
from tinyseek.quant.model import QuantModel
from tinyseek.quant.reference import infer_tokens
from tinyseek.student.tokenizer import HashTokenizer

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Cortex-M0"
RUNS = {"qemu_m0": [], "qemu_m0 portable": ["-DTINYSEEK_KERNEL_PORTABLE"], "qemu_m4": ["-DTINYSEEK_KERNEL_PORTABLE"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200, help="the first N non-empty test texts")
    ap.add_argument("--work", default=str(ROOT / "build" / "bench" / "cortex_m0"))
    args = ap.parse_args()
    model = QuantModel.load(ROOT / "models" / "intents" / "int8")
    tok = HashTokenizer(model.vocab_size, model.max_len)
    ids = [t for t in (tok.encode(x) for x in load_task(load().task).test.texts) if t][: args.samples]
    want = infer_tokens(model, ids).tolist()
    results = {"samples": len(ids), "boards": {}}
    for run, flags in RUNS.items():
        env = run.split()[0]
        out = run_device_bench(env, "intents", ids, build_dir=Path(args.work) / run.replace(" ", "-"),
                               extra_flags=flags)
        if out["logits"] != want:
            raise SystemExit(f"{run}: the logits differ from the integer reference")
        elf, dev = out["memory"]["elf"], out["memory"]["device"]
        results["boards"][run] = {
            "kernel": out["model"]["kernel"], "cpu": out["cpu"], "flags": flags,
            "instructions_median": float(np.median(out["latency"]["per_input"])),
            "instructions_total": float(np.sum(out["latency"]["per_input"])),
            "model_ram": dev["model_ram"], "stack_peak": dev["stack_peak"], "ram_static": elf["ram"]["static"],
            "flash_model": elf["flash"]["model"], "flash_code": elf["flash"]["code"]}
    m0, m4 = results["boards"]["qemu_m0"], results["boards"]["qemu_m4"]
    results["ratio_median"] = m0["instructions_median"] / m4["instructions_median"]
    results["ratio_portable_median"] = results["boards"]["qemu_m0 portable"]["instructions_median"] / m4["instructions_median"]
    results["ratio_total"] = m0["instructions_total"] / m4["instructions_total"]
    results["model_ram_plus_stack"] = m0["model_ram"] + m0["stack_peak"]
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cortex_m0.json").write_text(json.dumps(results, indent=1) + "\n")
    rows = "\n".join(
        f"| {env} ({r['cpu']}) | {r['kernel']} | `{' '.join(r['flags']) or '(none)'}` | "
        f"{r['instructions_median']:,.0f} | {r['model_ram']:,} B | {r['stack_peak']:,} B | {r['ram_static']:,} B | "
        f"{r['flash_code']:,} B |" for env, r in results["boards"].items())
    section = f"""{HEADING} (`python bench/cortex_m0.py --samples {args.samples}`)

The committed default model on QEMU `microbit` (nRF51822, Cortex-M0, ARMv6-M, 16 KiB RAM) against
the portable C kernels on the Cortex-M4 (`mps2-an386`), the first {len(ids)} non-empty test
texts sent as token ids, bit-exact on every run. QEMU -icount instructions, not cycles. ARMv6-M
has no DSP instructions and no 32x32->64 multiply: the portable C's int64 requantization calls
libgcc's `__aeabi_lmul`, where the `v6m` kernels build the high word from 16-bit halves; their
dot product is assembly, a unit's four gate rows per pass (57 instructions per 16 MACs).

| board | kernel | flags | instructions / inference (median) | model RAM | stack peak | static RAM | all code |
|---|---|---|---|---|---|---|---|
{rows}

Cortex-M0 (v6m) / Cortex-M4 portable C: {results['ratio_median']:.2f}x (median), {results['ratio_total']:.2f}x (all
{len(ids)} texts together); the portable C on the M0: {results['ratio_portable_median']:.2f}x. Target: at most 1.5x. Model RAM + stack peak on the M0:
{results['model_ram_plus_stack']:,} B (target: within 4 KiB); the whole firmware's static RAM
{m0['ram_static']:,} B plus its 4 KiB stack fits the nRF51's 16 KiB.
"""
    replace_section(HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
