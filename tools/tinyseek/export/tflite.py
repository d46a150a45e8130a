"""The TinyLSTM student as TensorFlow Lite: the float student rebuilt in Keras with the same
weights, converted to a float32 and a full-integer int8 .tflite (docs/tflite.md).

The graph takes the first LSTM layer's input for a whole sequence, padded to a fixed number
of steps (TFLite Micro cannot resize inputs), and the index of the last real step:

    inputs [1, T, W] (embedded tokens, or features)  ->  [proj Dense]  ->  LSTM x layers
    (all steps)  ->  reshape [T, H]  ->  GATHER(last)  ->  head Dense  ->  logits [1, C]

An LSTM step never sees later steps, so reading the top layer at `last` is exact whatever the
padding holds. The tokenizer and the embedding table stay outside the graph: the device
tokenizes with tinyseek's C and copies rows of the embedding table, quantized to the int8
model's input scale, into the input tensor.

Keras here is the legacy `tf_keras` (Keras 2): its LSTM layer carries the annotation the
converter turns into one fused UNIDIRECTIONAL_SEQUENCE_LSTM op, the kernel TFLite Micro runs
in int8. Keras 3 converts the LSTM to a WHILE loop, and its int8 conversion fails.
torch's nn.LSTM and Keras share the gate order i, f, g, o: Keras holds the transposed
matrices and one bias, b_ih + b_hh.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable

import numpy as np

from ..quant.float_model import FloatStudent

INSTALL_HINT = ("pip install -e '.[tflite]' && pip install --no-deps 'tf_keras==2.21.*' "
                "(or `make setup`, which installs both)")
LSTM_OP = "UNIDIRECTIONAL_SEQUENCE_LSTM"


class ExportError(ValueError):
    """The student, the settings or the converter's result cannot make a usable .tflite."""


def _tensorflow():
    """TensorFlow and legacy Keras, one thread each (the conversion's calibration runs the model)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tf_keras
    except ImportError as e:
        raise ExportError(f"the TFLite export needs tensorflow-cpu and tf_keras ({e}); install them: "
                          f"{INSTALL_HINT}") from e
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process: its threads are set
        pass
    return tf, tf_keras


def input_width(fs: FloatStudent) -> int:
    """W of the graph's input: the embedding width (text) or the feature count (sequence)."""
    return fs.embed_dim if fs.kind == "text" else fs.num_features


def keras_model(fs: FloatStudent, steps: int):
    """The float student as a tf_keras model (inputs [1, steps, W], last int32 [1]) -> logits [1, C]."""
    tf, keras = _tensorflow()
    if steps < 1:
        raise ExportError(f"the exported graph needs at least 1 step, not {steps}")
    x_in = keras.Input(shape=(steps, input_width(fs)), batch_size=1, name="inputs")
    last = keras.Input(shape=(), batch_size=1, dtype="int32", name="last")
    x = x_in
    t = fs.tensors
    if fs.kind == "sequence":
        proj = keras.layers.Dense(fs.embed_dim, name="proj")
        x = proj(x)
        proj.set_weights([t["proj.weight"].T, t["proj.bias"]])
    lstms = []
    for k, layer in enumerate(fs.layers()):
        lstm = keras.layers.LSTM(layer.hidden, return_sequences=True, name=f"lstm{k}")
        x = lstm(x)
        lstms.append((lstm, layer))
    top = keras.layers.Reshape((steps, fs.hidden))(x)
    h = keras.layers.Lambda(lambda a: tf.gather(a[0][0], a[1], axis=0), name="last_step")([top, last])
    head = keras.layers.Dense(fs.num_classes, name="head")
    logits = head(h)
    for lstm, layer in lstms:
        lstm.set_weights([layer.w_x.T, layer.w_h.T, layer.b])
    head.set_weights([t["head.weight"].T, t["head.bias"]])
    return keras.Model([x_in, last], logits, name="tinylstm")


