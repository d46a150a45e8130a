"""`tinyseek export --format tflite|onnx`: tiny text and sequence students exported, run in the
real TFLite and TFLite Micro interpreters (and onnxruntime) against the float student and
tinyseek's int8 model, the C array compiled, the report's TFLM row, and every error with nothing
half-written."""
import json
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import save_file

from tinyseek.cli import make_parser
from tinyseek.data import Dataset, Split
from tinyseek.harness.report import build_report, render_markdown
from tinyseek.quant.float_model import FloatStudent
from tinyseek.quant.model import QuantModel
from tinyseek.quant.quantize import quantize

# tensorflow, tf_keras and tflite-micro are part of `make setup`; without them every export raises
# ExportError with the install command.
from tinyseek.export import export_tflite
from tinyseek.export import tflite as tfl

WORDS = "turn on off the lights lamp music play stop volume up down open close door lock time weather".split()


def make_student(folder, *, kind, hidden, layers, embed_dim, num_classes=4, vocab_size=64, max_len=10,
                 num_features=5, seed=0):
    """A random float student as `tinyseek distill` writes it; the head is scaled so the classes
    are well apart, as in a trained student."""
    rng = np.random.default_rng(seed)
    H, E, t = hidden, embed_dim, {}
    if kind == "text":
        t["embed.weight"] = rng.normal(0, 1.0, (vocab_size, E))
        t["embed.weight"][0] = 0.0  # padding_idx
    else:
        t["proj.weight"] = rng.normal(0, 0.5, (E, num_features))
        t["proj.bias"] = rng.normal(0, 0.2, E)
    for k in range(layers):
        t[f"lstm.weight_ih_l{k}"] = rng.uniform(-0.5, 0.5, (4 * H, E if k == 0 else H))
        t[f"lstm.weight_hh_l{k}"] = rng.uniform(-0.4, 0.4, (4 * H, H))
        t[f"lstm.bias_ih_l{k}"] = rng.uniform(-0.3, 0.3, 4 * H)
        t[f"lstm.bias_hh_l{k}"] = rng.uniform(-0.3, 0.3, 4 * H)
    t["head.weight"] = rng.normal(0, 2.0, (num_classes, H))
    t["head.bias"] = rng.normal(0, 0.2, num_classes)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in t.items()}, str(folder / "student.safetensors"))
    (folder / "student.json").write_text(json.dumps({
        "kind": kind, "labels": [f"c{k}" for k in range(num_classes)], "hidden": H, "layers": layers,
        "embed_dim": E, "vocab_size": vocab_size if kind == "text" else None,
        "max_len": max_len if kind == "text" else None, "num_features": num_features if kind == "sequence" else None}))
    return folder


def make_run(root, kind, **student):
    """A run folder as `tinyseek quantize` leaves it (student/, int8/) and its task, whose labels
    are the float student's own predictions (so every accuracy below is an agreement with it)."""
    rng = np.random.default_rng(1)
    make_student(root / "student", kind=kind, **student)
    fs = FloatStudent.from_folder(root / "student")

    def split(n):
        if kind == "text":
            texts = [" ".join(rng.choice(WORDS, rng.integers(1, 9))) for _ in range(n)]
            return Split(y=fs.predict(texts).argmax(1), texts=texts, x=None)
        x = rng.normal(0, 1, (n, 12, student["num_features"])).astype(np.float32)
        return Split(y=fs.logits(x).argmax(1), texts=None, x=x)

    ds = Dataset(name="tiny", kind=kind, labels=fs.labels, train=split(96), val=split(8), test=split(150))
    calib = fs.tokenize(ds.train.texts) if kind == "text" else ds.train.x
    quantize(root / "student", calib, name="tiny").save(root / "int8")
    cfg = SimpleNamespace(model_name="tiny", quant=SimpleNamespace(calibration_samples=64))
    return SimpleNamespace(cfg=cfg, dir=root, student_dir=root / "student", int8_dir=root / "int8", dataset=ds)


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("text_run"), "text", hidden=16, layers=1, embed_dim=8)
    return run, export_tflite(run)


