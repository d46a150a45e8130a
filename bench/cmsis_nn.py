"""CMSIS-NN and tinyseek on the same LSTM shape, the same emulators and the same compiler:
instructions per inference (and, with bench/cycles.py, estimated cycles) and code size.

    .venv/bin/python bench/cmsis_nn.py --cmsis-nn /path/to/CMSIS-NN [--cmsis-core /path/to/CMSIS_6]

This project carries no CMSIS-NN code. The script compiles the CMSIS-NN integer sources
(LSTM, fully connected, support, activation and element-wise folders) from the checkout given,
with arm-none-eabi-gcc and the flags tinyseek's firmware uses on each board (the board's CPU
flags from firmware/platform/tinyseek-qemu/boards, --specs=nano.specs, -O2, -ffunction-sections
-fdata-sections), links them with bench/cmsis_nn/cmsis_nn_driver.c and runs the reference LSTM
of bench/kernel_bench.py (24 steps, input 32, hidden 64, then a fully-connected 64 -> 13 on the
last h: 590,656 MACs) through `arm_lstm_unidirectional_s8` + `arm_fully_connected_s8` on three
int8 input sequences in QEMU with -icount:

- qemu_m4 (mps2-an386, Cortex-M4): CMSIS-NN's DSP path, and its portable C path (the same
  flags with -U__ARM_FEATURE_DSP, so CMSIS-NN selects no DSP code);
- qemu_m55 (mps3-an547, Cortex-M55): CMSIS-NN's MVE (Helium) path, and its portable C path
  (-U__ARM_FEATURE_MVE -U__ARM_FEATURE_DSP).

tinyseek's kernels (its board variant and its portable C, -DTINYSEEK_KERNEL_PORTABLE) run the
same shape through `reference_lstm` of bench/kernel_bench.py in the same run, bit-exact against
the integer reference. The CMSIS-NN model follows TFLite's quantization, tinyseek its own, so
their logits are not compared with each other; every CMSIS-NN build of a run must give the same
logits as the others (four builds, three code paths), and they must be neither constant nor
mostly saturated, or the figures do not count. --cmsis-core adds CMSIS_6's Core/Include to the
include path (recorded; CMSIS-NN from 4.1 on needs no CMSIS-Core header).

Writes bench/results/cmsis_nn.json, bench/results/cmsis_nn.md and the "CMSIS-NN comparison"
section of bench/RESULTS.md. QEMU counts instructions, not cycles: the cycle columns are the
static estimate of bench/cycles.py (docs/kernels.md, section Cycles).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from results_md import replace_section  # noqa: E402

HEADING = "## CMSIS-NN comparison"
RESULTS_JSON = ROOT / "bench" / "results" / "cmsis_nn.json"
RESULTS_MD = ROOT / "bench" / "results" / "cmsis_nn.md"
DRIVER = ROOT / "bench" / "cmsis_nn" / "cmsis_nn_driver.c"
BOARDS = ROOT / "firmware" / "platform" / "tinyseek-qemu" / "boards"
LDSCRIPTS = ROOT / "firmware" / "platform" / "tinyseek-qemu" / "ldscripts"
ENV_BOARD = {"qemu_m4": "qemu_mps2_an386", "qemu_m55": "qemu_mps3_an547"}
CC = "arm-none-eabi-gcc"
CFLAGS = ["--specs=nano.specs", "-O2", "-ffunction-sections", "-fdata-sections"]  # as the firmware's
# (build name, env, features CMSIS-NN must not see): its optimised path, then its portable C.
BUILDS = [("cmsis-nn-dsp", "qemu_m4", []), ("cmsis-nn-c", "qemu_m4", ["__ARM_FEATURE_DSP"]),
          ("cmsis-nn-mve", "qemu_m55", []), ("cmsis-nn-c", "qemu_m55", ["__ARM_FEATURE_MVE", "__ARM_FEATURE_DSP"])]
SOURCE_DIRS = ("LSTMFunctions", "FullyConnectedFunctions", "NNSupportFunctions", "ActivationFunctions",
               "BasicMathFunctions")
SEED, NUM_INPUTS = 7, 3


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: m = q * 2^shift, q a Q0.31 in [0.5, 1)."""
    if m == 0:
        return 0, 0
    q, e = math.frexp(m)
    qi = round(q * (1 << 31))
    if qi == 1 << 31:
        qi, e = qi // 2, e + 1
    return qi, e


