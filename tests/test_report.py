"""The report's accuracy table: validation beside the test, the hard-label baseline, and the
loud warnings when the teacher is the weak link (judged on validation)."""
from tinyseek.harness.evaluate import teacher_warnings
from tinyseek.harness.report import render_markdown

LABELS = ["a", "b"]


def _report(validation, baseline=None, warnings=()):
    return {"model": {"name": "m", "hash": "h"},
            "task": {"name": "t", "kind": "text", "labels": LABELS, "test_samples": 100, "test_labeled": 100,
                     "split_by": "group 'speaker'"},
            "teacher": {"accuracy": 0.80, "source": "default"},
            "student": {"float_accuracy": 0.78, "int8_accuracy": 0.775, "params": 1, "weight_bytes": 1},
            "validation": validation, "baseline": baseline, "warnings": list(warnings),
            "retention": 0.775 / 0.80, "agreement_int8_float": 0.99, "agreement_int8_teacher": 0.9}


def test_validation_is_shown_beside_the_test():
    text = render_markdown(_report({"samples": 40, "teacher_accuracy": 0.825, "float_accuracy": 0.8,
                                    "int8_accuracy": 0.8}))
    assert "| | test accuracy | validation (40 samples, held out by group 'speaker') |" in text
    assert "| student, int8 (integer reference) | 77.50 % | 80.00 % |" in text
    assert "WARNING" not in text


def test_a_teacher_below_the_labels_alone_or_its_student_is_a_loud_warning():
    validation = {"samples": 40, "teacher_accuracy": 0.70, "float_accuracy": 0.75, "int8_accuracy": 0.75}
    warnings = teacher_warnings(validation, baseline_val=0.72)
    assert len(warnings) == 2
    assert "worse than a student trained on the labels alone (0.7200)" in warnings[0]
    assert "worse than the student it taught (0.7500)" in warnings[1]
    assert teacher_warnings({**validation, "teacher_accuracy": 0.9}, 0.72) == []
    assert teacher_warnings({"samples": 0}, None) == []
    text = render_markdown(_report(validation, {"val_accuracy": 0.72, "test_accuracy": 0.74}, warnings))
    assert "| same student on the hard labels alone, float (no teacher) | 74.00 % | 72.00 % |" in text
    assert text.count("**WARNING: the teacher") == 2


def test_the_report_says_where_the_knowledge_was_extracted():
    extraction = {"engine": "ray", "cluster": "local", "workers": 2, "threads_per_worker": 1,
                  "devices": ["cpu on 10.0.0.1", "cuda:0 (NVIDIA H100) on 10.0.0.2"], "shards": 5, "samples": 31,
                  "samples_computed": 31, "shards_redone": ["train-00001"], "seconds": 12.34}
    report = _report({"samples": 0})
    assert "teacher knowledge extracted" not in render_markdown(report)  # a run from before extraction.json
    report["teacher"]["extraction"] = extraction
    assert ("- teacher knowledge extracted on Ray (local cluster): 2 worker(s) x 1 thread(s) (cpu on 10.0.0.1, "
            "cuda:0 (NVIDIA H100) on 10.0.0.2), 31 samples in 5 shards, 31 computed in 12.3 s; computed again after "
            "a worker died: train-00001") in render_markdown(report)
