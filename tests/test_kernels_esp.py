"""The ESP32/ESP32-S3 kernels ("esp-dsp": ESP-DSP's dsps_dotprod_f32 on int8 data) compiled on the
host with gcc, the variant forced by -DTINYSEEK_TEST_FORCE_ESP_DSP and ESP-DSP replaced by a model
of its three implementations' operation orders (tests/firmware/esp_dsp_model): every step's state
and every logit of the default model and of random models (sizes not multiples of 4, extreme
weights, every requantization form, rows long enough to be split into chunks) equals the integer
oracle. No Xtensa compiler here: the real builds are checked on a machine with PlatformIO's
registry (docs/kernels.md)."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_kernels_mcu import _models as _mcu_models
from test_kernels_mcu import _with_head_of
from tinyseek.codegen.context import ESP_EXACT_LIMIT, build_context, esp_chunks
from tinyseek.codegen.identifiers import CodegenError
from tinyseek.codegen.render import render
from tinyseek.codegen.verify import HostDriver, VerifyError
from tinyseek.quant.synthetic import random_model, random_sequences, random_token_ids

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "tests" / "firmware" / "esp_dsp_model"
MODEL_SOURCE = MODEL_DIR / "dsps_dotprod_model.c"
# ESP-DSP's implementations of dsps_dotprod_f32 (dsps_dotprod_model.c): their summation orders.
ORDERS = {"ansi": ("-DESP_DSP_MODEL=1",),
          # The ESP32 loop reads one element past its second operand: a sanitizer build catches a
          # kernel that has no room for it.
          "ae32": ("-DESP_DSP_MODEL=2", "-fsanitize=address,undefined,float-cast-overflow",
                   "-fno-sanitize-recover=all"),
          # Every call must reach the S3's 4-lane path (lengths of multiples of 4, 16-byte aligned).
          "aes3": ("-DESP_DSP_MODEL=3", "-DESP_DSP_MODEL_REQUIRE_VECTOR")}
TEXTS = ["turn on the kitchen lights", "打开客厅的灯", "", "ÄÖÜ straße 😀 x", "word " * 80]


def _driver(model, lib, work, order):
    """The library in `lib` with the ESP variant forced and the ESP-DSP model of `order` compiled
    and linked in (the library folder is left as rendered)."""
    cflags = ("-DTINYSEEK_TEST_FORCE_ESP_DSP", "-I", str(MODEL_DIR), *ORDERS[order], str(MODEL_SOURCE),
              "-Wl,--no-as-needed", "-lm")
    driver = HostDriver(model, lib, work, cflags=cflags)
    # The ESP steps are only compiled where the header selected them, and the model calls those.
    symbols = subprocess.run(["nm", str(driver.exe)], capture_output=True, text=True, check=True).stdout
    assert re.search(rf"\b{model.name}_l0_step_esp\b", symbols) and "dsps_dotprod_f32" in symbols
    # The float copies replace the int8 weight matrices: the build does not carry both.
    assert not re.search(rf"\b{model.name}_l\d+_w_[xh]\b", symbols)
    return driver


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_default_model_is_bit_exact_after_every_step(order, default_lib, tmp_path):
    model, lib, texts = default_lib
    result = _driver(model, lib, tmp_path, order).run(texts + TEXTS, every_step=True)
    assert result.bitexact, result.first_mismatch
    assert result.c_token_ids_match and result.samples == len(texts) + len(TEXTS)


def _long_rows():
    """1500 inputs of extreme weights: every row's bound exceeds 2^24, so W_x x runs in chunks."""
    return _with_head_of(random_model(51, kind="sequence", hidden=[5], input_size=1500, num_classes=3,
                                      weights="extreme", name="elong"),
                         random_model(51, hidden=[5], input_size=1500, num_classes=3))


def _models():
    # The MCU variants' models: tails of 1..3 past a multiple of 4 (7, 13, 6, 9, 17, 33, 21, 5),
    # a text model, and the "post", "mixed" and int64 requantization forms.
    return [*_mcu_models(), _long_rows()]


def test_the_models_split_long_rows_and_pad_short_ones():
    ctx = {m.name: build_context(m, "0") for m in _models()}
    chunks = {name: [len(L["esp"]["x"]["chunks"]) for L in c["layers"]] for name, c in ctx.items()}
    assert chunks["elong"] == [2] and all(n == [1] * len(n) for k, n in chunks.items() if k != "elong")
    strides = {(L["input"], L["esp"]["x"]["stride"]) for c in ctx.values() for L in c["layers"]}
    assert {(7, 8), (9, 12), (21, 24), (1500, 1500)} <= strides


