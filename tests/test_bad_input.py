"""Hostile and mistaken input: each case of docs/bad-input.md is fed here and the words the
table quotes are found in what the user sees; the table and these cases must name the same
inputs."""
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tinyseek import cli
from tinyseek.codegen.identifiers import CodegenError
from tinyseek.codegen.render import render
from tinyseek.config import ConfigError, load
from tinyseek.data import DataError
from tinyseek.data.byo import read_jsonl, read_npz
from tinyseek.harness.report import write_report
from tinyseek.pipeline import STAGE_FUNCS, Run
from tinyseek.quant.synthetic import random_model

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs/bad-input.md"


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.err + out.out


def _error(fn, exc=ValueError) -> str:
    with pytest.raises(exc) as e:
        fn()
    return str(e.value)


def _model():
    return random_model(5, kind="text", hidden=6, input_size=4, num_classes=3, vocab_size=50, max_len=6, name="bad")


# -- the cases: each returns what the user sees ----------------------------------------------

def low_bit_model_mispacked(tmp_path, capsys):
    """An int4 model folder whose packed matrix has the byte count of int8 rows."""
    from safetensors.numpy import load_file, save_file

    from tinyseek.quant.model import ModelFileError, QuantModel
    m = random_model(5, hidden=4, input_size=6, width="int4", name="bad")
    m.save(tmp_path / "m")
    arrays = load_file(str(tmp_path / "m" / "params.safetensors"))
    arrays["lstm0.w_x"] = np.zeros((16, 6), np.uint8)
    save_file(arrays, str(tmp_path / "m" / "params.safetensors"), metadata={"format": "1"})
    return _error(lambda: QuantModel.load(tmp_path / "m"), ModelFileError)


def low_bit_embedding_gain_too_large(tmp_path, capsys):
    """An int4 embedding whose stored gain would take a row past int8."""
    from safetensors.numpy import load_file, save_file

    from tinyseek.quant.model import ModelFileError, QuantModel
    m = random_model(5, kind="text", hidden=4, input_size=6, width="int4", name="bad")
    m.save(tmp_path / "m")
    arrays = load_file(str(tmp_path / "m" / "params.safetensors"))
    arrays["embedding.gain"][1] = 19
    save_file(arrays, str(tmp_path / "m" / "params.safetensors"), metadata={"format": "1"})
    return _error(lambda: QuantModel.load(tmp_path / "m"), ModelFileError)


def codegen_over_your_file(tmp_path, capsys):
    lib = tmp_path / "bad"
    lib.mkdir()
    (lib / "README.md").write_text("my notes\n")
    (lib / "mine.txt").write_text("keep me\n")
    msg = _error(lambda: render(_model(), lib), CodegenError)
    assert sorted(p.name for p in lib.iterdir()) == ["README.md", "mine.txt"]
    assert (lib / "README.md").read_text() == "my notes\n"
    render(_model(), lib, overwrite=True)
    assert "Generated, do not edit" in (lib / "README.md").read_text() and (lib / "mine.txt").is_file()
    return msg


def codegen_interrupted(tmp_path, capsys):
    lib = tmp_path / "bad"
    render(_model(), lib)
    (lib / "mine.txt").write_text("keep me\n")
    before = {p.name: p.read_bytes() for p in lib.iterdir()}
    other = random_model(6, kind="text", hidden=7, input_size=4, num_classes=3, vocab_size=50, max_len=6, name="bad")
    real, calls = Path.write_bytes, []

    def interrupted(self, data):
        calls.append(self)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "write_bytes", interrupted)
        with pytest.raises(KeyboardInterrupt):
            render(other, lib)
    assert {p.name: p.read_bytes() for p in lib.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bad"]  # nothing left beside it
    return "the interruption"


def one_sample_per_class(tmp_path, capsys):
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"text": f"sample {i}", "label": c}) + "\n" for i, c in enumerate("abc")))
    run = Run(load(overrides={"models_dir": str(tmp_path), "task.kind": "jsonl", "task.train": str(data)}))
    msg = _error(lambda: run.dataset)
    assert not (tmp_path / "intents").exists()
    return msg