@pytest.fixture(scope="module")
def sequence_export(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("seq_run"), "sequence", hidden=12, layers=2, embed_dim=6, num_features=5)
    return run, export_tflite(run)


@pytest.mark.parametrize("which", ["text_export", "sequence_export"])
def test_both_files_run_in_tflite_and_tflm_and_agree(which, request):
    run, out = request.getfixturevalue(which)
    m = json.loads((out / "metrics.json").read_text())
    layers = 1 if which == "text_export" else 2
    assert m["samples"] == 150 and m["empty_samples_skipped"] == 0
    for what in ("float", "int8"):
        assert m[what]["ops"].count(tfl.LSTM_OP) == layers  # the fused kernel, one per layer
        assert "WHILE" not in m[what]["ops"]
        assert (out / f"model_{what}.tflite").stat().st_size == m[what]["bytes"]
        assert 1000 < m[what]["tflm_arena_bytes"] < 1 << 20
    for engine in ("tflite", "tflm"):
        f = m["float"][engine]
        # The float graph is the float student: same logits up to float32 rounding, same classes.
        assert f["max_abs_logit_diff_float_student"] < 1e-4
        assert f["agreement_float_student"] == 1.0 and f["accuracy"] == 1.0
        q = m["int8"][engine]
        assert q["agreement_tinyseek_int8"] >= 0.95
        assert q["agreement_float_student"] >= 0.95
        assert abs(q["accuracy"] - m["tinyseek_int8_accuracy"]) <= 0.03
    # The int8 logits follow the float ones to a few output steps, within the range the
    # calibration gave the output (beyond it they saturate).
    from tinyseek.export import check
    fs = FloatStudent.from_folder(run.student_dir)
    inputs = fs.tokenize(list(run.dataset.test.texts)) if fs.kind == "text" else run.dataset.test.x
    x, last = tfl.padded_inputs(fs, inputs, m["steps"])
    tflite = (out / "model_int8.tflite").read_bytes()
    io = check.int8_io(tflite)
    table = (check.embedding_table(fs.tensors["embed.weight"], io["input_scale"], io["input_zero_point"])
             if fs.kind == "text" else None)
    _, logits = check.run_all(tflite, "tflm", x, last, table, inputs if fs.kind == "text" else None)
    s, z = io["output_scale"], io["output_zero_point"]
    want = np.clip(fs.logits(inputs), (-128 - z) * s, (127 - z) * s)
    assert np.abs(logits - want).max() <= 12 * s


def test_int8_input_is_the_embedding_table_and_the_float_graph_is_exact(text_export):
    """The check feeds the int8 model rows of the exported table, and the float graph reproduces
    the float student on the padded inputs (the last-step index picks the real end)."""
    from tinyseek.export import check
    run, out = text_export
    fs = FloatStudent.from_folder(run.student_dir)
    m = json.loads((out / "metrics.json").read_text())
    table = check.embedding_table(fs.tensors["embed.weight"], m["int8_input"]["scale"], m["int8_input"]["zero_point"])
    assert (table[0] == m["int8_input"]["zero_point"]).all()  # the padding row is the real value 0
    ids = fs.tokenize(list(run.dataset.test.texts[:20]))
    x, last = tfl.padded_inputs(fs, ids, m["steps"])
    _, logits = check.run_all((out / "model_float.tflite").read_bytes(), "tflm", x, last)
    np.testing.assert_allclose(logits, fs.logits(ids), atol=1e-4)
    # Garbage past the last step changes nothing: an LSTM step never sees later steps.
    x2 = x.copy()
    for n, L in enumerate(last):
        x2[n, L + 1:] = 3.0
    _, logits2 = check.run_all((out / "model_float.tflite").read_bytes(), "tflite", x2, last)
    np.testing.assert_allclose(logits2, logits, atol=1e-4)


