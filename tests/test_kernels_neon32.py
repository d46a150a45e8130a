"""The 32-bit Arm NEON kernels ("neon32": VMULL/VMLAL.S8 + VPADAL.S16, ARMv7-A) cross-compiled with
arm-linux-gnueabihf-gcc and run under qemu-arm on a Cortex-A7: every step's state of the default
model and of random models (rows of every length modulo 8, extreme weights, every requantization
form) equals the integer oracle; the variant follows the compiler's target; the Linux runtime
builds for armhf and classifies like the oracle; the instruction counter works on AArch32. The
same for the int4 and binary kernels (every group kind, loop, segment and reduction of the
neon32 plan, full-scale rows and inputs that reach the int16 bounds, the harness's low-bit
models), and that a wrong tail mask, bit table or bound is caught."""
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_kernels_mcu import _with_head_of
from test_kernels_neon import _extreme_rows, _inputs, _low_bit_inputs, _low_bit_models, _models, probe_kernel
from tinyseek.codegen import context
from tinyseek.codegen.context import neon32_plan, requant_mode
from tinyseek.codegen.render import render
from tinyseek.codegen.verify import HostDriver
from tinyseek.config import load
from tinyseek.harness.aarch64 import VARIANTS, low_bit_model, measure_aarch64
from tinyseek.harness.aarch64 import main as aarch64_main
from tinyseek.quant.reference import infer_tokens
from tinyseek.quant.synthetic import random_model
from tinyseek.student.tokenizer import HashTokenizer

ROOT = Path(__file__).resolve().parents[1]
CC = "arm-linux-gnueabihf-gcc"
TOOLS = {CC: "sudo apt-get install -y gcc-arm-linux-gnueabihf libc6-dev-armhf-cross",
         "qemu-arm": "sudo apt-get install -y qemu-user"}
SYSROOT = "/usr/arm-linux-gnueabihf"


def _driver(model, lib, work, variant="neon32"):
    v = VARIANTS[variant]
    return HostDriver(model, lib, work, cc=CC, cflags=("-static", *v.cflags), runner=("qemu-arm", "-cpu", v.cpu))


