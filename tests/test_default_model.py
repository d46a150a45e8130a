"""The committed default model: its generated C must come out of the generator
byte-identical, and its committed report must be the one of these very files."""
import json
from pathlib import Path

import pytest

from tinyseek.codegen.render import render
from tinyseek.quant.model import QuantModel

ROOT = Path(__file__).resolve().parents[1]
INT8 = ROOT / "models" / "intents" / "int8"
LIB = ROOT / "firmware" / "lib" / "intents"


def test_committed_default_regenerates_byte_identical(tmp_path):
    model = QuantModel.load(INT8)
    render(model, tmp_path)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {p.relative_to(LIB): p.read_bytes() for p in LIB.rglob("*") if p.is_file()}
    assert sorted(fresh) == sorted(committed)
    for name, data in fresh.items():
        assert committed[name] == data, f"{LIB / name} differs from a fresh `tinyseek codegen`"


def test_committed_report_describes_the_committed_model():
    report = json.loads((ROOT / "models" / "intents" / "report.json").read_text())
    model = QuantModel.load(INT8)
    assert report["model"]["hash"] == model.model_hash()
    assert report["host"]["bitexact"] is True
    assert model.model_hash() in (LIB / "intents_model.h").read_text()


def test_committed_run_records_the_default_settings():
    """models/intents/config.toml is what `tinyseek build` writes for the defaults: a setting
    added or changed since leaves it stale (write it again with the committed model rebuilt)."""
    import tomllib

    from tinyseek.config import load
    committed = tomllib.loads((ROOT / "models" / "intents" / "config.toml").read_text())
    assert committed == load(None).to_dict()


# The committed `tinyseek export --format tflite` of the default (models/intents/tflite/): what the
# report's TFLite Micro row is read from.
TFLITE = ROOT / "models" / "intents" / "tflite"


def test_committed_tflite_export_belongs_to_the_committed_model():
    import hashlib

    metrics = json.loads((TFLITE / "metrics.json").read_text())
    assert metrics["model_hash"] == QuantModel.load(INT8).model_hash()
    int8 = (TFLITE / "model_int8.tflite").read_bytes()
    assert metrics["int8"]["bytes"] == len(int8)
    for ext in (".cc", ".h"):  # the C array and its header were written from this very file
        assert hashlib.sha256(int8).hexdigest() in (TFLITE / f"intents_model_tflite{ext}").read_text()
    tflm = json.loads((ROOT / "models" / "intents" / "report.json").read_text())["tflm"]
    assert tflm["accuracy"] == metrics["int8"]["tflm"]["accuracy"]
    assert tflm["arena_bytes"] == metrics["int8"]["tflm_arena_bytes"]


@pytest.mark.slow
def test_committed_tflite_files_are_what_the_converter_makes_of_the_committed_student():
    """The TFLite converter is deterministic (one thread): converting the committed student with
    the committed calibration samples gives the committed files byte for byte."""
    from tinyseek.config import load
    from tinyseek.export import calibration_inputs, convert_run
    from tinyseek.pipeline import Run
    from tinyseek.quant.float_model import FloatStudent

    run = Run(load(), log=lambda _: None)
    assert run.dir.resolve() == (ROOT / "models" / "intents").resolve()
    fs = FloatStudent.from_folder(run.student_dir)
    metrics = json.loads((TFLITE / "metrics.json").read_text())
    calib = calibration_inputs(fs, run.dataset, run.cfg.quant.calibration_samples)
    assert len(calib) == metrics["calibration_samples"]
    _, _, files = convert_run(fs, run.dataset, calib)
    for what, data in files.items():
        assert data == (TFLITE / f"model_{what}.tflite").read_bytes(), f"model_{what}.tflite differs from a fresh export"
