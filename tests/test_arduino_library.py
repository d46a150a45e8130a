"""`tinyseek arduino`: the generated library in the Arduino IDE's layout (library.properties, src/,
examples/classify), and its example sketch compiled on the host against a stand-in Arduino core
(Serial on stdin/stdout): what it prints for typed lines equals the integer oracle. The same
stand-in runs the firmware's Arduino port (firmware/src/board/arduino.cpp) in both timestamp
modes."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinyseek.cli import main
from tinyseek.codegen.arduino import render_arduino
from tinyseek.codegen.render import render
from tinyseek.quant.reference import infer_sequences, infer_tokens
from tinyseek.quant.synthetic import random_model, random_sequences
from tinyseek.student.tokenizer import HashTokenizer

STANDIN = Path(__file__).resolve().parent / "arduino"
ROOT = Path(__file__).resolve().parents[1]


def _build_sketch(lib: Path, exe: Path) -> None:
    if shutil.which("g++") is None:
        pytest.fail("g++ is not installed; install it with: sudo apt-get install -y g++")
    objs = []
    for src in sorted((lib / "src").glob("*.c")):
        obj = exe.parent / (src.stem + ".o")
        subprocess.run(["gcc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-c", str(src), "-o", str(obj)],
                       check=True)
        objs.append(str(obj))
    subprocess.run(["g++", "-O1", "-Wall", "-Wextra", "-Werror", "-x", "c++", "-include", str(STANDIN / "Arduino.h"),
                    "-I", str(lib / "src"), str(lib / "examples" / "classify" / "classify.ino"), "-x", "none",
                    *objs, "-o", str(exe)], check=True)


def _rows(stdout: str) -> list[tuple[str, int, list[int]]]:
    rows = []
    for line in stdout.splitlines()[1:]:  # after the "ready" line
        label, k, logits = line.split("\t")
        rows.append((label, int(k), [int(v) for v in logits.split()]))
    return rows


def test_the_layout_and_the_text_sketch(default_lib, tmp_path):
    model, _, texts = default_lib
    files = render_arduino(model, tmp_path)
    lib = tmp_path / model.name
    assert lib / "library.properties" in files and (lib / "src" / f"{model.name}_model.h").is_file()
    assert not (lib / "src" / "library.json").exists()
    props = dict(line.split("=", 1) for line in (lib / "library.properties").read_text().splitlines()
                 if line and not line.startswith("#"))
    assert props["name"] == model.name and props["includes"] == f"{model.name}_model.h"
    assert {"version", "author", "maintainer", "sentence", "paragraph", "category", "architectures"} <= set(props)
    exe = tmp_path / "sketch"
    _build_sketch(lib, exe)
    some = texts[:25]
    # CR LF line endings and an empty line (ignored) on the way
    typed = "\r\n".join(some[:10]) + "\r\n\n" + "\n".join(some[10:]) + "\n"
    out = subprocess.run([str(exe)], input=typed, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == f"{model.name}: ready"
    tok = HashTokenizer(model.vocab_size, model.max_len)
    want = infer_tokens(model, [tok.encode(t) for t in some])
    assert _rows(out) == [(model.labels[int(np.argmax(w))], int(np.argmax(w)), w.tolist()) for w in want]


def test_the_sequence_sketch_classifies_typed_steps(tmp_path):
    model = random_model(51, kind="sequence", hidden=[12], input_size=5, num_classes=4, name="seqard")
    xs = random_sequences(model, np.random.default_rng(2), 3, 6)
    render_arduino(model, tmp_path)
    exe = tmp_path / "sketch"
    _build_sketch(tmp_path / model.name, exe)
    typed = "".join("".join(", ".join(str(v) for v in step) + "\n" for step in x) + "\n" for x in xs)
    typed += "1 2\n"  # too few numbers: an error line, the state unchanged
    out = subprocess.run([str(exe)], input=typed, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[-1] == "error: a step needs 5 numbers, got 2"
    want = infer_sequences(model, xs)
    assert _rows("\n".join(lines[:-1])) == [(model.labels[int(np.argmax(w))], int(np.argmax(w)), w.tolist())
                                            for w in want]


def test_the_cli_writes_the_library_and_names_a_missing_model(tmp_path, capsys):
    assert main(["arduino", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "intents" / "examples" / "classify" / "classify.ino").is_file()
    assert main(["arduino", "--set", 'run="no_such_run"', "--out", str(tmp_path)]) == 2
    assert "tinyseek quantize" in capsys.readouterr().err


@pytest.mark.parametrize("energy", [False, True])
def test_the_firmware_arduino_port_on_the_standin_core(energy, tmp_path):
    """arduino.cpp, the interpreter and a generated library on the stand-in core (a board without
    a cycle counter: micros()): the protocol replies, the oracle's logits, and in energy mode the
    timestamp pin (t-pin lines of the stand-in) released at boot and pulsed low then high by
    `timestamp` instead of an m-lap-us line."""
    if shutil.which("g++") is None:
        pytest.fail("g++ is not installed; install it with: sudo apt-get install -y g++")
    model = random_model(41, kind="text", hidden=[10], input_size=6, num_classes=4, vocab_size=300, max_len=12,
                         name="ard")
    lib = tmp_path / "ard"
    render(model, lib)
    flags = ["-DTINYSEEK_ENERGY_MODE=1", "-DTS_TIMESTAMP_PIN=4"] if energy else []
    inc = ["-I", str(ROOT / "firmware/lib/harness"), "-I", str(ROOT / "firmware/src"), "-I", str(lib)]
    objs = []
    for src in [ROOT / "firmware/lib/harness/dut.c", ROOT / "firmware/lib/harness/ts_listen.c",
                ROOT / "firmware/src/model_glue.c", *sorted(lib.glob("*.c"))]:
        obj = tmp_path / (src.stem + ".o")
        subprocess.run(["gcc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", *flags, *inc,
                        '-DTINYSEEK_MODEL_HEADER="ard_model.h"', "-c", str(src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = tmp_path / "port"
    subprocess.run(["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", *flags, "-I", str(STANDIN), *inc,
                    "-x", "c++", str(ROOT / "firmware/src/board/arduino.cpp"), "-x", "none", *objs, "-o", str(exe)],
                   check=True)
    text = "turn the lights on"
    out = subprocess.run([str(exe)], input=f"name%info%timestamp%cls {text}%", capture_output=True, text=True,
                         check=True).stdout.splitlines()
    mode = "energy" if energy else "performance"
    boot = ["t-pin-4-high"] if energy else []
    assert out[:len(boot) + 3] == boot + [f"m-timestamp-mode-{mode}", "m-init-done", "m-ready"]
    assert "m-name-dut-[tinyseek]" in out
    info = next(line for line in out if line.startswith("m-info-["))
    assert "timer=micros,unit=us,lap_us=us/1" in info and f"timestamps={mode}" in info
    i = out.index(info) + 2  # after its m-ready: the timestamp reply
    if energy:
        assert out[i:i + 3] == ["t-pin-4-low", "t-pin-4-high", "m-ready"]
    else:
        assert out[i].startswith("m-lap-us-") and out[i + 1] == "m-ready"
    logits = next(line for line in out if line.startswith("m-logits-["))[len("m-logits-["):-1]
    want = infer_tokens(model, [HashTokenizer(model.vocab_size, model.max_len).encode(text)])[0]
    assert [int(v) for v in logits.split(",")] == want.tolist()
