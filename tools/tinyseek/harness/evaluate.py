"""The verify stage on the host: accuracy of teacher, float and int8 student, and the
bit-exact check of the generated C against the integer reference.

Writes metrics.json (accuracies, agreement, sizes, confusion matrix) and verify.json (the
host check) into the run folder; the report stage only collects them.
"""
from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import load_file


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float | None:
    return float(np.mean(pred == y)) if len(y) else None  # None: not measured


def labeled_accuracy(pred: np.ndarray, y: np.ndarray) -> float | None:
    """Accuracy over the samples that have a label (y >= 0; -1 marks a sample of an unlabeled
    corpus, which the teacher labels), None when none has one."""
    y = np.asarray(y)
    labeled = y >= 0
    return float(np.mean(np.asarray(pred)[labeled] == y[labeled])) if labeled.any() else None


def confusion(pred: np.ndarray, y: np.ndarray, num_classes: int) -> list[list[int]]:
    """Rows: the label, columns: the prediction; samples without a label are left out."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    labeled = np.asarray(y) >= 0
    np.add.at(cm, (np.asarray(y)[labeled], np.asarray(pred)[labeled]), 1)
    return cm.tolist()


def teacher_warnings(validation: dict, baseline_val: float | None) -> list[str]:
    """Loud warnings when the teacher is the weak link, judged on validation (the test is only
    reported): below a student trained on the labels alone, or below the student it taught."""
    out = []
    t = validation.get("teacher_accuracy")
    if t is None:
        return out
    fix = ("train it further (teacher.finetune_epochs, teacher.adapt = \"lora\" for a pretrained model), give it "
           "more labelled data, or distill with less of it (distill.alpha)")
    if baseline_val is not None and t < baseline_val:
        out.append(f"the teacher ({t:.4f} on validation) is worse than a student trained on the labels alone "
                   f"({baseline_val:.4f}): its knowledge costs accuracy here; {fix}")
    s = validation.get("float_accuracy")
    if s is not None and t < s:
        out.append(f"the teacher ({t:.4f} on validation) is worse than the student it taught ({s:.4f}): retention "
                   f"above 100 % means the teacher is the weak link; {fix}")
    return out


def int8_inputs(qmodel, split):
    """What the device is fed for a split: raw UTF-8 texts, or int8 feature sequences."""
    from ..quant.reference import quantize_inputs
    if qmodel.kind == "text":
        return list(split.texts)
    return quantize_inputs(qmodel, split.x)


def device_inputs(qmodel, split):
    """What the device stage sends: an audio model hears the clips' int16 samples (its library
    runs the front end); every other model gets int8_inputs."""
    if qmodel.audio is not None and split.audio is not None:
        return list(split.audio)
    return int8_inputs(qmodel, split)


def device_oracle_logits(qmodel, split) -> np.ndarray:
    """The integer reference's logits for device_inputs."""
    from ..quant.reference import infer_audio
    if qmodel.audio is not None and split.audio is not None:
        return infer_audio(qmodel, split.audio)
    return oracle_logits(qmodel, split)


def oracle_logits(qmodel, split) -> np.ndarray:
    from ..quant.reference import infer_sequences, infer_tokens
    from ..student.tokenizer import HashTokenizer
    if qmodel.kind == "text":
        tok = HashTokenizer(qmodel.vocab_size, qmodel.max_len, qmodel.subwords)
        return infer_tokens(qmodel, [tok.model_inputs(t) for t in split.texts])
    return infer_sequences(qmodel, int8_inputs(qmodel, split))


def _extraction(run_dir) -> dict:
    """{"extraction": where the knowledge was extracted (engine, workers, devices: teacher/
    extract.py's extraction.json)}, or {} for a run from before that file."""
    f = run_dir / "extraction.json"  # read without importing the teacher (and torch)
    return {"extraction": json.loads(f.read_text())} if f.is_file() else {}


def quantization_metrics(run, qm, y) -> dict:
    """The widths of the LSTM gate weights, the embedding and the head and, after quantization-aware training, the accuracy of
    the post-training model of the float student (<run>/int8_ptq) beside the deployed one."""
    from ..quant.model import QuantModel
    out = {"weights": qm.weights, "qat_epochs": run.cfg.quant.qat_epochs, "head": qm.head_width}
    if qm.kind == "text":
        out["embedding"] = qm.embedding_width
    ptq_dir = run.dir / "int8_ptq"
    if run.cfg.quant.qat_epochs and ptq_dir.is_dir():
        ptq, val = QuantModel.load(ptq_dir), run.dataset.val
        out["post_training"] = {
            "accuracy": labeled_accuracy(oracle_logits(ptq, run.dataset.test).argmax(axis=1), y),
            "val_accuracy": labeled_accuracy(oracle_logits(ptq, val).argmax(axis=1), val.y) if len(val.y) else None,
            "weight_bytes": ptq.weight_bytes()}
        out["qat_best_epoch"] = qm.meta.get("qat", {}).get("best_epoch")
    return out


