"""Benchmark of the default pipeline: wall time per stage and the numbers the default must
reach, written to bench/results/pipeline.json and the table in bench/RESULTS.md.

    .venv/bin/python bench/pipeline.py            # a fresh run folder under build/bench
    .venv/bin/python bench/pipeline.py --run-dir models   # measure the committed default's run

Wall time is this machine's (2 cores); accuracy figures come from the run's report.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from tinyseek.config import load
from tinyseek.pipeline import STAGES, Run

from results_md import replace_section

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [
    # (label, key path in report.json, comparison, bound)
    ("int8 accuracy / teacher accuracy", ("retention",), ">=", 0.95),
    ("int8 vs float student agreement", ("agreement_int8_float",), ">=", 0.99),
    ("host bit-exact on every sample", ("host", "bitexact"), "==", True),
    ("student parameters", ("student", "params"), "<=", 500_000),
    ("int8 weight bytes", ("student", "weight_bytes"), "<=", 65_536),
]


def _get(d: dict, path: tuple):
    for k in path:
        d = d[k]
    return d


def _ok(value, op, bound) -> bool:
    return {">=": value >= bound, "<=": value <= bound, "==": value == bound}[op]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models-dir", default=str(ROOT / "build" / "bench" / "models"))
    ap.add_argument("--lib-dir", default=str(ROOT / "build" / "bench" / "lib"))
    args = ap.parse_args()
    cfg = load(overrides={"models_dir": args.models_dir, "codegen.out_dir": args.lib_dir})
    run = Run(cfg)
    times = {}
    for stage in STAGES:
        t0 = time.monotonic()
        run.stage(stage, force=True)
        times[stage] = round(time.monotonic() - t0, 2)
    report = json.loads((run.dir / "report.json").read_text())
    rows = []
    for label, path, op, bound in TARGETS:
        value = _get(report, path)
        rows.append({"what": label, "value": value, "target": f"{op} {bound}", "met": _ok(value, op, bound)})
    total = round(sum(times.values()), 2)
    rows.append({"what": "pipeline wall time, s (make demo budget 600 s)", "value": total, "target": "<= 600",
                 "met": total <= 600})
    result = {"command": "python bench/pipeline.py", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "stage_seconds": times, "teacher_accuracy": report["teacher"]["accuracy"],
              "float_accuracy": report["student"]["float_accuracy"], "int8_accuracy": report["student"]["int8_accuracy"],
              "targets": rows}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ["| what | measured | target | met |", "|---|---|---|---|"]
    table += [f"| {r['what']} | {r['value']} | {r['target']} | {'yes' if r['met'] else 'NO'} |" for r in rows]
    stage_table = ["| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in times.items()]
    section = "\n".join([
        "## Default pipeline (`python bench/pipeline.py`)", "",
        f"Teacher {report['teacher']['accuracy']:.4f}, float student {report['student']['float_accuracy']:.4f}, "
        f"int8 student {report['student']['int8_accuracy']:.4f} accuracy on the held-out test split.", "",
        *table, "", *stage_table, ""])
    replace_section("## Default pipeline", section)
    print(section)


if __name__ == "__main__":
    main()