def reference_model(shape: dict) -> dict:
    """Random int8 weights (fixed seed) with multipliers from plausible real scales: inputs 1/64,
    h 1/127, weights 0.2-0.35 / 127, gates and cell Q3.12, so no shortcut path runs."""
    T, I, H, C = shape["steps"], shape["input"], shape["hidden"], shape["classes"]
    rng = np.random.default_rng(SEED)
    s_x, s_h, s_gate = 1 / 64, 1 / 127, 2.0 ** -12
    sw_x, sw_h = rng.uniform(0.2, 0.35, 4) / 127, rng.uniform(0.2, 0.35, 4) / 127
    m = {"T": T, "IN": I, "H": H, "CLASSES": C, "X_ZERO_POINT": 3, "H_ZERO_POINT": -2, "LOGIT_ZERO_POINT": 1,
         "CELL_SCALE_POWER": -12}
    m["w_x"] = rng.integers(-127, 128, (4, H * I), dtype=np.int8)
    m["w_h"] = rng.integers(-127, 128, (4, H * H), dtype=np.int8)
    m["bias"] = np.stack([rng.uniform(-0.5, 0.5, H) / (s_x * sw_x[k]) for k in range(4)]).round().astype(np.int32)
    xm = [quantize_multiplier(s_x * sw_x[k] / s_gate) for k in range(4)]
    hm = [quantize_multiplier(s_h * sw_h[k] / s_gate) for k in range(4)]
    m["X_MULT"], m["X_SHIFT"] = [a for a, _ in xm], [b for _, b in xm]
    m["H_MULT"], m["H_SHIFT"] = [a for a, _ in hm], [b for _, b in hm]
    m["FORGET_TO_CELL_MULT"], m["FORGET_TO_CELL_SHIFT"] = quantize_multiplier(2.0 ** -15)
    m["INPUT_TO_CELL_MULT"], m["INPUT_TO_CELL_SHIFT"] = quantize_multiplier(2.0 ** -30 / 2.0 ** -12)
    m["OUT_MULT"], m["OUT_SHIFT"] = quantize_multiplier(2.0 ** -30 / s_h)
    s_fw, s_logit = 0.5 / 127, 0.05
    m["fc_w"] = rng.integers(-127, 128, C * H, dtype=np.int8)
    m["fc_bias"] = np.zeros(C, np.int32)
    m["FC_MULT"], m["FC_SHIFT"] = quantize_multiplier(s_h * s_fw / s_logit)
    m["inputs"] = rng.integers(-128, 128, (NUM_INPUTS, T * I), dtype=np.int8)
    return m


def model_header(m: dict, clock_hz: int, uart_base: int, num_inputs: int = NUM_INPUTS) -> str:
    def arr(a) -> str:
        a = np.asarray(a)
        if a.ndim == 1:
            return "{" + ",".join(str(int(v)) for v in a) + "}"
        return "{" + ",\n".join(arr(r) for r in a) + "}"

    lines = ["/* Generated by bench/cmsis_nn.py: the reference LSTM in CMSIS-NN's form. */", "#include <stdint.h>",
             f"#define CLOCK_HZ {clock_hz}u", f"#define UART_BASE 0x{uart_base:08x}u", f"#define NUM_INPUTS {num_inputs}"]
    for k, v in m.items():
        if isinstance(v, int):
            lines.append(f"#define {k} ({v})")
    for k in ("X_MULT", "X_SHIFT", "H_MULT", "H_SHIFT"):
        lines.append(f"static const int32_t {k}[4] = {arr(m[k])};")
    for k, ty in (("w_x", "int8_t"), ("w_h", "int8_t"), ("bias", "int32_t")):
        lines.append(f"static const {ty} {k}[4][{m[k].shape[1]}] = {arr(m[k])};")
    lines.append(f"static const int8_t fc_w[{m['fc_w'].size}] = {arr(m['fc_w'])};")
    lines.append(f"static const int32_t fc_bias[{m['fc_bias'].size}] = {arr(m['fc_bias'])};")
    lines.append(f"static const int8_t inputs[NUM_INPUTS][T * IN] = {arr(m['inputs'][:num_inputs])};")
    return "\n".join(lines) + "\n"


def board(env: str) -> dict:
    return json.loads((BOARDS / f"{ENV_BOARD[env]}.json").read_text())["build"]


def git_id(path: Path | None) -> dict | None:
    if path is None:
        return None

    def git(*a):
        return subprocess.run(["git", "-C", str(path), *a], capture_output=True, text=True).stdout.strip()
    return {"path": str(path), "commit": git("rev-parse", "HEAD") or "unknown",
            "describe": git("describe", "--always", "--tags", "--dirty") or "unknown"}