def _inputs(model, rng):
    if model.kind == "text":
        return TEXTS, random_token_ids(model, rng, len(TEXTS), 16)
    xs = np.concatenate([random_sequences(model, rng, 4, 9), random_sequences(model, rng, 4, 9, extreme=True)])
    return list(xs), None


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_random_models_are_bit_exact_after_every_step(order, tmp_path):
    rng = np.random.default_rng(7)
    for model in _models():
        inputs, ids = _inputs(model, rng)
        lib = tmp_path / model.name
        render(model, lib)
        result = _driver(model, lib, tmp_path / f"w-{model.name}", order).run(inputs, token_ids=ids, every_step=True)
        assert result.bitexact, (model.name, result.first_mismatch)
        # Saturated outputs would hide a wrong sum: the inputs must tell the outputs apart.
        assert len({tuple(row) for row in result.logits.tolist()}) > len(inputs) // 2, model.name


def test_a_vector_without_room_for_the_esp32_over_read_is_caught(default_lib, tmp_path):
    """The check can fail: the ESP32 model reads one element past the vector, as the assembly does."""
    model, lib, _ = default_lib
    broken = tmp_path / "lib"
    shutil.copytree(lib, broken)
    src = broken / f"{model.name}_kernels_esp.c"
    text, n = re.subn(r"(#define \w+_ESP_SLACK) 4", r"\1 0", src.read_text())
    assert n == 1
    src.write_text(text)
    with pytest.raises(VerifyError, match="stack-buffer-overflow"):
        _driver(model, broken, tmp_path / "w", "ae32").run(TEXTS[:1])


# -- the model of ESP-DSP and the chunk bound, directly ---------------------------------------

PROBE = r"""
#include <stdio.h>
#include <stdlib.h>
#include "dsps_dotprod.h"

/* stdin: n, n weights, n inputs, k, k (start, length) chunks. stdout: the dot product of the
 * whole row in one call, then the int32 sum of the chunks' results. argv[1] = "misaligned":
 * one call on arrays one float off their 16-byte alignment. */
static float w[4096] __attribute__((aligned(16))), v[4100] __attribute__((aligned(16)));

int main(int argc, char **argv)
{
    int n, k, i, start, len;
    long acc = 0;
    float part;
    if (argc > 1) {
        (void)dsps_dotprod_f32(w + 1, v + 1, &part, 8);
        return 0;
    }
    if (scanf("%d", &n) != 1 || n > 4096) return 2;
    for (i = 0; i < n; ++i) if (scanf("%f", &w[i]) != 1) return 2;
    for (i = 0; i < n; ++i) if (scanf("%f", &v[i]) != 1) return 2;
    (void)dsps_dotprod_f32(w, v, &part, n);
    printf("%.1f\n", part);
    if (scanf("%d", &k) != 1) return 2;
    while (k-- > 0) {
        if (scanf("%d %d", &start, &len) != 2) return 2;
        (void)dsps_dotprod_f32(w + start, v + start, &part, len);
        acc += (long)part;
    }
    printf("%ld\n", acc);
    return 0;
}
"""


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    work = tmp_path_factory.mktemp("probe")
    (work / "probe.c").write_text(PROBE)
    exes = {}
    for order, flags in ORDERS.items():
        exes[order] = work / f"probe-{order}"
        subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Werror", "-I", str(MODEL_DIR), *flags, str(work / "probe.c"),
                        str(MODEL_SOURCE), "-o", str(exes[order]), "-lm"], check=True, capture_output=True, text=True)
    return exes


def _probe(exe, w, v, chunks):
    stdin = " ".join(map(str, [len(w), *w, *v, len(chunks), *[x for c in chunks for x in c]]))
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1])


