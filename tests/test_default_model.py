"""The committed default model: its generated C must come out of the generator
byte-identical, and its committed report must be the one of these very files."""
import json
from pathlib import Path

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
