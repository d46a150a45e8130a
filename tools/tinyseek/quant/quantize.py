"""The quantizer: float TinyLSTM student -> int8 QuantModel, as docs/numerics.md specifies.

Weights get per-row symmetric int8 scales, a sequence model's input projection is folded into
the first LSTM layer, and the activation ranges come from running the float student on
calibration inputs: the input scale, each layer's cell-state format and the output scale.
Every multiplier, shift and bias is checked against the integer spec; anything that does not
fit raises an error naming the tensor and the fix, never a silent wrap.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from .float_model import SPEC_FILE, WEIGHTS_FILE, ActivationStats, FloatStudent, QuantError
from .model import EMBEDDING_GAIN_MAX, INT4_MAX, WEIGHT_WIDTHS, HeadQ, LSTMLayerQ, QuantModel
from .reference import (INT32_MAX, MAX_PRODUCT, QuantRangeError, check_model, encode_multipliers, infer_sequences,
                        infer_tokens, make_tables, quantize_inputs)

# A 10% margin over the largest calibrated |c|: test data may reach a little further.
CELL_MARGIN = 1.1
CELL_FRAC_BITS = range(12, 6, -1)  # Q3.12 (finest) down to Q8.7 (widest), docs/numerics.md
# int16 logits are scaled so the calibrated maximum lands at 32000, leaving headroom to 32767.
LOGIT_FULL_SCALE = 32000.0
GATE_ONE = 4096.0  # Q3.12
H_SCALE = 1.0 / 128.0  # Q0.7
# Warn when more than this fraction of a layer's gate pre-activations leave the Q3.12 range.
SATURATION_WARN = 0.01


class SaturationWarning(UserWarning):
    """Gate pre-activations of the float student often exceed the Q3.12 range (+-8)."""


def quantize_rows(w: np.ndarray, width: str = "int8") -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric weights: (w_q int8 [R, K], s_w float64 [R]), docs/numerics.md.

    int8: s_w = max|row| / 127, w_q = round(w / s_w) in -127..127; int4: the same with 7 in
    -7..7; binary: s_w = mean|row|, w_q = +1 where w >= 0 else -1 (the scale that minimises
    the squared error of a sign row). An all-zero row gets s_w = 1.0."""
    w = np.asarray(w, dtype=np.float64)
    if width == "binary":
        mean = np.abs(w).mean(axis=1) if w.shape[1] else np.zeros(w.shape[0])
        return np.where(w >= 0, 1, -1).astype(np.int8), np.where(mean > 0, mean, 1.0)
    top = {"int8": 127, "int4": INT4_MAX}[width]
    amax = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0])
    s = np.where(amax > 0, amax / top, 1.0)
    # The clip only absorbs a last-ulp excess of max/s_w over the top; it never changes a value.
    return np.clip(np.round(w / s[:, None]), -top, top).astype(np.int8), s


def choose_cell_frac_bits(max_abs_cell: float, layer: int) -> int:
    """The finest Q(15-cf).cf format, 7 <= cf <= 12, that holds max|c| with a 10% margin."""
    for cf in CELL_FRAC_BITS:
        if max_abs_cell * CELL_MARGIN < 2.0 ** (15 - cf):
            return cf
    widest = 2.0 ** (15 - CELL_FRAC_BITS[-1])
    raise QuantRangeError(
        f"lstm{layer}: the float student's cell state reaches |c| = {max_abs_cell:.4g} on the calibration data, "
        f"but the int16 cell state holds at most +-{widest:g} (cf = {CELL_FRAC_BITS[-1]}), i.e. |c| < "
        f"{widest / CELL_MARGIN:.1f} with the 10% margin; the student's cell state grew too large: retrain it with "
        "stronger weight decay or the cell-range penalty of the distillation, or train on shorter sequences")


def _int32(values: np.ndarray, name: str, lo: int, hi: int, why: str) -> np.ndarray:
    r = np.round(np.asarray(values, dtype=np.float64))
    bad = np.flatnonzero((r < lo) | (r > hi))
    if bad.size:
        j = int(bad[0])
        raise QuantRangeError(f"{name}[{j}] = {r[j]:.6g} does not fit the int32 range [{lo}, {hi}]: {why}")
    return r.astype(np.int32)