def test_c_array_compiles_and_holds_the_int8_tflite(text_export, need_tools, tmp_path):
    need_tools({"g++": "sudo apt-get install -y g++ (or run tools/setup/system-packages.sh)"}, pio=False)
    run, out = text_export
    m = json.loads((out / "metrics.json").read_text())
    header = (out / "tiny_model_tflite.h").read_text()
    assert "Generated, do not edit" in header
    assert f"#define TINY_TFLITE_ARENA_BYTES {m['int8']['tflm_arena_bytes']}" in header
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in header
    main = tmp_path / "main.cc"
    main.write_text('#include <stdio.h>\n#include "tiny_model_tflite.h"\nint main(void) {\n'
                    '  fwrite(tiny_model_tflite, 1, tiny_model_tflite_len, stdout);\n'
                    '  fwrite(tiny_tflite_embedding, 1, sizeof tiny_tflite_embedding, stdout);\n  return 0;\n}\n')
    exe = tmp_path / "dump"
    subprocess.run(["g++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", str(out),
                    str(out / "tiny_model_tflite.cc"), str(main), "-o", str(exe)], check=True)
    dumped = subprocess.run([str(exe)], capture_output=True, check=True).stdout
    tflite = (out / "model_int8.tflite").read_bytes()
    assert dumped[:len(tflite)] == tflite
    from tinyseek.export import check
    fs = FloatStudent.from_folder(run.student_dir)
    table = check.embedding_table(fs.tensors["embed.weight"], m["int8_input"]["scale"], m["int8_input"]["zero_point"])
    assert dumped[len(tflite):] == table.tobytes()


def _run_with_export(out, tmp_path, model_hash):
    """A run folder holding the export's metrics and a verify metrics.json of the model `model_hash`."""
    run_dir = tmp_path / "run"
    (run_dir / "tflite").mkdir(parents=True)
    shutil.copy(out / "metrics.json", run_dir / "tflite" / "metrics.json")
    (run_dir / "metrics.json").write_text(json.dumps({
        "model": {"name": "tiny", "hash": model_hash}, "task": {"name": "tiny", "kind": "text", "test_samples": 150,
                                                           "labels": ["a", "b"]},
        "teacher": {"accuracy": 0.9}, "student": {"float_accuracy": 0.8, "int8_accuracy": 0.8, "params": 10,
                                                   "weight_bytes": 10},
        "retention": 0.88, "agreement_int8_float": 0.99, "confusion": [[1, 0], [0, 1]]}))
    return run_dir


def test_report_gets_a_tflm_row(text_export, tmp_path):
    run, out = text_export
    m = json.loads((out / "metrics.json").read_text())
    assert m["model_hash"] == QuantModel.load(run.int8_dir).model_hash()
    report = build_report(_run_with_export(out, tmp_path, m["model_hash"]))
    assert not report.get("warnings")
    assert report["tflm"]["arena_bytes"] == m["int8"]["tflm_arena_bytes"]
    text = render_markdown(report)
    assert f"| student, int8 .tflite in TFLite Micro (150 samples) | {100 * m['int8']['tflm']['accuracy']:.2f} % |" in text
    assert f"tensor arena {m['int8']['tflm_arena_bytes']:,} B" in text


def test_an_export_of_another_model_gets_no_tflm_row(text_export, tmp_path):
    _, out = text_export
    report = build_report(_run_with_export(out, tmp_path, "0" * 16))
    assert "tflm" not in report
    assert "exported from another int8 model" in report["warnings"][0]
    assert "TFLite Micro" not in render_markdown(report).split("WARNING")[0]


def test_cli_parses_export():
    args = make_parser().parse_args(["export", "--format", "tflite", "--out", "x"])
    assert (args.command, args.format, args.out) == ("export", "tflite", "x")
    assert make_parser().parse_args(["export", "--format", "onnx"]).format == "onnx"
    with pytest.raises(SystemExit):
        make_parser().parse_args(["export", "--format", "coreml"])


# -- errors ---------------------------------------------------------------------------------

def test_representative_dataset_of_the_wrong_shape_is_named(tmp_path):
    make_student(tmp_path / "s", kind="text", hidden=8, layers=1, embed_dim=6)
    fs = FloatStudent.from_folder(tmp_path / "s")
    x = np.zeros((4, 10, 7), np.float32)
    with pytest.raises(tfl.ExportError, match=r"representative dataset has shape \[4, 10, 7\].*\[N, 10, 6\]"):
        tfl.convert(fs, 10, (x, np.zeros(4, np.int32)))
    with pytest.raises(tfl.ExportError, match="outside 0..9"):
        tfl.convert(fs, 10, (np.zeros((2, 10, 6), np.float32), np.array([0, -1], np.int32)))
    with pytest.raises(tfl.ExportError, match=r"sample 0 has 12 steps .* holds 10"):
        tfl.padded_inputs(fs, [[1] * 12], 10)


