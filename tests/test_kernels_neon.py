"""The AArch64 NEON kernels ("neon": SMULL/SMLAL + SADALP, "neon-dot": SDOT) cross-compiled with
aarch64-linux-gnu-gcc and run under qemu-aarch64 on a core with exactly the variant's features:
every step's state of the default model and of random models (sizes not multiples of 4, 8 or 16,
extreme weights, every requantization form) equals the integer oracle; a dot-product build traps
on a core without it; the Linux runtime's programs classify like the oracle; the instruction
counter of tinyseek.harness.aarch64 counts exactly. The same for the int4 and binary kernels
(packed rows of every length class, extreme rows, both variants and their selection)."""
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_kernels_mcu import _with_head_of
from tinyseek.codegen.context import requant_mode
from tinyseek.codegen.render import render
from tinyseek.codegen.verify import HostDriver
from tinyseek.harness.aarch64 import VARIANTS, build_bench, count_marked, measure_aarch64
from tinyseek.quant.reference import infer_sequences, infer_tokens
from tinyseek.quant.synthetic import random_model, random_sequences, random_token_ids
from tinyseek.student.tokenizer import HashTokenizer

ROOT = Path(__file__).resolve().parents[1]
CC = "aarch64-linux-gnu-gcc"
TOOLS = {CC: "sudo apt-get install -y gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
         "qemu-aarch64": "sudo apt-get install -y qemu-user"}
SYSROOT = "/usr/aarch64-linux-gnu"  # libc6-arm64-cross: the loader and libc of dynamic programs
NEON = ["neon-dot", "neon"]
TEXTS = ["turn on the kitchen lights", "打开客厅的灯", "", "ÄÖÜ straße 😀 x", "word " * 80,
         "\xff not utf8".encode("latin-1")]


def _driver(model, lib, work, variant):
    v = VARIANTS[variant]
    return HostDriver(model, lib, work, cc=CC, cflags=("-static", *v.cflags), runner=("qemu-aarch64", "-cpu", v.cpu))


