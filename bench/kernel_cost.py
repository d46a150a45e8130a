"""Measure the generated kernels on the emulated boards and refit the latency model of the student
search (tools/tinyseek/distill/search.py):

    instructions per inference = a * MACs + b * units * steps + c * steps + d

The coefficients, the model library's code bytes and the firmware's stack peak go to
tools/tinyseek/codegen/boards/kernel_cost.json (one entry per board; boards not measured keep
theirs); the fit's table to bench/results/kernel_cost.md. Refit after changing the kernels:

    .venv/bin/python bench/kernel_cost.py                    # every emulated board
    .venv/bin/python bench/kernel_cost.py --envs qemu_m4     # one board
    .venv/bin/python bench/kernel_cost.py --refit            # refit the stored measurements only
    .venv/bin/python bench/kernel_cost.py --envs qemu_m4 --weights int4   # the int4 kernels' own fit

int8 entries are what the search uses by default; `--weights int4|binary` fits the models of
that width (`quant.weights`, the embedding at the same width) into the board's entry under
"widths", which `tinyseek search` reads when quant.weights names it.

Each shape is a randomly initialised TinyLSTM text student, quantized by the real quantizer (so
the requantization forms are those of trained students), rendered, built for the board and run
under QEMU on token sequences of several lengths; every logit must equal the integer oracle.
Figures are instructions QEMU executed (-icount), not cycles.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from tinyseek.codegen.context import build_context
from tinyseek.codegen.render import render
from tinyseek.distill.search import KERNEL_COST_FILE, Shape, Task, kernels_hash, random_student, stack_width, work
from tinyseek.harness.bench import run_device_bench
from tinyseek.harness.boards import profiles
from tinyseek.quant.reference import infer_tokens

ROOT = Path(__file__).resolve().parents[1]
# Hidden sizes, input widths and depths varied apart, so MACs, units and steps are not collinear.
SHAPES = [Shape(16, 1, 16, 256), Shape(32, 1, 16, 256), Shape(32, 1, 64, 256), Shape(64, 1, 32, 512),
          Shape(96, 1, 32, 256), Shape(128, 1, 64, 256), Shape(32, 2, 32, 256), Shape(64, 2, 16, 256)]
STEPS = (1, 4, 12, 32)
TASK = Task("text", num_classes=15, max_len=32)  # the default task's classes and max_len
TERMS = ("mac", "unit_step", "step", "fixed")


class BitExactError(AssertionError):
    """A board's logits differ from the integer reference: no figure of that run counts."""


def measure(env: str, work_dir: Path, weights: str = "int8") -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    task = dataclasses.replace(TASK, weights=weights, embedding=weights)
    for i, shape in enumerate(SHAPES):
        model = random_student(shape, task, name=f"kcost{i}", seed=i)
        ctx = build_context(model, "kernel_cost")
        lib = work_dir / "lib" / model.name
        render(model, lib)
        ids = [[int(t) for t in rng.integers(1, shape.vocab_size, size=n)] for n in STEPS]
        out = run_device_bench(env, lib, ids, build_dir=work_dir / f"build-{model.name}")
        if out["logits"] != infer_tokens(model, ids).tolist():
            raise BitExactError(f"{env} {out['model']['kernel']}: {shape.label} is not bit-exact")
        mem = out["memory"]
        for n, instructions in zip(STEPS, out["latency"]["per_input"]):
            rows.append({"shape": shape.label, "layers": shape.layers, "width": stack_width(shape, task), "steps": n,
                         **work(shape, task, n), "instructions": float(instructions),
                         "kernel": out["model"]["kernel"], "unit": out["latency"]["unit"],
                         "requant": [[L["x_requant"], L["h_requant"]] for L in ctx["layers"]],
                         "code_bytes": mem["elf"]["flash"]["model"] - ctx["weight_bytes"],
                         "stack_peak": mem["stack_peak"]})
        print(f"[kernel_cost] {env} {shape.label}: {[r['instructions'] for r in rows[-len(STEPS):]]}", flush=True)
    return rows


def fit(rows: list[dict]) -> tuple[dict[str, float], float]:
    """Coefficients minimising the squared relative error (a tiny model's short run counts as
    much as a big one's), and the largest relative error over the measurements."""
    X = np.array([[r["macs"], r["unit_steps"], r["steps"], 1.0] for r in rows])
    y = np.array([r["instructions"] for r in rows])
    coef, *_ = np.linalg.lstsq(X / y[:, None], np.ones(len(y)), rcond=None)
    pred = X @ coef
    for r, p in zip(rows, pred):
        r["predicted"] = float(p)
    return dict(zip(TERMS, (float(c) for c in coef))), float(np.max(np.abs(pred - y) / y))