def padded_inputs(fs: FloatStudent, inputs, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The graph's float inputs of token-id lists (text) or feature sequences: (x float32 [N,
    steps, W] zero-padded, last int32 [N]). Samples longer than `steps` are an error, empty ones
    get last = -1 (the graph cannot run them: see docs/tflite.md)."""
    raw, lengths = fs.raw_inputs(inputs)
    if raw.shape[1] > steps:
        n = int(np.argmax(lengths > steps))
        raise ExportError(f"sample {n} has {int(lengths[n])} steps but the exported graph holds {steps}; "
                          "export with more steps (the student's max_len) or shorten the inputs")
    x = np.zeros((len(lengths), steps, input_width(fs)), np.float32)
    x[:, :raw.shape[1]] = fs.tensors["embed.weight"][raw] if fs.kind == "text" else raw
    if fs.kind == "text":  # padding ids (0) must not bring embedding row 0 in
        x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    return x, (lengths - 1).astype(np.int32)


def _check_calibration(calib: tuple[np.ndarray, np.ndarray], steps: int, width: int) -> None:
    x, last = calib
    if x.ndim != 3 or x.shape[1:] != (steps, width):
        raise ExportError(f"the representative dataset has shape {list(x.shape)}, but the graph's input is "
                          f"[N, {steps}, {width}] (steps, {'embedding width' if width else 'features'}); "
                          "build it with padded_inputs from the task's calibration samples")
    if len(x) == 0 or len(last) != len(x):
        raise ExportError(f"the representative dataset needs at least one sample and one last-step index per "
                          f"sample (got {len(x)} samples, {len(last)} indices); set quant.calibration_samples >= 1")
    if np.any(last < 0) or np.any(last >= steps):
        raise ExportError(f"a last-step index of the representative dataset is outside 0..{steps - 1}; "
                          "empty samples cannot calibrate the graph")


@contextlib.contextmanager
def quiet_tflite():
    """Hide TensorFlow's notices that do not concern the export: tf.lite.Interpreter's move to
    LiteRT, and the calibrator's note that the int32 last-step input has no statistics."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        yield


def op_names(tflite: bytes) -> list[str]:
    """The builtin op names of a .tflite model's main graph, in order."""
    tf, _ = _tensorflow()
    with quiet_tflite():
        interp = tf.lite.Interpreter(model_content=tflite, num_threads=1)
    return [op["op_name"] for op in interp._get_ops_details()]


def _check_graph(tflite: bytes, fs: FloatStudent, what: str) -> list[str]:
    ops = op_names(tflite)
    fused = ops.count(LSTM_OP)
    if fused != fs.num_layers:
        loops = sorted({o for o in ops if o in ("WHILE", "CALL_ONCE", "FLEX_DELEGATE") or o.startswith("Flex")})
        raise ExportError(
            f"the {what} .tflite holds {fused} {LSTM_OP} ops for the student's {fs.num_layers} LSTM layers "
            f"(layers lstm{fused}..lstm{fs.num_layers - 1} were not converted to the fused kernel"
            f"{'; found ' + ', '.join(loops) + ' instead' if loops else ''}); TFLite Micro runs only the fused "
            "op: convert with legacy Keras (tf_keras, TF_USE_LEGACY_KERAS=1), not Keras 3")
    return ops


def convert(fs: FloatStudent, steps: int, calib: tuple[np.ndarray, np.ndarray]) -> dict[str, bytes]:
    """{"float": float32 .tflite, "int8": full-integer .tflite} of the student. `calib` is the
    representative dataset as padded_inputs returns it. Raises ExportError naming the layer or
    setting at fault; nothing is written."""
    tf, _ = _tensorflow()
    _check_calibration(calib, steps, input_width(fs))
    model = keras_model(fs, steps)

    def representative() -> Iterable[dict[str, np.ndarray]]:
        x, last = calib
        for i in range(len(x)):  # by name: the converter's input order is not the Keras one
            yield {"inputs": x[i:i + 1], "last": last[i:i + 1]}

    out = {}
    for what in ("float", "int8"):
        try:
            conv = tf.lite.TFLiteConverter.from_keras_model(model)
            if what == "int8":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = representative
                conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                conv.inference_input_type = tf.int8
                conv.inference_output_type = tf.int8
            with quiet_tflite():
                out[what] = conv.convert()
        except Exception as e:  # the converter raises ConverterError, RuntimeError, ValueError, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"the TFLite converter failed on the {what} model: {first}") from e
        _check_graph(out[what], fs, what)
    return out
