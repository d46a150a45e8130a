"""MNN (Alibaba's on-device runtime, the one Android apps embed): the float ONNX graph through
MNN's own converter, run in MNN's Python runtime (`tinyseek edge --runtime mnn`, docs/edge.md).

Quantized MNN models come from MNN's converter too (`--weightQuantBits 8`, or 4 with
`--weightQuantBlock`): weight-only, per output channel or per block, asymmetric; MNN keeps
the weights quantized in the file and dequantizes them when the model loads. MNN does not
read onnxruntime's quantized operators (MatMulInteger, MatMulNBits).

The converter is called through the wheel's compiled `_tools.mnnconvert` and not the
`mnnconvert` console script: the script's Python wrapper imports a usage logger that runs
`pip install aliyun-log-python-sdk` into whatever `pip` is on PATH and sends each
conversion's details to Alibaba's log service. The compiled converter does neither.

Both the converter and the runtime run in a worker process of their own: MNN's libraries and
TensorFlow's cannot share a process (loading MNN after TensorFlow aborts the interpreter), and
`tinyseek edge` may load both.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib.util
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

INSTALL = "pip install MNN (or pip install -e '.[edge-runtimes]', or `make setup`)"


class MnnError(ValueError):
    """MNN is missing, or its converter refused a graph."""


def _require():
    """Checked here without importing MNN, which must only ever load in the worker."""
    missing = [name for name in ("MNN", "_tools") if importlib.util.find_spec(name) is None]
    if missing:
        raise MnnError(f"MNN is not installed (no module {', '.join(missing)}): {INSTALL}")


_pool: ProcessPoolExecutor | None = None


def _call(fn, *args):
    """fn(*args) in the MNN worker process (started on first use, spawned so that it starts clean)."""
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        atexit.register(_pool.shutdown)
    try:
        return _pool.submit(fn, *args).result()
    except BrokenProcessPool as e:
        _pool = None
        raise MnnError(f"MNN's worker process died ({e}): MNN crashed on this model; "
                       "run the same command with --runtime onnxruntime to check the graph itself") from e


@contextlib.contextmanager
def _captured_stdout():
    """The converter prints its progress (and the first unsupported operator) on the C stdout:
    keep it, to name the operator in an error and to keep the command's output short."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 1)
        log = []
        try:
            yield log
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            f.seek(0)
            log.append(f.read().decode("utf-8", "replace"))


def convert(onnx_path: Path, out_path: Path, weight_bits: int = 0, block: int = 0) -> Path:
    """ONNX -> .mnn; weight_bits 8 or 4 quantizes the weights (block: 4-bit block size, 0 per channel)."""
    _require()
    args = ["mnnconvert", "-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(out_path),
            "--bizCode", "tinyseek"]
    if weight_bits:
        args += ["--weightQuantBits", str(weight_bits), "--weightQuantAsymmetric"]
        if block:
            args += ["--weightQuantBlock", str(block)]
    if out_path.exists():
        out_path.unlink()
    ok, text = _call(_convert_in_worker, args)
    if not ok or not out_path.is_file() or "Converted Success" not in text:
        unsupported = [line.strip() for line in text.splitlines() if "not support" in line.lower()]
        raise MnnError(f"MNN's converter could not convert {onnx_path}: "
                       + ("; ".join(unsupported) if unsupported else text.strip()[-400:]))
    return out_path


def _convert_in_worker(args: list[str]) -> tuple[bool, str]:
    import _tools
    with _captured_stdout() as log:
        ok = _tools.mnnconvert(args)
    return bool(ok), log[0] if log else ""


class Runner:
    """A converted .mnn model in MNN's Python runtime (Module API, CPU, one thread):
    runner(inputs [1, T] int, attention_mask [1, T]) -> logits [C]."""

    def __init__(self, path: Path, input_names: list[str], threads: int = 1):
        _require()
        self.key = (str(path), tuple(input_names), threads)
        _call(_load_in_worker, self.key)

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return _call(_forward_in_worker, self.key, arrays)

    def latency(self, ids: np.ndarray, mask: np.ndarray, samples: int, repeats: int) -> dict:
        """Timed inside the worker, so that the figure leaves out the trip between processes."""
        return _call(_latency_in_worker, self.key, ids, mask, samples, repeats)


_modules: dict = {}  # the worker's loaded models, by (path, input names, threads)


def _load_in_worker(key: tuple) -> None:
    import MNN.nn as nn
    path, names, threads = key
    _modules[key] = nn.load_module_from_file(path, list(names), ["logits"], thread_num=threads)


def _forward_in_worker(key: tuple, arrays: tuple) -> np.ndarray:
    import MNN.expr as F
    feeds = []
    for a in arrays:
        # MNN's integer tensors are int32: the converter turns the graph's int64 inputs into int32.
        if a.dtype.kind == "i":
            feeds.append(F.const(a.astype(np.int32), list(a.shape), F.NCHW, F.int))
        else:
            feeds.append(F.const(a.astype(np.float32), list(a.shape), F.NCHW, F.float))
    return np.array(_modules[key].forward(feeds)[0].read(), np.float32).reshape(-1)


def _latency_in_worker(key: tuple, ids: np.ndarray, mask: np.ndarray, samples: int, repeats: int) -> dict:
    from ..distill.edge_frameworks import latency
    return latency(lambda *a: _forward_in_worker(key, a), ids, mask, samples, repeats)
