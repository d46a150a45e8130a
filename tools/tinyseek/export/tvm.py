"""TVM (Apache TVM 0.27, the compiler stack for embedded Linux boards): the ONNX graph imported
by TVM's Relax frontend, compiled by LLVM for this x86-64 CPU and run in TVM's Relax virtual
machine here, and compiled for AArch64 Linux (`tinyseek edge --runtime tvm`, docs/edge.md).

- TVM compiles static shapes here: its ONNX frontend cannot import the exported graph's
  dynamic Shape -> Gather arithmetic, so it reads the graph with batch 1 and the sequence
  length fixed (edge_quant.fixed_shape); shorter inputs are right-padded, which the students'
  attention masks make exact for the float graphs.
- No tuning (MetaSchedule): the default schedules of `tvm.compile`. Tuning would need
  measurements on the target board.
- Threads: TVM's runtime reads TVM_NUM_THREADS once, when its thread pool starts; it is set
  to 1 here unless the caller set it, so every runtime is measured on one thread.
- AArch64: the same module cross-compiled (LLVM target aarch64-linux-gnu, linked by
  aarch64-linux-gnu-gcc) into a shared library a board's TVM runtime loads
  (`export_library`). The apache-tvm wheel installed here holds the x86-64 runtime only; PyPI
  also has manylinux aarch64 wheels of apache-tvm and apache-tvm-ffi, whose libtvm_runtime.so,
  libtvm_runtime_extra.so and libtvm_ffi.so `aarch64_runtime` takes (pip download, cached in build/tvm-aarch64/). A
  small C program (tvm_aarch64_runner.c, TVM's C ABI) loads the module with them and runs it
  under qemu-aarch64 user mode (`run_aarch64`): a correctness check, not a timing.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

INSTALL = "pip install apache-tvm==0.27.0.post1 (or pip install -e '.[edge-runtimes]', or `make setup`)"
AARCH64_CC = "aarch64-linux-gnu-gcc"


class TvmError(ValueError):
    """TVM is missing, or it could not import or compile a graph."""


def _tvm():
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    try:
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx
    except ImportError as e:
        raise TvmError(f"TVM is not installed ({e}): {INSTALL}") from e
    return tvm, relax, from_onnx


def import_onnx(static_path: Path):
    """The Relax module of a static-shape ONNX graph; names the operators TVM's frontend lacks."""
    import onnx
    tvm, _, from_onnx = _tvm()
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
    model = onnx.load(str(static_path))
    for node in model.graph.node:
        # TVM's frontend takes sorted TopK only. The truncated teacher's MoE router asks for an
        # unsorted top k, whose order its consumer (a scatter of the routing weights) ignores:
        # sorting is one of the orders sorted=0 allows, so the graph means the same.
        if node.op_type == "TopK":
            for a in node.attribute:
                if a.name == "sorted":
                    a.i = 1
    missing = sorted({n.op_type for n in model.graph.node} - set(_get_convert_map()))
    if missing:
        raise TvmError(f"TVM {tvm.__version__}'s ONNX frontend has no converter for {', '.join(missing)} "
                       f"({static_path.name})")
    try:
        return from_onnx(model, keep_params_in_input=False)
    except Exception as e:  # the frontend raises bare errors
        msg = str(e).strip().splitlines()
        raise TvmError(f"TVM's ONNX frontend could not import {static_path}: {msg[-1] if msg else e}") from e


def compile_x86(static_path: Path):
    """The Relax module compiled for this CPU (LLVM); returns the executable."""
    tvm, _, _ = _tvm()
    mod = import_onnx(static_path)
    try:
        return tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    except Exception as e:
        raise TvmError(f"TVM could not compile {static_path}: {str(e).strip().splitlines()[-1]}") from e


def compile_aarch64(static_path: Path, out_path: Path) -> Path:
    """The module compiled for 64-bit Arm Linux (NEON) and linked by the cross compiler."""
    import shutil
    tvm, _, _ = _tvm()
    if shutil.which(AARCH64_CC) is None:
        raise TvmError(f"{AARCH64_CC} is missing: apt-get install gcc-aarch64-linux-gnu (tools/setup/system-packages.sh)")
    mod = import_onnx(static_path)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    try:
        ex = tvm.compile(mod, target=target)
        ex.export_library(str(out_path), cc=AARCH64_CC)
    except Exception as e:
        raise TvmError(f"TVM could not cross-compile {static_path} for aarch64: {str(e).strip().splitlines()[-1]}") from e
    return out_path


