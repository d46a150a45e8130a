"""TFLite Micro and tinyseek on the same emulated Cortex-M4, the same model and the same inputs:
instructions per inference, code size and RAM, measured in one run.

    .venv/bin/python bench/tflm.py --tflm /path/to/tflite-micro \\
        --flatbuffers /path/to/flatbuffers --gemmlowp /path/to/gemmlowp --ruy /path/to/ruy

This project carries no TFLM code. The script builds TFLM from the checkouts given (TFLM and
the three header-only libraries its Makefile would download: flatbuffers with TFLM's
`tensorflow/lite/micro/tools/make/flatbuffers.patch` applied, gemmlowp, ruy) with
arm-none-eabi-g++ and the Debian package libstdc++-arm-none-eabi-newlib, the board flags of
qemu_m4 and -O2 like tinyseek's firmware, release defines (NDEBUG, TF_LITE_STRIP_ERROR_STRINGS),
and only the sources the model's four ops need: TFLM's core, its reference kernels
(UNIDIRECTIONAL_SEQUENCE_LSTM, FULLY_CONNECTED, GATHER, STRIDED_SLICE) and their helpers.
bench/tflm/tflm_driver.cc runs the default model's int8 .tflite (`tinyseek export --format
tflite`) on test inputs in QEMU mps2-an386 with -icount and prints the instructions of each
Invoke() and the int8 logits, which must equal those of the tflite-micro Python interpreter
(TFLM's reference kernels built for the host) bit for bit. tinyseek's firmware runs the same
token ids through `tinyseek bench`'s harness in the same emulator.

Writes bench/results/tflm.json and the "TFLite Micro on qemu_m4" section of bench/RESULTS.md.
QEMU counts instructions, not cycles. Objects are cached in --work between runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tinyseek.config import load  # noqa: E402
from tinyseek.pipeline import Run  # noqa: E402

from results_md import replace_section  # noqa: E402

HEADING = "## TFLite Micro on qemu_m4 (`python bench/tflm.py --tflm PATH ...`)"
RESULTS_JSON = ROOT / "bench" / "results" / "tflm.json"
DRIVER = ROOT / "bench" / "tflm"
CXX = "arm-none-eabi-g++"
BOARD = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
CXXFLAGS = [*BOARD, "--specs=nano.specs", "-O2", "-std=c++17", "-fno-rtti", "-fno-exceptions",
            "-fno-threadsafe-statics", "-ffunction-sections", "-fdata-sections", "-fno-unwind-tables",
            "-fno-asynchronous-unwind-tables", "-DTF_LITE_STATIC_MEMORY", "-DTF_LITE_DISABLE_X86_NEON",
            "-DNDEBUG", "-DTF_LITE_STRIP_ERROR_STRINGS"]
KERNELS = ("unidirectional_sequence_lstm", "lstm_eval", "lstm_eval_common", "fully_connected",
           "fully_connected_common", "gather", "strided_slice", "strided_slice_common", "kernel_util",
           "micro_tensor_utils")
CLOCK_HZ, UART_BASE = 25_000_000, 0x40004000  # mps2-an386
ARENA = 16384  # the driver's arena; it prints what TFLM used of it


def tflm_sources(tflm: Path) -> list[str]:
    """TFLM's core (as its Makefile's MICROLITE_CC_BASE_SRCS, tests excluded), the shared TFLite
    sources it builds, and the kernels of the model's ops."""
    core = [p for d in ("", "arena_allocator/", "memory_planner/", "tflite_bridge/")
            for p in sorted((tflm / "tensorflow/lite/micro" / d).glob("*.cc")) if not p.name.endswith("_test.cc")]
    shared = [p for p in sorted((tflm / "tensorflow").rglob("*.c*")) if p.suffix in (".c", ".cc")
              and not p.name.endswith("_test.cc") and "lite/micro" not in p.as_posix()
              and "lite/experimental" not in p.as_posix() and p.name != "array.cc"]
    kernels = [tflm / f"tensorflow/lite/micro/kernels/{k}.cc" for k in KERNELS]
    return [str(p.relative_to(tflm)) for p in core + shared + kernels]


def compile_all(sources: list[tuple[Path, Path]], flags: list[str], jobs: int) -> None:
    """Compile each (source, object) whose object is missing or older than the source."""
    todo = [(s, o) for s, o in sources if not o.exists() or o.stat().st_mtime < s.stat().st_mtime]

    def one(pair):
        src, obj = pair
        obj.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([CXX, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"compiling {src} failed:\n{proc.stderr[-3000:]}")

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, todo))