def zero_samples_compared(tmp_path, capsys):
    metrics = {"model": {"name": "m", "hash": "h"}, "task": {"name": "t", "kind": "jsonl", "labels": ["a", "b"],
               "train_samples": 4, "test_samples": 0, "split_by": "samples", "test_labeled": 0},
               "teacher": {"accuracy": None, "source": "default"},
               "student": {"float_accuracy": None, "int8_accuracy": None, "params": 1, "weight_bytes": 1},
               "validation": {"samples": 0}, "retention": None, "agreement_int8_float": None,
               "agreement_int8_teacher": None, "confusion": [[0, 0], [0, 0]]}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "verify.json").write_text(json.dumps({"target": "host", "compiler": "gcc", "samples": 0,
                                                      "bitexact": False, "mismatches": 0}))
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "bit-exact**" not in text and "every logit" not in text
    return text


def run_leaves_models(tmp_path, capsys):
    code, text = _cli(capsys, "codegen", "--set", f"models_dir={tmp_path}", "--set", "run=../../elsewhere")
    assert code == 2 and not (tmp_path.parent.parent / "elsewhere").exists()
    return text


def out_dir_leaves_project(tmp_path, capsys):
    texts = [_error(lambda: load(overrides={"codegen.out_dir": "../x"}), ConfigError),
             _error(lambda: load(overrides={"models_dir": "models/../../x"}), ConfigError)]
    assert all("absolute path" in t for t in texts)
    return texts[1]


def absolute_models_dir(tmp_path, capsys):
    lines = []
    Run(load(overrides={"models_dir": str(tmp_path)}), log=lines.append)
    return "\n".join(lines)


def truncated_safetensors(tmp_path, capsys):
    from safetensors.numpy import save_file
    from tinyseek.teacher.load import TeacherError, load_teacher
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_v3"}))
    f = tmp_path / "model.safetensors"
    save_file({"w": np.ones((64, 64), np.float32)}, str(f))
    f.write_bytes(f.read_bytes()[:5000])
    return _error(lambda: load_teacher(tmp_path), TeacherError)


def _config_error(key, value):
    return lambda tmp_path, capsys: _error(lambda: load(overrides={key: value}), ConfigError)


def absurd_npz_header(tmp_path, capsys):
    import zipfile
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 3, 4), np.float32), y=np.array([0, 1]))
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    head = io.BytesIO()  # the same data under a header that declares 3.6e12 float32 values
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (99999999999, 9, 4)})
    members["x.npy"] = head.getvalue() + members["x.npy"][-2 * 3 * 4 * 4:]
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    return _error(lambda: read_npz(path), DataError)


def _no_read_bytes(monkeypatch):
    def refuse(self):
        raise AssertionError(f"{self} was read whole")
    monkeypatch.setattr(Path, "read_bytes", refuse)


def npz_not_zip(tmp_path, capsys):
    path = tmp_path / "d.npz"
    path.write_bytes(b"\x00" * 100_000)
    with pytest.MonkeyPatch.context() as mp:
        _no_read_bytes(mp)
        return _error(lambda: read_npz(path), DataError)