def envelope(x: list[float], y: list[float]) -> tuple[float, float]:
    """(fixed, slope) of the least-squares line raised to lie on or above every point: an
    allowance never below what was measured. The slope is rounded to 1/1000 and kept >= 0 (a
    kernel without stack vectors fits a slope of -1e-15)."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    slope = max(0.0, round(float(np.polyfit(xs, ys, 1)[0]), 3))
    return float(np.ceil(np.max(ys - slope * xs))), slope


def entry(rows: list[dict]) -> dict:
    coef, err = fit(rows)
    kernels = {r["kernel"] for r in rows}
    if len(kernels) != 1:
        raise ValueError(f"the shapes ran different kernels {sorted(kernels)}; the fit needs one")
    code = envelope([r["layers"] for r in rows], [r["code_bytes"] for r in rows])
    stack = envelope([r["width"] for r in rows], [r["stack_peak"] for r in rows])
    return {"unit": rows[0]["unit"], "kernel": kernels.pop(), "coefficients": coef, "max_rel_error": err,
            "code_bytes": {"fixed": code[0], "per_layer": code[1]},
            "stack_bytes": {"fixed": stack[0], "per_width": stack[1]},
            "kernels_hash": kernels_hash(), "classes": TASK.num_classes, "measurements": rows}


def dump(data: dict) -> str:
    """JSON with every innermost object (a measurement, a coefficient set) on one line, so a
    refit's diff shows which figures moved."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\{[^{}]*\}", lambda m: json.dumps(json.loads(m.group())), text) + "\n"


def markdown(data: dict) -> str:
    lines = ["Latency model of `tinyseek search`: instructions per inference = a * MACs + b * units * steps + "
             f"c * steps + d, fitted on {len(SHAPES)} random text students ({TASK.num_classes} classes) x "
             f"{len(STEPS)} lengths ({', '.join(map(str, STEPS))} tokens) per board (QEMU -icount instructions). "
             "Code = the model library's flash besides its arrays, per LSTM layer; stack = the firmware's peak, "
             "per byte of the widest layer's input + hidden (both upper envelopes of the measurements).", "",
             "| board | weights | kernel | a (per MAC) | b (per unit-step) | c (per step) | d (fixed) | max error | "
             "code B (fixed + per layer) | stack B (fixed + per width) |", "|---|---|---|---|---|---|---|---|---|---|"]
    entries = [(env, "int8", e) for env, e in sorted(data["boards"].items())]
    entries += [(env, w, we) for env, e in sorted(data["boards"].items()) for w, we in sorted(e.get("widths", {}).items())]
    for env, width, e in entries:
        c, code, stack = e["coefficients"], e["code_bytes"], e["stack_bytes"]
        lines.append(f"| {env} | {width} | {e['kernel']} | {c['mac']:.3f} | {c['unit_step']:.1f} | {c['step']:.1f} | "
                     f"{c['fixed']:.0f} | {e['max_rel_error']:.1%} | {code['fixed']:.0f} + {code['per_layer']:.0f} | "
                     f"{stack['fixed']:.0f} + {stack['per_width']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    emulated = [p.env for p in profiles().values() if p.emulated]
    ap.add_argument("--envs", default=",".join(emulated), help="emulated boards to measure, comma-separated")
    ap.add_argument("--out", default=str(KERNEL_COST_FILE))
    ap.add_argument("--work", default=str(ROOT / "build" / "bench" / "kernel_cost"))
    ap.add_argument("--refit", action="store_true",
                    help="refit the measurements already in the file (no emulator runs)")
    ap.add_argument("--weights", choices=["int8", "int4", "binary"], default="int8",
                    help="the models' width (quant.weights; the embedding at the same width)")
    args = ap.parse_args()
    envs = [e for e in args.envs.split(",") if e]
    bad = sorted(set(envs) - set(emulated))
    if bad:
        raise SystemExit(f"not emulated boards: {', '.join(bad)}; choose from {', '.join(emulated)}")
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {}
    data = {"format": 1, "note": "written by bench/kernel_cost.py; instructions (QEMU -icount), not cycles",
            "boards": data.get("boards", {})}
    for env in envs:
        board = data["boards"].get(env, {})
        widths = board.get("widths", {})
        old = board if args.weights == "int8" else widths.get(args.weights)
        if args.refit:
            if not old:
                raise SystemExit(f"{out} holds no {args.weights} measurements of {env} to refit; measure them "
                                 "without --refit")
            new = {**entry(old["measurements"]), "kernels_hash": old["kernels_hash"]}
        else:
            new = entry(measure(env, Path(args.work) / f"{env}-{args.weights}", args.weights))
        if args.weights == "int8":
            data["boards"][env] = {**new, **({"widths": widths} if widths else {})}
        elif env not in data["boards"]:
            raise SystemExit(f"{out} has no int8 entry of {env}: measure int8 first (`{Path(__file__).name} "
                             f"--envs {env}`)")
        else:
            data["boards"][env]["widths"] = {**widths, args.weights: new}
        out.write_text(dump(data))  # after each board: a later failure keeps it
    md = markdown(data)
    if out.resolve() == KERNEL_COST_FILE.resolve():  # the table of the coefficients the search uses
        results = ROOT / "bench" / "results"
        results.mkdir(parents=True, exist_ok=True)
        (results / "kernel_cost.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