def cmsis_sources(cmsis_nn: Path) -> list[Path]:
    return [p for d in SOURCE_DIRS for p in sorted((cmsis_nn / "Source" / d).glob("*.c"))
            if not re.search(r"_f16\.c$|_f32\.c$|_flt\.c$", p.name)]


def compile_one(src: Path, obj: Path, flags: list[str]) -> None:
    if obj.exists() and obj.stat().st_mtime >= src.stat().st_mtime:
        return
    obj.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([CC, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"compiling {src} failed:\n{proc.stderr[-3000:]}")


def code_bytes(map_file: Path, pattern: str) -> int:
    """Bytes of the kept .text/.rodata input sections of the objects whose path matches."""
    text = map_file.read_text()
    text = text[text.index("Linker script and memory map"):]
    total = 0
    for m in re.finditer(r"^ (\.(?:text|rodata)\S*)\s*\n?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+)", text, re.M):
        if re.search(pattern, m.group(4)):
            total += int(m.group(3), 16)
    return total


def run_qemu(machine: str, elf: Path) -> str:
    proc = subprocess.run(["qemu-system-arm", "-M", machine, "-nographic", "-monitor", "none", "-serial", "stdio",
                           "-semihosting-config", "enable=on,target=native", "-icount", "shift=0,align=off,sleep=off",
                           "-kernel", str(elf)], capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(f"the CMSIS-NN firmware failed in QEMU {machine} (exit {proc.returncode}):\n"
                         f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def build_and_run(name: str, env: str, undef: list[str], model: dict, args, work: Path) -> dict:
    b = board(env)
    clock = int(b["f_cpu"].rstrip("L"))
    inc = [f"-I{args.cmsis_nn / 'Include'}", f"-I{args.cmsis_nn}"]
    if args.cmsis_core:
        inc.append(f"-I{args.cmsis_core / 'CMSIS' / 'Core' / 'Include'}")
    flags = [*b["cpu_flags"], *CFLAGS, *[f"-U{u}" for u in undef], "-DARM_NN_ENABLE_F16=0", "-DARM_NN_ENABLE_F32=0",
             *inc]
    tag = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:12]
    objs = []
    for src in cmsis_sources(args.cmsis_nn):
        obj = work / f"obj-{tag}" / (src.name + ".o")
        compile_one(src, obj, flags)
        objs.append(obj)
    def link(bdir: Path, num_inputs: int) -> tuple[Path, Path]:
        bdir.mkdir(parents=True, exist_ok=True)
        (bdir / "cmsis_nn_model.h").write_text(model_header(model, clock, int(b["uart_base"], 16), num_inputs))
        driver = bdir / "driver.o"
        subprocess.run([CC, *flags, f"-I{bdir}", "-c", str(DRIVER), "-o", str(driver)], check=True)
        elf, map_file = bdir / "cmsis_nn.elf", bdir / "cmsis_nn.map"
        subprocess.run([CC, *b["cpu_flags"], "--specs=nano.specs", "--specs=nosys.specs", "-nostartfiles",
                        "-Wl,--gc-sections", f"-L{LDSCRIPTS}", "-T", b["ldscript"], f"-Wl,-Map={map_file}",
                        str(driver), *map(str, objs), "-o", str(elf)], check=True, capture_output=True)
        return elf, map_file

    elf, map_file = link(work / f"{env}-{name}", NUM_INPUTS)
    out = run_qemu(b["qemu_machine"], elf)
    rows = [m.groups() for m in re.finditer(r"^out (\d+) (\d+) (.*?)\s*$", out, re.M)]
    if len(rows) != NUM_INPUTS:
        raise SystemExit(f"{env} {name}: expected {NUM_INPUTS} results, the firmware printed:\n{out}")
    per = [int(t) * 1e9 / clock for _, t, _ in rows]
    logits = [[int(v) for v in lg.split()] for _, _, lg in rows]
    kept = re.findall(r"^ \.text\.(arm_\w+)", map_file.read_text().split("Linker script and memory map")[1], re.M)
    return {"kernel": name, "env": env, "undefined": undef, "per_input": per, "instructions": float(np.median(per)),
            "logits": logits, "code_bytes": code_bytes(map_file, r"/obj-"), "functions": sorted(set(kept)),
            "trace_elf": str(link(work / f"{env}-{name}-trace", 1)[0])}


def estimate(r: dict, est: dict) -> dict:
    """Estimated cycles of one inference: its instructions times the CPI of the traced mix."""
    return est | {"cycles": r["instructions"] * est["cpi"], "traced_cycles": est["cycles"]}


def check_logits(results: list[dict]) -> None:
    first = results[0]["logits"]
    for r in results[1:]:
        if r["logits"] != first:
            raise SystemExit(f"{r['env']} {r['kernel']} gives other logits than {results[0]['env']} "
                             f"{results[0]['kernel']}: {r['logits']} vs {first}")
    flat = np.array(first)
    if len(np.unique(flat)) < 4 or np.mean(np.abs(flat) >= 127) > 0.5:
        raise SystemExit(f"the CMSIS-NN logits are constant or saturated ({first}): pick other scales")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cmsis-nn", required=True, type=Path, help="a CMSIS-NN checkout (github ARM-software/CMSIS-NN)")
    ap.add_argument("--cmsis-core", type=Path, help="a CMSIS_6 checkout (github ARM-software/CMSIS_6), optional")
    ap.add_argument("--envs", default="qemu_m4,qemu_m55")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "cmsis_nn", help="build folder (cached)")
    ap.add_argument("--no-md", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args()
    args.cmsis_nn = args.cmsis_nn.resolve()
    if not (args.cmsis_nn / "Include" / "arm_nnfunctions.h").is_file():
        raise SystemExit(f"{args.cmsis_nn} is not a CMSIS-NN checkout (no Include/arm_nnfunctions.h): pass "
                         "--cmsis-nn PATH of a clone of https://github.com/ARM-software/CMSIS-NN")
    if args.cmsis_core:
        args.cmsis_core = args.cmsis_core.resolve()
        if not (args.cmsis_core / "CMSIS" / "Core" / "Include" / "cmsis_compiler.h").is_file():
            raise SystemExit(f"{args.cmsis_core} is not a CMSIS_6 checkout (no CMSIS/Core/Include/cmsis_compiler.h): "
                             "pass --cmsis-core PATH of a clone of https://github.com/ARM-software/CMSIS_6")

    from cycles import estimate_elf  # noqa: E402  (bench/cycles.py)
    from kernel_bench import REFERENCE, reference_lstm  # noqa: E402

    envs = [e for e in args.envs.split(",") if e]
    t0 = time.monotonic()
    work = args.work.resolve()
    model = reference_model(REFERENCE)
    macs = REFERENCE["steps"] * 4 * REFERENCE["hidden"] * (REFERENCE["input"] + REFERENCE["hidden"]) \
        + REFERENCE["classes"] * REFERENCE["hidden"]
    cmsis = []
    for name, env, undef in BUILDS:
        if env in envs:
            print(f"[cmsis_nn] {env}: {name}", flush=True)
            r = build_and_run(name, env, undef, model, args, work)
            r["cycles"] = estimate(r, estimate_elf(Path(r.pop("trace_elf")), env, r["functions"]))
            cmsis.append(r)
    check_logits(cmsis)
    tiny = {}
    for env in envs:
        print(f"[cmsis_nn] {env}: tinyseek reference_lstm", flush=True)
        tiny[env] = reference_lstm(env, work / "tinyseek" / env, cycles=True)
    cc = subprocess.run([CC, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    result = {"unit": "instructions (QEMU -icount), not cycles; cycles: static estimate (bench/cycles.py)",
              "shape": REFERENCE, "macs": macs, "inputs": NUM_INPUTS, "compiler": cc,
              "flags": CFLAGS, "cmsis_nn": git_id(args.cmsis_nn), "cmsis_core": git_id(args.cmsis_core),
              "cmsis": cmsis, "tinyseek": tiny, "seconds": time.monotonic() - t0}
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(result, indent=1) + "\n")
    text = section(result)
    RESULTS_MD.write_text(text)
    if not args.no_md:
        replace_section(HEADING, text)
    print(text)


# The kernel goals on this shape: instructions per MAC of the board variant, and how many times
# fewer instructions than CMSIS-NN's optimised path; the portable C against CMSIS-NN's own.
GOALS = {"qemu_m4": (1.10, 3.0), "qemu_m55": (0.30, 4.0)}


def goals(r: dict) -> str:
    macs, out = r["macs"], []
    for c in r["cmsis"]:
        t = r["tinyseek"][c["env"]]
        if c["kernel"] == "cmsis-nn-c":
            if c["env"] == "qemu_m4":
                ratio = t["c"]["instructions"] / c["instructions"]
                out.append(f"{c['env']} portable C {ratio:.2f}x CMSIS-NN's portable C (goal <= 1.10x: "
                           f"{'met' if ratio <= 1.10 else 'NOT met'})")
            continue
        per, limit = t["variant"]["instructions"] / macs, GOALS[c["env"]]
        ratio = c["instructions"] / t["variant"]["instructions"]
        out.append(f"{c['env']} {t['variant']['kernel']} {per:.3f} per MAC (goal <= {limit[0]:.2f}: "
                   f"{'met' if per <= limit[0] else 'NOT met'}), {ratio:.2f}x fewer than CMSIS-NN (goal >= "
                   f"{limit[1]:.0f}x: {'met' if ratio >= limit[1] else 'NOT met'})")
    return "Goals: " + "; ".join(out) + "."


def section(r: dict) -> str:
    macs, nn = r["macs"], r["cmsis_nn"]
    core = r["cmsis_core"]
    rows = []
    for c in r["cmsis"]:
        t = r["tinyseek"][c["env"]]
        ts = t["c"] if c["kernel"] == "cmsis-nn-c" else t["variant"]
        cy_c, cy_t = c["cycles"]["cycles"], ts.get("cycles", {}).get("cycles")
        rows.append(f"| {c['env']} | {c['kernel']} | {c['instructions']:,.0f} | {c['instructions'] / macs:.2f} | "
                    f"{ts['kernel']} | {ts['instructions']:,.0f} | {ts['instructions'] / macs:.2f} | "
                    f"**{c['instructions'] / ts['instructions']:.2f}x** | "
                    + (f"{cy_c:,.0f} | {cy_t:,.0f} | **{cy_c / cy_t:.2f}x**" if cy_t else "- | - | -")
                    + f" | {c['code_bytes']:,} B | {ts.get('code_bytes', 0):,} B |")
    return "\n".join([
        HEADING + " (`python bench/cmsis_nn.py --cmsis-nn PATH --cmsis-core PATH`)", "",
        f"CMSIS-NN's `arm_lstm_unidirectional_s8` + `arm_fully_connected_s8` against tinyseek's generated kernels "
        f"on the reference LSTM of `bench/kernel_bench.py` ({r['shape']['steps']} steps, input {r['shape']['input']}, "
        f"hidden {r['shape']['hidden']}, fully-connected {r['shape']['hidden']} -> {r['shape']['classes']} on the "
        f"last h; {macs:,} MACs), one inference, median over {r['inputs']} int8 input sequences, on the same "
        f"emulator. CMSIS-NN {nn['describe']} (commit {nn['commit']})"
        + (f", CMSIS_6 {core['describe']} on the include path" if core else "")
        + f", built by the script from the checkout with {r['compiler']} and the firmware's flags (board CPU flags, "
        "`--specs=nano.specs -O2 -ffunction-sections -fdata-sections`); its portable C is the same build with the "
        "DSP/MVE feature macros undefined. Each runs alone behind a small driver (`bench/cmsis_nn/cmsis_nn_driver.c`: "
        "startup, SysTick, UART), tinyseek behind its firmware (`reference_lstm`, bit-exact against the integer "
        "reference); the kernel sums TFLite precomputes are computed once before the timed runs. Instructions: QEMU "
        "-icount, not cycles. Cycles: the static estimate of `bench/cycles.py` (docs/kernels.md, section Cycles): "
        "every executed instruction priced by the core's published timings, an estimate, not a measurement. "
        "Code: bytes of CMSIS-NN's functions kept by the linker; tinyseek's model code (kernels and model "
        "functions, without weights).", "",
        "| board | CMSIS-NN | instructions | per MAC | tinyseek | instructions | per MAC | CMSIS-NN / tinyseek | "
        "CMSIS-NN est. cycles | tinyseek est. cycles | ratio in cycles | CMSIS-NN code | tinyseek code |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        "- Same shape and same kind of work, not the same numerics: int8 weights and activations, int16 gates and "
        "cell state, every step the full 4H(I + H) MACs (CMSIS-NN gets a zeroed h and c as its state, so its first "
        "step also does the recurrent product, as tinyseek's does), a fully-connected layer on the last h. "
        "CMSIS-NN follows TFLite's quantization (zero points, effective scales), tinyseek its own integer spec, so "
        "the outputs are not compared bit for bit. The CMSIS-NN model has random int8 weights (fixed seed) and "
        "multipliers from plausible real scales (inputs 1/64, h 1/127, weights 0.2-0.35/127, gates and cell "
        "Q3.12); every CMSIS-NN build (DSP, MVE, both portable C) gives the same logits, neither constant nor "
        "saturated.",
        "- " + goals(r),
        f"- Full results: `bench/results/cmsis_nn.json` (run {r['seconds']:.0f} s).",
    ]) + "\n"


if __name__ == "__main__":
    main()
