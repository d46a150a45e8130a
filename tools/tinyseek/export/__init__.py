"""`tinyseek export`: the run's TinyLSTM student for other runtimes (docs/tflite.md).

`--format tflite` writes `<run>/tflite/`: model_float.tflite and model_int8.tflite (tflite.py),
the int8 model as a C array with its embedding table for TFLite Micro
(`<name>_model_tflite.cc/.h`, templates/tflm/), and metrics.json: both files run on the whole
test split in the TFLite and the TFLite Micro interpreters (check.py), against the float
student and tinyseek's int8 model, and the smallest TFLM arena that runs them.

`--format onnx` writes `<run>/onnx/`: model_float.onnx and a QDQ model_int8.onnx (onnx.py),
checked in onnxruntime the same way, and metrics.json.

Everything is built and checked in a temporary folder beside the output before it takes the
output's place, so a failed export writes nothing and leaves an earlier one as it was.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .. import __version__
from .tflite import ExportError

FORMATS = ("tflite", "onnx")
METRICS_FILE = "metrics.json"
COMMAND = "tinyseek export --format tflite"


def _share(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b)) if len(a) else 0.0


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    labeled = y >= 0  # unlabeled test samples (label -1) count in agreements only
    return float(np.mean(pred[labeled] == y[labeled])) if labeled.any() else 0.0


def _scores(logits: np.ndarray, ref) -> dict:
    pred = logits.argmax(1)
    return {"accuracy": _accuracy(pred, ref.y), "agreement_float_student": _share(pred, ref.float_pred),
            "agreement_tinyseek_int8": _share(pred, ref.int8_pred),
            "max_abs_logit_diff_float_student": float(np.abs(logits - ref.float_logits).max()) if len(ref.y) else 0.0}


def _inputs(fs, split, idx=None):
    """A split's inputs as the student reads them: token-id lists (text) or feature sequences."""
    if fs.kind == "text":
        return fs.tokenize(list(split.texts) if idx is None else [split.texts[i] for i in idx])
    return split.x if idx is None else split.x[idx]


def calibration_inputs(fs, dataset, count: int):
    """The representative dataset's samples: the training samples `tinyseek quantize` calibrates on."""
    from ..quant.quantize import calibration_indices
    return _inputs(fs, dataset.train, calibration_indices(len(dataset.train.y), count))


def _references(run, calibration_samples: int | None):
    """The student, the int8 model, the calibration and test inputs (token-id lists or features)
    and what the exports are compared with: the float student's and tinyseek's int8 logits."""
    from ..quant.float_model import FloatStudent
    from ..quant.model import QuantModel
    from ..quant.reference import infer_sequences, infer_tokens, quantize_inputs

    fs = FloatStudent.from_folder(run.student_dir)
    qmodel = QuantModel.load(run.int8_dir)
    if fs.subwords:
        raise ExportError(f"the student averages subword rows into each step (student.subwords = {fs.subwords}), "
                          "which the TFLite / ONNX graphs do not model; export a student built with "
                          "student.subwords = 0, or use the generated C")
    dataset = run.dataset
    if dataset.kind != fs.kind or qmodel.kind != fs.kind:
        raise ExportError(f"the task '{dataset.name}' ({dataset.kind}), the student ({fs.kind}) and the int8 model "
                          f"({qmodel.kind}) must be of one kind; re-run `tinyseek build`")
    count = run.cfg.quant.calibration_samples if calibration_samples is None else calibration_samples
    if count < 1:
        raise ExportError(f"the representative dataset needs quant.calibration_samples >= 1, not {count}")

    test = _inputs(fs, dataset.test)
    float_logits = fs.logits(test)
    int8_logits = (infer_tokens(qmodel, test) if fs.kind == "text"
                   else infer_sequences(qmodel, quantize_inputs(qmodel, test)))
    return SimpleNamespace(fs=fs, qmodel=qmodel, dataset=dataset, test=test, y=np.asarray(dataset.test.y),
                           calib=calibration_inputs(fs, dataset, count),
                           float_logits=float_logits, int8_logits=int8_logits)


def _restrict(ref, keep: np.ndarray):
    """The references on the samples `keep` selects."""
    test = [t for t, k in zip(ref.test, keep) if k] if ref.fs.kind == "text" else ref.test[keep]
    return SimpleNamespace(**{**vars(ref), "test": test, "y": ref.y[keep], "float_logits": ref.float_logits[keep],
                              "int8_logits": ref.int8_logits[keep], "float_pred": ref.float_logits[keep].argmax(1),
                              "int8_pred": ref.int8_logits[keep].argmax(1)})


def _write(out: Path, files: dict[str, bytes | str]) -> Path:
    """Write the files into a temporary folder beside `out`, then put it in out's place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        stage = Path(tmp) / "out"
        stage.mkdir()
        for name, data in files.items():
            (stage / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    return out


def export_run(run, fmt: str, out_dir: str | Path | None = None) -> Path:
    """`tinyseek export --format FMT`: export and check the run's student; returns the folder."""
    if fmt == "tflite":
        return export_tflite(run, out_dir)
    if fmt == "onnx":
        return export_onnx(run, out_dir)
    raise ExportError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")


def convert_run(fs, dataset, calib_inputs) -> tuple[int, tuple[np.ndarray, np.ndarray], dict[str, bytes]]:
    """(steps, representative dataset, {"float": bytes, "int8": bytes}): the student converted
    with the calibration inputs (token-id lists or feature sequences) as its representative
    dataset. Deterministic: the committed default's files are checked against it."""
    from .tflite import convert, padded_inputs

    # Text: the tokenizer's maximum. Sequence tasks: the longest sequence of the splits used.
    steps = fs.max_len if fs.kind == "text" else max(int(dataset.train.x.shape[1]), int(dataset.test.x.shape[1]))
    calib = padded_inputs(fs, calib_inputs, steps)
    return steps, calib, convert(fs, steps, calib)


