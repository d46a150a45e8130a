"""Instructions per inference of a model library on AArch64 (Cortex-A), counted under QEMU user mode.

`measure_aarch64(lib_dir, inputs, variant)` builds runtime/linux/bench.c with the library for one
kernel variant ("c", "neon", "neon-dot"), runs it under qemu-aarch64 on a core that has exactly
the variant's features and returns the logits and the instructions of every inference. The
32-bit variants ("armv7-c": the portable C, "neon32") build with arm-linux-gnueabihf-gcc for
ARMv7-A with NEON and run under qemu-arm on a Cortex-A7, counted the same way.

Counting: QEMU user mode has no -icount, and Debian's qemu-user ships no TCG plugins, so the run
is traced with one instruction per translation block (-one-insn-per-tb, -singlestep before QEMU
8.1) and `-d exec,nochain`, which logs one line per block executed, that is per instruction; the
line ends with the symbol of the instruction's address. The bench program calls
`tinyseek_bench_begin()` and `tinyseek_bench_end()` around each measured inference, so the lines
between the two are one inference (plus the 5 or so instructions of the calls, the same for
every input). The counts are instructions executed, not cycles: QEMU models no pipeline.

    python -m tinyseek.harness.aarch64            # the default model, the AArch64 variants
    python -m tinyseek.harness.aarch64 --variants armv7-c,neon32   # the 32-bit ones
    python -m tinyseek.harness.aarch64 --weights int4 --variants armv7-c,neon32   # an int4 model
"""
from __future__ import annotations

import argparse
import re
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codegen.verify import compile_library
from .qemu import ToolMissingError

PROJECT_DIR = Path(__file__).resolve().parents[3]
RUNTIME_DIR = PROJECT_DIR / "runtime" / "linux"
CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"
INSTALL = "sudo apt-get install -y gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
# The marks of runtime/linux/bench.c around each measured inference.
BEGIN, END = "tinyseek_bench_begin", "tinyseek_bench_end"


class Aarch64Error(ValueError):
    """The bench program could not run, or its output or trace is not what it should be."""


ARMV7_INSTALL = "sudo apt-get install -y gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user"


@dataclass(frozen=True)
class Variant:
    cflags: tuple[str, ...]
    cpu: str  # the QEMU core: has the variant's features and no more
    kernel: str = ""  # the kernel the build reports (default: the variant's name)
    cc: str = CC
    qemu: str = QEMU
    nm: str = "aarch64-linux-gnu-nm"
    install: str = INSTALL


ARMV7 = ("-march=armv7-a", "-mfpu=neon", "-mfloat-abi=hard")
# Armv8.0 cores (Cortex-A53, -A72) have no SDOT: a dot-product build raises SIGILL there. The
# 32-bit variants (ARMv7-A with NEON, Cortex-A7) run under qemu-arm.
VARIANTS = {
    "c": Variant(("-march=armv8-a", "-DTINYSEEK_KERNEL_PORTABLE"), "cortex-a53"),
    "neon": Variant(("-march=armv8-a",), "cortex-a53"),
    "neon-dot": Variant(("-march=armv8.2-a+dotprod",), "cortex-a76"),
    "armv7-c": Variant((*ARMV7, "-DTINYSEEK_KERNEL_PORTABLE"), "cortex-a7", "c", "arm-linux-gnueabihf-gcc",
                       "qemu-arm", "arm-linux-gnueabihf-nm", ARMV7_INSTALL),
    "neon32": Variant(ARMV7, "cortex-a7", "neon32", "arm-linux-gnueabihf-gcc", "qemu-arm",
                      "arm-linux-gnueabihf-nm", ARMV7_INSTALL),
}


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown AArch64 kernel variant '{name}'; choose one of {sorted(VARIANTS)}")
    return VARIANTS[name]


@dataclass(frozen=True)
class LibraryInfo:
    name: str
    text: bool
    num_classes: int
    num_features: int | None
    vocab_size: int | None
    max_len: int | None