def test_default_model_is_bit_exact_after_every_step(default_lib, tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    model, lib, texts = default_lib
    result = _driver(model, lib, tmp_path).run(texts, every_step=True)
    assert result.bitexact, result.first_mismatch
    assert result.c_token_ids_match and result.samples == len(texts)


@pytest.mark.slow
def test_random_models_are_bit_exact_after_every_step(tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    rng = np.random.default_rng(8)
    lengths = set()
    for model in _models():
        inputs, ids = _inputs(model, rng)
        lengths |= {n % 8 for L in model.layers for n in (L.input_size, L.hidden)}
        render(model, tmp_path / model.name)
        result = _driver(model, tmp_path / model.name, tmp_path / f"w-{model.name}").run(
            inputs, token_ids=ids, every_step=True)
        assert result.bitexact, (model.name, result.first_mismatch)
        assert len({tuple(row) for row in result.logits.tolist()}) > len(inputs) // 2, model.name
    assert lengths >= {0, 1, 3, 4, 5, 6, 7}  # whole chunks and scalar tails


def test_a_wrong_tail_is_caught(tmp_path, need_tools):
    """The check can fail: a kernel that drops the scalar ends of rows not a multiple of 8."""
    need_tools(TOOLS, pio=False)
    model = _models()[2]
    render(model, tmp_path / "lib")
    src = tmp_path / "lib" / f"{model.name}_kernels_neon32.c"
    text = src.read_text()
    assert "t[g] += w[g * n + k] * x[k];" in text
    src.write_text(text.replace("t[g] += w[g * n + k] * x[k];", "(void)g;"))
    inputs, _ = _inputs(model, np.random.default_rng(8))
    result = _driver(model, tmp_path / "lib", tmp_path / "w").run(inputs, every_step=True)
    assert not result.bitexact


@pytest.mark.parametrize("flags, kernel", [
    (["-march=armv7-a", "-mfpu=neon"], "neon32"), (["-mcpu=cortex-a7", "-mfpu=neon-vfpv4"], "neon32"),
    (["-march=armv7-a", "-mfpu=vfpv3-d16"], "c"), (["-march=armv7-a", "-mfpu=neon", "-DTINYSEEK_KERNEL_PORTABLE"], "c"),
])
def test_the_variant_follows_the_cores_features(flags, kernel, default_lib, tmp_path, need_tools):
    need_tools({CC: TOOLS[CC]}, pio=False)
    model, lib, _ = default_lib
    src = tmp_path / "probe.c"
    src.write_text(f'#include "{model.name}_kernels.h"\nconst char *probe = {model.name.upper()}_KERNEL;\n')
    out = subprocess.run([CC, *flags, "-E", "-I", str(lib), str(src)], capture_output=True, text=True,
                         check=True).stdout
    assert f'probe = "{kernel}"' in out


def test_the_runtime_builds_for_armhf_and_classifies_like_the_oracle(default_lib, tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    model, lib, texts = default_lib
    subprocess.run(["make", "-s", "-C", str(ROOT / "runtime" / "linux"), f"MODEL_DIR={lib}", f"BUILD={tmp_path}",
                    f"CC={CC}", "CFLAGS=-O2 -mfpu=neon"], check=True, capture_output=True, text=True)
    run = ["qemu-arm", "-cpu", "cortex-a7", "-L", SYSROOT, str(tmp_path / "classify")]
    some = texts[:30]
    out = subprocess.run(run, input="\n".join(some) + "\n", capture_output=True, text=True, check=True).stdout
    tok = HashTokenizer(model.vocab_size, model.max_len)
    want = infer_tokens(model, [tok.encode(t) for t in some])
    assert [[int(v) for v in line.split("\t")[2].split()] for line in out.splitlines()] == want.tolist()


def test_instruction_counts_portable_and_neon32(tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    model = random_model(47, kind="text", hidden=[32], input_size=16, num_classes=5, vocab_size=200, max_len=40,
                         name="cnt")
    render(model, tmp_path / "lib")
    ids = [[5, 9, 11], [5, 9, 11], [5, 9, 11] * 4]
    want = infer_tokens(model, ids).tolist()
    steps = {}
    for variant, kernel in (("armv7-c", "c"), ("neon32", "neon32")):
        out = measure_aarch64(tmp_path / "lib", ids, variant, work_dir=tmp_path / variant)
        per = out["latency"]["per_input"]
        assert out["model"]["kernel"] == kernel and out["logits"] == want and out["env"] == "qemu-arm"
        assert per[0] == per[1] < per[2]
        steps[variant] = per[2] - per[0]
    assert steps["armv7-c"] > steps["neon32"]


# -- int4 and binary gate weights (docs/kernels.md, "Low-bit weights") ------------------------

def _shifts(model, layer, nx, nh):
    """Every requantization shift of a layer's W_x and W_h set to nx and nh."""
    L = model.layers[layer]
    L.nx, L.nh = np.full_like(L.nx, nx), np.full_like(L.nh, nh)
    model.validate()
    return model


def _low_bit_models_n32(width):
    """The AArch64 low-bit models (test_kernels_neon), the harness's (the committed float student
    quantized at the width: shifts of 26 to 28) and one more per width for the paths only the
    neon32 plan has. int4: rows of 8 bytes (16 columns), a 16-byte tail window (50: 25 bytes),
    and 14 and 8 products per int16 lane, reduced with one VPADD level in int16 (100 and 50
    columns), at full scale; "pre32" and "post" in one layer. binary: a looped run of 8 VLD4
    groups and an odd byte (520 columns), 33 VPADAL steps per lane, reduced with one level in
    int16, at full scale; "pre" (every n 28) and "pre32" in one layer, "post" in the next."""
    if width == "int4":
        extra = _shifts(random_model(61, kind="sequence", hidden=[50, 16], input_size=100, num_classes=7,
                                     weights="extreme", scales="mixed", width=width, name="lb32a"), 1, 32, 40)
    else:
        extra = _shifts(_shifts(random_model(62, kind="sequence", hidden=[40, 6], input_size=520, num_classes=4,
                                             scales="mixed", width=width, name="lb32b"), 0, 28, 32), 1, 33, 34)
        extra = _with_head_of(extra, random_model(62, hidden=[40, 6], input_size=520, num_classes=4, width=width))
    return [*_low_bit_models(width), low_bit_model(ROOT / "models" / "intents", load(), width), _extreme_rows(extra)]


def _plan_paths(models):
    """The neon32 plan's group kinds, reductions, loops and split rows, and the requantization
    forms of the layers the 32-bit path takes (mode, every n <= 31)."""
    kinds, reduce, fast = set(), set(), set()
    loops = segments = 0
    for m in models:
        for L in m.layers:
            for n in (L.input_size, L.hidden):
                plan = neon32_plan(m.weights, n)
                kinds |= {g["kind"] for g in plan["groups"]}
                reduce |= {s["reduce"] for s in plan["segments"]}
                loops += plan["loops"]
                segments += len(plan["segments"]) > 1
            modes = [(requant_mode(w, nn), bool(nn.max() <= 31)) for w, nn in ((L.w_x, L.nx), (L.w_h, L.nh))]
            if all(mode in ("pre32", "pre", "post") for mode, _ in modes):
                fast |= set(modes)
    return kinds, reduce, fast, loops, segments


def test_the_low_bit_models_cover_every_neon32_path():
    for width, every in (("int4", {"lanes", "d8", "pair8", "q16", "w8", "w16"}), ("binary", {"h4", "h2", "h1", "b1"})):
        kinds, reduce, fast, loops, segments = _plan_paths(_low_bit_models_n32(width))
        assert kinds == every, width
        assert reduce == {"p16", "p32", "w32"} and loops and segments, width
        assert {("pre", True), ("pre", False), ("pre32", False), ("post", False)} <= fast, (width, fast)


@pytest.mark.parametrize("width", ["int4", "binary"])
def test_low_bit_models_are_bit_exact_after_every_step(width, tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    rng = np.random.default_rng(11)
    for model in _low_bit_models_n32(width):
        inputs, ids = _low_bit_inputs(model, rng)
        render(model, tmp_path / model.name)
        assert "_KERNEL_NEON32 1" in (tmp_path / model.name / f"{model.name}_kernels.h").read_text()
        result = _driver(model, tmp_path / model.name, tmp_path / f"w-{model.name}").run(
            inputs, token_ids=ids, every_step=True)
        assert result.bitexact, (model.name, result.first_mismatch)
        assert len({tuple(row) for row in result.logits.tolist()}) > len(inputs) // 3, model.name


@pytest.mark.parametrize("width", ["int4", "binary"])
@pytest.mark.parametrize("flags, kernel", [
    (["-march=armv7-a", "-mfpu=neon"], "neon32"), (["-mcpu=cortex-a7", "-mfpu=neon-vfpv4"], "neon32"),
    (["-march=armv7-a", "-mfpu=vfpv3-d16"], "c"), (["-march=armv7-a", "-mfpu=neon", "-DTINYSEEK_KERNEL_PORTABLE"], "c"),
    (["-march=armv7-a", "-mfpu=neon", "-mbig-endian"], "c"),
])
def test_the_low_bit_variant_follows_the_cores_features(width, flags, kernel, tmp_path, need_tools):
    need_tools({CC: TOOLS[CC]}, pio=False)
    assert probe_kernel(CC, flags, _low_bit_models(width)[0], tmp_path) == kernel


@pytest.mark.parametrize("width, pattern, wrong", [
    # int4: the tail windows' x keeps the columns the chunk before counted
    ("int4", r"(_keep_n32\[32\] = \{)[^}]*\}", r"\1 " + ", ".join(["-1"] * 32) + " }"),
    # binary: masks tested against the bits of the wrong columns
    ("binary", r"(_bits_n32\[32\] = \{)[^}]*\}",
     r"\1 " + ", ".join(map(str, [1, 2, 4, 8, 16, 32, 64, 128] * 4)) + " }"),
])
def test_a_wrong_low_bit_kernel_is_caught(width, pattern, wrong, tmp_path, need_tools):
    """The checks can fail."""
    need_tools(TOOLS, pio=False)
    model = _low_bit_models(width)[0]
    render(model, tmp_path / "lib")
    src = tmp_path / "lib" / f"{model.name}_kernels_neon32.c"
    text, n = re.subn(pattern, wrong, src.read_text())
    assert n == 1
    src.write_text(text)
    inputs, _ = _low_bit_inputs(model, np.random.default_rng(8))
    result = _driver(model, tmp_path / "lib", tmp_path / "w").run(inputs, every_step=True)
    assert not result.bitexact and result.mismatches >= len(inputs) // 2


@pytest.mark.parametrize("width", ["int4", "binary"])
def test_the_int16_bounds_are_reached(width, tmp_path, need_tools, monkeypatch):
    """The full-scale rows and inputs reach the int16 lanes' bounds the plan relies on: with half
    the true bound per term, it keeps twice the terms in int16 and the results go wrong."""
    need_tools(TOOLS, pio=False)
    monkeypatch.setitem(context.NEON32_UNIT, width, context.NEON32_UNIT[width] // 2)
    model = _low_bit_models_n32(width)[-1]
    render(model, tmp_path / "lib")
    inputs, _ = _low_bit_inputs(model, np.random.default_rng(8))
    result = _driver(model, tmp_path / "lib", tmp_path / "w").run(inputs, every_step=True)
    assert not result.bitexact


@pytest.mark.parametrize("width", ["int4", "binary"])
def test_the_low_bit_kernels_run_on_the_bench_and_beat_the_portable_c(width, tmp_path, need_tools):
    """The committed float student quantized post-training at the width (what `python -m
    tinyseek.harness.aarch64 --weights W` measures): the bench program reports neon32 (and "c"
    with -DTINYSEEK_KERNEL_PORTABLE), the oracle's logits and several times fewer instructions."""
    need_tools(TOOLS, pio=False)
    model = low_bit_model(ROOT / "models" / "intents", load(), width)
    assert model.weights == width and model.layers[0].hidden == 64
    render(model, tmp_path / "lib")
    tok = HashTokenizer(model.vocab_size, model.max_len)
    ids = [tok.encode(t) for t in ("turn on the kitchen lights", "打开客厅的灯", "set an alarm for seven")]
    want = infer_tokens(model, ids).tolist()
    median = {}
    for variant, kernel in (("armv7-c", "c"), ("neon32", "neon32")):
        out = measure_aarch64(tmp_path / "lib", ids, variant, work_dir=tmp_path / variant)
        assert out["model"]["kernel"] == kernel and out["logits"] == want and out["env"] == "qemu-arm"
        median[variant] = out["latency"]["median"]
    assert median["armv7-c"] > 4 * median["neon32"]


def test_the_harness_measures_a_low_bit_model(tmp_path, need_tools):
    need_tools(TOOLS, pio=False)
    aarch64_main(["--weights", "binary", "--samples", "2", "--variants", "neon32", "--work", str(tmp_path)])
    out = json.loads((tmp_path / "aarch64-binary.json").read_text())
    assert out["weights"] == "binary" and out["samples"] == 2
    v = out["variants"]["neon32"]
    assert v["median"] > 0 and v["matrix"]["width"] == "binary" and v["matrix"]["instructions_per_mac_matrix"] > 0
