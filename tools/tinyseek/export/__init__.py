"""`tinyseek export`: the run's TinyLSTM student for other runtimes (docs/tflite.md).

`--format tflite` writes `<run>/tflite/`: model_float.tflite and model_int8.tflite (tflite.py),
the int8 model as a C array with its embedding table for TFLite Micro
(`<name>_model_tflite.cc/.h`, templates/tflm/), and metrics.json: both files run on the whole
test split in the TFLite and the TFLite Micro interpreters (check.py), against the float
student and tinyseek's int8 model, and the smallest TFLM arena that runs them. Everything is
built and checked before anything is written, and the folder is replaced in one rename.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .. import __version__
from .tflite import ExportError

FORMATS = ("tflite",)
TFLITE_DIR = "tflite"
METRICS_FILE = "metrics.json"
COMMAND = "tinyseek export --format tflite"


def _share(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b)) if len(a) else 0.0


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    labeled = y >= 0  # unlabeled test samples (label -1) count in agreements only
    return float(np.mean(pred[labeled] == y[labeled])) if labeled.any() else 0.0


def export_tflite(run, out_dir: str | Path | None = None, calibration_samples: int | None = None) -> Path:
    """Export, check and write `<run>/tflite/` (or out_dir); returns the folder."""
    from ..codegen.render import make_env
    from ..quant.float_model import FloatStudent
    from ..quant.model import QuantModel
    from ..quant.quantize import calibration_indices
    from ..quant.reference import infer_sequences, infer_tokens, quantize_inputs
    from . import check
    from .tflite import convert, input_width, op_names, padded_inputs

    fs = FloatStudent.from_folder(run.student_dir)
    qmodel = QuantModel.load(run.int8_dir)
    dataset = run.dataset
    if dataset.kind != fs.kind or qmodel.kind != fs.kind:
        raise ExportError(f"the task '{dataset.name}' ({dataset.kind}), the student ({fs.kind}) and the int8 model "
                          f"({qmodel.kind}) must be of one kind; re-run `tinyseek build`")

    def inputs(split, idx=None):
        if fs.kind == "text":
            texts = list(split.texts) if idx is None else [split.texts[i] for i in idx]
            return fs.tokenize(texts)
        return split.x if idx is None else split.x[idx]

    # Sequence tasks: the longest sequence of the splits used (NPZ splits share one length).
    steps = fs.max_len if fs.kind == "text" else max(int(dataset.train.x.shape[1]), int(dataset.test.x.shape[1]))
    count = run.cfg.quant.calibration_samples if calibration_samples is None else calibration_samples
    if count < 1:
        raise ExportError(f"the representative dataset needs quant.calibration_samples >= 1, not {count}")
    calib = padded_inputs(fs, inputs(dataset.train, calibration_indices(len(dataset.train.y), count)), steps)
    files = convert(fs, steps, calib)

    test = inputs(dataset.test)
    x, last = padded_inputs(fs, test, steps)
    y = np.asarray(dataset.test.y)
    runnable = last >= 0  # an empty text has no last step (docs/tflite.md)
    x, last, y = x[runnable], last[runnable], y[runnable]
    float_logits = fs.logits(test)[runnable]
    if fs.kind == "text":
        ids = [t for t, ok in zip(test, runnable) if ok]
        int8_logits = infer_tokens(qmodel, test)[runnable]
    else:
        ids = None
        int8_logits = infer_sequences(qmodel, quantize_inputs(qmodel, test))[runnable]
    io = check.int8_io(files["int8"])
    table = (check.embedding_table(fs.tensors["embed.weight"], io["input_scale"], io["input_zero_point"])
             if fs.kind == "text" else None)

    fp, qp = float_logits.argmax(1), int8_logits.argmax(1)
    results: dict = {}
    raws = {}
    for what in ("float", "int8"):
        for engine in ("tflite", "tflm"):
            raw, logits = check.run_all(files[what], engine, x, last, table, ids)
            raws[what, engine] = raw
            pred = logits.argmax(1)
            results.setdefault(what, {})[engine] = {
                "accuracy": _accuracy(pred, y),
                "agreement_float_student": _share(pred, fp),
                "agreement_tinyseek_int8": _share(pred, qp),
                "max_abs_logit_diff_float_student": float(np.abs(logits - float_logits).max()) if len(y) else 0.0,
            }
        same = (raws[what, "tflite"] == raws[what, "tflm"]).all(axis=1)
        results[what]["tflite_tflm_identical_outputs"] = float(same.mean()) if len(y) else 0.0
        results[what]["bytes"] = len(files[what])
        results[what]["ops"] = op_names(files[what])
        results[what]["tflm_arena_bytes"] = check.smallest_arena(files[what])

    metrics = {
        "model": run.cfg.model_name, "task": dataset.name, "format": "tflite", "steps": steps,
        "input_width": input_width(fs), "samples": int(runnable.sum()),
        "empty_samples_skipped": int((~runnable).sum()), "calibration_samples": len(calib[1]),
        "tinyseek_int8_accuracy": _accuracy(qp, y), "float_student_accuracy": _accuracy(fp, y),
        "int8_input": {"scale": io["input_scale"], "zero_point": io["input_zero_point"]},
        "int8_output": {"scale": io["output_scale"], "zero_point": io["output_zero_point"]},
        "embedding_table_bytes": int(table.nbytes) if table is not None else 0,
        **results,
    }
    ctx = {
        "generator": "tinyseek", "version": __version__, "command": COMMAND, "name": qmodel.name,
        "prefix": qmodel.name, "PREFIX": qmodel.name.upper(), "tflite_sha256": hashlib.sha256(files["int8"]).hexdigest(),
        "tflite": np.frombuffer(files["int8"], np.uint8), "ops": sorted(set(results["int8"]["ops"])),
        "steps": steps, "width": input_width(fs), "num_classes": fs.num_classes,
        "arena_bytes": results["int8"]["tflm_arena_bytes"], **io,
        "vocab_size": fs.vocab_size if fs.kind == "text" else None, "embedding": table,
    }
    env = make_env()
    c_files = {f"{qmodel.name}_model_tflite{ext}": env.get_template(f"tflm/model_tflite{ext}.j2").render(ctx)
               for ext in (".cc", ".h")}

    out = Path(out_dir) if out_dir is not None else run.dir / TFLITE_DIR
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tflite-", dir=out.parent) as tmp:
        stage = Path(tmp) / "out"
        stage.mkdir()
        for what, data in files.items():
            (stage / f"model_{what}.tflite").write_bytes(data)
        for name, text in c_files.items():
            (stage / name).write_text(text)
        (stage / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    return out
