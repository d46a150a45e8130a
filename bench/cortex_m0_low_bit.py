"""int4 and binary gate weights on the Cortex-M0 (ARMv6-M, QEMU `microbit`): the `v6m` kernels
against the portable C (-DTINYSEEK_KERNEL_PORTABLE), instructions per inference of the committed
default's float student quantized post-training at each width (quant.qat_epochs = 0: nothing is
trained), beside the committed int8 model on the same texts. Writes
bench/results/cortex_m0_low_bit.json.

    .venv/bin/python bench/cortex_m0_low_bit.py --samples 200

Figures are QEMU -icount instructions, not cycles; every run is bit-exact against the integer
reference or the script stops.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from low_bit import ptq_model, test_ids  # bench/low_bit.py
from tinyseek.codegen.render import render
from tinyseek.config import load
from tinyseek.data import load_task
from tinyseek.harness.bench import run_device_bench
from tinyseek.quant.model import QuantModel
from tinyseek.quant.reference import infer_tokens

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "intents"
PORTABLE = ["-DTINYSEEK_KERNEL_PORTABLE"]
OUT = ROOT / "bench" / "results" / "cortex_m0_low_bit.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200, help="the first N non-empty test texts")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    cfg = load(DEFAULT / "config.toml")
    ds = load_task(cfg.task)
    work = Path(args.work or tempfile.mkdtemp(prefix="cortex_m0_low_bit-"))
    models = {"int8": QuantModel.load(DEFAULT / "int8")}
    models.update({width: ptq_model(cfg, ds, width, "") for width in ("int4", "binary")})
    ids = test_ids(cfg, ds, args.samples)
    result = {"samples": len(ids), "command": f"python bench/cortex_m0_low_bit.py --samples {args.samples}",
              "env": "qemu_m0", "runs": {}}
    for width, model in models.items():
        want = infer_tokens(model, ids).tolist()
        lib = work / "lib" / width / model.name  # PlatformIO finds a library by its folder name
        render(model, lib, overwrite=True)
        for label, flags in ((width, []), (f"{width} portable C", PORTABLE)):
            out = run_device_bench("qemu_m0", lib, ids, build_dir=work / "build" / label.replace(" ", "-"),
                                   extra_flags=flags)
            if out["logits"] != want:
                raise SystemExit(f"{label}: the logits differ from the integer reference")
            per = np.array(out["latency"]["per_input"])
            elf, dev = out["memory"]["elf"], out["memory"]["device"]
            result["runs"][label] = {
                "weights": width, "kernel": out["model"]["kernel"], "flags": flags,
                "instructions_median": float(np.median(per)), "instructions_total": float(per.sum()),
                "flash_model_data": elf["flash"]["model_data"], "flash_code": elf["flash"]["code"],
                "model_ram": dev["model_ram"], "model_static_ram": elf["ram"]["model"], "stack_peak": dev["stack_peak"],
                "bitexact": True}
            print(label, json.dumps(result["runs"][label]), flush=True)
    runs = result["runs"]
    for width in models:
        runs[width]["vs_portable"] = runs[f"{width} portable C"]["instructions_median"] / runs[width]["instructions_median"]
        runs[width]["vs_int8"] = runs[width]["instructions_median"] / runs["int8"]["instructions_median"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n| weights | kernel | instructions / inference (median) | portable C / kernel | model data (flash) | "
          "all code | model static RAM | stack peak |\n|---|---|---|---|---|---|---|---|")
    for label, r in runs.items():
        ratio = f"{r['vs_portable']:.2f}x" if "vs_portable" in r else ""
        print(f"| {label} | {r['kernel']} | {r['instructions_median']:,.0f} | {ratio} | {r['flash_model_data']:,} B | "
              f"{r['flash_code']:,} B | {r['model_static_ram']:,} B | {r['stack_peak']:,} B |")


if __name__ == "__main__":
    main()