def section_sizes(map_file: Path, groups: dict[str, str]) -> dict[str, int]:
    """Bytes of kept .text/.rodata/.data/... input sections per group (a regex on the object path)."""
    text = map_file.read_text()
    text = text[text.index("Linker script and memory map"):]
    out = {g: 0 for g in groups} | {"other (libc, libm, libgcc)": 0}
    for m in re.finditer(r"^ (\.(?:text|rodata|data|init_array|ARM\.exidx)\S*)\s*\n?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+)",
                         text, re.M):
        obj = m.group(4)
        group = next((g for g, rx in groups.items() if re.search(rx, obj)), "other (libc, libm, libgcc)")
        out[group] += int(m.group(3), 16)
    return out


def inputs_header(path: Path, io: dict, rows: np.ndarray, last: np.ndarray, name: str, classes: int) -> None:
    steps, width = rows.shape[1], rows.shape[2]
    body = ",\n".join("{" + ",".join(str(int(v)) for v in r.reshape(-1)) + "}" for r in rows)
    path.write_text(
        "/* Generated by bench/tflm.py: the int8 inputs the driver runs. */\n#include <stdint.h>\n"
        f"extern const unsigned char {name}_model_tflite[];\n#define MODEL_ARRAY {name}_model_tflite\n"
        f"#define NUM_INPUTS {len(rows)}\n#define STEPS {steps}\n#define WIDTH {width}\n#define NUM_CLASSES {classes}\n"
        f"#define CLOCK_HZ {CLOCK_HZ}u\n#define UART_BASE 0x{UART_BASE:08x}u\n#define ARENA_BYTES {ARENA}\n"
        f"#define INPUT_SEQUENCE {io['input_sequence']}\n#define INPUT_LAST {io['input_last']}\n"
        f"static const int8_t inputs[NUM_INPUTS][STEPS * WIDTH] = {{\n{body}}};\n"
        f"static const int32_t lasts[NUM_INPUTS] = {{{','.join(str(int(v)) for v in last)}}};\n")


