"""Benchmark of the kernel variants on the emulated boards: instructions per inference and per
multiply-accumulate (MAC) of each variant against the portable C on the same emulator, for the
default model and for a sweep of hidden sizes; flash and RAM of each build. Writes
bench/results/kernels.json and bench/results/kernels.md (copied into bench/RESULTS.md); a run on
some boards (--envs) keeps the stored figures of the others.

    .venv/bin/python bench/kernel_bench.py                      # every emulated board, full sweep
    .venv/bin/python bench/kernel_bench.py --envs qemu_m4 --hidden 16,64 --samples 50

Every figure is a count of instructions QEMU executed with -icount (the firmware's SysTick runs
on the instruction clock), not CPU cycles: QEMU has no pipeline model. Every run is also a
bit-exactness check: the logits must equal the numpy integer reference.

- per inference: the median over the first N test texts of the default task, token ids sent
  to the board (tokenization not timed);
- per MAC, whole inference: instructions / MACs, MACs = steps * 4H(I + H) + classes * H;
- per step: from one model run at two sequence lengths, (t(T2) - t(T1)) / (T2 - T1), which
  removes the reset and the head;
- per MAC, matrix: the marginal cost of the gate matrix work, from two models that differ only
  in their input width: (step(I2) - step(I1)) / (4H (I2 - I1)) (loads, multiplies, loop).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import subprocess
from pathlib import Path

import numpy as np

from tinyseek.codegen.context import requant_mode
from tinyseek.codegen.render import render
from tinyseek.config import load
from tinyseek.harness.bench import run_device_bench
from tinyseek.quant.model import QuantModel
from tinyseek.quant.reference import infer_sequences, infer_tokens
from tinyseek.quant.synthetic import random_model, random_sequences
from tinyseek.student.tokenizer import HashTokenizer

ROOT = Path(__file__).resolve().parents[1]
PORTABLE = ["-DTINYSEEK_KERNEL_PORTABLE"]
ENVS = ["qemu_m4", "qemu_m7", "qemu_m55", "qemu_rv32"]
STEPS = (4, 12)  # the two sequence lengths of the per-step figures
SWEEP_INPUTS = (32, 64)  # the two input widths of the matrix figure


class BitExactError(AssertionError):
    """A board's logits differ from the integer reference: no figure of that run counts."""


def macs_per_step(model: QuantModel) -> int:
    return sum(4 * L.hidden * (L.input_size + L.hidden) for L in model.layers)


def _run(env: str, lib: Path, inputs, want: np.ndarray, flags: list[str], work: Path) -> dict:
    out = run_device_bench(env, lib, inputs, build_dir=work, extra_flags=flags)
    if out["logits"] != want.tolist():
        raise BitExactError(f"{env} {out['model']['kernel']}: {lib.name} is not bit-exact")
    return out


def _memory(out: dict) -> dict:
    elf = out["memory"]["elf"]
    return {"flash_model": elf["flash"]["model"], "flash_runtime": elf["flash"]["runtime"],
            "ram_static": elf["ram"]["static"], "ram_model": elf["ram"]["model"],
            "stack_peak": out["memory"]["stack_peak"]}


def default_model(env: str, samples: int, work: Path) -> dict:
    """Variant vs portable on the committed default model."""
    model = QuantModel.load(ROOT / "models" / "intents" / "int8")
    data = __import__("tinyseek.data", fromlist=["load_task"]).load_task(load().task)
    tok = HashTokenizer(model.vocab_size, model.max_len)
    ids = [t for t in (tok.encode(x) for x in data.test.texts) if t][:samples]
    want = infer_tokens(model, ids)
    lib = ROOT / "firmware" / "lib" / model.name
    macs = np.array([len(t) * macs_per_step(model) + model.num_classes * model.layers[-1].hidden for t in ids])
    result = {"samples": len(ids), "macs_per_inference_median": float(np.median(macs))}
    for label, flags in (("variant", []), ("c", PORTABLE)):
        out = _run(env, lib, ids, want, flags, work / f"default-{label}")
        per = np.array(out["latency"]["per_input"])
        result[label] = {"kernel": out["model"]["kernel"], "instructions_median": float(np.median(per)),
                         "instructions_per_mac": float(per.sum() / macs.sum()), "memory": _memory(out)}
    result["speedup"] = result["c"]["instructions_median"] / result["variant"]["instructions_median"]
    return result


# The reference LSTM of the CMSIS-NN comparison in bench/RESULTS.md (the same shape built with
# arm_lstm_unidirectional_s8 + arm_fully_connected_s8): 24 steps, input 32, hidden 64, then a
# fully-connected 64 -> 13 on the last h; 24 * 4*64*(32+64) + 13*64 = 590,656 MACs.
REFERENCE = {"steps": 24, "input": 32, "hidden": 64, "classes": 13}


