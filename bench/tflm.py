"""TFLite Micro and tinyseek on the same emulated Cortex-M4, the same model and the same inputs:
instructions per inference, code size and RAM, measured in one run.

    .venv/bin/python bench/tflm.py --tflm /path/to/tflite-micro \\
        --flatbuffers /path/to/flatbuffers --gemmlowp /path/to/gemmlowp --ruy /path/to/ruy \\
        [--cmsis-nn /path/to/CMSIS-NN] [--shape default|reference]

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
bench/tflm/tflm_driver.cc runs an int8 .tflite on int8 inputs in QEMU mps2-an386 with -icount
and prints the instructions of each Invoke() and the int8 logits, which must equal those of the
tflite-micro Python interpreter (TFLM's reference kernels built for the host) bit for bit.

--shape default (the default): the committed default model's int8 .tflite (`tinyseek export
--format tflite`) on test inputs; tinyseek's firmware runs the same token ids through
`tinyseek bench`'s harness in the same emulator.
--shape reference: the reference LSTM of bench/RESULTS.md's CMSIS-NN comparison (24 steps, input
32, hidden 64, fully-connected 64 -> 13 on the last h), built in Keras with random weights (fixed
seed) and converted by tinyseek's own converter path (tinyseek.export.tflite.convert); tinyseek's
side is the same shape as bench/kernel_bench.py's reference_lstm (its random int8 model), built and
run in the same run. Same shape and work, not the same weights: the two are compared in
instructions, RAM and code, not in outputs.

Writes bench/results/tflm.json (one entry per shape) and the shape's section of bench/RESULTS.md.
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

HEADINGS = {"default": "## TFLite Micro on qemu_m4 (`python bench/tflm.py --tflm PATH ...`)",
            "reference": "## TFLite Micro on the reference LSTM (`python bench/tflm.py --shape reference --tflm PATH ...`)"}
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
REFERENCE_SEED, REFERENCE_INPUTS, REFERENCE_CALIBRATION = 7, 3, 64
CMSIS_NN_JSON = ROOT / "bench" / "results" / "cmsis_nn.json"  # bench/cmsis_nn.py's direct CMSIS-NN figures


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


def compile_all(sources: list[tuple[Path, Path]], flags: list[str], jobs: int, cc: str = CXX) -> int:
    """Compile each (source, object) whose object is missing or older than the source; returns
    how many were compiled."""
    todo = [(s, o) for s, o in sources if not o.exists() or o.stat().st_mtime < s.stat().st_mtime]

    def one(pair):
        src, obj = pair
        obj.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([cc, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"compiling {src} failed:\n{proc.stderr[-3000:]}")

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, todo))
    return len(todo)


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


def default_case(args, work: Path) -> dict:
    """The committed default model's int8 .tflite and test inputs spread over the token counts."""
    from tinyseek.export import check, export_tflite
    from tinyseek.export.tflite import padded_inputs
    from tinyseek.quant.float_model import FloatStudent

    run = Run(load())
    export = export_tflite(run, work / "export")
    metrics = json.loads((export / "metrics.json").read_text())
    tflite = (export / "model_int8.tflite").read_bytes()
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
    return {"name": run.cfg.model_name, "tflite": tflite, "model_cc": export / f"{run.cfg.model_name}_model_tflite.cc",
            "io": io, "rows": rows, "last": last, "want": want, "classes": fs.num_classes,
            "tinyseek": (run.lib_dir, ids), "run": run,
            "export": {k: metrics[k] for k in ("steps", "input_width", "embedding_table_bytes")}
            | {"int8_bytes": metrics["int8"]["bytes"]},
            "host_arena": f"{metrics['int8']['tflm_arena_bytes']:,} B", "inputs": {"tokens": [len(t) for t in ids],
                                                                                 "steps_run_by_tflm": metrics["steps"]}}


