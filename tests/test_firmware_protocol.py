"""The device-under-test interpreter (firmware/lib/harness/dut.c) compiled on the host with
AddressSanitizer and UBSan, linked with the glue (firmware/src/model_glue.c) and a generated
library of a random model: valid sessions against the integer oracle, every error reply, and a
time-bounded random/adversarial fuzz run."""
import dataclasses
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tinyseek.codegen.render import render
from tinyseek.harness.protocol import parse_ints, parse_kv
from tinyseek.quant.reference import infer_sequences, infer_tokens, probabilities_text, softmax_fixed, softmax_multiplier
from tinyseek.quant.synthetic import random_model, random_sequences, random_token_ids
from tinyseek.student.tokenizer import HashTokenizer

ROOT = Path(__file__).resolve().parents[1]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
BANNER = ["m-timestamp-mode-performance", "m-init-done"]
FUZZ_SECONDS = 8.0


def _need_gcc():
    if shutil.which("gcc") is None:
        msg = "gcc is not on PATH; install it with: sudo apt-get install -y gcc"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


class HostDut:
    """The interpreter as a host program: one process per session, bytes in, replies out."""

    def __init__(self, model, folder: Path, flags=(), banner=BANNER, wake=None):
        """wake: a wake-word model linked beside (an audio) `model`, for `listen`."""
        _need_gcc()
        self.model, self.banner = model, banner
        libs = [folder / m.name for m in (model, wake) if m is not None]
        for m, lib in zip((model, wake), libs):
            render(m, lib)
        self.exe = folder / f"dut_{model.name}"
        sources = [ROOT / "firmware/lib/harness/dut.c", ROOT / "firmware/lib/harness/ts_listen.c",
                   ROOT / "firmware/src/model_glue.c", ROOT / "tests/firmware/host/host_port.c",
                   *(c for lib in libs for c in sorted(lib.glob("*.c")))]
        cmd = ["gcc", "-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *SANITIZE,
               "-I", str(ROOT / "firmware/lib/harness"), "-I", str(ROOT / "firmware/src"),
               *(a for lib in libs for a in ("-I", str(lib))), f'-DTINYSEEK_MODEL_HEADER="{model.name}_model.h"',
               *([f'-DTINYSEEK_WAKE_HEADER="{wake.name}_model.h"'] if wake is not None else []), *flags,
               *map(str, sources), "-o", str(self.exe)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def raw(self, data: bytes) -> list[str]:
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
        p = subprocess.run([str(self.exe)], input=data, capture_output=True, timeout=120, env=env)
        assert p.returncode == 0 and not p.stderr, p.stderr.decode(errors="replace")[-3000:]
        assert p.stdout.endswith(b"\r\n"), p.stdout[-200:]
        return p.stdout.decode("utf-8", "replace").split("\r\n")[:-1]

    def session(self, *commands: str | bytes) -> list[list[str]]:
        """Replies (lines before each m-ready), one per command; the banner is checked."""
        data = b"".join((c.encode() if isinstance(c, str) else c) + b"%" for c in commands)
        replies, cur = [], []
        for line in self.raw(data):
            if line == "m-ready":
                replies.append(cur)
                cur = []
            else:
                cur.append(line)
        assert replies[0] == self.banner and cur == []
        assert len(replies) == len(commands) + 1, replies
        return replies[1:]


def _load_cmds(data: bytes, chunk: int = 40) -> list[str]:
    return [f"db load {len(data)}"] + ["db " + data[i:i + chunk].hex() for i in range(0, len(data), chunk)]


def _field(reply: list[str], key: str) -> str:
    for line in reply:
        m = re.fullmatch(rf"m-{key}-\[(.*)\]", line)
        if m:
            return m.group(1)
    raise AssertionError(f"no m-{key}-[...] in {reply}")


def _ids(ids) -> bytes:
    return np.asarray(ids, "<u2").tobytes()


@pytest.fixture(scope="module")
def text_dut(tmp_path_factory):
    m = random_model(11, kind="text", hidden=12, input_size=6, num_classes=5, vocab_size=500, max_len=10,
                     name="tdut", labels=["lights_on", "lights_off", "music", "天气", "timer"])
    return HostDut(m, tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def seq_dut(tmp_path_factory):
    m = random_model(12, kind="sequence", hidden=[6, 9], input_size=5, num_classes=3, name="sdut")
    return HostDut(m, tmp_path_factory.mktemp("seq"))


# -- valid sessions --------------------------------------------------------------------------

def test_identity_info_and_memory(text_dut):
    m = text_dut.model
    name, profile, info, mem, ts, sync = text_dut.session("name", "profile", "info", "mem", "timestamp", "sync abc123")
    assert name == ["m-name-dut-[tinyseek]"]
    assert profile[1] == f"m-model-[tdut-{m.model_hash()}]"
    kv = parse_kv(_field(info, "info"))
    assert (kv["model"], kv["hash"], kv["kind"]) == ("tdut", m.model_hash(), "text")
    assert (kv["classes"], kv["vocab"], kv["max_len"], kv["layers"], kv["hidden"]) == (5, 500, 10, 1, 12)
    assert kv["buffer"] == 2 * m.max_len and kv["unit"] == "ticks" and kv["timer"] == "fake"
    mem_kv = parse_kv(_field(mem, "mem"))
    assert mem_kv["flash_used"] == 1000 and mem_kv["stack_peak"] is None and mem_kv["model_flash"] > 0
    assert re.fullmatch(r"m-lap-us-\d+", ts[0])
    assert sync == ["m-sync-[abc123]"]


def test_text_infer_matches_the_oracle_and_follows_the_mlperf_sequence(text_dut):
    m = text_dut.model
    rng = np.random.default_rng(5)
    samples = [ids for ids in random_token_ids(m, rng, 8, m.max_len) if ids]
    expected = infer_tokens(m, samples)
    cmds = []
    for ids in samples:
        cmds += _load_cmds(_ids(ids)) + ["infer 2 1", "results"]
    replies = iter(text_dut.session(*cmds))
    for ids, want in zip(samples, expected):
        load = [next(replies) for _ in _load_cmds(_ids(ids))]
        assert load[0] == [f"m-[Expecting {2 * len(ids)} bytes]"] and load[-1] == ["m-load-done"]
        infer, results = next(replies), next(replies)
        assert infer[:3] == ["m-warmup-start-1", "m-warmup-done", "m-infer-start-2"]
        assert re.fullmatch(r"m-lap-us-\d+", infer[3]) and re.fullmatch(r"m-lap-us-\d+", infer[4])
        assert infer[5] == "m-infer-done"
        assert parse_ints(_field(infer, "logits")) == want.tolist()
        assert _field(infer, "results") == probabilities_text(m, want)
        # The fake timer: 7 ticks between the two reads of a run, 3 units per tick.
        assert _field(infer, "time") == "total=42,runs=2,min=21,max=21,unit=ticks"
        assert results == infer[6:8]


def test_energy_mode_pulses_the_timestamp_pin_instead_of_printing_laps(text_dut, tmp_path):
    """-DTINYSEEK_ENERGY_MODE=1 (the reference firmware's EE_CFG_ENERGY_MODE): the banner says
    energy, `timestamp` and the two timestamps of `infer` pulse the board's pin (the host port
    prints t-pulse there) and no m-lap-us line is sent; the inference itself is unchanged."""
    m = text_dut.model
    dut = HostDut(m, tmp_path, flags=["-DTINYSEEK_ENERGY_MODE=1"], banner=["m-timestamp-mode-energy", "m-init-done"])
    ids = [i for i in random_token_ids(m, np.random.default_rng(9), 4, m.max_len) if i][0]
    replies = dut.session("timestamp", *_load_cmds(_ids(ids)), "infer 2 1", "info")
    infer, info = replies[-2], replies[-1]
    assert replies[0] == ["t-pulse"]
    assert infer[:5] == ["m-warmup-start-1", "m-warmup-done", "m-infer-start-2", "t-pulse", "t-pulse"]
    assert infer[5] == "m-infer-done" and not any(line.startswith("m-lap-us") for line in infer)
    assert parse_ints(_field(infer, "logits")) == infer_tokens(m, [ids])[0].tolist()
    assert parse_kv(_field(info, "info"))["timestamps"] == "energy"
    assert parse_kv(_field(text_dut.session("info")[0], "info"))["timestamps"] == "performance"


def test_cls_tokenizes_on_the_device(text_dut):
    m = text_dut.model
    tok = HashTokenizer(m.vocab_size, m.max_len)
    texts = ["turn on the kitchen lights", "打开客厅的灯", "Set timer 10 minutes!!", "", "x " * 250]
    replies = text_dut.session(*[f"cls {t}" for t in texts])
    for text, reply in zip(texts, replies):
        want = infer_tokens(m, [tok.encode(text)])[0]
        assert parse_ints(_field(reply, "logits")) == want.tolist()
        k = int(_field(reply, "class"))
        # every byte sent is printable ASCII: a label's UTF-8 bytes come as '?'
        label = "".join(c if c.isascii() else "?" * len(c.encode()) for c in m.labels[k])
        assert k == int(np.argmax(want)) and _field(reply, "label") == label


def test_stream_keeps_the_state_and_reset_clears_it(text_dut):
    m = text_dut.model
    a, b = [5, 17, 499, 2], [1, 250, 3]
    cmds = (_load_cmds(_ids(a)) + ["reset", "stream"] + _load_cmds(_ids(b)) + ["stream", "reset", "stream"])
    replies = text_dut.session(*cmds)
    streams = [parse_ints(_field(r, "logits")) for r in replies if any(x.startswith("m-logits") for x in r)]
    want = infer_tokens(m, [a, a + b, b])
    assert streams == want.tolist()
    assert "m-reset-done" in replies[len(_load_cmds(_ids(a)))]


def test_sequence_model_infers_bit_exactly(seq_dut):
    m = seq_dut.model
    rng = np.random.default_rng(7)
    xs = list(random_sequences(m, rng, 4, 9)) + list(random_sequences(m, rng, 2, 3, extreme=True))
    cmds = []
    for x in xs:
        cmds += _load_cmds(x.astype(np.int8).tobytes()) + ["infer 1 0"]
    replies = [r for r in seq_dut.session(*cmds) if any(x.startswith("m-logits") for x in r)]
    assert [parse_ints(_field(r, "logits")) for r in replies] == infer_sequences(m, np.stack(xs[:4])).tolist() + \
        infer_sequences(m, np.stack(xs[4:])).tolist()


# -- every error -----------------------------------------------------------------------------

TEXT_ERRORS = [
    ([], b"", "empty command"),
    ([], b"   \r\n ", "empty command"),
    ([], b"bogus arg", "Unknown command: bogus"),
    ([], b"\x00\xff\x1b[2J", "Unknown command: ?"),
    ([], b"x" * 600, "command too long"),
    ([], b"db", "db needs a subcommand"),
    ([], b"db load", "needs a byte count"),
    ([], b"db load ten", "'ten' is not a byte count"),
    ([], b"db load -4", "is not a byte count"),
    ([], b"db load 0", "must be > 0"),
    ([], b"db load 21", "exceed the input buffer of 20 bytes"),
    ([], b"db load 99999999999", "is not a byte count"),
    ([], b"db load 4 4", "too many arguments"),
    ([], b"db 0102", "no buffer; send db load N first"),
    (["db load 4"], b"db 010", "odd number of hex digits"),
    (["db load 4"], b"db 01zz", "invalid hex digit 'z' at position 2"),
    (["db load 4"], b"db 0102030405", "5 bytes but only 4 of the 4 announced remain"),
    (["db load 4"], b"db 01 02", "too many arguments"),
    (["db load 4", "db 01020304"], b"db 05", "0 of the 4 announced remain"),
    ([], b"infer", "no input loaded"),
    (["db load 4", "db 0100"], b"infer 1 0", "input incomplete: 2 of 4 bytes"),
    (["db load 3", "db 010000"], b"infer 1 0", "bytes is odd"),
    (["db load 4", "db 0100f401"], b"infer 1 0", "token id 500 at position 1 is not below the vocabulary size 500"),
    (["db load 2", "db 0100"], b"infer 0", "N must be a number"),
    (["db load 2", "db 0100"], b"infer -1", "N must be a number"),
    (["db load 2", "db 0100"], b"infer 1000001", "N must be a number"),
    (["db load 2", "db 0100"], b"infer 1 x", "W must be a number"),
    (["db load 2", "db 0100"], b"infer 1 1 1", "too many arguments"),
    ([], b"results", "no inference yet"),
    ([], b"stream", "no input loaded"),
    ([], b"sync", "sync needs a token"),
    ([], b"sync " + b"a" * 65, "sync needs a token"),
    ([], b"db print x", "usage: db print"),
    ([], b"quit", "this board cannot exit"),
]


@pytest.mark.parametrize("setup,bad,message", TEXT_ERRORS, ids=[repr(c[1][:20]) for c in TEXT_ERRORS])
def test_every_bad_command_gets_one_error_and_the_device_keeps_working(text_dut, setup, bad, message):
    replies = text_dut.session(*setup, bad, "name")
    errors = [line for line in replies[len(setup)] if line.startswith("e-[")]
    assert len(errors) == 1 and message in errors[0], replies[len(setup)]
    assert replies[-1] == ["m-name-dut-[tinyseek]"]


def test_sequence_model_errors(seq_dut):
    replies = seq_dut.session("cls hello", "db load 7", "db 01020304050607", "infer 1 0", "db load 640", "db load 641")
    assert "is a sequence model" in replies[0][0]
    assert "not a whole number of int8 steps of 5 features" in replies[3][0]
    assert replies[4] == ["m-[Expecting 640 bytes]"]  # 128 steps of 5 features
    assert "exceed the input buffer of 640 bytes" in replies[5][0]


@pytest.mark.parametrize("bad", ["db 01zz", "db 010", "db 0102030405", "db 01 02", "db load 9999", "db load x"])
def test_a_failed_load_drops_the_input_so_infer_fails(text_dut, bad):
    # A runner that ignores e- lines sends the next chunks and `infer`: it must get an error, not
    # the previous sample's results or an input with a hole in it.
    replies = text_dut.session("db load 4", "db 07000900", "infer 1 0", "db load 4", "db 0700", bad, "db 0900",
                               "infer 1 0", "results")
    assert parse_ints(_field(replies[2], "logits")) == infer_tokens(text_dut.model, [[7, 9]])[0].tolist()
    assert replies[5][0].startswith("e-[")
    assert replies[6] == ["e-[db: no buffer; send db load N first]"]
    assert replies[7] == ["e-[infer: no input loaded; send db load N and db HEX first]"]
    assert replies[8] == ["e-[results: no inference yet]"]


def test_class_probabilities_match_the_oracle_at_every_scale(text_dut, tmp_path):
    # Only the output scale changes the probabilities of the same logits: from nearly uniform
    # (2^-14 per logit step) to one-hot (every other class 2^-16 below or more).
    m = text_dut.model
    ids = [x for x in random_token_ids(m, np.random.default_rng(3), 12, m.max_len) if x]
    want = infer_tokens(m, ids)
    for scale in (2.0 ** -14, 0.0123, 1.0):
        dut = HostDut(dataclasses.replace(m, output_scale=scale, name=f"sm{int(-np.log2(scale))}"), tmp_path)
        cmds = [c for x in ids for c in _load_cmds(_ids(x)) + ["infer 1 0"]]
        replies = [r for r in dut.session(*cmds) if any(x.startswith("m-logits") for x in r)]
        assert [parse_ints(_field(r, "logits")) for r in replies] == want.tolist()
        texts = [_field(r, "results") for r in replies]
        assert texts == [probabilities_text(dut.model, w) for w in want]
        probs = np.array([[float(v) for v in t.split(",")] for t in texts])
        assert np.all(np.abs(probs.sum(axis=1) - 1) <= 1e-5 * len(m.labels) / 2)
        assert np.array_equal(probs.argmax(axis=1), want.argmax(axis=1))


def test_every_byte_sent_is_printable_ascii(text_dut):
    data = b"%".join([b"\xe6\x89\x93\x80\xff", b"db load \xc3\xa9", b"db 0\xe6", b"cls \xe5\xa4\xa9\xe6\xb0\x94",
                      b"sync \x7f\x01\xe6\x89\x93", b"help"]) + b"%"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
    out = subprocess.run([str(text_dut.exe)], input=data, capture_output=True, timeout=60, env=env).stdout
    assert out and all(0x20 <= b < 0x7f or b in (0x0d, 0x0a) for b in out), out


# -- fuzz ------------------------------------------------------------------------------------

WORDS = [b"name", b"profile", b"help", b"timestamp", b"db", b"load", b"print", b"infer", b"results", b"stream",
         b"reset", b"cls", b"info", b"mem", b"sync", b"quit", b"0", b"1", b"2", b"20", b"21", b"4294967296",
         b"-1", b"ff", b"0100", b"f401", b"zz", b"\xe6\x89\x93", b"\x00", b"\xff", b"%%", b" ", b"\r\n"]


def _fuzz_command(rng: np.random.Generator) -> bytes:
    kind = rng.integers(0, 4)
    if kind == 0:  # random bytes, '%' excluded so the command count stays known
        return bytes(b for b in rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8) if b != 0x25)
    if kind == 1:  # grammar-shaped word salad
        return b" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=int(rng.integers(1, 5)))).replace(b"%", b"")
    if kind == 2:  # a valid load/infer with small counts
        n = int(rng.integers(1, 11))
        ids = rng.integers(0, 520, size=n).astype("<u2").tobytes()
        return b"db load %d%%db %s%%infer %d %d" % (2 * n, ids.hex().encode(), rng.integers(1, 3), rng.integers(0, 2))
    return b"x" * int(rng.integers(500, 530))  # around the line limit


def test_fuzz_random_and_adversarial_input_never_crashes(text_dut):
    rng = np.random.default_rng(2024)
    (help_lines,) = text_dut.session("help")
    deadline, batches = time.monotonic() + FUZZ_SECONDS, 0
    while time.monotonic() < deadline:
        data = b"%".join(_fuzz_command(rng) for _ in range(300)) + b"%"
        lines = text_dut.raw(data)
        assert lines.count("m-ready") == data.count(b"%") + 1  # one m-ready per command, plus the banner
        assert {line for line in lines if not line.startswith(("m-", "e-["))} <= set(help_lines)
        batches += 1
    assert batches >= 3


# -- class probabilities on any logits -------------------------------------------------------

def test_class_probabilities_are_bit_exact_on_edge_logits(tmp_path):
    """dut.c's out_results() on logits no model produces on demand: the int16 extremes, ties,
    one-hot rows, 1,024 classes, output scales from 2^-30 to the saturated multiplier."""
    _need_gcc()
    exe = tmp_path / "softmax"
    subprocess.run(["gcc", "-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *SANITIZE,
                    "-I", str(ROOT / "firmware/lib/harness"), str(ROOT / "tests/firmware/host/softmax_driver.c"),
                    str(ROOT / "firmware/lib/harness/ts_listen.c"),
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    rng = np.random.default_rng(9)
    lo, hi = -32768, 32767
    for classes in (1, 2, 15, 1024):
        rows = [np.full(classes, v) for v in (lo, 0, hi)]
        rows += [np.where(np.arange(classes) == classes // 2, hi, lo), np.where(np.arange(classes) == 0, lo, hi)]
        rows += list(rng.integers(lo, hi + 1, size=(20, classes))) + list(rng.integers(-40, 40, size=(20, classes)))
        rows = np.asarray(rows, dtype=np.int64)
        for scale in (2.0 ** -30, 2.0 ** -14, 0.0006, 0.05, 0.69, 4.0):
            model = dataclasses.replace(random_model(1, num_classes=classes), output_scale=scale)
            mult = softmax_multiplier(scale)
            stdin = f"{classes} {mult}\n" + "\n".join(" ".join(map(str, r)) for r in rows) + "\n"
            env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
            p = subprocess.run([str(exe)], input=stdin.encode(), capture_output=True, timeout=60, env=env)
            assert p.returncode == 0 and not p.stderr, p.stderr.decode()[-2000:]
            lines = p.stdout.decode().split("\r\n")[:-1]
            assert lines[0::2] == [f"m-results-[{probabilities_text(model, r)}]" for r in rows], (classes, scale)
            assert lines[1::2] == [f"m-logits-[{','.join(map(str, r))}]" for r in rows]


def test_the_probability_spec_follows_a_float_softmax():
    rng = np.random.default_rng(4)
    for scale in (2.0 ** -14, 0.0006, 0.05):
        model = dataclasses.replace(random_model(1, num_classes=15), output_scale=scale)
        z = rng.integers(-32768, 32768, size=(200, 15))
        z[:100] //= 64  # close logits too
        p = softmax_fixed(model, z) / 1e5
        f = np.exp((z - z.max(axis=1, keepdims=True)) * scale)
        f /= f.sum(axis=1, keepdims=True)
        assert np.abs(p - f).max() < 2e-4
        assert np.all(np.abs(p.sum(axis=1) - 1) <= 7.5e-5)