def test_a_layer_the_converter_did_not_fuse_is_named(tmp_path, monkeypatch):
    make_student(tmp_path / "s", kind="text", hidden=8, layers=2, embed_dim=6)
    fs = FloatStudent.from_folder(tmp_path / "s")
    monkeypatch.setattr(tfl, "op_names", lambda _: [tfl.LSTM_OP, "WHILE", "GATHER", "FULLY_CONNECTED"])
    with pytest.raises(tfl.ExportError, match=r"1 UNIDIRECTIONAL_SEQUENCE_LSTM ops for the student's 2 LSTM layers "
                                              r"\(layers lstm1..lstm1 were not converted.*WHILE.*tf_keras"):
        tfl._check_graph(b"", fs, "int8")


def test_a_converter_failure_writes_nothing(text_export, tmp_path, monkeypatch):
    run, out = text_export
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    tf, _ = tfl._tensorflow()

    def broken(model):
        raise RuntimeError("'tfl.unidirectional_sequence_lstm' op is not supported\nmore lines")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", staticmethod(broken))
    with pytest.raises(tfl.ExportError, match="converter failed on the float model: 'tfl.unidirectional_sequence_lstm' "
                                              "op is not supported$"):
        export_tflite(run)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier export is intact
    with pytest.raises(tfl.ExportError):
        export_tflite(run, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tflite-")]


def test_a_missing_student_or_too_few_calibration_samples(tmp_path, text_export):
    run, _ = text_export
    bare = SimpleNamespace(**{**vars(run), "student_dir": tmp_path / "none"})
    with pytest.raises(ValueError, match="student.json is missing: run `tinyseek distill`"):
        export_tflite(bare)
    with pytest.raises(tfl.ExportError, match="calibration_samples >= 1, not 0"):
        export_tflite(run, tmp_path / "x", calibration_samples=0)



# -- ONNX -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["text", "sequence"])
def test_onnx_float_and_qdq_int8_run_in_onnxruntime(kind, tmp_path):
    from tinyseek.export import export_run
    shape = dict(hidden=16, layers=1, embed_dim=8) if kind == "text" else dict(hidden=12, layers=2, embed_dim=6,
                                                                              num_features=5)
    run = make_run(tmp_path / "run", kind, **shape)
    out = export_run(run, "onnx")
    m = json.loads((out / "metrics.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model_float.onnx", "model_int8.onnx"]
    f, q = m["float"]["onnxruntime"], m["int8"]["onnxruntime"]
    assert f["max_abs_logit_diff_float_student"] < 1e-4 and f["agreement_float_student"] == 1.0
    assert q["agreement_float_student"] >= 0.95 and q["agreement_tinyseek_int8"] >= 0.95
    # onnxruntime's QDQ has no int8 LSTM: the quantizer wraps the Gather and Gemm, the LSTM stays float.
    assert m["int8"]["ops"]["QuantizeLinear"] >= 1 and m["int8"]["ops"]["LSTM"] == shape["layers"]
    assert "QuantizeLinear" not in m["float"]["ops"]


def test_onnx_export_failure_writes_nothing(tmp_path, monkeypatch):
    import torch
    from tinyseek.export import export_run
    run = make_run(tmp_path / "run", "text", hidden=8, layers=1, embed_dim=6)

    def broken(*a, **k):
        raise RuntimeError("Exporting the operator 'aten::lstm' to ONNX opset version 18 is not supported")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(tfl.ExportError, match="the ONNX export failed: Exporting the operator 'aten::lstm'"):
        export_run(run, "onnx")
    assert not (tmp_path / "run" / "onnx").exists()
    with pytest.raises(tfl.ExportError, match="unknown export format 'coreml'; choose tflite or onnx"):
        export_run(run, "coreml")