def _multipliers(r: np.ndarray, name: str, context: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return encode_multipliers(r, name)
    except QuantRangeError as e:
        raise QuantRangeError(f"{e} ({context})") from e


def source_hash(student_dir: str | Path) -> str:
    """sha256 over the student's two files (names and bytes)."""
    h = hashlib.sha256()
    for f in (SPEC_FILE, WEIGHTS_FILE):
        h.update(f.encode())
        h.update((Path(student_dir) / f).read_bytes())
    return h.hexdigest()


def quantize(student_dir: str | Path, calib_inputs, *, name: str, meta: dict | None = None,
             saturation_warn: float = SATURATION_WARN, weights: str = "int8",
             input_scale: float | None = None, embedding: str | None = None, audio: dict | None = None) -> QuantModel:
    """Quantize the float student in `student_dir` (student.safetensors + student.json).

    calib_inputs: token-id lists (text students) or float features [N, T, F] / a list of
    [T_n, F] (sequence students). `meta` is merged into the model's provenance record (it must
    be JSON-serialisable). Raises QuantError (student or inputs unusable) or QuantRangeError
    (a value the integer spec cannot represent); warns with SaturationWarning when more than
    `saturation_warn` of a layer's gate pre-activations saturate. `weights` is the width of the
    LSTM gate matrices (int8, int4 or binary), `embedding` the stored embedding's (None: the
    same as `weights`); the head is int8, binary in a binary model.
    `input_scale` (sequence students) fixes s_x instead of max|x| / 127: for inputs that are
    int8 already times a known scale (the audio front end's frames times 1/64), so the device
    feeds them unchanged. `audio`: the front end and frames_per_step of an audio student
    (QuantModel.audio), so its library carries the front end.
    """
    student = FloatStudent.from_folder(student_dir)
    return _quantize(student, calib_inputs, name=name, meta=meta, source=source_hash(student_dir),
                     saturation_warn=saturation_warn, weights=weights, input_scale=input_scale,
                     embedding=embedding, audio=audio)


def quantize_embedding(table: np.ndarray, width: str = "int8") -> tuple[np.ndarray, np.ndarray | None, float]:
    """The embedding as the LSTM's int8 input rows: (rows int8 [V, E], gains uint8 [V] or None,
    s_x), docs/numerics.md. int8: s_x = max|table| / 127, rows = round(table / s_x). int4 and
    binary store per-row gains g (integers) and codes, a row being g * codes at the one input
    scale s_x: int4 codes round(row / (g s_x)) in -7..7 with g = ceil(max|row| / (7 s_x)) and
    s_x = max|table| / 126 (g <= 18); binary codes the signs with g = round(mean|row| / s_x) and
    s_x = max over rows of mean|row| / 127 (mean|row| is the scale of least squared error)."""
    t = np.asarray(table, dtype=np.float64)
    emax = float(np.abs(t).max()) if t.size else 0.0
    if emax == 0.0:
        raise QuantError("tensor 'embed.weight' is all zeros: the student never trained; re-run `tinyseek distill`")
    if width == "int8":
        s_x = emax / 127.0
        return np.clip(np.round(t / s_x), -127, 127).astype(np.int8), None, s_x
    if width == "int4":
        s_x = emax / (INT4_MAX * EMBEDDING_GAIN_MAX["int4"])
        # The 1e-9 absorbs a last-ulp excess of max|row| / (7 s_x) over an integer.
        gain = np.clip(np.ceil(np.abs(t).max(axis=1) / (INT4_MAX * s_x) - 1e-9), 0, EMBEDDING_GAIN_MAX["int4"])
        codes = np.clip(np.round(t / (np.maximum(gain, 1) * s_x)[:, None]), -INT4_MAX, INT4_MAX)
    else:
        mean = np.abs(t).mean(axis=1)
        s_x = float(mean.max()) / EMBEDDING_GAIN_MAX["binary"]
        gain = np.clip(np.round(mean / s_x), 0, EMBEDDING_GAIN_MAX["binary"])
        codes = np.where(t >= 0, 1, -1)
    rows = (codes * gain[:, None]).astype(np.int8)
    return rows, gain.astype(np.uint8), s_x


def _quantize(fs: FloatStudent, calib_inputs, *, name: str, meta: dict | None, source: str,
              saturation_warn: float, weights: str = "int8", input_scale: float | None = None,
              embedding: str | None = None, audio: dict | None = None) -> QuantModel:
    embedding_width = embedding or weights
    for key, value in (("weights", weights), ("embedding", embedding_width)):
        if value not in WEIGHT_WIDTHS:
            raise QuantError(f"quant.{key} = {value!r}: choose one of {', '.join(WEIGHT_WIDTHS)}")
    stats = fs.calibrate(calib_inputs)
    _warn_saturation(stats, saturation_warn)

    rows = gain = None
    if fs.kind == "text":
        rows, gain, s_x = quantize_embedding(fs.tensors["embed.weight"], embedding_width)
    elif input_scale is not None:
        if not input_scale > 0:
            raise QuantError(f"input_scale must be > 0, got {input_scale}")
        s_x = float(input_scale)
    else:
        if stats.input_max_abs == 0.0:
            raise QuantError(f"the {stats.samples} calibration sequences are all zeros or empty, so the input scale "
                             "s_x = max|x| / 127 is undefined; calibrate with real training samples")
        s_x = stats.input_max_abs / 127.0

    layers = []
    for k, L in enumerate(fs.quant_layers()):
        s_in = s_x if k == 0 else H_SCALE
        w_x, s_wx = quantize_rows(L.w_x, weights)
        w_h, s_wh = quantize_rows(L.w_h, weights)
        mx, nx = _multipliers(s_wx * s_in * GATE_ONE, f"lstm{k}.mx", f"input scale s_x = {s_in:.6g}")
        mh, nh = _multipliers(s_wh * H_SCALE * GATE_ONE, f"lstm{k}.mh", "recurrent weights")
        bias = _int32(L.b * GATE_ONE, f"lstm{k}.bias", -2**31, INT32_MAX,
                      f"lstm.bias_ih_l{k} + lstm.bias_hh_l{k} in Q3.12 is far beyond the gate range +-8; "
                      "retrain with weight decay")
        layers.append(LSTMLayerQ(input_size=int(L.w_x.shape[1]), hidden=L.hidden,
                                 cell_frac_bits=choose_cell_frac_bits(stats.cell_max_abs[k], k),
                                 w_x=w_x, w_h=w_h, mx=mx, nx=nx, mh=mh, nh=nh, bias=bias))

    w_o, s_wo = quantize_rows(fs.tensors["head.weight"], "binary" if weights == "binary" else "int8")
    # An all-zero head (every logit 0) still needs a positive scale; 1/32000 is as good as any.
    s_out = (stats.logits_max_abs or 1.0) / LOGIT_FULL_SCALE
    m_o, n_o = _multipliers((s_wo * H_SCALE) / s_out, "head.m", f"output scale s_out = {s_out:.6g}")
    limit = INT32_MAX - MAX_PRODUCT * fs.hidden  # bias plus the largest dot product stays in int32
    b_o = _int32(fs.tensors["head.bias"] / (s_wo * H_SCALE), "head.bias", -limit, limit,
                 "the head's bias is huge relative to its weight row's scale; retrain with weight decay")

    sig, tanh = make_tables()
    model = QuantModel(
        name=name, kind=fs.kind, labels=list(fs.labels), input_scale=float(s_x), output_scale=float(s_out),
        layers=layers, head=HeadQ(w=w_o, bias=b_o, m=m_o, n=n_o), sigmoid_table=sig, tanh_table=tanh,
        embedding=rows, embedding_width=embedding_width if fs.kind == "text" else "int8", embedding_gain=gain,
        num_features=fs.num_features if fs.kind == "sequence" else None,
        vocab_size=fs.vocab_size if fs.kind == "text" else None,
        max_len=fs.max_len if fs.max_len is not None else max(stats.max_steps, 1), subwords=fs.subwords,
        meta=_meta(meta, stats, source, fs, layers), weights=weights, audio=audio,
    )
    check_model(model)
    return model


def _warn_saturation(stats: ActivationStats, limit: float) -> None:
    for k, frac in enumerate(stats.gate_saturated):
        if frac > limit:
            warnings.warn(SaturationWarning(
                f"lstm{k}: {frac:.1%} of the gate pre-activations reach |z| >= 8 (max {stats.gate_max_abs[k]:.3g}) "
                "and clip at the edge of the Q3.12 range; if the int8 accuracy drops, retrain with weight decay"),
                stacklevel=4)  # the caller of quantize / quantize_run


def _meta(user: dict | None, stats: ActivationStats, source: str, fs: FloatStudent, layers) -> dict:
    out = dict(user or {})
    try:
        json.dumps(out)
    except (TypeError, ValueError) as e:
        raise QuantError(f"meta must be JSON-serialisable (it is saved in model.json): {e}") from e
    ranges = {"input_max_abs": stats.input_max_abs, "cell_max_abs": stats.cell_max_abs,
              "gate_max_abs": stats.gate_max_abs, "logits_max_abs": stats.logits_max_abs}
    if fs.kind == "text":
        ranges["embedding_max_abs"] = float(np.abs(fs.tensors["embed.weight"]).max())
    out.update({
        "source_hash": source,
        "calibration": {"samples": stats.samples, "max_steps": stats.max_steps, "ranges": ranges,
                        "gate_saturation": stats.gate_saturated,
                        "cell_frac_bits": [L.cell_frac_bits for L in layers]},
    })
    return out


def calibration_indices(n: int, count: int) -> np.ndarray:
    """`count` indices spread evenly over 0..n-1 (all of them if count >= n): a split ordered
    by class still gives every class its share, and the choice is reproducible."""
    if count >= n:
        return np.arange(n)
    return (np.arange(count) * n) // count


def quantize_run(cfg, run_dir: str | Path, dataset, knowledge: str | Path | None = None) -> QuantModel:
    """The quantize stage: `<run_dir>/student/` calibrated on cfg.quant.calibration_samples
    training samples, its LSTM gate matrices at cfg.quant.weights, saved as `<run_dir>/int8/`
    under the name cfg.model_name.

    With cfg.quant.qat_epochs > 0 the float student is first trained on quantization-aware
    (tinyseek.distill.qat, reading the knowledge cache `knowledge`) into `<run_dir>/student_qat/`,
    and that student is the one quantized; the post-training model of the float student is kept
    in `<run_dir>/int8_ptq/` for the report's comparison."""
    run_dir = Path(run_dir)
    student_dir = run_dir / "student"
    fs = FloatStudent.from_folder(student_dir)
    if dataset.kind != fs.kind:
        raise QuantError(f"the task '{dataset.name}' is a {dataset.kind} task but {student_dir} holds a {fs.kind} "
                         "student; re-run `tinyseek distill` for this task")
    count = cfg.quant.calibration_samples
    if count < 1:
        raise QuantError(f"quant.calibration_samples must be at least 1, not {count}")
    split = dataset.train
    idx = calibration_indices(len(split.y), count)
    if fs.kind == "text":
        if split.texts is None:
            raise QuantError(f"the training split of '{dataset.name}' has no texts to calibrate the text student on")
        calib = fs.tokenize([split.texts[i] for i in idx])
    else:
        if split.x is None:
            raise QuantError(f"the training split of '{dataset.name}' has no features x to calibrate on")
        calib = split.x[idx]
    # An audio task's inputs are the front end's int8 frames times FEATURE_SCALE: that scale
    # exactly, so the device feeds the frames unchanged; the model records its front end, so
    # the library carries it and the device takes samples.
    input_scale = audio = None
    if cfg.task.kind == "audio":
        from dataclasses import asdict

        from ..audio.data import FEATURE_SCALE
        from ..audio.frontend import FrontendConfig
        fe, k = FrontendConfig(), cfg.task.frames_per_step
        if fs.num_features != k * fe.channels:
            raise QuantError(f"the student reads {fs.num_features} features a step, not task.frames_per_step = {k} "
                             f"frames of {fe.channels}: it was trained with another frames_per_step; rebuild the run "
                             "with `tinyseek build --force`")
        input_scale, audio = FEATURE_SCALE, {"frontend": asdict(fe), "frames_per_step": k}
    model = _quantize(fs, calib, name=cfg.model_name, meta={"task": dataset.name}, source=source_hash(student_dir),
                      saturation_warn=SATURATION_WARN, weights=cfg.quant.weights, input_scale=input_scale,
                      embedding=cfg.quant.embedding or None, audio=audio)
    ptq_dir, qat_dir = run_dir / "int8_ptq", run_dir / "student_qat"
    if cfg.quant.qat_epochs:
        if knowledge is None:
            raise QuantError("quant.qat_epochs > 0 trains on the teacher's knowledge: pass the run's "
                             "knowledge.safetensors (run `tinyseek teacher` first)")
        from ..distill.qat import train_qat
        from ..student.tinylstm import save_student
        result = train_qat(dataset, knowledge, cfg, student_dir)
        save_student(result.model, result.spec, qat_dir)
        (qat_dir / "history.json").write_text(json.dumps(result.summary, indent=2) + "\n")
        model.save(ptq_dir)
        qat = {"epochs": cfg.quant.qat_epochs, "lr": cfg.quant.qat_peak_lr, "best_epoch": result.summary["best_epoch"]}
        model = _quantize(FloatStudent.from_folder(qat_dir), calib, name=cfg.model_name,
                          meta={"task": dataset.name, "qat": qat}, source=source_hash(qat_dir),
                          saturation_warn=SATURATION_WARN, weights=cfg.quant.weights, input_scale=input_scale,
                      embedding=cfg.quant.embedding or None, audio=audio)
    else:
        for stale in (ptq_dir, qat_dir):
            if stale.is_dir():
                shutil.rmtree(stale)
    model.save(run_dir / "int8")
    return model


def compare_int8_float(student_dir: str | Path, qmodel: QuantModel, inputs, labels) -> dict:
    """Float vs int8 on labelled inputs (texts or token-id lists for text models, float
    features for sequence models): both accuracies, the agreement of their predicted classes,
    and the largest |int8 logit * s_out - float logit|."""
    fs = FloatStudent.from_folder(student_dir)
    if qmodel.kind != fs.kind or qmodel.num_classes != fs.num_classes:
        raise QuantError(f"int8 model '{qmodel.name}' ({qmodel.kind}, {qmodel.num_classes} classes) is not a "
                         f"quantization of {student_dir} ({fs.kind}, {fs.num_classes} classes)")
    if fs.kind == "text" and len(inputs) and isinstance(inputs[0], str):
        inputs = fs.tokenize(inputs)
    float_logits = fs.logits(inputs)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(float_logits):
        raise QuantError(f"{len(labels)} labels for {len(float_logits)} inputs")
    if fs.kind == "text":
        int8_logits = infer_tokens(qmodel, inputs)
    elif isinstance(inputs, np.ndarray):
        int8_logits = infer_sequences(qmodel, quantize_inputs(qmodel, inputs))
    else:
        int8_logits = infer_sequences(qmodel, [quantize_inputs(qmodel, s) for s in inputs])
    fp, qp = float_logits.argmax(axis=1), int8_logits.argmax(axis=1)
    n = len(labels)
    return {
        "samples": n,
        "float_accuracy": float(np.mean(fp == labels)) if n else 0.0,
        "int8_accuracy": float(np.mean(qp == labels)) if n else 0.0,
        "agreement": float(np.mean(fp == qp)) if n else 0.0,
        "max_abs_logit_error": float(np.abs(int8_logits * qmodel.output_scale - float_logits).max()) if n else 0.0,
    }
