"""TFLite Micro beside tinyseek on the same model: the committed default student exported with
`tinyseek export --format tflite`, both .tflite files run on the whole test split in the TFLite
and TFLite Micro interpreters, and one table of accuracy, agreement, RAM and flash next to
tinyseek's int8 model as the qemu_m4 firmware measured it (models/<run>/device.json).

    .venv/bin/python bench/tflite.py                 # the default run (models/intents)
    .venv/bin/python bench/tflite.py --config run.toml

Writes bench/results/tflite.json and the "TensorFlow Lite and TFLite Micro" section of
bench/RESULTS.md. The export goes to a temporary folder: the run folder is only read.

TFLite Micro's own code (interpreter, kernels) and its instructions per inference need TFLM
built for the board from its sources, which this project does not carry: bench/tflm.py does
that from checkouts the user passes and writes bench/results/tflm.json, whose figures this
table quotes when the file is there.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tinyseek.config import load  # noqa: E402
from tinyseek.export import export_tflite  # noqa: E402
from tinyseek.pipeline import Run  # noqa: E402

from results_md import replace_section  # noqa: E402

HEADING = "## TensorFlow Lite and TFLite Micro (`python bench/tflite.py`)"
RESULTS_JSON = ROOT / "bench" / "results" / "tflite.json"
TFLM_JSON = ROOT / "bench" / "results" / "tflm.json"  # bench/tflm.py's, when it has been run
ACCURACY_POINTS, AGREEMENT = 1.0, 0.97  # the bar for the int8 .tflite


def _macro(header: Path, name: str) -> int:
    m = re.search(rf"#define\s+\w+_{name}\s+(\d+)", header.read_text())
    if m is None:
        raise SystemExit(f"{header} has no *_{name} macro: regenerate it with `tinyseek codegen`")
    return int(m.group(1))


def tinyseek_side(run: Run) -> dict:
    """RAM and flash of the int8 model as generated and as the qemu_m4 firmware measured it."""
    header = run.lib_dir / f"{run.cfg.model_name}_model.h"
    device = json.loads((run.dir / "device.json").read_text()) if (run.dir / "device.json").is_file() else {}
    mem = device.get("memory", {})
    out = {"state_bytes": _macro(header, "STATE_BYTES"), "scratch_bytes": _macro(header, "SCRATCH_BYTES"),
           "weight_bytes": _macro(header, "WEIGHT_BYTES"), "device": device.get("target")}
    if mem:
        out |= {"stack_peak": mem["stack_peak"], "flash_model_data": mem["flash_model_data"],
                "flash_model_code": mem["flash_model"] - mem["flash_model_data"],
                "instructions_median": device["latency"]["value"], "kernel": device["kernel"]}
    return out


def _tflm_instructions(mcu: dict | None) -> str:
    if not mcu:
        return ("needs TFLM built for the board from its sources (`python bench/tflm.py --tflm PATH ...`); this "
                "project carries no TFLM code")
    return (f"{mcu['instructions_median']:,.0f} on qemu_m4 for any input (all {mcu['steps']} steps, reference kernels; "
            f"TFLM code {mcu['code_bytes']:,} B, arena on the M4 {mcu['arena_bytes']:,} B): section TFLite Micro on "
            "qemu_m4, `bench/results/tflm.json`")


def tflm_mcu() -> dict | None:
    """bench/tflm.py's TFLM figures on qemu_m4 for the default model, if it has been run."""
    r = json.loads(TFLM_JSON.read_text()).get("default") if TFLM_JSON.is_file() else None
    if r is None:
        return None
    t = r["tflm"]["variants"]["reference"]  # the kernels the tflite-micro Python interpreter runs
    return {"instructions_median": float(np.median(t["instructions"])), "steps": r["inputs"]["steps_run_by_tflm"],
            "code_bytes": t["flash_bytes"]["TFLM (interpreter, kernels)"], "arena_bytes": t["arena_used_bytes"],
            "commit": r["tflm"]["commit"]}