def run_qemu(elf: Path) -> str:
    proc = subprocess.run(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "stdio",
                           "-semihosting-config", "enable=on,target=native", "-icount", "shift=0,align=off,sleep=off",
                           "-kernel", str(elf)], capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(f"the TFLM firmware failed in QEMU (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def git_id(path: Path) -> str:
    proc = subprocess.run(["git", "-C", str(path), "describe", "--always", "--tags", "--dirty"], capture_output=True,
                          text=True)
    return proc.stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tflm", required=True, type=Path, help="a tflite-micro checkout")
    ap.add_argument("--flatbuffers", required=True, type=Path, help="flatbuffers checkout (TFLM's patch applied)")
    ap.add_argument("--gemmlowp", required=True, type=Path)
    ap.add_argument("--ruy", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "tflm", help="build folder (cached)")
    ap.add_argument("--samples", type=int, default=5, help="test inputs, spread over the token counts")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-md", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args()
    for p in (args.tflm / "tensorflow/lite/micro", args.flatbuffers / "include/flatbuffers", args.gemmlowp / "fixedpoint",
              args.ruy / "ruy"):
        if not p.is_dir():
            raise SystemExit(f"{p} is missing: pass the checkouts (see the docstring)")

    from tinyseek.export import check, export_tflite
    from tinyseek.export.tflite import padded_inputs
    from tinyseek.harness.bench import run_device_bench
    from tinyseek.quant.float_model import FloatStudent

    run = Run(load())
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    export = export_tflite(run, work / "export")
    metrics = json.loads((export / "metrics.json").read_text())
    tflite = (export / "model_int8.tflite").read_bytes()
    name = run.cfg.model_name

    # Inputs: test texts spread over the token counts, as token ids and as the int8 rows TFLM reads.
    fs = FloatStudent.from_folder(run.student_dir)
    ids_all = fs.tokenize(list(run.dataset.test.texts))
    order = sorted((len(t), i) for i, t in enumerate(ids_all) if t)
    pick = [order[k][1] for k in np.linspace(0, len(order) - 1, args.samples).round().astype(int)]
    ids = [ids_all[i] for i in pick]
    io = check.int8_io(tflite)
    table = check.embedding_table(fs.tensors["embed.weight"], io["input_scale"], io["input_zero_point"])
    x, last = padded_inputs(fs, ids, metrics["steps"])
    want, _ = check.run_all(tflite, "tflm", x, last, table, ids)
    rows = np.full((len(ids), metrics["steps"], metrics["input_width"]), io["input_zero_point"], np.int8)
    for n, t in enumerate(ids):
        rows[n, :len(t)] = table[t]
    inputs_header(work / "tflm_inputs.h", io, rows, last, name, fs.num_classes)

    # Build TFLM and the driver.
    includes = [f"-I{args.tflm}", f"-I{args.flatbuffers / 'include'}", f"-I{args.gemmlowp}", f"-I{args.ruy}"]
    flags = CXXFLAGS + includes
    tag = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:12]
    objs = [(args.tflm / s, work / f"obj-{tag}" / (s.replace("/", "_") + ".o")) for s in tflm_sources(args.tflm)]
    t_build = time.monotonic()
    compile_all(objs, flags, args.jobs)
    compile_all([(export / f"{name}_model_tflite.cc", work / "model.o")], flags + [f"-I{export}"], 1)
    driver_o = work / "driver.o"
    subprocess.run([CXX, *flags, "-fno-use-cxa-atexit", f"-I{work}", "-c", str(DRIVER / "tflm_driver.cc"), "-o",
                    str(driver_o)], check=True)
    elf, map_file = work / "tflm.elf", work / "tflm.map"
    subprocess.run([CXX, *BOARD, "--specs=nano.specs", "--specs=nosys.specs", "-nostartfiles", "-Wl,--gc-sections",
                    "-T", str(DRIVER / "mps2_tflm.ld"), f"-Wl,-Map={map_file}", str(driver_o), str(work / "model.o"),
                    *[str(o) for _, o in objs], "-lm", "-o", str(elf)], check=True, capture_output=True)
    build_s = time.monotonic() - t_build
    sizes = section_sizes(map_file, {"TFLM (interpreter, kernels)": r"/obj-", "model (.tflite array)": r"/model\.o$",
                                     "driver (startup, inputs)": r"/driver\.o$"})

    # Run TFLM on the emulator and check it against the host TFLM.
    out = run_qemu(elf)
    arena_used = int(re.search(r"arena_used (\d+)", out).group(1))
    got = {int(m.group(1)): [int(v) for v in m.group(3).split()]
           for m in re.finditer(r"^out (\d+) (\d+) (.*)$", out, re.M)}
    instr = [int(m.group(2)) for m in re.finditer(r"^out (\d+) (\d+) (.*)$", out, re.M)]
    bitexact = [got.get(n) for n in range(len(ids))] == want.astype(int).tolist()

    # tinyseek's firmware on the same token ids, same emulator.
    ts = run_device_bench("qemu_m4", run.lib_dir, ids, build_dir=work / "tinyseek")
    ts_instr = [float(r) for r in ts["latency"]["per_input"]] if "per_input" in ts.get("latency", {}) else None

    result = {
        "tflm": {"commit": git_id(args.tflm), "flatbuffers": git_id(args.flatbuffers), "gemmlowp": git_id(args.gemmlowp),
                 "ruy": git_id(args.ruy), "flags": CXXFLAGS, "kernels": "reference", "arena_used_bytes": arena_used,
                 "instructions": instr, "bitexact_with_host_tflm": bitexact, "flash_bytes": sizes,
                 "build_seconds": build_s},
        "inputs": {"tokens": [len(t) for t in ids], "steps_run_by_tflm": metrics["steps"]},
        "tinyseek": {k: v for k, v in ts.items() if k != "elf"},  # the build folder is the user's
        "tinyseek_instructions": ts_instr,
        "export": {k: metrics[k] for k in ("steps", "input_width", "embedding_table_bytes")} | {"int8_bytes": metrics["int8"]["bytes"]},
        "host_arena": f"{metrics['int8']['tflm_arena_bytes']:,} B",
        "seconds": time.monotonic() - t0,
    }
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(result, indent=1, default=str) + "\n")
    text = section(result, run)
    if not args.no_md:
        replace_section(HEADING, text)
    print(text)
    if not bitexact:
        raise SystemExit("the TFLM build on qemu_m4 does not reproduce the host TFLM's logits: its figures do not count")


def _header_macro(run, name: str) -> int:
    header = (run.lib_dir / f"{run.cfg.model_name}_model.h").read_text()
    return int(re.search(rf"#define\s+\w+_{name}\s+(\d+)", header).group(1))