@pytest.mark.parametrize("variant", NEON)
def test_default_model_is_bit_exact_after_every_step(variant, default_lib, tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    model, lib, texts = default_lib
    result = _driver(model, lib, tmp_path, variant).run(texts + TEXTS, every_step=True)
    assert result.bitexact, result.first_mismatch
    assert result.c_token_ids_match and result.samples == len(texts) + len(TEXTS)


def _clip_weights(model):
    """No weight -128: the "neon" kernel adds two products in int16 (the SMLAL2 path); extreme
    inputs put those sums at their limits (+-32512)."""
    for L in model.layers:
        L.w_x, L.w_h = np.maximum(L.w_x, -127), np.maximum(L.w_h, -127)
    model.head.w = np.maximum(model.head.w, -127)
    model.validate()
    return model


def _models():
    return [
        # Rows of 7 and 6 bytes (scalar), 13 (8 + 8 bytes); shifts anywhere in 1..62 (int64).
        random_model(41, kind="sequence", hidden=[13, 6], input_size=7, num_classes=5, weights="extreme",
                     scales="mixed", name="nseq"),
        # 3, 9 and 17 (a 16-byte chunk and a 1-byte tail); tiny scales ("post" form), with a
        # realistic head so that the logits do not all round to 0.
        _with_head_of(random_model(42, kind="text", hidden=[3, 17], input_size=9, num_classes=6, vocab_size=300,
                                   max_len=12, weights="extreme", scales="tiny", name="ntxt"),
                      random_model(42, hidden=[3, 17], input_size=9, num_classes=6)),
        # 33 = 2 chunks + 1 byte; powers of two: rounding ties, "pre" and "post" rows in one matrix.
        random_model(43, kind="sequence", hidden=[33], input_size=21, num_classes=4, scales="pow2", name="npow"),
        # 300 inputs: the looped 64-byte blocks plus a 12-byte tail; extreme biases.
        _with_head_of(random_model(44, kind="sequence", hidden=[16, 8], input_size=300, num_classes=3,
                                   weights="extreme", biases="extreme", scales="mixed", name="nwide"),
                      random_model(44, hidden=[16, 8], input_size=300, num_classes=3)),
        # Rows of 48, 16 and 32 bytes in both layers: neon-dot's row-interleaved layout (SDOT by
        # element), extreme weights and inputs.
        random_model(48, kind="sequence", hidden=[16, 32], input_size=48, num_classes=5, weights="extreme",
                     name="nilv"),
        # Realistic scales ("pre"), no -128 weights: the int16 pair sums of "neon".
        _clip_weights(random_model(45, kind="sequence", hidden=[40], input_size=64, num_classes=9,
                                   weights="extreme", name="npair")),
    ]


def test_the_models_cover_every_requant_form_and_row_length():
    modes, lengths = set(), set()
    for m in _models():
        for L in m.layers:
            modes |= {requant_mode(L.w_x, L.nx), requant_mode(L.w_h, L.nh)}
            lengths |= {L.input_size, L.hidden}
        modes.add(requant_mode(m.head.w, m.head.n, m.head.bias))
    assert {"pre", "post", "mixed", "exact"} <= modes  # "pre32": the default model
    assert {n % 16 for n in lengths} >= {0, 1, 3, 5, 7, 12, 13} and max(lengths) > 256 and min(lengths) < 8


def _inputs(model, rng):
    if model.kind == "text":
        return TEXTS, random_token_ids(model, rng, len(TEXTS), 24)
    xs = np.concatenate([random_sequences(model, rng, 4, 16), random_sequences(model, rng, 4, 16, extreme=True)])
    return list(xs), None


@pytest.mark.slow
@pytest.mark.parametrize("variant", NEON)
def test_random_models_are_bit_exact_after_every_step(variant, tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    rng = np.random.default_rng(8)
    for model in _models():
        inputs, ids = _inputs(model, rng)
        render(model, tmp_path / model.name)
        result = _driver(model, tmp_path / model.name, tmp_path / f"w-{model.name}", variant).run(
            inputs, token_ids=ids, every_step=True)
        assert result.bitexact, (model.name, result.first_mismatch)
        # Saturated outputs would hide a wrong sum: the inputs must tell the outputs apart.
        assert len({tuple(row) for row in result.logits.tolist()}) > len(inputs) // 2, model.name


def test_a_tail_counted_twice_is_caught(tmp_path, need_tools):
    """The check can fail: tails that keep the bytes the full chunks already counted."""
    need_tools(TOOLS, pio=False)
    model = _models()[2]
    render(model, tmp_path / "lib")
    src = tmp_path / "lib" / f"{model.name}_kernels_neon.c"
    text, n = re.subn(r"(keep\[16\] = \{)[^}]*\}", r"\1 " + ", ".join(["-1"] * 16) + " }", src.read_text())
    assert n > 0
    src.write_text(text)
    inputs, _ = _inputs(model, np.random.default_rng(8))
    result = _driver(model, tmp_path / "lib", tmp_path / "w", "neon-dot").run(inputs, every_step=True)
    assert not result.bitexact and result.mismatches == len(inputs)


@pytest.mark.parametrize("flags, kernel", [
    (["-march=armv8-a"], "neon"), (["-mcpu=cortex-a53"], "neon"), (["-mcpu=cortex-a72"], "neon"),
    (["-march=armv8.2-a"], "neon"), (["-march=armv8.2-a+dotprod"], "neon-dot"), (["-mcpu=cortex-a55"], "neon-dot"),
    (["-mcpu=cortex-a76"], "neon-dot"), (["-mcpu=cortex-a76", "-DTINYSEEK_KERNEL_PORTABLE"], "c"),
])
def test_the_variant_follows_the_cores_features(flags, kernel, default_lib, tmp_path, need_tools):
    need_tools({CC: TOOLS[CC]}, pio=False)
    model, lib, _ = default_lib
    src = tmp_path / "probe.c"
    src.write_text(f'#include "{model.name}_kernels.h"\nconst char *probe = {model.name.upper()}_KERNEL;\n')
    out = subprocess.run([CC, *flags, "-E", "-I", str(lib), str(src)], capture_output=True, text=True,
                         check=True).stdout
    assert f'probe = "{kernel}"' in out


def test_a_dot_product_build_traps_on_a_core_without_it(default_lib, tmp_path, need_tools):
    """Cortex-A53 (Armv8.0, Raspberry Pi 3) has no SDOT: the neon-dot build must not run there."""
    need_tools(TOOLS, pio=False)
    model, lib, texts = default_lib
    exe, data = tmp_path / "bench", tmp_path / "in.bin"
    build_bench(lib, "neon-dot", exe)
    ids = HashTokenizer(model.vocab_size, model.max_len).encode(texts[0])
    data.write_bytes(b"TSBI" + np.array([1, len(ids)], "<u4").tobytes() + np.array(ids, "<u2").tobytes())
    ok = subprocess.run(["qemu-aarch64", "-cpu", "cortex-a76", str(exe), str(data)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("kernel neon-dot\n")
    trap = subprocess.run(["qemu-aarch64", "-cpu", "cortex-a53", str(exe), str(data)], capture_output=True)
    assert trap.returncode in (-signal.SIGILL, 128 + signal.SIGILL)


def _make(lib, build, *flags):
    subprocess.run(["make", "-s", "-C", str(ROOT / "runtime" / "linux"), f"MODEL_DIR={lib}", f"BUILD={build}",
                    f"CC={CC}", *flags], check=True, capture_output=True, text=True)


def _classify_lines(stdout):
    rows = [line.split("\t") for line in stdout.splitlines()]
    return [(label, int(cls), [int(v) for v in logits.split()]) for label, cls, logits in rows]


def test_the_runtime_classifies_texts_like_the_oracle(default_lib, tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    model, lib, texts = default_lib
    _make(lib, tmp_path, "CFLAGS=-O2 -march=armv8.2-a+dotprod")
    assert (tmp_path / f"lib{model.name}.so").is_file()
    run = ["qemu-aarch64", "-cpu", "cortex-a76", "-L", SYSROOT, str(tmp_path / "classify")]
    some = texts[:40]
    out = subprocess.run(run, input="\n".join(some) + "\n", capture_output=True, text=True, check=True).stdout
    tok = HashTokenizer(model.vocab_size, model.max_len)
    want = infer_tokens(model, [tok.encode(t) for t in some])
    got = _classify_lines(out)
    assert [g[2] for g in got] == want.tolist()
    assert [g[1] for g in got] == np.argmax(want, axis=1).tolist()
    assert [g[0] for g in got] == [model.labels[k] for k in np.argmax(want, axis=1)]
    # The words of the command line are one text.
    one = subprocess.run(run + ["turn", "on", "the", "lights"], capture_output=True, text=True, check=True).stdout
    assert _classify_lines(one)[0][2] == infer_tokens(model, [tok.encode("turn on the lights")])[0].tolist()


def test_the_runtime_classifies_a_feature_file(tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    model = random_model(46, kind="sequence", hidden=[24], input_size=5, num_classes=4, name="rseq")
    render(model, tmp_path / "lib")
    _make(tmp_path / "lib", tmp_path / "build")  # the compiler's default: Armv8-A, "neon"
    x = random_sequences(model, np.random.default_rng(3), 1, 30)[0]
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    run = ["qemu-aarch64", "-cpu", "cortex-a53", "-L", SYSROOT, str(tmp_path / "build" / "classify")]
    out = subprocess.run(run + [str(tmp_path / "x.bin")], capture_output=True, text=True, check=True).stdout
    assert _classify_lines(out)[0][2] == infer_sequences(model, x[None])[0].tolist()
    (tmp_path / "bad.bin").write_bytes(x.tobytes()[:-1])
    bad = subprocess.run(run + [str(tmp_path / "bad.bin")], capture_output=True, text=True)
    assert bad.returncode == 2 and "feature vectors" in bad.stderr


def test_the_counter_counts_every_instruction_between_the_marks(tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    src = tmp_path / "nops.c"
    src.write_text("void tinyseek_bench_begin(void) __attribute__((noinline));\n"
                   "void tinyseek_bench_end(void) __attribute__((noinline));\n"
                   "void tinyseek_bench_begin(void) { __asm__ volatile(\"nop\"); }\n"
                   "void tinyseek_bench_end(void) { __asm__ volatile(\"\"); }\n"
                   "int main(void) {\n"
                   "  tinyseek_bench_begin(); __asm__ volatile(\".rept 100\\n\\tnop\\n\\t.endr\"); tinyseek_bench_end();\n"
                   "  __asm__ volatile(\".rept 50\\n\\tnop\\n\\t.endr\");\n"
                   "  tinyseek_bench_begin(); __asm__ volatile(\".rept 7\\n\\tnop\\n\\t.endr\"); tinyseek_bench_end();\n"
                   "  return 0;\n}\n")
    subprocess.run([CC, "-O2", "-static", str(src), "-o", str(tmp_path / "nops")], check=True)
    segments, total, _ = count_marked([str(tmp_path / "nops")], cpu="cortex-a53")
    assert segments == [101, 8]  # the nops and the call (BL) of the end mark; not the 50 outside
    assert total > 1000  # the C library's start-up and exit count too


def test_instruction_counts_of_the_three_variants(tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    model = random_model(47, kind="text", hidden=[32], input_size=16, num_classes=5, vocab_size=200, max_len=40,
                         name="cnt")
    render(model, tmp_path / "lib")
    ids = [[5, 9, 11], [5, 9, 11], [5, 9, 11] * 4, []]
    want = infer_tokens(model, ids).tolist()
    medians = {}
    for variant in ("c", "neon", "neon-dot"):
        out = measure_aarch64(tmp_path / "lib", ids, variant, work_dir=tmp_path / variant)
        per = out["latency"]["per_input"]
        assert out["model"]["kernel"] == variant and out["logits"] == want
        assert out["memory"]["code"] > 0 and out["memory"]["const"] >= model.embedding.size
        assert per[0] == per[1] < per[2] and 0 < per[3] < per[0]  # deterministic, grows with the steps
        medians[variant] = per[2] - per[0]  # 9 steps
    assert medians["c"] > medians["neon"] > medians["neon-dot"]


# -- int4 and binary gate weights (docs/kernels.md, "Low-bit weights") ------------------------

def _extreme_rows(model):
    """Whole rows at the extremes in every layer: int4 unit 0 all -8, all 7 and alternating
    -8/7; binary unit 0 all +1 and all -1 (and unit 1's gate i +1 but for the last column)."""
    for L in model.layers:
        for w in (L.w_x, L.w_h):
            if model.weights == "int4":
                w[0], w[1] = -8, 7
                w[2] = np.where(np.arange(w.shape[1]) % 2, 7, -8)
            else:
                w[0], w[1] = 1, -1
                if w.shape[0] > 4:
                    w[4], w[4, -1] = 1, -1
    model.validate()
    return model


def _low_bit_models(width):
    """Row lengths through every path of the low-bit NEON kernels. int4 (rows of ceil(n / 2)
    bytes): rows under 16 bytes (7, 9, 13, 17), 16 bytes with a padded x (31), 16 and 32 bytes
    exactly (32, 64), a 16-byte chunk and a tail window (45), 7 chunks in int16 (200: 28
    products of up to 1024 per lane), the looped chunks (300). binary (16 columns per 2 bytes):
    a row of one byte (7), odd byte counts (17, 45), the looped chunks (150), the int32 reduction
    (600) and chunks widened one by one (2050); heads of 3 (scalar), 5 (the last four again),
    8 and 15 classes. Two layers, hidden sizes not multiples of 4 or 8, extreme rows."""
    text = random_model(52, kind="text", hidden=[17, 32], input_size=9, num_classes=5, vocab_size=300, max_len=12,
                        weights="extreme", scales="mixed", width=width, name="lbtxt")
    models = [
        _extreme_rows(random_model(51, kind="sequence", hidden=[13, 6], input_size=45, num_classes=5,
                                   weights="extreme", scales="mixed", width=width, name="lbseq")),
        _extreme_rows(_with_head_of(text, random_model(52, hidden=[17, 32], input_size=9, num_classes=5,
                                                       width=width)) if width == "int4" else text),
        random_model(53, kind="sequence", hidden=[31, 7], input_size=300, num_classes=3, scales="pow2", width=width,
                     name="lbwide") if width == "int4" else
        random_model(58, kind="sequence", hidden=[150, 7], input_size=600, num_classes=3, scales="mixed", width=width,
                     name="lbwide"),
        # The default shape: hidden 64, embedding 32, 15 classes.
        random_model(54, kind="text", hidden=[64], input_size=32, num_classes=15, vocab_size=1024, max_len=24,
                     width=width, name="lbdef"),
    ]
    if width == "int4":
        models.append(_extreme_rows(random_model(55, kind="sequence", hidden=[4], input_size=200, num_classes=8,
                                                 weights="extreme", width=width, name="lb200")))
    else:
        models.append(_extreme_rows(random_model(55, kind="sequence", hidden=[4], input_size=2050, num_classes=8,
                                                 width=width, name="lb2050")))
    return models



def test_the_low_bit_models_cover_every_path():
    for width, per_byte, chunk in (("int4", 2, 32), ("binary", 8, 16)):
        lengths, classes = set(), set()
        for m in _low_bit_models(width):
            lengths |= {n for L in m.layers for n in (L.input_size, L.hidden)}
            classes.add(m.num_classes)
        row_bytes = {-(-n // per_byte) for n in lengths}
        chunks = {-(-n // chunk) for n in lengths}
        if width == "int4":  # short rows, exact 16/32-byte rows, tail windows, 7 chunks, the loop
            assert {5, 16, 32, 23, 100, 150} <= row_bytes and any(n % 2 for n in lengths)
            assert {1, 2, 7, 10} <= chunks
        else:  # one byte, odd byte counts, the loop (> 8), int32 reduction (> 31), per chunk (> 127)
            assert 1 in row_bytes and any(b % 2 and b > 1 for b in row_bytes)
            assert max(chunks) > 127 and any(31 < c <= 127 for c in chunks) and any(8 < c <= 31 for c in chunks)
            assert {3, 5, 8, 15} <= classes

def _low_bit_inputs(model, rng):
    if model.kind == "text":
        ids = random_token_ids(model, rng, len(TEXTS), model.max_len)
        return TEXTS, ids
    F = model.num_features
    xs = [*random_sequences(model, rng, 3, 9), *random_sequences(model, rng, 3, 9, extreme=True),
          np.full((9, F), -128, np.int8), np.full((9, F), 127, np.int8)]
    return xs, None


@pytest.mark.slow
@pytest.mark.parametrize("width", ["int4", "binary"])
@pytest.mark.parametrize("variant", NEON)
def test_low_bit_models_are_bit_exact_after_every_step(width, variant, tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    rng = np.random.default_rng(11)
    for model in _low_bit_models(width):
        inputs, ids = _low_bit_inputs(model, rng)
        render(model, tmp_path / model.name)
        result = _driver(model, tmp_path / model.name, tmp_path / f"w-{model.name}", variant).run(
            inputs, token_ids=ids, every_step=True)
        assert result.bitexact, (model.name, result.first_mismatch)
        assert len({tuple(row) for row in result.logits.tolist()}) > len(inputs) // 3, model.name


@pytest.mark.parametrize("width", ["int4", "binary"])
def test_the_low_bit_kernels_run_on_the_bench_and_beat_the_portable_c(width, tmp_path, need_tools):
    """The bench program reports the NEON variants for both widths (and "c" with
    -DTINYSEEK_KERNEL_PORTABLE), with the oracle's logits and fewer instructions."""
    need_tools(TOOLS, pio=False)
    model = _low_bit_models(width)[3]
    render(model, tmp_path / "lib")
    ids = random_token_ids(model, np.random.default_rng(4), 3, 10)
    want = infer_tokens(model, ids).tolist()
    median = {}
    for variant in ("c", "neon", "neon-dot"):
        out = measure_aarch64(tmp_path / "lib", ids, variant, work_dir=tmp_path / variant)
        assert out["model"]["kernel"] == variant and out["logits"] == want
        median[variant] = out["latency"]["median"]
    assert median["c"] > 3 * median["neon"] > 3 * median["neon-dot"]


def probe_kernel(cc: str, flags: list[str], model, folder: Path) -> str:
    """The variant (<NAME>_KERNEL) the dispatch header picks for `model` under `cc flags`."""
    render(model, folder / "lib")
    src = folder / "probe.c"
    src.write_text(f'#include "{model.name}_kernels.h"\nconst char *probe = {model.name.upper()}_KERNEL;\n')
    out = subprocess.run([cc, *flags, "-E", "-I", str(folder / "lib"), str(src)], capture_output=True, text=True,
                         check=True).stdout
    return re.search(r'probe = "([^"]*)"', out).group(1)


@pytest.mark.parametrize("width", ["int4", "binary"])
@pytest.mark.parametrize("flags, kernel", [
    (["-march=armv8-a"], "neon"), (["-mcpu=cortex-a53"], "neon"), (["-march=armv8.2-a+dotprod"], "neon-dot"),
    (["-mcpu=cortex-a76"], "neon-dot"), (["-mcpu=cortex-a76", "-DTINYSEEK_KERNEL_PORTABLE"], "c"),
    (["-march=armv8-a", "-DTINYSEEK_KERNEL_PORTABLE"], "c"),
])
def test_the_low_bit_variant_follows_the_cores_features(width, flags, kernel, tmp_path, need_tools):
    need_tools({CC: TOOLS[CC]}, pio=False)
    assert probe_kernel(CC, flags, _low_bit_models(width)[0], tmp_path) == kernel


@pytest.mark.parametrize("width, pattern, wrong", [
    # int4: the tail window's x keeps the columns the chunk before counted
    ("int4", r"(keep\[16\] = \{)[^}]*\}", r"\1 " + ", ".join(["-1"] * 16) + " }"),
    # binary: masks tested against the bits of the wrong columns
    ("binary", r"(_bits\[16\] = \{)[^}]*\}", r"\1 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128 }"),
])
def test_a_wrong_low_bit_kernel_is_caught(width, pattern, wrong, tmp_path, need_tools):
    """The checks can fail."""
    need_tools(TOOLS, pio=False)
    model = _low_bit_models(width)[0]
    render(model, tmp_path / "lib")
    src = tmp_path / "lib" / f"{model.name}_kernels_neon.c"
    text, n = re.subn(pattern, wrong, src.read_text())
    assert n > 0
    src.write_text(text)
    inputs, _ = _low_bit_inputs(model, np.random.default_rng(8))
    for variant in NEON:
        result = _driver(model, tmp_path / "lib", tmp_path / f"w-{variant}", variant).run(inputs, every_step=True)
        assert not result.bitexact and result.mismatches >= len(inputs) // 2, variant