# libtvm_runtime_extra holds the contrib kernels (e.g. tvm.contrib.sort.topk, the MoE router's).
RUNTIME_LIBS = ("tvm/lib/libtvm_runtime.so", "tvm/lib/libtvm_runtime_extra.so", "tvm_ffi/lib/libtvm_ffi.so")


def aarch64_runtime(cache: Path) -> Path:
    """A folder with the aarch64 libtvm_runtime.so and libtvm_ffi.so of the installed TVM's
    versions (from PyPI's aarch64 wheels) and the runner built against them."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from importlib import metadata
    cache = Path(cache)
    runner = cache / "runner"
    if runner.is_file() and all((cache / Path(lib).name).is_file() for lib in RUNTIME_LIBS):
        return cache
    if shutil.which(AARCH64_CC) is None:
        raise TvmError(f"{AARCH64_CC} is missing: apt-get install gcc-aarch64-linux-gnu (tools/setup/system-packages.sh)")
    cache.mkdir(parents=True, exist_ok=True)
    wheels = [f"apache-tvm=={metadata.version('apache-tvm')}", f"apache-tvm-ffi=={metadata.version('apache-tvm-ffi')}"]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                           "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11", "-d", str(cache), *wheels],
                          capture_output=True, text=True)
    if done.returncode:
        raise TvmError(f"could not download the aarch64 TVM runtime ({' '.join(wheels)}): {done.stderr.strip()[-300:]}")
    include = cache / "include"
    for wheel in cache.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name in RUNTIME_LIBS:
                    (cache / Path(name).name).write_bytes(z.read(name))
                elif name.startswith("tvm_ffi/include/") and not name.endswith("/"):
                    target = include / name[len("tvm_ffi/include/"):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
        wheel.unlink()
    source = Path(__file__).with_name("tvm_aarch64_runner.c")
    done = subprocess.run([AARCH64_CC, "-O2", "-std=c11", "-I", str(include), "-o", str(runner), str(source),
                           "-L", str(cache), "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_runtime_extra", "-ltvm_ffi"],
                          capture_output=True, text=True)
    if done.returncode:
        raise TvmError(f"could not build the aarch64 runner: {done.stderr.strip()[-300:]}")
    return cache


def run_aarch64(module: Path, runtime: Path, ids: np.ndarray, mask: np.ndarray, classes: int) -> np.ndarray:
    """Logits [N, classes] of the aarch64 module under qemu-aarch64 (user mode), one sample per call."""
    import shutil
    import subprocess
    import tempfile
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if qemu is None:
        raise TvmError("qemu-aarch64 is missing: apt-get install qemu-user (tools/setup/system-packages.sh)")
    with tempfile.TemporaryDirectory() as tmp:
        inputs, out = Path(tmp) / "inputs.bin", Path(tmp) / "logits.bin"
        with open(inputs, "wb") as f:
            np.array([len(ids), ids.shape[1], classes], np.int64).tofile(f)
            np.ascontiguousarray(ids, np.int64).tofile(f)
            np.ascontiguousarray(mask, np.int64).tofile(f)
        done = subprocess.run([qemu, "-L", "/usr/aarch64-linux-gnu", "-E", f"LD_LIBRARY_PATH={runtime}",
                               str(runtime / "runner"), str(Path(module).resolve()), str(inputs), str(out)],
                              capture_output=True, text=True)
        if done.returncode:
            raise TvmError(f"the aarch64 module failed under qemu-aarch64: {done.stderr.strip()[-300:]}")
        return np.fromfile(out, np.float32).reshape(len(ids), classes)


class Runner:
    """A compiled executable in TVM's Relax VM on the CPU: runner(*inputs [1, L]) -> logits [C]."""

    def __init__(self, executable):
        tvm, relax, _ = _tvm()
        self.tvm = tvm
        self.vm = relax.VirtualMachine(executable, tvm.cpu())
        self.main = self.vm["main"]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        out = self.main(*(self.tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays))
        return out.numpy().reshape(-1)