def _model_functions(elf: Path, name: str) -> list[str]:
    """The model library's functions in the ELF: the kernels and the model's API."""
    syms = subprocess.run(["arm-none-eabi-readelf", "-Ws", str(elf)], capture_output=True, text=True, check=True).stdout
    return sorted({f[7] for f in (ln.split() for ln in syms.splitlines())
                   if len(f) >= 8 and f[3] == "FUNC" and f[7].startswith(f"{name}_")})


def traced_cycles(env: str, out: dict, inputs, name: str) -> dict:
    """bench/cycles.py's estimate for the model's functions, from one more run of the same
    firmware on the first input with QEMU's instruction trace on."""
    from cycles import estimate_elf  # bench/cycles.py
    from tinyseek.harness.bench import _session
    from tinyseek.harness.boards import load_profile
    from tinyseek.harness.qemu import QemuProcess

    elf = Path(out["elf"])
    machine = load_profile(env).machine()

    def run(extra):
        with QemuProcess(elf, dataclasses.replace(machine, extra=machine.extra + tuple(extra))) as qemu:
            _session(qemu.url, list(inputs[:1]), 1, 0, 600.0, subwords=0)

    est = estimate_elf(elf, env, _model_functions(elf, name), run=run)
    return est | {"traced_cycles": est["cycles"]}


def reference_lstm(env: str, work: Path, cycles: bool = False) -> dict:
    """Instructions of one inference of the reference shape, variant and portable C; with
    `cycles`, also bench/cycles.py's estimate (Cortex-M boards) and the model's code bytes."""
    R = REFERENCE
    model = random_model(7, kind="sequence", hidden=R["hidden"], input_size=R["input"], num_classes=R["classes"],
                         name="reflstm")
    xs = random_sequences(model, np.random.default_rng(7), 3, R["steps"])
    want = infer_sequences(model, xs)
    lib = work / "lib" / model.name
    render(model, lib)
    macs = R["steps"] * macs_per_step(model) + R["classes"] * R["hidden"]
    result = {"shape": R, "macs": macs}
    for label, flags in (("variant", []), ("c", PORTABLE)):
        out = _run(env, lib, list(xs), want, flags, work / f"reflstm-{label}")
        per = float(np.median(out["latency"]["per_input"]))
        result[label] = {"kernel": out["model"]["kernel"], "instructions": per, "instructions_per_mac": per / macs,
                         "code_bytes": out["memory"]["elf"]["flash"]["model_code"]}
        if cycles:
            est = traced_cycles(env, out, xs, model.name)
            result[label]["cycles"] = est | {"cycles": per * est["cpi"]}
    return result


def _per_step(env: str, model: QuantModel, flags: list[str], work: Path) -> tuple[float, str]:
    rng = np.random.default_rng(0)
    inputs = [x for T in STEPS for x in random_sequences(model, rng, 3, T)]
    want = infer_sequences(model, np.stack(inputs[:3])).tolist() + infer_sequences(model, np.stack(inputs[3:])).tolist()
    lib = work / "lib" / model.name
    render(model, lib)
    out = _run(env, lib, inputs, np.array(want), flags, work / f"build-{model.name}")
    per = out["latency"]["per_input"]
    t1, t2 = np.median(per[:3]), np.median(per[3:])
    return float((t2 - t1) / (STEPS[1] - STEPS[0])), out["model"]["kernel"]


def sweep_models(H: int) -> list[QuantModel]:
    """Two one-layer models that differ only in extra input columns of W_x: the same shifts,
    multipliers and biases, so the same requantization paths; the difference is matrix work."""
    I1, I2 = SWEEP_INPUTS
    narrow = random_model(H, kind="sequence", hidden=H, input_size=I1, num_classes=8, name=f"sw{H}x{I1}")
    wide = copy.deepcopy(narrow)
    wide.name, wide.num_features = f"sw{H}x{I2}", I2
    extra = random_model(H + 1, kind="sequence", hidden=H, input_size=I2 - I1).layers[0].w_x
    wide.layers[0].w_x = np.concatenate([narrow.layers[0].w_x, extra], axis=1)
    wide.layers[0].input_size = I2
    wide.validate()
    for a, b in ((narrow.layers[0].w_x, wide.layers[0].w_x), (narrow.layers[0].w_h, wide.layers[0].w_h)):
        if requant_mode(a, narrow.layers[0].nx) != requant_mode(b, narrow.layers[0].nx):
            raise ValueError(f"hidden {H}: the wider input changes the requantization form; pick other sizes")
    return [narrow, wide]


def sweep(env: str, hidden: list[int], work: Path) -> list[dict]:
    rows = []
    for H in hidden:
        for label, flags in (("variant", []), ("c", PORTABLE)):
            steps, kernel = {}, None
            for I, model in zip(SWEEP_INPUTS, sweep_models(H)):
                steps[I], kernel = _per_step(env, model, flags, work / label)
            I1, I2 = SWEEP_INPUTS
            macs = 4 * H * (I1 + H)
            rows.append({"hidden": H, "input": I1, "kernel": kernel, "instructions_per_step": steps[I1],
                         "macs_per_step": macs, "instructions_per_mac_step": steps[I1] / macs,
                         "instructions_per_mac_matrix": (steps[I2] - steps[I1]) / (4 * H * (I2 - I1))})
    return rows


