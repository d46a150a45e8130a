"""TFLite Micro and tinyseek on the same emulated Cortex-M4, the same model and the same inputs:
instructions per inference, code size and RAM, measured in one run.

    .venv/bin/python bench/tflm.py --tflm /path/to/tflite-micro \\
        --flatbuffers /path/to/flatbuffers --gemmlowp /path/to/gemmlowp --ruy /path/to/ruy \\
        [--cmsis-nn /path/to/CMSIS-NN]

This project carries no TFLM code. The script builds TFLM from the checkouts given (TFLM and
the three header-only libraries its Makefile would download: flatbuffers with TFLM's
`tensorflow/lite/micro/tools/make/flatbuffers.patch` applied, gemmlowp, ruy) with
arm-none-eabi-g++ and the Debian package libstdc++-arm-none-eabi-newlib, the board flags of
qemu_m4 and -O2 like tinyseek's firmware, release defines (NDEBUG, TF_LITE_STRIP_ERROR_STRINGS),
and only the sources the model's four ops need: TFLM's core, its reference kernels
(UNIDIRECTIONAL_SEQUENCE_LSTM, FULLY_CONNECTED, GATHER, STRIDED_SLICE) and their helpers. With
--cmsis-nn it builds TFLM a second time with its CMSIS-NN kernels for the LSTM and the fully
connected layer (what TFLM's OPTIMIZED_KERNEL_DIR=cmsis_nn selects, at the CMSIS-NN commit
its Makefile pins, 4ab83cc3) and the CMSIS-NN C sources.
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
CXX, CC = "arm-none-eabi-g++", "arm-none-eabi-gcc"
BOARD = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
CXXFLAGS = [*BOARD, "--specs=nano.specs", "-O2", "-std=c++17", "-fno-rtti", "-fno-exceptions",
            "-fno-threadsafe-statics", "-ffunction-sections", "-fdata-sections", "-fno-unwind-tables",
            "-fno-asynchronous-unwind-tables", "-DTF_LITE_STATIC_MEMORY", "-DTF_LITE_DISABLE_X86_NEON",
            "-DNDEBUG", "-DTF_LITE_STRIP_ERROR_STRINGS"]
KERNELS = ("unidirectional_sequence_lstm", "lstm_eval", "lstm_eval_common", "fully_connected",
           "fully_connected_common", "gather", "strided_slice", "strided_slice_common", "kernel_util",
           "micro_tensor_utils")
# The ops TFLM's cmsis_nn kernel folder replaces for this model (--cmsis-nn).
CMSIS_NN_KERNELS = ("unidirectional_sequence_lstm", "fully_connected")
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


def compile_all(sources: list[tuple[Path, Path]], flags: list[str], jobs: int, cc: str = CXX) -> None:
    """Compile each (source, object) whose object is missing or older than the source."""
    todo = [(s, o) for s, o in sources if not o.exists() or o.stat().st_mtime < s.stat().st_mtime]

    def one(pair):
        src, obj = pair
        obj.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([cc, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
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
    ap.add_argument("--cmsis-nn", type=Path, help="a CMSIS-NN checkout: also build TFLM with its CMSIS-NN kernels")
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

    # Build TFLM (reference kernels, and with --cmsis-nn its CMSIS-NN kernels) and the driver.
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
    variants = {"reference": [o for _, o in objs]}
    if args.cmsis_nn:
        nn_flags = ["-DCMSIS_NN", "-DARM_NN_ENABLE_F16=0", "-DARM_NN_ENABLE_F32=0", f"-I{args.cmsis_nn}",
                    f"-I{args.cmsis_nn / 'Include'}"]
        nn_src = [p for p in sorted((args.cmsis_nn / "Source").rglob("*.c"))
                  if not re.search(r"_f16\.c$|_f32\.c$|arm_nntables_flt\.c$", p.name)]
        nn_objs = [(p, work / f"obj-{tag}-cmsis-nn" / (p.name + ".o")) for p in nn_src]
        compile_all(nn_objs, [*BOARD, "--specs=nano.specs", "-O2", "-ffunction-sections", "-fdata-sections", *nn_flags],
                    args.jobs, cc=CC)
        replaced = {f"tensorflow/lite/micro/kernels/{k}.cc" for k in CMSIS_NN_KERNELS}
        tflm_nn = [(args.tflm / k.replace("kernels/", "kernels/cmsis_nn/"),
                    work / f"obj-{tag}-cmsis-nn" / (k.replace("/", "_") + ".o")) for k in sorted(replaced)]
        compile_all(tflm_nn, flags + nn_flags, args.jobs)
        variants["cmsis-nn"] = ([o for s_, o in objs if str(s_.relative_to(args.tflm)) not in replaced]
                                + [o for _, o in tflm_nn] + [o for _, o in nn_objs])

    tflm = {}
    for variant, var_objs in variants.items():
        elf, map_file = work / f"tflm-{variant}.elf", work / f"tflm-{variant}.map"
        subprocess.run([CXX, *BOARD, "--specs=nano.specs", "--specs=nosys.specs", "-nostartfiles", "-Wl,--gc-sections",
                        "-T", str(DRIVER / "mps2_tflm.ld"), f"-Wl,-Map={map_file}", str(driver_o),
                        str(work / "model.o"), *map(str, var_objs), "-lm", "-o", str(elf)], check=True,
                       capture_output=True)
        sizes = section_sizes(map_file, {"TFLM (interpreter, kernels)": r"/obj-", "model (.tflite array)": r"/model\.o$",
                                         "driver (startup, inputs)": r"/driver\.o$"})
        # Run TFLM on the emulator and check it against the host TFLM.
        out = run_qemu(elf)
        lines = list(re.finditer(r"^out (\d+) (\d+) (.*)$", out, re.M))
        got = {int(m.group(1)): [int(v) for v in m.group(3).split()] for m in lines}
        tflm[variant] = {"arena_used_bytes": int(re.search(r"arena_used (\d+)", out).group(1)),
                         "instructions": [int(m.group(2)) for m in lines], "flash_bytes": sizes,
                         "bitexact_with_host_tflm": [got.get(n) for n in range(len(ids))] == want.astype(int).tolist()}
    build_s = time.monotonic() - t_build

    # tinyseek's firmware on the same token ids, same emulator.
    ts = run_device_bench("qemu_m4", run.lib_dir, ids, build_dir=work / "tinyseek")
    ts_instr = [float(r) for r in ts["latency"]["per_input"]]

    result = {
        "tflm": {"commit": git_id(args.tflm), "flatbuffers": git_id(args.flatbuffers), "gemmlowp": git_id(args.gemmlowp),
                 "ruy": git_id(args.ruy), "cmsis_nn": git_id(args.cmsis_nn) if args.cmsis_nn else None,
                 "flags": CXXFLAGS, "build_seconds": build_s, "variants": tflm},
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
    if not all(v["bitexact_with_host_tflm"] for v in tflm.values()):
        raise SystemExit("the TFLM build on qemu_m4 does not reproduce the host TFLM's logits: its figures do not count")


def _header_macro(run, name: str) -> int:
    header = (run.lib_dir / f"{run.cfg.model_name}_model.h").read_text()
    return int(re.search(rf"#define\s+\w+_{name}\s+(\d+)", header).group(1))


def section(r: dict, run) -> str:
    t, ts = r["tflm"], r["tinyseek"]
    variants = t["variants"]
    tokens, steps = r["inputs"]["tokens"], r["inputs"]["steps_run_by_tflm"]
    si = r["tinyseek_instructions"]
    # Per LSTM step: TFLM always runs `steps`; tinyseek's slope between the shortest and longest input.
    ts_step = (si[-1] - si[0]) / (tokens[-1] - tokens[0]) if tokens[-1] > tokens[0] else float("nan")
    step = {v: float(np.median(x["instructions"])) / steps for v, x in variants.items()}
    ts_ram = _header_macro(run, "STATE_BYTES") + _header_macro(run, "SCRATCH_BYTES")
    ram = ts_ram + ts["memory"]["stack_peak"]
    elf = ts["memory"]["elf"]["flash"]
    names = {"reference": "TFLM, reference kernels", "cmsis-nn": "TFLM, CMSIS-NN kernels"}
    head = " | ".join(f"{names[v]} | / tinyseek" for v in variants)
    rows = "\n".join(f"| {n} | {b:,.0f} | " + " | ".join(f"{x['instructions'][i]:,} | {x['instructions'][i] / b:.1f}x"
                                                        for x in variants.values()) + " |"
                     for i, (n, b) in enumerate(zip(tokens, si)))
    table_b = r["export"]["embedding_table_bytes"]
    tflite_b = r["export"]["int8_bytes"]
    worst = min(step.values())
    met = all(x["arena_used_bytes"] >= 3 * ram for x in variants.values()) and worst >= 2 * ts_step
    return "\n".join([
        HEADING, "",
        f"The committed default model's int8 .tflite (`tinyseek export --format tflite`) in TFLite Micro "
        f"{t['commit']} (flatbuffers {t['flatbuffers']} with TFLM's patch, gemmlowp {t['gemmlowp']}, ruy {t['ruy']}"
        + (f", CMSIS-NN {t['cmsis_nn']}" if t.get("cmsis_nn") else "") + "), built by the script with "
        "arm-none-eabi-g++ -O2 and the qemu_m4 board flags, and tinyseek's firmware "
        f"(`{ts['model']['kernel']}` kernels) on the same {len(tokens)} test inputs in QEMU mps2-an386 (Cortex-M4) with "
        "-icount: instructions, not cycles. Every TFLM build's int8 logits equal the tflite-micro Python "
        f"interpreter's on every input: **{'yes' if all(x['bitexact_with_host_tflm'] for x in variants.values()) else 'NO'}**.",
        "",
        f"| tokens | tinyseek | {head} |",
        "|---|---|" + "---|---|" * len(variants),
        rows,
        "",
        f"TFLM runs all {steps} steps of the graph whatever the input's length (TFLM cannot resize inputs); tinyseek "
        f"steps only the real tokens. Per LSTM step (TFLM: median / {steps}, head included; tinyseek: the slope between "
        f"{tokens[0]} and {tokens[-1]} tokens): tinyseek {ts_step:,.0f}, "
        + ", ".join(f"{names[v]} {step[v]:,.0f} ({step[v] / ts_step:.1f}x)" for v in variants) + ".",
        "",
        "| | tinyseek | " + " | ".join(names[v] for v in variants) + " |",
        "|---|---|" + "---|" * len(variants),
        f"| RAM of the model | {ram:,} B: state + scratch {ts_ram}, firmware stack peak {ts['memory']['stack_peak']} | "
        + " | ".join(f"tensor arena {x['arena_used_bytes']:,} B ({x['arena_used_bytes'] / ram:.1f}x), plus the "
                     "interpreter objects and stack" for x in variants.values()) + " |",
        f"| code | {elf['model_code']:,} B (kernels, API, tokenizer) | "
        + " | ".join(f"{x['flash_bytes']['TFLM (interpreter, kernels)']:,} B (interpreter, kernels) + "
                     f"{x['flash_bytes']['other (libc, libm, libgcc)']:,} B C library" for x in variants.values()) + " |",
        f"| model data | {elf['model_data']:,} B | "
        + " | ".join(f".tflite {tflite_b:,} B + embedding table {table_b:,} B" for _ in variants) + " |",
        "",
        "tinyseek's goals, at least 3x less RAM than TFLM's arena and 2x fewer instructions: "
        f"{'met' if met else 'NOT met'} (per step, and more so as deployed). The arena is `arena_used_bytes()` of the "
        f"32-bit build; the tflite-micro Python interpreter (64-bit) needs {r['host_arena']} with the reference "
        f"kernels. Build {t['build_seconds']:.0f} s with cached objects, whole run {r['seconds']:.0f} s. Full results: "
        "`bench/results/tflm.json`.",
    ])


if __name__ == "__main__":
    main()