def export_tflite(run, out_dir: str | Path | None = None, calibration_samples: int | None = None) -> Path:
    """Export, check and write `<run>/tflite/` (or out_dir); returns the folder."""
    from ..codegen.render import make_env
    from . import check
    from .tflite import input_width, op_names, padded_inputs

    ref = _references(run, calibration_samples)
    fs, dataset = ref.fs, ref.dataset
    steps, calib, files = convert_run(ref.fs, dataset, ref.calib)

    x, last = padded_inputs(fs, ref.test, steps)
    runnable = last >= 0  # an empty text has no last step (docs/tflite.md)
    ref = _restrict(ref, runnable)
    x, last = x[runnable], last[runnable]
    io = check.int8_io(files["int8"])
    table = (check.embedding_table(fs.tensors["embed.weight"], io["input_scale"], io["input_zero_point"])
             if fs.kind == "text" else None)

    results: dict = {}
    for what in ("float", "int8"):
        raws = {}
        for engine in ("tflite", "tflm"):
            raws[engine], logits = check.run_all(files[what], engine, x, last, table,
                                                 ref.test if fs.kind == "text" else None)
            results.setdefault(what, {})[engine] = _scores(logits, ref)
        same = (raws["tflite"] == raws["tflm"]).all(axis=1)
        results[what] |= {"tflite_tflm_identical_outputs": float(same.mean()) if len(same) else 0.0,
                          "bytes": len(files[what]), "ops": op_names(files[what]),
                          "tflm_arena_bytes": check.smallest_arena(files[what])}

    metrics = {
        "model": run.cfg.model_name, "model_hash": ref.qmodel.model_hash(), "task": dataset.name, "format": "tflite",
        "steps": steps,
        "input_width": input_width(fs), "samples": int(runnable.sum()),
        "empty_samples_skipped": int((~runnable).sum()), "calibration_samples": len(calib[1]),
        "tinyseek_int8_accuracy": _accuracy(ref.int8_pred, ref.y), "float_student_accuracy": _accuracy(ref.float_pred, ref.y),
        "int8_input": {"scale": io["input_scale"], "zero_point": io["input_zero_point"]},
        "int8_output": {"scale": io["output_scale"], "zero_point": io["output_zero_point"]},
        "embedding_table_bytes": int(table.nbytes) if table is not None else 0,
        **results,
    }
    name = ref.qmodel.name
    ctx = {
        "generator": "tinyseek", "version": __version__, "command": COMMAND, "name": name, "prefix": name,
        "PREFIX": name.upper(), "tflite_sha256": hashlib.sha256(files["int8"]).hexdigest(),
        "tflite": np.frombuffer(files["int8"], np.uint8), "ops": sorted(set(results["int8"]["ops"])),
        "steps": steps, "width": input_width(fs), "num_classes": fs.num_classes,
        "arena_bytes": results["int8"]["tflm_arena_bytes"], **io,
        "vocab_size": fs.vocab_size if fs.kind == "text" else None, "embedding": table,
    }
    env = make_env()
    out = {f"model_{what}.tflite": data for what, data in files.items()}
    out |= {f"{name}_model_tflite{ext}": env.get_template(f"tflm/model_tflite{ext}.j2").render(ctx) for ext in (".cc", ".h")}
    out[METRICS_FILE] = json.dumps(metrics, indent=2) + "\n"
    return _write(Path(out_dir) if out_dir is not None else run.dir / "tflite", out)


def export_onnx(run, out_dir: str | Path | None = None, calibration_samples: int | None = None) -> Path:
    """Export, check and write `<run>/onnx/` (or out_dir); returns the folder."""
    from . import onnx as ox

    ref = _references(run, calibration_samples)
    ref = _restrict(ref, np.ones(len(ref.y), bool))
    spec = ref.fs
    x, mask = ox.torch_inputs(spec, ref.test)
    calib = ox.torch_inputs(spec, ref.calib)
    with tempfile.TemporaryDirectory(prefix="tinyseek-onnx-") as tmp:
        paths = {"float": Path(tmp) / "model_float.onnx", "int8": Path(tmp) / "model_int8.onnx"}
        try:
            ox.export_float(run.student_dir, paths["float"], calib)
            ox.quantize_qdq(paths["float"], paths["int8"], calib)
        except ExportError:
            raise
        except Exception as e:  # torch.onnx and the quantizer raise many types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"the ONNX export failed: {first}") from e
        results = {what: {"onnxruntime": _scores(ox.logits(p, x, mask), ref), "bytes": p.stat().st_size,
                          "ops": ox.quantized_ops(p)} for what, p in paths.items()}
        files = {p.name: p.read_bytes() for p in paths.values()}
    metrics = {"model": run.cfg.model_name, "model_hash": ref.qmodel.model_hash(), "task": ref.dataset.name,
               "format": "onnx", "samples": len(ref.y),
               "calibration_samples": len(calib[0]), "tinyseek_int8_accuracy": _accuracy(ref.int8_pred, ref.y),
               "float_student_accuracy": _accuracy(ref.float_pred, ref.y), **results}
    files[METRICS_FILE] = json.dumps(metrics, indent=2) + "\n"
    return _write(Path(out_dir) if out_dir is not None else run.dir / "onnx", files)