def section(r: dict) -> str:
    m, t = r["export"], r["tinyseek"]
    q, f = m["int8"], m["float"]
    ram = t["state_bytes"] + t["scratch_bytes"] + t.get("stack_peak", 0)
    flash_t = t.get("flash_model_data", t["weight_bytes"]) + t.get("flash_model_code", 0)
    flash_tflm = q["bytes"] + m["embedding_table_bytes"]
    pct = lambda x: f"{100 * x:.2f} %"  # noqa: E731
    return "\n".join([
        HEADING, "",
        f"The committed default model (`{r['run']}`), exported by `tinyseek export --format tflite` (legacy Keras "
        f"{r['versions']['tf_keras']}, TensorFlow {r['versions']['tensorflow']}, tflite-micro "
        f"{r['versions']['tflite_micro']}), {m['calibration_samples']} training samples as the representative dataset; "
        f"all {m['samples']} test samples, one at a time, in each interpreter. The graph runs {m['steps']} steps "
        "(the tokenizer's maximum; TFLM cannot resize inputs) and reads the logits at the last real token.",
        "",
        "| | accuracy | agrees with tinyseek int8 | agrees with the float student | largest logit difference to the float student |",
        "|---|---|---|---|---|",
        f"| float student (numpy) | {pct(m['float_student_accuracy'])} | | | |",
        f"| tinyseek int8 (integer reference = the C on every board) | {pct(m['tinyseek_int8_accuracy'])} | | | |",
        *[f"| {what} .tflite, {name} | {pct(x[eng]['accuracy'])} | {pct(x[eng]['agreement_tinyseek_int8'])} | "
          f"{pct(x[eng]['agreement_float_student'])} | {x[eng]['max_abs_logit_diff_float_student']:.3g} |"
          for what, x in (("float32", f), ("int8", q))
          for eng, name in (("tflite", "TFLite interpreter"), ("tflm", "TFLite Micro (reference kernels)"))],
        "",
        f"int8 .tflite in TFLite Micro: {q['tflm']['accuracy'] * 100 - m['tinyseek_int8_accuracy'] * 100:+.2f} points "
        f"against tinyseek's int8 (bar: within {ACCURACY_POINTS:g}), agreement "
        f"{pct(q['tflm']['agreement_tinyseek_int8'])} (bar: {pct(AGREEMENT)}): "
        f"**{'met' if r['bars_met'] else 'NOT met'}**. The TFLite interpreter's int8 LSTM kernel and TFLM's "
        f"give the same int8 logits on {pct(q['tflite_tflm_identical_outputs'])} of the samples "
        "(their rounding differs), tinyseek's integer spec is a third arithmetic: agreement, not bit-exactness, is "
        "what can be compared.",
        "",
        "| | tinyseek (qemu_m4 firmware, `" + str(t.get("kernel", "?")) + "` kernels) | TFLite Micro |",
        "|---|---|---|",
        f"| RAM | {ram:,} B: state {t['state_bytes']} + scratch {t['scratch_bytes']} + stack peak "
        f"{t.get('stack_peak', 'n/a')} | tensor arena {q['tflm_arena_bytes']:,} B (smallest that runs, 64-bit host "
        f"interpreter), plus the interpreter object and its stack; {q['tflm_arena_bytes'] / ram:.1f}x tinyseek's RAM |",
        f"| flash, model | {flash_t:,} B: const data {t.get('flash_model_data', t['weight_bytes']):,} + kernels, "
        f"tokenizer, API {t.get('flash_model_code', 'n/a'):,} | {flash_tflm:,} B: int8 .tflite {q['bytes']:,} + "
        f"embedding table {m['embedding_table_bytes']:,}; plus TFLM's interpreter and kernels "
        f"({format(r['tflm_mcu']['code_bytes'], ',') + ' B on qemu_m4' if r.get('tflm_mcu') else 'not built here'}) |",
        f"| instructions per inference (QEMU, not cycles) | {t.get('instructions_median', 0):,.0f} median over the test "
        f"split | {_tflm_instructions(r.get('tflm_mcu'))} |",
        f"| float32 .tflite | | {f['bytes']:,} B, arena {f['tflm_arena_bytes']:,} B |",
        "",
        f"Ops of both files: {', '.join(q['ops'])}. The TFLM arena is measured by running the model in "
        "arenas of decreasing size (TFLM's Python API reports no arena use), in the 64-bit host build; a 32-bit build's arena differs a little "
        "(smaller pointers and structs). "
        f"Export and checks took {r['seconds']:.0f} s on {r['machine']}. Full figures: `bench/results/tflite.json`.",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="the run's TOML config (default: the built-in default, models/intents)")
    ap.add_argument("--json", default=str(RESULTS_JSON), help="where the full results go")
    ap.add_argument("--no-md", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args()
    import tensorflow as tf
    import tf_keras
    from importlib.metadata import version

    run = Run(load(args.config))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tinyseek-bench-tflite-") as tmp:
        out = export_tflite(run, Path(tmp) / "tflite")
        metrics = json.loads((out / "metrics.json").read_text())
    seconds = time.monotonic() - t0
    q = metrics["int8"]["tflm"]
    result = {
        "run": str(run.dir.relative_to(ROOT)) if run.dir.is_relative_to(ROOT) else str(run.dir),
        "versions": {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__,
                     "tflite_micro": version("tflite-micro")},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), one thread",
        "seconds": seconds,
        "export": metrics,
        "tinyseek": tinyseek_side(run),
        "tflm_mcu": tflm_mcu(),
        "bars_met": bool(abs(q["accuracy"] - metrics["tinyseek_int8_accuracy"]) * 100 <= ACCURACY_POINTS
                         and q["agreement_tinyseek_int8"] >= AGREEMENT),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    text = section(result)
    if not args.no_md:
        replace_section(HEADING, text)
    print(text)


if __name__ == "__main__":
    main()
