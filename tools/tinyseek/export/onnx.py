"""The TinyLSTM student as ONNX (`tinyseek export --format onnx`): a float graph exported from
torch and a QDQ int8 graph from onnxruntime's static quantizer, both checked in onnxruntime on
the whole test split against the float student and tinyseek's int8 model (docs/tflite.md,
"ONNX").

The graph has the edge students' signature (`tinyseek edge`): inputs [N, T] token ids (text)
or [N, T, F] features (sequence), attention_mask [N, T] (1 for real steps, real steps first),
logits [N, C] at each row's last real step; batch and sequence axes are dynamic. The
embedding is in the graph: ONNX runtimes are not memory-bound the way an MCU is.

onnxruntime's QDQ format has no quantized LSTM: the static quantizer puts int8
Quantize/Dequantize pairs around the embedding Gather and the Gemm/MatMul of the input
projection and the head, and the LSTM runs in float. metrics.json lists what was quantized.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from .tflite import ExportError

OPSET = 18
INSTALL = "pip install -e '.[edge]' (or `make setup`)"


def _wrapper(model):
    import torch

    class Logits(torch.nn.Module):
        """TinyLSTM as (inputs, attention_mask) -> logits at each row's last real step: the LSTM
        runs over the whole padded input, which is exact because a step never sees later ones."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, inputs, attention_mask):
            out, _ = self.model.lstm(self.model._input(inputs))
            last = (attention_mask.sum(1) - 1).clamp(min=0)
            return self.model.head(out[torch.arange(inputs.shape[0]), last])

    return Logits().eval()


def torch_inputs(spec, inputs) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, attention_mask) numpy arrays of token-id lists (text) or features [N, T, F]."""
    if spec.kind == "text":
        lengths = np.array([len(s) for s in inputs], np.int64)
        ids = np.zeros((len(inputs), max(1, int(lengths.max()) if len(inputs) else 1)), np.int64)
        for n, s in enumerate(inputs):
            ids[n, :len(s)] = s
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        return ids, mask
    x = np.asarray(inputs, np.float32)
    return x, np.ones(x.shape[:2], np.int64)


def export_float(student_dir: Path, path: Path, example: tuple[np.ndarray, np.ndarray]) -> None:
    import torch

    from ..student.tinylstm import load_student
    model, _ = load_student(student_dir)
    ids, mask = (torch.from_numpy(a[:2, :max(2, a.shape[1])]) for a in example)
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation: see distill/edge.py
        warnings.simplefilter("ignore")
        torch.onnx.export(_wrapper(model), (ids, mask), str(path), input_names=["inputs", "attention_mask"],
                          output_names=["logits"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"inputs": axes, "attention_mask": axes, "logits": {0: "batch"}})


def quantize_qdq(float_path: Path, int8_path: Path, calib: tuple[np.ndarray, np.ndarray]) -> None:
    """Static QDQ int8 (per-channel weights, MinMax ranges) calibrated one sample at a time."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError as e:
        raise ExportError(f"the ONNX export needs onnxruntime ({e}); install it: {INSTALL}") from e
    x, mask = calib

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(range(len(x)))

        def get_next(self):
            n = next(self.rows, None)
            if n is None:
                return None
            t = max(1, int(mask[n].sum()))
            return {"inputs": x[n:n + 1, :t], "attention_mask": mask[n:n + 1, :t]}

    logging.disable(logging.WARNING)  # its advice to pre-process (shape inference) does not apply here
    try:
        quantize_static(str(float_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.disable(logging.NOTSET)


def session(path: Path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def logits(path: Path, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """onnxruntime's logits [N, C], one sample at a time at its own length (as a device runs it)."""
    sess = session(path)
    out = []
    for n in range(len(x)):
        t = max(1, int(mask[n].sum()))
        out.append(sess.run(["logits"], {"inputs": x[n:n + 1, :t], "attention_mask": mask[n:n + 1, :t]})[0][0])
    return np.stack(out) if out else np.zeros((0, 0))


def quantized_ops(path: Path) -> dict[str, int]:
    """How many nodes of each type the int8 graph holds (QuantizeLinear, DequantizeLinear, LSTM, ...)."""
    import onnx
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