def markdown(results: dict) -> str:
    lines = ["Default model (`models/intents`, text, 1 LSTM layer 32 -> 64, head 64 -> 15), median over "
             f"the first {next(iter(results['default'].values()))['samples']} test texts. QEMU -icount "
             "instructions, not cycles.", "",
             "| board | variant | instructions / inference | per MAC | portable C | per MAC | speedup | "
             "runtime flash | model flash | static RAM | stack peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for env, r in results["default"].items():
        v, c = r["variant"], r["c"]
        m = v["memory"]
        lines.append(f"| {env} | {v['kernel']} | {v['instructions_median']:,.0f} | {v['instructions_per_mac']:.2f} | "
                     f"{c['instructions_median']:,.0f} | {c['instructions_per_mac']:.2f} | {r['speedup']:.2f}x | "
                     f"{m['flash_runtime']:,} B | {m['flash_model']:,} B | {m['ram_static']:,} B | {m['stack_peak']:,} B |")
    R = REFERENCE
    lines += ["", f"Reference LSTM ({R['steps']} steps, input {R['input']}, hidden {R['hidden']}, fully-connected "
              f"{R['hidden']} -> {R['classes']}; the shape of the CMSIS-NN comparison), one inference:", "",
              "| board | variant | instructions | per MAC | portable C | per MAC |", "|---|---|---|---|---|---|"]
    for env, r in results["reference"].items():
        v, c = r["variant"], r["c"]
        lines.append(f"| {env} | {v['kernel']} | {v['instructions']:,.0f} | {v['instructions_per_mac']:.2f} | "
                     f"{c['instructions']:,.0f} | {c['instructions_per_mac']:.2f} |")
    lines += ["", f"Hidden-size sweep (sequence models, input {SWEEP_INPUTS[0]}): instructions per LSTM step and per "
              "MAC; *matrix* is the marginal cost of one more MAC of gate matrix work "
              f"(input {SWEEP_INPUTS[0]} vs {SWEEP_INPUTS[1]}).", "",
              "| board | hidden | MACs / step | variant | per step | per MAC | per MAC, matrix | "
              "portable per step | per MAC | per MAC, matrix |", "|---|---|---|---|---|---|---|---|---|---|"]
    for env, rows in results["sweep"].items():
        by = {}
        for row in rows:
            by.setdefault(row["hidden"], {})["c" if row["kernel"] == "c" else "v"] = row
        for H, pair in by.items():
            v, c = pair["v"], pair["c"]
            lines.append(f"| {env} | {H} | {v['macs_per_step']:,} | {v['kernel']} | {v['instructions_per_step']:,.0f} | "
                         f"{v['instructions_per_mac_step']:.2f} | {v['instructions_per_mac_matrix']:.2f} | "
                         f"{c['instructions_per_step']:,.0f} | {c['instructions_per_mac_step']:.2f} | "
                         f"{c['instructions_per_mac_matrix']:.2f} |")
    return "\n".join(lines) + "\n"


def _stored(path: Path) -> dict:
    """The figures of an earlier run: a run on some boards keeps the other boards' figures."""
    stored = json.loads(path.read_text()) if path.exists() else {}
    return {section: dict(stored.get(section, {})) for section in ("default", "reference", "sweep")}


def _board_order(env: str) -> tuple:
    return (ENVS.index(env) if env in ENVS else len(ENVS), env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", default=",".join(ENVS))
    ap.add_argument("--samples", type=int, default=200, help="default model: test texts per board")
    ap.add_argument("--hidden", default="16,32,64,128,256", help="sweep: hidden sizes ('' to skip)")
    ap.add_argument("--work", default=str(ROOT / "build" / "bench" / "kernels"))
    args = ap.parse_args()
    envs = [e for e in args.envs.split(",") if e]
    hidden = [int(h) for h in args.hidden.split(",") if h]
    work = Path(args.work)
    out = ROOT / "bench" / "results"
    results = _stored(out / "kernels.json")
    results.update(machine=platform.machine(), unit="instructions (QEMU -icount), not cycles")
    for env in envs:
        print(f"[kernels] {env}: default model", flush=True)
        results["default"][env] = default_model(env, args.samples, work / env)
        results["reference"][env] = reference_lstm(env, work / env)
        if hidden:
            print(f"[kernels] {env}: sweep {hidden}", flush=True)
            results["sweep"][env] = sweep(env, hidden, work / env)
    out.mkdir(parents=True, exist_ok=True)
    for section in ("default", "reference", "sweep"):  # boards in ENVS order, whichever run measured them
        results[section] = {e: results[section][e] for e in sorted(results[section], key=_board_order)}
    (out / "kernels.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "kernels.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
