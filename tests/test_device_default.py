"""The committed default model on the emulated boards, through `tinyseek bench`: the test
split goes over the serial line and every logit must equal the integer reference."""
import json
import shutil
from pathlib import Path

import pytest

from tinyseek.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("env, limit", [("qemu_m4", 0), ("qemu_m55", 300), ("qemu_rv32", 300), ("qemu_stm32f4", 0),
                                        ("qemu_m0", 300)])
def test_default_model_bit_exact_on_the_emulated_board(tmp_path, env, limit):
    shutil.copytree(ROOT / "models" / "intents", tmp_path / "intents")  # the device report goes here
    assert main(["bench", "--env", env, "--limit", str(limit), "--set", f'models_dir="{tmp_path}"']) == 0
    device = json.loads((tmp_path / "intents" / "device.json").read_text())
    report = json.loads((tmp_path / "intents" / "report.json").read_text())
    assert device["target"] == env and device["emulated"] is True
    assert device["samples"] == (limit or report["task"]["test_samples"])
    assert device["bitexact"] is True and device["mismatches"] == 0
    assert device["latency"]["unit"] == "instructions" and device["latency"]["value"] > 0
    assert report["device"] == device
    if not limit:
        assert device["accuracy"] == report["student"]["int8_accuracy"]