def test_a_row_beyond_2_24_rounds_in_one_call_and_its_chunks_are_exact(probes):
    """Products of +-127 are odd: a partial sum beyond 2^24 rounds in a single sequential call
    (ANSI, ESP32), while the S3's four lanes stay below it; the generator's chunks are exact in
    every order."""
    n = 2200
    w = np.full(n, 127)
    v = np.where(np.arange(n) < n // 2, 127, -127)  # the sum climbs to 1100 * 16129 > 2^24, then to 0
    exact = int(w @ v)
    chunks = esp_chunks(w[None, :])
    assert len(chunks) == 3
    results = {order: _probe(exe, w, v, chunks) for order, exe in probes.items()}
    assert results["ansi"][0] != exact and results["ae32"][0] != exact and results["aes3"][0] == exact
    assert all(chunked == exact for _, chunked in results.values()), results


def test_the_s3_model_refuses_misaligned_arrays(probes):
    """The S3 model's check of the vector path can fail (the kernels pass it in the tests above)."""
    proc = subprocess.run([str(probes["aes3"]), "misaligned"], capture_output=True)
    assert proc.returncode != 0
    assert subprocess.run([str(probes["ae32"]), "misaligned"], capture_output=True).returncode == 0


def test_esp_chunks_keep_every_row_below_2_24():
    rng = np.random.default_rng(3)
    w = rng.choice(np.array([-128, 127, -127, 5, 0], np.int8), size=(6, 3001))
    w[2] = 0  # a row of zeros, and a row at full scale everywhere
    w[3] = -128
    chunks = esp_chunks(w)
    mag = np.zeros((6, 3004), np.int64)
    mag[:, :3001] = np.abs(w.astype(np.int64)) * 128
    assert chunks[0][0] == 0 and sum(n for _, n in chunks) == 3004
    for (s, n), (s2, _) in zip(chunks, chunks[1:]):
        assert s + n == s2
    for s, n in chunks:
        assert s % 4 == 0 and n % 4 == 0 and n > 0
        assert mag[:, s:s + n].sum(axis=1).max() < ESP_EXACT_LIMIT
    # Greedy: a chunk could not take the next 4 columns without crossing the limit in some row.
    for s, n in chunks[:-1]:
        assert mag[:, s:s + n + 4].sum(axis=1).max() >= ESP_EXACT_LIMIT
    # Row 3 alone needs ceil(3004 * 16384 / 2^24) chunks, and 1023 columns at full scale fit in one.
    assert len(chunks) == 3
    assert esp_chunks(np.full((2, 1023), -128, np.int8)) == [(0, 1024)]
    assert esp_chunks(np.full((1, 1025), 127, np.int8)) == [(0, 1028)]
    assert esp_chunks(np.full((1, 1025), -128, np.int8)) == [(0, 1020), (1020, 8)]
    with pytest.raises(CodegenError, match="must exceed"):
        esp_chunks(w, limit=1000)


# -- the variant choice ---------------------------------------------------------------------

@pytest.mark.parametrize("defines, sdkconfig, kernel", [
    (["__XTENSA__", "CONFIG_IDF_TARGET_ESP32"], None, "esp-dsp"),
    (["__XTENSA__", "CONFIG_IDF_TARGET_ESP32S3"], None, "esp-dsp"),
    (["__XTENSA__"], "CONFIG_IDF_TARGET_ESP32", "esp-dsp"),  # the target from sdkconfig.h
    (["__XTENSA__"], "CONFIG_IDF_TARGET_ESP32S3", "esp-dsp"),
    (["__XTENSA__"], "CONFIG_IDF_TARGET_ESP32S2", "c"),  # LX7 without an FPU
    (["__XTENSA__"], None, "c"),  # another Xtensa core
    (["CONFIG_IDF_TARGET_ESP32"], None, "c"),  # not an Xtensa compiler
    ([], "CONFIG_IDF_TARGET_ESP32S3", "c"),  # sdkconfig.h is only read for Xtensa
    (["__riscv", "__riscv_xlen=32"], "CONFIG_IDF_TARGET_ESP32C3", "rv32"),
    (["__XTENSA__", "TINYSEEK_KERNEL_PORTABLE"], "CONFIG_IDF_TARGET_ESP32S3", "c"),
    (["TINYSEEK_TEST_FORCE_ESP_DSP"], None, "esp-dsp"),  # the host tests above
    ([], None, "c"),
])
def test_the_variant_is_esp_dsp_only_for_xtensa_esp32_and_s3(defines, sdkconfig, kernel, default_lib, tmp_path):
    model, lib, _ = default_lib
    if sdkconfig:
        (tmp_path / "sdkconfig.h").write_text(f"#define {sdkconfig} 1\n")
    src = tmp_path / "probe.c"
    src.write_text(f'#include "{model.name}_kernels.h"\nconst char *probe = {model.name.upper()}_KERNEL;\n')
    cmd = ["gcc", "-E", *[f"-D{d}" for d in defines], "-I", str(tmp_path), "-I", str(lib), str(src)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert f'probe = "{kernel}"' in out
