"""`tinyseek arduino`: the generated library in the Arduino IDE's layout (library.properties, src/,
examples/classify), and its example sketch compiled on the host against a stand-in Arduino core
(Serial on stdin/stdout): what it prints for typed lines equals the integer oracle."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinyseek.cli import main
from tinyseek.codegen.arduino import render_arduino
from tinyseek.quant.reference import infer_sequences, infer_tokens
from tinyseek.quant.synthetic import random_model, random_sequences
from tinyseek.student.tokenizer import HashTokenizer

STANDIN = Path(__file__).resolve().parent / "arduino"


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
