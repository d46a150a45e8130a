"""The exported .tflite files in the real interpreters: TensorFlow Lite (`tf.lite.Interpreter`,
one thread) and TFLite Micro (the `tflite-micro` package: TFLM's reference kernels), on every
sample given, against the float student and tinyseek's int8 model.

Every sample runs alone (batch 1, as a device runs it) after resetting the interpreter: the
fused LSTM keeps its state in variable tensors that persist from one invoke to the next.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .tflite import INSTALL_HINT, ExportError, _tensorflow, quiet_tflite

ARENA_START = 1 << 20  # TFLM arena tried first; the search then halves towards the smallest that runs


def _tflm():
    try:
        import tflite_micro  # `import tflite_micro.runtime` alone fails: the package sets the path up
    except ImportError as e:
        raise ExportError(f"the TFLite Micro check needs the tflite-micro package ({e}); install it: {INSTALL_HINT}") from e
    return tflite_micro.runtime.Interpreter


class _Runner:
    """One interpreter (TFLite or TFLM) on one .tflite, with the input order and quantization
    read from the model: `raw` runs one input already in the model's input type,
    `quantize_input` and `dequantize` convert at the edges."""

    def __init__(self, tflite: bytes, engine: str):
        self.engine = engine
        if engine == "tflite":
            tf, _ = _tensorflow()
            with quiet_tflite():
                self.interp = tf.lite.Interpreter(model_content=tflite, num_threads=1)
            self.interp.allocate_tensors()
            ins = self.interp.get_input_details()
            out = self.interp.get_output_details()[0]
            details = [(d["index"], d["dtype"], d["quantization"]) for d in ins]
            self.out = (out["index"], out["quantization"])
        else:
            Interpreter = _tflm()
            self.interp = Interpreter.from_bytes(tflite, arena_size=ARENA_START)
            details = []
            for i in range(2):
                d = self.interp.get_input_details(i)
                q = d["quantization_parameters"]
                details.append((i, d["dtype"], (float(q["scales"][0]), int(q["zero_points"][0])) if len(q["scales"]) else (0.0, 0)))
            q = self.interp.get_output_details(0)["quantization_parameters"]
            self.out = (0, (float(q["scales"][0]), int(q["zero_points"][0])) if len(q["scales"]) else (0.0, 0))
        # The int32 input is the last-step index, the other the sequence.
        (self.last_idx, _, _), = [d for d in details if d[1] == np.int32]
        (self.x_idx, self.x_dtype, self.x_quant), = [d for d in details if d[1] != np.int32]

    @property
    def quantized(self) -> bool:
        return self.x_dtype == np.int8

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return x.astype(np.float32)
        scale, zp = self.x_quant
        return np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)

    def raw(self, xq: np.ndarray, last: int) -> np.ndarray:
        """The output tensor (int8 or float) for one already-quantized input [1, T, W]."""
        lastv = np.array([last], np.int32)
        if self.engine == "tflite":
            self.interp.reset_all_variables()
            self.interp.set_tensor(self.x_idx, xq)
            self.interp.set_tensor(self.last_idx, lastv)
            self.interp.invoke()
            return self.interp.get_tensor(self.out[0])[0].copy()
        self.interp.reset()
        self.interp.set_input(xq, self.x_idx)
        self.interp.set_input(lastv, self.last_idx)
        self.interp.invoke()
        return np.asarray(self.interp.get_output(0))[0].copy()

    def dequantize(self, out: np.ndarray) -> np.ndarray:
        if out.dtype != np.int8:
            return out.astype(np.float64)
        scale, zp = self.out[1]
        return (out.astype(np.float64) - zp) * scale


_PROBE = """
import sys, numpy as np, tflite_micro
interp = tflite_micro.runtime.Interpreter.from_bytes(open(sys.argv[1], "rb").read(), arena_size=int(sys.argv[2]))
for i in range(2):
    d = interp.get_input_details(i)
    interp.set_input(np.zeros(d["shape"], d["dtype"]), i)
interp.invoke()
"""


def smallest_arena(tflite: bytes, start: int = ARENA_START, step: int = 16) -> int:
    """The smallest TFLM arena (bytes, a multiple of `step`) in which the model allocates and runs
    once. TFLM's Python API reports no arena use, so it is searched for; each try runs in its own
    process because the interpreter sometimes crashes instead of failing on a too-small arena."""
    _tflm()
    with tempfile.TemporaryDirectory(prefix="tinyseek-arena-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(tflite)

        def runs(size: int) -> bool:
            proc = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(size)], capture_output=True, timeout=120)
            return proc.returncode == 0

        if not runs(start):
            raise ExportError(f"TFLite Micro cannot run the model in a {start:,} B arena; the model is too large "
                              "for an MCU")
        lo, hi = 0, start // step  # runs(hi * step) holds, runs(lo * step) does not (0 B never runs)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if runs(mid * step):
                hi = mid
            else:
                lo = mid
    return hi * step


def run_all(tflite: bytes, engine: str, x: np.ndarray, last: np.ndarray, table: np.ndarray | None = None,
            ids: list[list[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(raw outputs [N, C], float logits [N, C]) of every sample (x float [N, T, W], last [N]).

    For an int8 text model give `table` (the int8 embedding rows the device copies in) and the
    token ids: the input is then built from the table, exactly as on the device, instead of
    quantizing the float embedding."""
    r = _Runner(tflite, engine)
    outs = []
    for n in range(len(x)):
        if table is not None and r.quantized:
            xq = np.full((1, x.shape[1], x.shape[2]), r.x_quant[1], np.int8)  # padding: the real value 0
            xq[0, :len(ids[n])] = table[ids[n]]
        else:
            xq = r.quantize_input(x[n:n + 1])
        outs.append(r.raw(xq, int(last[n])))
    raw = np.stack(outs) if outs else np.zeros((0, 0))
    return raw, r.dequantize(raw)


def int8_io(tflite: bytes) -> dict:
    """What a device needs to feed an int8 model, as TFLM sees it: the input and output
    quantization and the positions of the two inputs."""
    r = _Runner(tflite, "tflm")
    if not r.quantized:
        raise ExportError("the model's input is not int8: it is not the full-integer export")
    return {"input_scale": r.x_quant[0], "input_zero_point": r.x_quant[1], "output_scale": r.out[1][0],
            "output_zero_point": r.out[1][1], "input_sequence": r.x_idx, "input_last": r.last_idx}


def embedding_table(embedding: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """The float embedding [V, E] quantized to the int8 model's input: the rows a device copies
    into the input tensor, one per token."""
    return np.clip(np.round(np.asarray(embedding, np.float64) / scale) + zero_point, -128, 127).astype(np.int8)