def library_info(lib_dir: str | Path) -> LibraryInfo:
    """Name, kind and sizes of a generated library, from its <name>_model.h."""
    headers = sorted(Path(lib_dir).glob("*_model.h"))
    if len(headers) != 1:
        raise Aarch64Error(f"{lib_dir} holds {len(headers)} *_model.h files, not one: pass the folder "
                           "`tinyseek codegen` wrote")
    name = headers[0].name[: -len("_model.h")]
    src = headers[0].read_text()

    def macro(m: str) -> int | None:
        hit = re.search(rf"#define\s+{name.upper()}_{m}\s+(\d+)", src)
        return int(hit.group(1)) if hit else None

    return LibraryInfo(name, macro("KIND_TEXT") == 1, macro("NUM_CLASSES"), macro("NUM_FEATURES"),
                       macro("VOCAB_SIZE"), macro("MAX_LEN"))


def build_bench(lib_dir: str | Path, variant: str, exe: str | Path, *, cc: str | None = None) -> str:
    """runtime/linux/bench.c and the library compiled statically for `variant` into `exe`;
    returns the compiler id."""
    v, info = _variant(variant), library_info(lib_dir)
    cc = cc or v.cc
    model = (f'-DTINYSEEK_MODEL_HEADER="{info.name}_model.h"', f"-I{RUNTIME_DIR}")
    if shutil.which(cc) is None:
        raise ToolMissingError(f"{cc} is not installed; install it with: {v.install}")
    return compile_library(Path(lib_dir), [RUNTIME_DIR / "bench.c"], Path(exe), cc=cc,
                           cflags=("-static", *v.cflags, *model))


def _single_step_flag(qemu: str) -> str:
    """-one-insn-per-tb (QEMU 8.1 on) or -singlestep (older)."""
    usage = subprocess.run([qemu, "-h"], capture_output=True, text=True).stdout
    return "-one-insn-per-tb" if "one-insn-per-tb" in usage else "-singlestep"


def count_marked(argv: Sequence[str], *, cpu: str, qemu: str = QEMU, begin: str = BEGIN, end: str = END,
                 timeout: float = 600.0, install: str = INSTALL) -> tuple[list[int], int, str]:
    """Run `argv` (a static AArch64 program) under QEMU user mode on `cpu`, one instruction per
    logged block. Returns (for every call of `begin`: the instructions executed after it returns
    until `end` is called, the call of `end` included; the instructions of the whole run; the
    program's stdout)."""
    program = shutil.which(qemu)
    if program is None:
        raise ToolMissingError(f"{qemu} is not installed; install it with: {install}")
    cmd = [program, "-cpu", cpu, _single_step_flag(program), "-d", "exec,nochain", *argv]
    marks = re.compile(rb"\] (" + re.escape(begin.encode()) + rb"|" + re.escape(end.encode()) + rb")\n")
    segments: list[int] = []
    current: int | None = None  # instructions since `begin` returned; None outside
    total, rest = 0, b""
    with tempfile.TemporaryFile() as out:
        # The trace goes to QEMU's stderr (the program writes there only when it fails).
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        timed_out = threading.Event()
        watchdog = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill()))  # the reads block
        watchdog.start()
        try:
            while chunk := proc.stderr.read(1 << 20):
                buf = rest + chunk
                cut = buf.rfind(b"\n") + 1  # whole lines only
                buf, rest = buf[:cut], buf[cut:]
                pos = 0
                for hit in marks.finditer(buf):
                    line = buf.rfind(b"\n", 0, hit.start()) + 1
                    n = buf.count(b"Trace ", pos, line)  # the lines before this marker's line
                    total += n + 1
                    if current is not None:
                        current += n
                    if hit.group(1) != end.encode():
                        current = 0  # (again at each instruction of `begin`)
                    elif current is not None:
                        segments.append(current)
                        current = None
                    pos = hit.end()
                n = buf.count(b"Trace ", pos)
                total += n
                if current is not None:
                    current += n
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        stdout = out.read().decode("utf-8", errors="replace")
    if timed_out.is_set():
        raise Aarch64Error(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s under {qemu} -cpu {cpu}")
    if proc.returncode != 0:
        plain = subprocess.run([program, "-cpu", cpu, *argv], capture_output=True, text=True, timeout=timeout)
        raise Aarch64Error(f"`{' '.join(argv)}` failed under {qemu} -cpu {cpu} (exit {proc.returncode}):\n"
                           f"{plain.stdout[-2000:]}{plain.stderr[-2000:]}")
    return segments, total, stdout


def model_sizes(exe: str | Path, name: str, *, nm: str = "aarch64-linux-gnu-nm") -> dict:
    """Bytes of the model library's symbols (`<name>_...`) in a linked program: code (the API
    and the kernels the build selected), const data (weights, tables, the parameter structs) and
    RAM (state and scratch)."""
    if shutil.which(nm) is None:
        raise ToolMissingError(f"{nm} is not installed; install it with: {INSTALL}")
    out = subprocess.run([nm, "-S", str(exe)], capture_output=True, text=True, check=True).stdout
    sizes = {"code": 0, "const": 0, "ram": 0}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3].startswith(f"{name}_"):
            kind = {"t": "code", "r": "const", "d": "const", "b": "ram"}.get(parts[2].lower())
            if kind:
                sizes[kind] += int(parts[1], 16)
    return sizes