def section(r: dict, run) -> str:
    t, ts = r["tflm"], r["tinyseek"]
    tokens, steps = r["inputs"]["tokens"], r["inputs"]["steps_run_by_tflm"]
    ti, si = t["instructions"], r["tinyseek_instructions"]
    # Per LSTM step: TFLM always runs `steps`; tinyseek's slope between the shortest and longest input.
    tflm_step = float(np.median(ti)) / steps
    ts_step = (si[-1] - si[0]) / (tokens[-1] - tokens[0]) if tokens[-1] > tokens[0] else float("nan")
    ts_ram = _header_macro(run, "STATE_BYTES") + _header_macro(run, "SCRATCH_BYTES")
    stack = ts["memory"]["stack_peak"]
    fl = t["flash_bytes"]
    elf = ts["memory"]["elf"]["flash"]
    table_b = r["export"]["embedding_table_bytes"]
    rows = "\n".join(f"| {n} | {a:,} | {b:,.0f} | {a / b:.1f}x |" for n, a, b in zip(tokens, ti, si))
    return "\n".join([
        HEADING, "",
        f"The committed default model's int8 .tflite (`tinyseek export --format tflite`) in TFLite Micro "
        f"{t['commit']} (flatbuffers {t['flatbuffers']} with TFLM's patch, gemmlowp {t['gemmlowp']}, ruy {t['ruy']}), "
        f"TFLM's reference kernels, built by the script with arm-none-eabi-g++ -O2 and the qemu_m4 board flags, and "
        f"tinyseek's firmware (`{ts['model']['kernel']}` kernels) on the same {len(tokens)} test inputs in QEMU "
        "mps2-an386 (Cortex-M4) with -icount: instructions, not cycles. The TFLM build's int8 logits equal the "
        f"tflite-micro Python interpreter's on every input: **{'yes' if t['bitexact_with_host_tflm'] else 'NO'}**.",
        "",
        "| tokens | TFLM instructions per inference | tinyseek | TFLM / tinyseek |",
        "|---|---|---|---|",
        rows,
        "",
        f"TFLM runs all {steps} steps of the graph whatever the input's length (TFLM cannot resize inputs); tinyseek "
        f"steps only the real tokens. Per LSTM step: TFLM {tflm_step:,.0f} (median / {steps}, head included), tinyseek "
        f"{ts_step:,.0f} (slope between {tokens[0]} and {tokens[-1]} tokens): {tflm_step / ts_step:.1f}x.",
        "",
        "| | tinyseek | TFLite Micro | TFLM / tinyseek |",
        "|---|---|---|---|",
        f"| RAM of the model | {ts_ram + stack:,} B: state + scratch {ts_ram}, firmware stack peak {stack} | tensor "
        f"arena {t['arena_used_bytes']:,} B (`arena_used_bytes()` on the M4), plus the interpreter objects and its "
        f"stack (not measured) | {t['arena_used_bytes'] / (ts_ram + stack):.1f}x (arena alone) |",
        f"| code | model code (kernels, API, tokenizer) {elf['model_code']:,} B "
        f"| TFLM interpreter and the four kernels {fl['TFLM (interpreter, kernels)']:,} B, plus C library "
        f"pieces {fl['other (libc, libm, libgcc)']:,} B | |",
        f"| model data | {elf['model_data']:,} B (weights, biases, multipliers, tables, embedding, labels) | "
        f".tflite {fl['model (.tflite array)']:,} B + embedding table {table_b:,} B = "
        f"{fl['model (.tflite array)'] + table_b:,} B | |",
        "",
        "tinyseek's goals, at least 3x less RAM than TFLM's arena and 2x fewer instructions: "
        f"{'met' if t['arena_used_bytes'] >= 3 * (ts_ram + stack) and tflm_step >= 2 * ts_step else 'NOT met'} "
        "(per step, and more so as deployed). TFLM with its CMSIS-NN kernels (OPTIMIZED_KERNEL_DIR=cmsis_nn) would be "
        "faster than its reference kernels; section CMSIS-NN comparison measures CMSIS-NN's LSTM alone on the "
        "reference shape (2.7x tinyseek's instructions on the M4). The arena is that of the 32-bit build; the "
        f"tflite-micro Python interpreter (64-bit) needs {r.get('host_arena', 'more')}. Build {t['build_seconds']:.0f} s "
        f"with cached objects, whole run {r['seconds']:.0f} s. Full results: `bench/results/tflm.json`.",
    ])


if __name__ == "__main__":
    main()
