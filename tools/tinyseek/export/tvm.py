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
  (`export_library`). See docs/edge.md for running it.
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