def _input_blob(info: LibraryInfo, inputs: Sequence) -> bytes:
    blob = bytearray(b"TSBI" + struct.pack("<I", len(inputs)))
    for item in inputs:
        if info.text:
            if isinstance(item, (str, bytes)):
                from ..student.tokenizer import HashTokenizer
                item = HashTokenizer(info.vocab_size, info.max_len).encode(item)
            ids = np.asarray(item, np.int64).reshape(-1)
            if ids.size and (ids.min() < 0 or ids.max() >= info.vocab_size):
                raise ValueError(f"token ids must be in 0..{info.vocab_size - 1}")
            blob += struct.pack("<I", ids.size) + ids.astype("<u2").tobytes()
        else:
            x = np.asarray(item)
            if x.ndim != 2 or x.shape[1] != info.num_features or x.dtype != np.int8:
                raise ValueError(f"a sequence input must be int8 [steps, {info.num_features}], not "
                                 f"{x.dtype} {list(x.shape)}")
            blob += struct.pack("<I", x.shape[0]) + np.ascontiguousarray(x).tobytes()
    return bytes(blob)


def measure_aarch64(lib_dir: str | Path, inputs: Sequence, variant: str = "neon-dot", *,
                    work_dir: str | Path | None = None, cc: str | None = None, qemu: str | None = None,
                    timeout: float = 600.0) -> dict:
    """Instructions of every inference of `inputs` with the library in `lib_dir` built for
    `variant` ("c": portable C, "neon", "neon-dot") and run on its QEMU core.

    inputs: token-id lists or texts (tokenized on the host, not counted) for text models, int8
    [steps, F] arrays for sequence models. Returns plain, JSON-ready dicts shaped like
    tinyseek.harness.bench.run_device_bench's: "model" (name, kernel the library reported),
    "logits", "predictions", "latency" (unit "instructions", per_input, median, mean, min, max),
    "memory" (bytes of the model's code, const data and RAM in the static program)."""
    v, info = _variant(variant), library_info(lib_dir)
    inputs = list(inputs)
    if not inputs:
        raise ValueError("measure_aarch64 needs at least one input")
    with tempfile.TemporaryDirectory(prefix="tinyseek-aarch64-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        exe, data = work / f"bench-{variant}", work / "inputs.bin"
        compiler = build_bench(lib_dir, variant, exe, cc=cc)
        data.write_bytes(_input_blob(info, inputs))
        per, total, stdout = count_marked([str(exe), str(data)], cpu=v.cpu, qemu=qemu or v.qemu, timeout=timeout,
                                          install=v.install)
        sizes = model_sizes(exe, info.name, nm=v.nm)
    lines = stdout.splitlines()
    if len(per) != len(inputs) or len(lines) != len(inputs) + 1 or not lines[0].startswith("kernel "):
        raise Aarch64Error(f"the bench program's output does not match {len(inputs)} inputs "
                           f"({len(per)} counted inferences, {len(lines)} lines)")
    kernel = lines[0].split(" ", 1)[1]
    if kernel != (v.kernel or variant):
        raise Aarch64Error(f"the library built for '{variant}' ran the '{kernel}' kernels")
    rows = [list(map(int, line.split())) for line in lines[1:]]
    logits = [row[1:1 + info.num_classes] for row in rows]
    return {
        "env": v.qemu, "cpu": v.cpu, "variant": variant, "cflags": list(v.cflags), "compiler": compiler,
        "model": {"name": info.name, "kind": "text" if info.text else "sequence", "kernel": kernel},
        "inputs": len(inputs), "logits": logits, "predictions": [row[0] for row in rows],
        "latency": {"unit": "instructions", "per_input": per, "median": float(np.median(per)),
                    "mean": float(np.mean(per)), "min": min(per), "max": max(per)},
        "total_instructions": total, "memory": sizes,
        "note": "instructions QEMU executed (one per logged block), not cycles",
    }


def macs_per_inference(model, steps: int) -> int:
    """Multiply-accumulates of one inference of `steps` steps: steps * 4H(I + H) over the layers,
    plus classes * H of the head."""
    per_step = sum(4 * L.hidden * (L.input_size + L.hidden) for L in model.layers)
    return steps * per_step + model.num_classes * model.layers[-1].hidden


def matrix_cost(variant: str, *, hidden: int = 64, inputs: tuple[int, int] = (32, 64),
                steps: tuple[int, int] = (4, 12), work_dir: str | Path | None = None, width: str = "int8") -> dict:
    """Instructions per LSTM step and per MAC of the gate matrix work alone: two one-layer sequence
    models that differ only in extra input columns (same shifts, so the same requantization),
    each run at two sequence lengths; (step(I2) - step(I1)) / (4H (I2 - I1)) leaves only the
    loads and multiply-accumulates of the extra columns. `width`: the gate weights' (int8, int4,
    binary)."""
    import copy

    from ..codegen.render import render
    from ..quant.reference import infer_sequences
    from ..quant.synthetic import random_model, random_sequences

    I1, I2 = inputs
    narrow = random_model(hidden, kind="sequence", hidden=hidden, input_size=I1, num_classes=8, name="mx_narrow",
                          width=width)
    wide = copy.deepcopy(narrow)
    wide.name, wide.num_features, wide.layers[0].input_size = "mx_wide", I2, I2
    extra = random_model(hidden + 1, kind="sequence", hidden=hidden, input_size=I2 - I1, width=width).layers[0].w_x
    wide.layers[0].w_x = np.concatenate([narrow.layers[0].w_x, extra], axis=1)
    wide.validate()
    per_step = {}
    with tempfile.TemporaryDirectory(prefix="tinyseek-aarch64-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        for I, model in ((I1, narrow), (I2, wide)):
            rng = np.random.default_rng(0)
            xs = [x for T in steps for x in random_sequences(model, rng, 1, T)]
            render(model, work / model.name)
            out = measure_aarch64(work / model.name, xs, variant, work_dir=work / f"run-{model.name}")
            if out["logits"] != infer_sequences(model, xs).tolist():
                raise Aarch64Error(f"{variant}: {model.name} is not bit-exact")
            t = out["latency"]["per_input"]
            per_step[I] = (t[1] - t[0]) / (steps[1] - steps[0])
    return {"variant": variant, "width": width, "hidden": hidden, "input": I1, "instructions_per_step": per_step[I1],
            "instructions_per_mac_step": per_step[I1] / (4 * hidden * (I1 + hidden)),
            "instructions_per_mac_matrix": (per_step[I2] - per_step[I1]) / (4 * hidden * (I2 - I1))}


def low_bit_model(run_dir: Path, cfg, weights: str, embedding: str = "", dataset=None):
    """The float student of run_dir (student/) quantized post-training at `weights`, the embedding
    at `embedding` (empty: the same width), calibrated on `dataset` (default: cfg's task) as the
    quantize stage does (no QAT)."""
    import dataclasses

    from ..data import load_task
    from ..quant.quantize import quantize_run

    student = run_dir / "student"
    if not (student / "student.json").is_file():
        raise SystemExit(f"--weights {weights} quantizes the float student in {student}, which is missing")
    quant = dataclasses.replace(cfg.quant, weights=weights, embedding=embedding, qat_epochs=0)
    with tempfile.TemporaryDirectory(prefix="tinyseek-low-bit-") as tmp:
        shutil.copytree(student, Path(tmp) / "student")
        return quantize_run(dataclasses.replace(cfg, quant=quant), tmp, dataset or load_task(cfg.task))


def main(argv: Sequence[str] | None = None) -> None:
    import json

    from ..codegen.render import render
    from ..config import load
    from ..data import load_task
    from ..quant.model import QuantModel
    from ..quant.reference import infer_tokens
    from ..student.tokenizer import HashTokenizer

    ap = argparse.ArgumentParser(description="Instructions per inference of the AArch64 kernel variants under "
                                             "qemu-aarch64 (the default model's test texts, token ids in).")
    ap.add_argument("--model", default=str(PROJECT_DIR / "models" / "intents" / "int8"),
                    help="an int8 text model folder (rendered afresh with the current templates)")
    ap.add_argument("--config", default=None, help="the config whose task gives the test texts (default: built in)")
    ap.add_argument("--samples", type=int, default=50, help="the first N non-empty test texts")
    ap.add_argument("--variants", default="c,neon,neon-dot", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--weights", choices=["int8", "int4", "binary"], default="int8",
                    help="int4 or binary: instead of --model, the float student of its run folder (student/ beside "
                         "it) quantized post-training at this width, embedding too, calibrated as `tinyseek quantize` "
                         "does (no training; at int8 this gives --model itself)")
    ap.add_argument("--work", default=str(PROJECT_DIR / "build" / "bench" / "aarch64"))
    args = ap.parse_args(argv)
    model_dir, work = Path(args.model), Path(args.work)
    cfg = load(args.config)
    task = cfg.task
    model = QuantModel.load(model_dir) if args.weights == "int8" else low_bit_model(model_dir.parent, cfg, args.weights)
    if model.kind != "text" or model.subwords:
        raise SystemExit("--model must be a text model without subwords (its run folder's task gives the test texts)")
    tok = HashTokenizer(model.vocab_size, model.max_len)
    ids = [t for t in (tok.encode(x) for x in load_task(task).test.texts) if t][: args.samples]
    want = infer_tokens(model, ids).tolist()
    lib = work / "lib" / model.name
    render(model, lib)
    macs = sum(macs_per_inference(model, len(t)) for t in ids)
    results = {"model": str(model_dir), "weights": args.weights, "samples": len(ids), "macs_total": macs,
               "variants": {}}
    for variant in args.variants.split(","):
        out = measure_aarch64(lib, ids, variant, work_dir=work / variant)
        if out["logits"] != want:
            raise Aarch64Error(f"{variant}: the logits differ from the integer reference")
        per = out["latency"]["per_input"]
        results["variants"][variant] = {
            "cpu": out["cpu"], "cflags": out["cflags"], "median": out["latency"]["median"], "memory": out["memory"],
            "per_mac": sum(per) / macs,
            "matrix": matrix_cost(variant, work_dir=work / f"matrix-{variant}", width=args.weights)}
    suffix = "" if args.weights == "int8" else f"-{args.weights}"
    (work / f"aarch64{suffix}.json").write_text(json.dumps(results, indent=1) + "\n")
    L = model.layers[0]
    width = "" if args.weights == "int8" else f" ({args.weights} post-training, its float student)"
    print(f"{model.name}{width}: {len(model.layers)} LSTM layer(s) {L.input_size} -> {L.hidden}, head "
          f"{model.layers[-1].hidden} -> {model.num_classes}; {len(ids)} test texts, bit-exact\n")
    print("| variant | qemu -cpu | flags | instructions / inference (median) | per MAC | "
          "per step, H 64 I 32 | per MAC, matrix | model code |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, r in results["variants"].items():
        m = r["matrix"]
        print(f"| {variant} | {r['cpu']} | `{' '.join(r['cflags'])}` | {r['median']:,.0f} | {r['per_mac']:.3f} | "
              f"{m['instructions_per_step']:,.0f} | {m['instructions_per_mac_matrix']:.3f} | "
              f"{r['memory']['code']:,} B |")


if __name__ == "__main__":
    main()