def jsonl_line1_malformed(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    with path.open("w") as f:
        f.write("{not json\n")
        for i in range(20_000):
            f.write(json.dumps({"text": "x" * 50, "label": "a"}) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        _no_read_bytes(mp)
        return _error(lambda: read_jsonl(path), DataError)


def jsonl_long_line(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "' + b"x" * (2 << 20) + b'", "label": "a"}\n')
    return _error(lambda: read_jsonl(path), DataError)


def gguf_garbage(tmp_path, capsys):
    pytest.importorskip("gguf", reason="pip install 'tinyseek[gguf]'")
    pytest.importorskip("accelerate", reason="pip install 'tinyseek[gguf]'")
    from tinyseek.teacher.load import TeacherError, load_teacher
    path = tmp_path / "t.gguf"
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little") + (9).to_bytes(8, "little")
                     + b"\xff" * 40)
    return _error(lambda: load_teacher(path), TeacherError)


def truncated_update_package(tmp_path, capsys):
    (tmp_path / "pkg.bin").write_bytes(b"TSUP" + bytes(96))
    code, seen = _cli(capsys, "update", "push", "--package", str(tmp_path / "pkg.bin"), "--to", "intents")
    assert code == 2
    return seen


def wav_at_8khz(tmp_path, capsys):
    import wave
    from tinyseek.audio.data import read_wav
    with wave.open(str(tmp_path / "clip.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(800, np.int16).tobytes())
    return _error(lambda: read_wav(tmp_path / "clip.wav"), DataError)


def ctrl_c(tmp_path, capsys):
    def interrupted(run):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(STAGE_FUNCS, "codegen", interrupted)
        code = cli.main(["codegen", "--set", f"models_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 130 and len(err.strip().splitlines()) == 1
    assert "interrupted in the codegen stage" in err
    return err


def bench_negative_limit(tmp_path, capsys):
    code, text = _cli(capsys, "bench", "--limit", "-85", "--set", f"models_dir={tmp_path}")
    assert code == 2
    return text


def bench_emulated_port(tmp_path, capsys):
    code, text = _cli(capsys, "bench", "--env", "qemu_m4", "--port", "/dev/ttyUSB0", "--set",
                      f"models_dir={tmp_path}")
    assert code == 2 and not (tmp_path / "intents" / "device.json").exists()
    return text


@pytest.fixture(scope="module")
def host_dut(tmp_path_factory):
    from test_firmware_protocol import HostDut
    return HostDut(random_model(7, kind="text", hidden=6, input_size=4, num_classes=3, vocab_size=50, max_len=6,
                                name="hbad", labels=["on", "off", "天气"]), tmp_path_factory.mktemp("hbad"))


def device_failed_load(host_dut):
    replies = host_dut.session("db load 4", "db 01000200", "infer 1 0", "db load 9999", "db 01000200", "infer 1 0",
                               "db load 4", "db 0100", "db 02zz", "db 0200", "infer 1 0")
    assert replies[2][-1].startswith("m-time-[")
    assert replies[3][0].startswith("e-[db load: 9999 bytes exceed")
    assert replies[8][0].startswith("e-[db: invalid hex digit")
    return "\n".join(replies[4] + replies[5] + replies[9] + replies[10])


def device_non_ascii(host_dut):
    out = host_dut.raw(b"\x80\xe6\x89\x93\x01%cls x%")
    assert all(c.isascii() and (c.isprintable()) for line in out for c in line)
    return "\n".join(out)


CASES = {
    "`codegen` into a folder holding a file of yours with a generated file's name (e.g. `README.md`)":
        codegen_over_your_file,
    "`codegen` interrupted while it writes": codegen_interrupted,
    "a dataset with one sample per class": one_sample_per_class,
    "a report or device check over 0 samples": zero_samples_compared,
    "`--set run=../../elsewhere`": run_leaves_models,
    "`--set codegen.out_dir=../x` (or `models_dir`)": out_dir_leaves_project,
    "`--set models_dir=/an/absolute/folder` outside the project": absolute_models_dir,
    "a truncated `model.safetensors` in a teacher folder": truncated_safetensors,
    "`--set teacher.batch_size=0`": _config_error("teacher.batch_size", 0),
    "`--set quant.weights=int2`": _config_error("quant.weights", "int2"),
    "an int4 model file whose packed matrix has the wrong byte count": low_bit_model_mispacked,
    "an int4-embedding model file with a row gain above 18 (gain x code would leave int8)": low_bit_embedding_gain_too_large,
    "`--set quant.embedding=int2`": _config_error("quant.embedding", "int2"),
    "`--set teacher.max_tokens=0`": _config_error("teacher.max_tokens", 0),
    "`--set teacher.hidden_size=36` (4 heads: a head size of 9)": _config_error("teacher.hidden_size", 36),
    "an NPZ whose header declares an absurd shape": absurd_npz_header,
    "a file named `.npz` that is no zip archive": npz_not_zip,
    "a JSONL file whose first line is malformed": jsonl_line1_malformed,
    "a JSONL file with a line over 1 MiB": jsonl_long_line,
    "a GGUF file with a valid magic and garbage after it": gguf_garbage,
    "`update push` with a truncated package file": truncated_update_package,
    "an audio clip recorded at 8 kHz (or in stereo, or 8-bit)": wav_at_8khz,
    "Ctrl-C during a stage": ctrl_c,
    "`bench --limit -85`": bench_negative_limit,
    "`bench --env qemu_m4 --port /dev/ttyUSB0`": bench_emulated_port,
    "device: `db load` or a `db HEX` chunk that fails, then more chunks and `infer`": device_failed_load,
    "device: bytes ≥ 0x80 or control bytes in a command": device_non_ascii,
}


def _table() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("input", "---"):
            rows[cells[0]] = cells[1]
    return rows


def test_the_table_and_the_cases_name_the_same_inputs():
    assert sorted(_table()) == sorted(CASES)


@pytest.mark.parametrize("row", sorted(CASES))
def test_each_bad_input_shows_what_the_table_says(row, tmp_path, capsys, request):
    case = CASES[row]
    seen = case(request.getfixturevalue("host_dut")) if row.startswith("device:") else case(tmp_path, capsys)
    for words in re.findall(r"`([^`]+)`", _table()[row]):
        assert words in seen, f"{row}: {words!r} not in {seen!r}"