def reference_case(work: Path) -> dict:
    """The reference LSTM (kernel_bench.REFERENCE) as an int8 .tflite: random float weights of
    the scale an untrained torch LSTM has (uniform +-1/sqrt(H)), random inputs, converted by the
    same path as `tinyseek export --format tflite` (one fused LSTM, GATHER of the last step, the
    fully-connected head), with a representative dataset of other random inputs."""
    from types import SimpleNamespace

    from kernel_bench import REFERENCE, macs_per_step
    from tinyseek.codegen.render import render
    from tinyseek.export import check
    from tinyseek.export.tflite import convert
    from tinyseek.quant.reference import infer_sequences
    from tinyseek.quant.synthetic import random_model, random_sequences

    R = REFERENCE
    T, I, H, C = R["steps"], R["input"], R["hidden"], R["classes"]
    rng = np.random.default_rng(REFERENCE_SEED)
    k = 1.0 / np.sqrt(H)
    layer = SimpleNamespace(hidden=H, w_x=rng.uniform(-k, k, (4 * H, I)).astype(np.float32),
                            w_h=rng.uniform(-k, k, (4 * H, H)).astype(np.float32),
                            b=rng.uniform(-k, k, 4 * H).astype(np.float32))
    # What keras_model reads of a student; "text" takes the input straight into the LSTM (no projection).
    spec = SimpleNamespace(kind="text", embed_dim=I, hidden=H, num_classes=C, num_layers=1, layers=lambda: [layer],
                           tensors={"head.weight": rng.uniform(-k, k, (C, H)).astype(np.float32),
                                    "head.bias": rng.uniform(-k, k, C).astype(np.float32)})
    inputs = np.clip(rng.normal(0, 0.5, (REFERENCE_CALIBRATION + REFERENCE_INPUTS, T, I)), -1, 1).astype(np.float32)
    full = np.full(len(inputs), T - 1, np.int32)  # every step is real: last = T - 1
    calib, x = (inputs[:REFERENCE_CALIBRATION], full[:REFERENCE_CALIBRATION]), inputs[REFERENCE_CALIBRATION:]
    tflite = convert(spec, T, calib)["int8"]
    io = check.int8_io(tflite)
    last = full[:len(x)]
    want, _ = check.run_all(tflite, "tflm", x, last)
    rows = np.clip(np.round(x / io["input_scale"]) + io["input_zero_point"], -128, 127).astype(np.int8)
    name = "reflstm"
    model_cc = work / f"{name}_model_tflite.cc"
    model_cc.write_text(f"/* Generated by bench/tflm.py: the reference LSTM's int8 .tflite. */\n"
                        f"alignas(16) extern const unsigned char {name}_model_tflite[] = {{\n"
                        + ",\n".join(",".join(str(b) for b in tflite[i:i + 24]) for i in range(0, len(tflite), 24))
                        + "};\n")

    # tinyseek's side: bench/kernel_bench.py's reference model, rendered and run on the board.
    model = random_model(7, kind="sequence", hidden=H, input_size=I, num_classes=C, name=name)
    xs = random_sequences(model, np.random.default_rng(7), REFERENCE_INPUTS, T)
    lib = work / "tinyseek-lib" / name
    render(model, lib)
    macs = T * macs_per_step(model) + C * H
    return {"name": name, "tflite": tflite, "model_cc": model_cc, "io": io, "rows": rows, "last": last, "want": want,
            "classes": C, "tinyseek": (lib, list(xs)), "tinyseek_want": infer_sequences(model, xs),
            "shape": R, "macs": macs, "export": {"steps": T, "input_width": I, "int8_bytes": len(tflite)},
            "inputs": {"sequences": len(x), "steps": T, "seed": REFERENCE_SEED}}