def evaluate_host(run) -> dict:
    from ..codegen.verify import verify_host
    from ..quant.float_model import FloatStudent
    from ..quant.model import QuantModel

    ds, qm = run.dataset, QuantModel.load(run.int8_dir)
    test, y = ds.test, ds.test.y
    knowledge = load_file(str(run.knowledge))
    student = FloatStudent.from_folder(run.student_dir)
    teacher_pred = knowledge["test.logits"].argmax(axis=1)
    float_pred = student.predict(test).argmax(axis=1)
    int8_logits = oracle_logits(qm, test)
    int8_pred = int8_logits.argmax(axis=1)
    # Validation, held out like the test (docs/datasets.md): every choice the tool makes reads
    # it; shown beside the test so a user sees how well it predicts the test.
    val = ds.val
    validation = {"samples": len(val.y)}
    if len(val.y):
        validation.update(
            teacher_accuracy=labeled_accuracy(knowledge["val.logits"].argmax(axis=1), val.y),
            float_accuracy=labeled_accuracy(student.predict(val).argmax(axis=1), val.y),
            int8_accuracy=labeled_accuracy(oracle_logits(qm, val).argmax(axis=1), val.y))

    # Accuracies count the labeled test samples only (None without any); the agreements count all.
    teacher_acc = labeled_accuracy(teacher_pred, y)
    int8_acc = labeled_accuracy(int8_pred, y)
    b_file = run.student_dir / "baseline.json"  # distill.hard_label_baseline
    baseline = json.loads(b_file.read_text()) if b_file.is_file() else None
    metrics = {
        "model": {"name": qm.name, "hash": qm.model_hash()},
        "task": {"name": ds.name, "kind": ds.kind, "labels": list(ds.labels),
                 "train_samples": len(ds.train.y), "test_samples": len(y), "split_by": ds.split_by,
                 "test_labeled": int(np.sum(np.asarray(y) >= 0)),
                 # Training samples without a label, which the teacher labelled (only where there are).
                 **({"train_unlabeled": n} if (n := int(np.sum(np.asarray(run.task_dataset.train.y) < 0))) else {})},
        "teacher": {"accuracy": teacher_acc, "source": run.cfg.teacher.source, **_extraction(run.dir)},
        "student": {"float_accuracy": labeled_accuracy(float_pred, y), "int8_accuracy": int8_acc,
                    "params": qm.params(), "weight_bytes": qm.weight_bytes()},
        "validation": validation,
        "baseline": baseline,
        "warnings": teacher_warnings(validation, (baseline or {}).get("val_accuracy")),
        "retention": int8_acc / teacher_acc if int8_acc is not None and teacher_acc else None,
        "agreement_int8_float": _accuracy(int8_pred, float_pred),
        "agreement_int8_teacher": _accuracy(int8_pred, teacher_pred),
        "confusion": confusion(int8_pred, y, len(ds.labels)),
    }
    if qm.weights != "int8" or qm.embedding_width != "int8" or run.cfg.quant.qat_epochs:
        metrics["quantization"] = quantization_metrics(run, qm, y)
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    result = verify_host(qm, run.lib_dir, int8_inputs(qm, test))
    verify = {"target": "host", "compiler": result.compiler, "samples": result.samples,
              "bitexact": bool(result.bitexact) and result.samples > 0, "mismatches": int(result.mismatches)}
    if not np.array_equal(result.logits, int8_logits):
        # verify_host compares with the oracle itself; this guards the two oracles' inputs agree.
        verify["bitexact"] = False
    if qm.audio is not None and test.audio is not None:  # the device's path: samples through the front end
        from ..codegen.verify import verify_audio_host
        a = verify_audio_host(qm, run.lib_dir, test.audio)
        verify["audio"] = {"samples": a.samples, "bitexact": bool(a.bitexact) and a.samples > 0,
                           "mismatches": int(a.mismatches)}
        verify["bitexact"] = verify["bitexact"] and verify["audio"]["bitexact"]
    (run.dir / "verify.json").write_text(json.dumps(verify, indent=2, sort_keys=True) + "\n")
    for w in metrics["warnings"]:
        run.log(f"[verify] WARNING: {w}")
    accs = "no labeled test samples" if int8_acc is None else f"teacher {teacher_acc:.4f}  int8 {int8_acc:.4f}"
    run.log(f"[verify] {accs}  host bit-exact: {verify['bitexact']} "
            f"({result.samples} samples)")
    return {"metrics": metrics, "verify": verify}
