"""The 32-bit Arm NEON kernels ("neon32": VMULL/VMLAL.S8 + VPADAL.S16, ARMv7-A) cross-compiled with
arm-linux-gnueabihf-gcc and run under qemu-arm on a Cortex-A7: every step's state of the default
model and of random models (rows of every length modulo 8, extreme weights, every requantization
form) equals the integer oracle; the variant follows the compiler's target; the Linux runtime
builds for armhf and classifies like the oracle; the instruction counter works on AArch32."""
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_kernels_neon import _inputs, _models
from tinyseek.codegen.render import render
from tinyseek.codegen.verify import HostDriver
from tinyseek.harness.aarch64 import VARIANTS, measure_aarch64
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