def build_and_run(args, work: Path, case: dict) -> tuple[dict, dict]:
    """Build TFLM (reference kernels, and with --cmsis-nn its CMSIS-NN kernels) with the case's
    model and inputs, run every build in QEMU and check it against the host TFLM."""
    inputs_header(work / "tflm_inputs.h", case["io"], case["rows"], case["last"], case["name"], case["classes"])
    includes = [f"-I{args.tflm}", f"-I{args.flatbuffers / 'include'}", f"-I{args.gemmlowp}", f"-I{args.ruy}"]
    flags = CXXFLAGS + includes
    tag = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:12]
    cache = args.work.resolve()  # TFLM's objects are shared by the shapes
    objs = [(args.tflm / s, cache / f"obj-{tag}" / (s.replace("/", "_") + ".o")) for s in tflm_sources(args.tflm)]
    t_build = time.monotonic()
    compiled = compile_all(objs, flags, args.jobs)
    model_o = work / "model.o"
    subprocess.run([CXX, *flags, f"-I{case['model_cc'].parent}", "-c", str(case["model_cc"]), "-o", str(model_o)],
                   check=True)
    driver_o = work / "driver.o"
    subprocess.run([CXX, *flags, "-fno-use-cxa-atexit", f"-I{work}", "-c", str(DRIVER / "tflm_driver.cc"), "-o",
                    str(driver_o)], check=True)
    variants = {"reference": [o for _, o in objs]}
    if args.cmsis_nn:
        nn_flags = ["-DCMSIS_NN", "-DARM_NN_ENABLE_F16=0", "-DARM_NN_ENABLE_F32=0", f"-I{args.cmsis_nn}",
                    f"-I{args.cmsis_nn / 'Include'}"]
        nn_src = [p for p in sorted((args.cmsis_nn / "Source").rglob("*.c"))
                  if not re.search(r"_f16\.c$|_f32\.c$|arm_nntables_flt\.c$", p.name)]
        nn_objs = [(p, cache / f"obj-{tag}-cmsis-nn" / (p.name + ".o")) for p in nn_src]
        compiled += compile_all(nn_objs, [*BOARD, "--specs=nano.specs", "-O2", "-ffunction-sections", "-fdata-sections", *nn_flags],
                    args.jobs, cc=CC)
        replaced = {f"tensorflow/lite/micro/kernels/{k}.cc" for k in CMSIS_NN_KERNELS}
        tflm_nn = [(args.tflm / k.replace("kernels/", "kernels/cmsis_nn/"),
                    cache / f"obj-{tag}-cmsis-nn" / (k.replace("/", "_") + ".o")) for k in sorted(replaced)]
        compiled += compile_all(tflm_nn, flags + nn_flags, args.jobs)
        variants["cmsis-nn"] = ([o for s_, o in objs if str(s_.relative_to(args.tflm)) not in replaced]
                                + [o for _, o in tflm_nn] + [o for _, o in nn_objs])

    tflm = {}
    for variant, var_objs in variants.items():
        elf, map_file = work / f"tflm-{variant}.elf", work / f"tflm-{variant}.map"
        subprocess.run([CXX, *BOARD, "--specs=nano.specs", "--specs=nosys.specs", "-nostartfiles", "-Wl,--gc-sections",
                        "-T", str(DRIVER / "mps2_tflm.ld"), f"-Wl,-Map={map_file}", str(driver_o),
                        str(model_o), *map(str, var_objs), "-lm", "-o", str(elf)], check=True, capture_output=True)
        sizes = section_sizes(map_file, {"TFLM (interpreter, kernels)": r"/obj-", "model (.tflite array)": r"/model\.o$",
                                         "driver (startup, inputs)": r"/driver\.o$"})
        out = run_qemu(elf)
        lines = list(re.finditer(r"^out (\d+) (\d+) (.*)$", out, re.M))
        got = {int(m.group(1)): [int(v) for v in m.group(3).split()] for m in lines}
        tflm[variant] = {"arena_used_bytes": int(re.search(r"arena_used (\d+)", out).group(1)),
                         "instructions": [int(m.group(2)) for m in lines], "flash_bytes": sizes,
                         "bitexact_with_host_tflm": [got.get(n) for n in range(len(case["rows"]))]
                         == case["want"].astype(int).tolist()}
    return tflm, {"build_seconds": time.monotonic() - t_build, "objects_compiled": compiled}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tflm", required=True, type=Path, help="a tflite-micro checkout")
    ap.add_argument("--flatbuffers", required=True, type=Path, help="flatbuffers checkout (TFLM's patch applied)")
    ap.add_argument("--gemmlowp", required=True, type=Path)
    ap.add_argument("--ruy", required=True, type=Path)
    ap.add_argument("--cmsis-nn", type=Path, help="a CMSIS-NN checkout: also build TFLM with its CMSIS-NN kernels")
    ap.add_argument("--shape", choices=tuple(HEADINGS), default="default",
                    help="default: the committed default model on test inputs; reference: the reference LSTM of the "
                         "CMSIS-NN comparison (24 steps, input 32, hidden 64, fully-connected 64 -> 13)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "tflm", help="build folder (cached)")
    ap.add_argument("--samples", type=int, default=5, help="--shape default: test inputs, spread over the token counts")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-md", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args()
    for p in (args.tflm / "tensorflow/lite/micro", args.flatbuffers / "include/flatbuffers", args.gemmlowp / "fixedpoint",
              args.ruy / "ruy"):
        if not p.is_dir():
            raise SystemExit(f"{p} is missing: pass the checkouts (see the docstring)")
    if args.cmsis_nn and not (args.cmsis_nn / "Source").is_dir():
        raise SystemExit(f"{args.cmsis_nn / 'Source'} is missing: --cmsis-nn takes a CMSIS-NN checkout")
    _check_cxx_headers()

    from tinyseek.harness.bench import run_device_bench

    work = args.work.resolve() / args.shape
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    case = default_case(args, work) if args.shape == "default" else reference_case(work)
    tflm, build = build_and_run(args, work, case)

    # tinyseek's firmware on the same inputs (default) or the same shape (reference), same emulator.
    lib, ts_inputs = case["tinyseek"]
    ts = run_device_bench("qemu_m4", lib, ts_inputs, build_dir=work / "tinyseek")
    if "tinyseek_want" in case and ts["logits"] != case["tinyseek_want"].tolist():
        raise SystemExit("tinyseek's firmware is not bit-exact with the integer reference on the reference LSTM")
    ts_instr = [float(r) for r in ts["latency"]["per_input"]]
    lib_macros = {m: _header_macro(lib, m) for m in ("STATE_BYTES", "SCRATCH_BYTES")}

    result = {
        "tflm": {"commit": git_id(args.tflm), "flatbuffers": git_id(args.flatbuffers), "gemmlowp": git_id(args.gemmlowp),
                 "ruy": git_id(args.ruy), "cmsis_nn": git_id(args.cmsis_nn) if args.cmsis_nn else None,
                 "flags": CXXFLAGS, **build, "variants": tflm},
        "inputs": case["inputs"],
        "tinyseek": {k: v for k, v in ts.items() if k != "elf"},  # the build folder is the user's
        "tinyseek_instructions": ts_instr, "tinyseek_lib": lib_macros,
        "export": case["export"],
        "seconds": time.monotonic() - t0,
    }
    if args.shape == "default":
        result["host_arena"] = case["host_arena"]
        result["export"]["embedding_table_bytes"] = case["export"]["embedding_table_bytes"]
    else:
        result |= {"shape": case["shape"], "macs": case["macs"], "cmsis_nn_direct": _cmsis_nn_direct()}
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    if "tflm" in saved:  # the file of one shape, before it held one entry per shape
        saved = {"default": saved}
    saved[args.shape] = result
    RESULTS_JSON.write_text(json.dumps(saved, indent=1, default=str) + "\n")
    text = section_default(result) if args.shape == "default" else section_reference(result)
    if not args.no_md:
        replace_section(HEADINGS[args.shape], text)
    print(text)
    if not all(v["bitexact_with_host_tflm"] for v in tflm.values()):
        raise SystemExit("the TFLM build on qemu_m4 does not reproduce the host TFLM's logits: its figures do not count")


def _check_cxx_headers() -> None:
    """TFLM needs the C++ standard headers for arm-none-eabi, which Debian packages apart from the compiler."""
    probe = subprocess.run([CXX, *BOARD, "-x", "c++", "-fsyntax-only", "-"], input="#include <cstdarg>\n",
                           capture_output=True, text=True)
    if probe.returncode:
        raise SystemExit(f"{CXX} has no C++ standard headers (<cstdarg> not found): "
                         "install them with `apt-get install libstdc++-arm-none-eabi-newlib`")


def _header_macro(lib: Path, name: str) -> int:
    header = next(Path(lib).glob("*_model.h")).read_text()
    return int(re.search(rf"#define\s+\w+_{name}\s+(\d+)", header).group(1))


def _cmsis_nn_direct() -> dict | None:
    """CMSIS-NN's own LSTM on the same shape and board, from bench/cmsis_nn.py's results (that
    script's run, not this one), if they are there."""
    if not CMSIS_NN_JSON.is_file():
        return None
    d = json.loads(CMSIS_NN_JSON.read_text())
    try:  # both layouts the script has written; another is left out, not guessed at
        if "cmsis" in d:
            m4 = next(e for e in d["cmsis"] if e["env"] == "qemu_m4" and e["kernel"] == "cmsis-nn-dsp")
        else:
            m4 = d["boards"]["qemu_m4"]["cmsis_nn"]
        if d["shape"] != __import__("kernel_bench").REFERENCE:
            return None
        return {"instructions": float(m4["instructions"]), "kernel": m4["kernel"], "commit": d["cmsis_nn"]["describe"]}
    except (KeyError, TypeError, StopIteration):
        return None


NAMES = {"reference": "TFLM, reference kernels", "cmsis-nn": "TFLM, CMSIS-NN kernels"}


def _setup_line(t: dict) -> str:
    return (f"TFLite Micro {t['commit']} (flatbuffers {t['flatbuffers']} with TFLM's patch, gemmlowp {t['gemmlowp']}, "
            f"ruy {t['ruy']}" + (f", CMSIS-NN {t['cmsis_nn']}" if t.get("cmsis_nn") else "") + "), built by the script "
            "with arm-none-eabi-g++ -O2 and the qemu_m4 board flags")


def _bitexact(variants: dict) -> str:
    return "yes" if all(x["bitexact_with_host_tflm"] for x in variants.values()) else "NO"


def _build_line(r: dict) -> str:
    t = r["tflm"]
    cached = (f"{t['objects_compiled']} objects compiled, the others cached in --work" if "objects_compiled" in t
              else "cached objects")
    return f"Build {t['build_seconds']:.0f} s ({cached}), whole run {r['seconds']:.0f} s on x86_64, 2 shared cores."


def section_default(r: dict) -> str:
    t, ts = r["tflm"], r["tinyseek"]
    variants = t["variants"]
    tokens, steps = r["inputs"]["tokens"], r["inputs"]["steps_run_by_tflm"]
    si = r["tinyseek_instructions"]
    # Per LSTM step: TFLM always runs `steps`; tinyseek's slope between the shortest and longest input.
    ts_step = (si[-1] - si[0]) / (tokens[-1] - tokens[0]) if tokens[-1] > tokens[0] else float("nan")
    step = {v: float(np.median(x["instructions"])) / steps for v, x in variants.items()}
    ts_ram = r["tinyseek_lib"]["STATE_BYTES"] + r["tinyseek_lib"]["SCRATCH_BYTES"]
    ram = ts_ram + ts["memory"]["stack_peak"]
    elf = ts["memory"]["elf"]["flash"]
    head = " | ".join(f"{NAMES[v]} | / tinyseek" for v in variants)
    rows = "\n".join(f"| {n} | {b:,.0f} | " + " | ".join(f"{x['instructions'][i]:,} | {x['instructions'][i] / b:.1f}x"
                                                        for x in variants.values()) + " |"
                     for i, (n, b) in enumerate(zip(tokens, si)))
    table_b = r["export"]["embedding_table_bytes"]
    tflite_b = r["export"]["int8_bytes"]
    worst = min(step.values())
    met = all(x["arena_used_bytes"] >= 3 * ram for x in variants.values()) and worst >= 2 * ts_step
    return "\n".join([
        HEADINGS["default"], "",
        f"The committed default model's int8 .tflite (`tinyseek export --format tflite`) in {_setup_line(t)}, and "
        f"tinyseek's firmware (`{ts['model']['kernel']}` kernels) on the same {len(tokens)} test inputs in QEMU "
        "mps2-an386 (Cortex-M4) with -icount: instructions, not cycles. Every TFLM build's int8 logits equal the "
        f"tflite-micro Python interpreter's on every input: **{_bitexact(variants)}**. The same comparison on the "
        "reference LSTM shape of the CMSIS-NN comparison: next section.",
        "",
        f"| tokens | tinyseek | {head} |",
        "|---|---|" + "---|---|" * len(variants),
        rows,
        "",
        f"TFLM runs all {steps} steps of the graph whatever the input's length (TFLM cannot resize inputs); tinyseek "
        f"steps only the real tokens. Per LSTM step (TFLM: median / {steps}, head included; tinyseek: the slope between "
        f"{tokens[0]} and {tokens[-1]} tokens): tinyseek {ts_step:,.0f}, "
        + ", ".join(f"{NAMES[v]} {step[v]:,.0f} ({step[v] / ts_step:.1f}x)" for v in variants) + ".",
        "",
        "| | tinyseek | " + " | ".join(NAMES[v] for v in variants) + " |",
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
        f"kernels. {_build_line(r)} Full results: "
        "`bench/results/tflm.json` (`default`).",
    ])


def section_reference(r: dict) -> str:
    t, ts, R = r["tflm"], r["tinyseek"], r["shape"]
    variants, macs = t["variants"], r["macs"]
    ts_i = float(np.median(r["tinyseek_instructions"]))
    ts_ram = r["tinyseek_lib"]["STATE_BYTES"] + r["tinyseek_lib"]["SCRATCH_BYTES"]
    ram = ts_ram + ts["memory"]["stack_peak"]
    elf = ts["memory"]["elf"]["flash"]
    direct = r.get("cmsis_nn_direct")
    rows = [f"| tinyseek, `{ts['model']['kernel']}` kernels (this run) | {ts_i:,.0f} | {ts_i / macs:.2f} | 1.0x | "
            f"{ram:,} B: state + scratch {ts_ram}, firmware stack peak {ts['memory']['stack_peak']} | "
            f"{elf['model_code']:,} B (kernels, API) | {elf['model_data']:,} B |"]
    for v, x in variants.items():
        i = float(np.median(x["instructions"]))
        rows.append(f"| {NAMES[v]} (this run) | {i:,.0f} | {i / macs:.2f} | {i / ts_i:.1f}x | tensor arena "
                    f"{x['arena_used_bytes']:,} B ({x['arena_used_bytes'] / ram:.1f}x), plus the interpreter objects "
                    f"and stack | {x['flash_bytes']['TFLM (interpreter, kernels)']:,} B (interpreter, kernels) + "
                    f"{x['flash_bytes']['other (libc, libm, libgcc)']:,} B C library | .tflite "
                    f"{r['export']['int8_bytes']:,} B |")
    if direct:
        rows.append(f"| CMSIS-NN `arm_lstm_unidirectional_s8` called directly ({direct['commit']}; bench/cmsis_nn.py's "
                    f"run, section CMSIS-NN comparison) | {direct['instructions']:,.0f} | "
                    f"{direct['instructions'] / macs:.2f} | {direct['instructions'] / ts_i:.1f}x | | | |")
    worst_i = min(float(np.median(x["instructions"])) for x in variants.values())
    worst_ram = min(x["arena_used_bytes"] for x in variants.values())
    ram_ok, instr_ok = worst_ram >= 3 * ram, worst_i >= 2 * ts_i
    return "\n".join([
        HEADINGS["reference"], "",
        f"The reference LSTM of the CMSIS-NN comparison ({R['steps']} steps, input {R['input']}, hidden {R['hidden']}, "
        f"fully-connected {R['hidden']} -> {R['classes']} on the last h; {macs:,} MACs) in {_setup_line(t)}, and "
        f"tinyseek's firmware on the same shape, in one run in QEMU mps2-an386 (Cortex-M4) with -icount: "
        "instructions, not cycles; median over "
        f"{len(r['tinyseek_instructions'])} random int8 input sequences, every step real. TFLM's model is a Keras LSTM "
        "with random weights (uniform +-1/sqrt(H), seed "
        f"{r['inputs']['seed']}) converted to a full-integer .tflite by tinyseek's export path (one fused "
        "UNIDIRECTIONAL_SEQUENCE_LSTM, GATHER of the last step, FULLY_CONNECTED); tinyseek's is "
        "bench/kernel_bench.py's random reference model. Same shape and work, not the same weights or numerics, so "
        "outputs are not compared across the two; each is checked on its own: every TFLM build's int8 logits equal "
        f"the tflite-micro Python interpreter's: **{_bitexact(variants)}**; tinyseek's equal the integer reference: "
        "**yes**.",
        "",
        "| | instructions per inference | per MAC | / tinyseek | RAM of the model | code | model data |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"tinyseek's goals on this shape: at least 3x less RAM than TFLM's arena: **{'met' if ram_ok else 'NOT met'}** "
        f"({worst_ram / ram:.1f}x at the least); at least 2x fewer instructions: **{'met' if instr_ok else 'NOT met'}** "
        f"({worst_i / ts_i:.1f}x at the least, against TFLM with "
        f"{'CMSIS-NN' if 'cmsis-nn' in variants else 'reference'} kernels). TFLM's arena is `arena_used_bytes()` of "
        "the 32-bit build; it holds the graph's tensors (the whole input and output sequences of all "
        f"{R['steps']} steps among them), the LSTM's state and scratch and the ops' persistent data. {_build_line(r)} "
        "Full results: `bench/results/tflm.json` (`reference`).",
    ])


if __name__ == "__main__":
    main()
