"""Host verification: compile the generated library with a generated test driver, run every
input through it and compare every logit with the integer reference (bit for bit)."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..quant.model import QuantModel
from ..quant.reference import infer_sequences, infer_tokens, trace
from ..student.tokenizer import HashTokenizer, device_ids
from .context import build_context
from .render import render_template

CFLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic")
APT_HINT = "sudo apt-get update && sudo apt-get install -y gcc (or run tools/setup/system-packages.sh)"


class VerifyError(ValueError):
    """The generated C could not be compiled or run, or belongs to another model."""


@dataclass
class VerifyResult:
    samples: int
    bitexact: bool  # every logit of every path equals the oracle (and, for text, every token id)
    mismatches: int  # samples with any difference
    first_mismatch: dict | None  # sample, path, expected, got
    logits: np.ndarray  # int16 [N, C] of the device path (text: raw UTF-8 through classify_text)
    compiler: str  # e.g. "gcc 12.2.0"
    c_token_ids_match: bool | None  # text: the C tokenizer gave the Python tokenizer's ids for every sample


def compile_library(lib_dir: Path, sources: list[Path], exe: Path, *, cc: str = "gcc",
                    cflags: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> str:
    """Compile the library's .c files (but `exclude`) plus `sources` into `exe`; returns the
    compiler id."""
    if shutil.which(cc) is None:
        raise VerifyError(f"C compiler '{cc}' not found on PATH; install it: {APT_HINT}")
    lib_sources = sorted(p for p in Path(lib_dir).glob("*.c") if p.name not in exclude)
    cmd = [cc, *CFLAGS, *cflags, "-I", str(lib_dir), *map(str, lib_sources), *map(str, sources), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise VerifyError(f"compiling the generated C failed ({' '.join(cmd)}):\n{proc.stdout}{proc.stderr}")
    version = subprocess.run([cc, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True).stdout.strip()
    return f"{Path(cc).name} {version}".strip()


def _check_library(lib_dir: Path, model: QuantModel) -> None:
    """The library in lib_dir was rendered from `model` (its header's hash), else a VerifyError."""
    lib_hash, want = _library_hash(lib_dir, model), model.model_hash()
    if lib_hash != want:
        raise VerifyError(f"{lib_dir} was generated from model hash {lib_hash}, not {want}: run `tinyseek codegen`")


def _library_hash(lib_dir: Path, model: QuantModel) -> str:
    header = lib_dir / f"{model.name}_model.h"
    if not header.is_file():
        raise VerifyError(f"{header} is missing: run `tinyseek codegen` first")
    m = re.search(r'#define\s+\w+_MODEL_HASH\s+"([0-9a-f]{16})"', header.read_text())
    if m is None:
        raise VerifyError(f"{header} has no MODEL_HASH macro; regenerate it with `tinyseek codegen`")
    return m.group(1)


def _text_bytes(t) -> bytes:
    return t.encode("utf-8") if isinstance(t, str) else bytes(t)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise VerifyError("the test driver's output is truncated (did it crash?)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def i32(self) -> int:
        return struct.unpack("<i", self.take(4))[0]

    def i16(self, n: int) -> np.ndarray:
        return np.frombuffer(self.take(2 * n), dtype="<i2").astype(np.int16)

    def i8(self, n: int) -> np.ndarray:
        return np.frombuffer(self.take(n), dtype=np.int8).copy()

    def u16(self, n: int) -> np.ndarray:
        return np.frombuffer(self.take(2 * n), dtype="<u2").astype(np.int64)


def verify_host(model: QuantModel, lib_dir: str | Path, inputs, *, token_ids=None, every_step: bool = False,
                cc: str = "gcc", cflags: tuple[str, ...] = (), runner: tuple[str, ...] = (),
                workdir: str | Path | None = None, timeout: float = 600.0) -> VerifyResult:
    """Compile the C library in `lib_dir` with the test driver, run `inputs` through it and
    compare with the oracle (see HostDriver.run)."""
    with tempfile.TemporaryDirectory(prefix="tinyseek-verify-") as tmp:
        driver = HostDriver(model, lib_dir, Path(workdir) if workdir is not None else Path(tmp), cc=cc, cflags=cflags,
                            runner=runner)
        return driver.run(inputs, token_ids=token_ids, every_step=every_step, timeout=timeout)


class HostDriver:
    """The library compiled once with the test driver; `run` may be called many times.

    `runner` is a command the driver runs under, e.g. ("qemu-aarch64", "-cpu", "cortex-a76") for
    a driver cross-compiled with cc="aarch64-linux-gnu-gcc", cflags=("-static", ...)."""

    def __init__(self, model: QuantModel, lib_dir: str | Path, workdir: str | Path, *, cc: str = "gcc",
                 cflags: tuple[str, ...] = (), runner: tuple[str, ...] = ()):
        self.model, self.lib_dir, self.work = model, Path(lib_dir), Path(workdir)
        self.runner = tuple(runner)
        if self.runner and shutil.which(self.runner[0]) is None:
            raise VerifyError(f"'{self.runner[0]}' (the runner of the test driver) not found on PATH; install it: "
                              "sudo apt-get install -y qemu-user (or run tools/setup/system-packages.sh)")
        _check_library(self.lib_dir, model)
        self.work.mkdir(parents=True, exist_ok=True)
        source = self.work / "verify_driver.c"
        ctx = build_context(model, __version__)
        source.write_text(render_template("host/verify_driver.c.j2", ctx))
        self.exe = self.work / "verify_driver"
        # The driver includes the model's .c file itself (to read its static state).
        self.compiler = compile_library(self.lib_dir, [source], self.exe, cc=cc, cflags=cflags,
                                        exclude=(ctx["files"]["lib/model.c.j2"],))

    def run(self, inputs, *, token_ids=None, every_step: bool = False, timeout: float = 600.0) -> VerifyResult:
        """Text models: `inputs` are strings (or UTF-8 bytes). The C tokenizer's ids are compared
        with tinyseek.student.tokenizer's, `classify_text` with the oracle on those ids, and
        `infer_tokens` with the oracle on `token_ids` (default: the Python tokenizer's ids).
        Sequence models: `inputs` are int8 [N, T, F] (or a list of int8 [T_n, F]); `infer` is
        compared. `every_step` also compares the logits and the state (h, c of every layer)
        after every single step."""
        model = self.model
        text = model.kind == "text"
        if text:
            texts = [_text_bytes(t) for t in inputs]
            tok = HashTokenizer(model.vocab_size, model.max_len, model.subwords)
            py_ids = [tok.model_inputs(t) for t in texts]
            run_ids = py_ids if token_ids is None else [
                [tuple(map(int, g)) if isinstance(g, (tuple, list, np.ndarray)) else int(g) for g in s] for s in token_ids]
            if len(run_ids) != len(texts):
                raise VerifyError(f"{len(run_ids)} token-id lists for {len(texts)} texts")
            n = len(texts)
        else:
            seqs = list(inputs)
            n = len(seqs)

        blob = bytearray(b"TSIN" + struct.pack("<II", n, 1 if every_step else 0))
        for k in range(n):
            if text:
                blob += struct.pack("<I", len(texts[k])) + texts[k]
                flat = _flat_ids(run_ids[k], model.subwords)
                blob += struct.pack("<I", len(flat)) + np.asarray(flat, dtype="<u2").tobytes()
            else:
                x = np.ascontiguousarray(seqs[k], dtype=np.int8)
                blob += struct.pack("<I", x.shape[0]) + x.tobytes()
        in_file, out_file = self.work / "in.bin", self.work / "out.bin"
        in_file.write_bytes(bytes(blob))
        proc = subprocess.run([*self.runner, str(self.exe), str(in_file), str(out_file)], capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise VerifyError(f"the test driver failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
        r = _Reader(out_file.read_bytes())

        want = model.model_hash()
        if r.take(16).decode() != want:
            raise VerifyError("the compiled library reports another model hash; regenerate it with `tinyseek codegen`")
        C = model.num_classes
        expected_main = infer_tokens(model, py_ids) if text else infer_sequences(model, seqs)
        expected_run = infer_tokens(model, run_ids) if text and token_ids is not None else expected_main
        expected_steps = trace(model, run_ids if text else seqs) if every_step else None

        logits = np.zeros((n, C), np.int16)
        mismatches, first, ids_match = 0, None, True
        for k in range(n):
            problems = []
            if text:
                got_ids = r.u16(r.u32()).tolist()
                want_ids = _flat_ids(py_ids[k], model.subwords)
                if got_ids != want_ids:
                    ids_match = False
                    problems.append(("C tokenizer ids", want_ids, got_ids))
            cls = r.i32()
            logits[k] = r.i16(C)
            problems += _diff("logits" + (" of classify_text" if text else " of infer"), expected_main[k], logits[k])
            if cls != int(np.argmax(expected_main[k])):
                problems.append(("class", int(np.argmax(expected_main[k])), cls))
            if text:
                problems += _diff("logits of infer_tokens", expected_run[k], r.i16(C))
            if every_step:
                problems += self._steps(r, expected_steps[k])
            if problems:
                mismatches += 1
                if first is None:
                    what, exp, got = problems[0]
                    first = {"sample": k, "path": what, "expected": exp, "got": got}
                    if text:
                        first["input"] = texts[k][:200].decode("utf-8", errors="backslashreplace")
        if r.take(4) != b"DONE":
            raise VerifyError("the test driver's output is out of sync with the protocol")
        return VerifyResult(samples=n, bitexact=mismatches == 0, mismatches=mismatches, first_mismatch=first,
                            logits=logits, compiler=self.compiler, c_token_ids_match=ids_match if text else None)


    def _steps(self, r: "_Reader", want: dict) -> list[tuple]:
        """Compare the per-step records of one sample; reports the first differing step."""
        layers = self.model.layers
        for t in range(len(want["logits"])):
            got = [("logits", r.i16(self.model.num_classes), want["logits"][t])]
            for k, L in enumerate(layers):
                got.append((f"h of layer {k}", r.i8(L.hidden), want["h"][k][t]))
                got.append((f"c of layer {k}", r.i16(L.hidden), want["c"][k][t]))
            for what, g, w in got:
                diff = _diff(f"{what} after step {t + 1}", w, g)
                if diff:
                    # Skip the rest of this sample's records to stay in sync, then report.
                    rest = len(want["logits"]) - t - 1
                    r.take(rest * (2 * self.model.num_classes + sum(3 * L.hidden for L in layers)))
                    return diff
        return []


def verify_audio_host(model: QuantModel, lib_dir: str | Path, clips, *, cc: str = "gcc",
                      cflags: tuple[str, ...] = (), timeout: float = 600.0) -> VerifyResult:
    """An audio model's library on int16 clips: each clip streamed through feed_audio in chunks
    of 1 to 2,048 samples (part hops and part steps across calls) and through infer_audio in
    one call, both compared with tinyseek.quant.reference.infer_audio; the LSTM steps taken
    with the reference's."""
    from ..quant.reference import audio_inputs, infer_audio
    if model.audio is None:
        raise VerifyError(f"model '{model.name}' takes feature vectors, not audio: use verify_host")
    _check_library(Path(lib_dir), model)
    want_hash = model.model_hash()
    clips = [np.asarray(c) for c in clips]
    with tempfile.TemporaryDirectory(prefix="tinyseek-verify-audio-") as tmp:
        source, exe = Path(tmp) / "audio_driver.c", Path(tmp) / "audio_driver"
        source.write_text(render_template("host/audio_driver.c.j2", build_context(model, __version__)))
        compiler = compile_library(Path(lib_dir), [source], exe, cc=cc, cflags=cflags)
        data = b"".join(struct.pack("<I", len(c)) + c.astype("<i2").tobytes() for c in clips)
        proc = subprocess.run([str(exe)], input=data, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise VerifyError(f"the audio test driver failed (exit {proc.returncode}):\n{proc.stderr.decode()[-3000:]}")
    rows = [line.split() for line in proc.stdout.decode().splitlines()]
    if not rows or rows[0] != ["hash", want_hash] or rows[-1] != ["done"]:
        raise VerifyError("the audio test driver's output is out of sync (another model's library, or cut short)")
    per = [rows[1 + 3 * k: 4 + 3 * k] for k in range(len(clips))]
    want, want_steps = infer_audio(model, clips), [len(x) for x in audio_inputs(model, clips)]
    logits = np.zeros((len(clips), model.num_classes), np.int16)
    mismatches, first = 0, None
    for k, (s, f, w) in enumerate(per):
        logits[k] = np.array(f[1:], np.int64)
        problems = ([("LSTM steps", want_steps[k], int(s[1]))] if int(s[1]) != want_steps[k] else [])
        problems += _diff("logits of feed_audio in chunks", want[k], logits[k])
        problems += _diff("logits of infer_audio", want[k], np.array(w[1:], np.int64))
        if problems:
            mismatches += 1
            if first is None:
                what, exp, got = problems[0]
                first = {"sample": k, "path": what, "expected": exp, "got": got}
    return VerifyResult(samples=len(clips), bitexact=mismatches == 0, mismatches=mismatches, first_mismatch=first,
                        logits=logits, compiler=compiler, c_token_ids_match=None)


def _flat_ids(steps, subwords: int) -> list[int]:
    try:
        return device_ids(steps, subwords)
    except ValueError as e:
        raise VerifyError(str(e)) from None


def _diff(what: str, expected: np.ndarray, got: np.ndarray) -> list[tuple]:
    if np.array_equal(np.asarray(expected), np.asarray(got)):
        return []
    return [(what, np.asarray(expected).tolist(), np.asarray(got).tolist())]
