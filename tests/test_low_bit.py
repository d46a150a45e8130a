"""int4 and binary LSTM gate weights (docs/numerics.md, "Low-bit weights"): the packing, the
quantizer, the model file, and the generated C against the numpy oracle bit for bit, on the
host (UBSan) and on the emulated boards (the Helium kernels on Cortex-M55, the DSP kernels
on cores with the DSP extension, the RV32 kernels, the ARMv6-M kernels on Cortex-M0; the AArch64
NEON kernels are checked in test_kernels_neon.py, the 32-bit ones in test_kernels_neon32.py, the
Helium kernel's edges in test_kernels_helium_low_bit.py)."""
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tinyseek.codegen.render import render
from tinyseek.codegen.verify import verify_host
from tinyseek.config import ConfigError, from_dict, validate
from tinyseek.harness.bench import run_device_bench
from tinyseek.quant.model import (ModelFileError, QuantModel, pack_binary, pack_int4, unpack_binary,
                                  unpack_int4)
from tinyseek.quant.quantize import quantize_rows
from tinyseek.quant.reference import infer_sequences, infer_tokens
from tinyseek.quant.synthetic import random_model, random_sequences, random_token_ids

UBSAN = ("-fsanitize=undefined", "-fno-sanitize-recover=undefined")
TEXTS = ["turn on the kitchen lights", "打开客厅的灯", "Set timer 10 minutes!!", "", "word " * 40]
ARM = {"arm-none-eabi-gcc": "sudo apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi",
       "qemu-system-arm": "sudo apt-get install -y qemu-system-arm"}
RV = {"riscv64-unknown-elf-gcc": "sudo apt-get install -y gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf",
      "qemu-system-riscv32": "sudo apt-get install -y qemu-system-misc"}


def test_int4_packs_two_per_byte_low_nibble_first():
    w = np.array([[1, -2, 3], [-8, 7, 0]], np.int8)
    assert pack_int4(w).tolist() == [[0xE1, 0x03], [0x78, 0x00]]
    rng = np.random.default_rng(0)
    for cols in (1, 2, 7, 16):
        v = rng.integers(-8, 8, size=(5, cols)).astype(np.int8)
        assert np.array_equal(unpack_int4(pack_int4(v), cols), v)


def test_binary_packs_eight_per_byte_lsb_first():
    w = np.array([[1, -1, 1, 1, -1, -1, -1, -1, 1]], np.int8)
    assert pack_binary(w).tolist() == [[0b00001101, 0b1]]
    rng = np.random.default_rng(1)
    for cols in (1, 8, 13):
        v = np.where(rng.random((4, cols)) < 0.5, 1, -1).astype(np.int8)
        assert np.array_equal(unpack_binary(pack_binary(v), cols), v)


def test_quantize_rows_per_width():
    w = np.array([[0.7, -0.35, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0], [-2.0, 1.0, 0.5, -0.5]])
    q, s = quantize_rows(w, "int4")
    assert q.tolist() == [[7, -4, 1, 0], [0, 0, 0, 0], [-7, 4, 2, -2]]  # round half to even: -3.5 -> -4
    assert np.allclose(s, [0.1, 1.0, 2.0 / 7])
    q, s = quantize_rows(w, "binary")
    assert q.tolist() == [[1, -1, 1, 1], [1, 1, 1, 1], [-1, 1, 1, -1]]
    assert np.allclose(s, [0.2875, 1.0, 1.0])  # the row's mean |w|
    assert np.array_equal(quantize_rows(w)[0], quantize_rows(w, "int8")[0])


def test_model_file_round_trip_and_bad_packing(tmp_path):
    # 4 rows of 4 units: w_x rows of 5 then 4 columns, w_h rows of 4: ceil(cols / per byte) bytes each
    for width, packed_bytes in (("int4", 16 * (3 + 2 + 2 + 2)), ("binary", 16 * 4)):
        m = random_model(3, hidden=[4, 4], input_size=5, width=width)
        m.save(tmp_path / width)
        back = QuantModel.load(tmp_path / width)
        assert back.weights == width and back.model_hash() == m.model_hash()
        for a, b in zip(m.layers, back.layers):
            assert np.array_equal(a.w_x, b.w_x) and np.array_equal(a.w_h, b.w_h)
        arrays = m.arrays()
        assert sum(arrays[f"lstm{i}.{k}"].nbytes for i in (0, 1) for k in ("w_x", "w_h")) == packed_bytes
        assert json.loads((tmp_path / width / "model.json").read_text())["ops"][1]["weights"] == width
    # an int8 model keeps its header (and so its hash) without the new key
    assert "weights" not in random_model(3).ir()[1]
    # a binary model's head is sign bits too (its kernels read them); int4 keeps an int8 head
    binary, int4 = random_model(3, hidden=[4, 12], input_size=5, width="binary"), random_model(3, width="int4")
    assert binary.arrays()["head.w"].shape == (4, 2) and binary.arrays()["head.w"].dtype == np.uint8
    assert binary.ir()[-1]["weights"] == "binary" and "weights" not in int4.ir()[-1]
    assert int4.arrays()["head.w"].dtype == np.int8
    assert np.array_equal(QuantModel.load(tmp_path / "binary").head.w, random_model(3, hidden=[4, 4], input_size=5,
                                                                                      width="binary").head.w)
    bad = random_model(3, width="int4")
    bad.layers[0].w_x[0, 0] = 9
    with pytest.raises(ModelFileError, match="int4 range"):
        bad.validate()
    hdr = json.loads((tmp_path / "binary" / "model.json").read_text())
    del hdr["ops"][-1]["weights"]  # a binary model saved with an int8 head: refused, naming the way out
    (tmp_path / "binary" / "model.json").write_text(json.dumps(hdr))
    with pytest.raises(ModelFileError, match="head weight width 'int8' with binary LSTM weights"):
        QuantModel.load(tmp_path / "binary")
    hdr = json.loads((tmp_path / "int4" / "model.json").read_text())
    hdr["ops"][1]["weights"] = "binary"
    (tmp_path / "int4" / "model.json").write_text(json.dumps(hdr))
    with pytest.raises(ModelFileError, match="LSTM weight width"):
        QuantModel.load(tmp_path / "int4")


def test_config_names_the_widths():
    validate(from_dict({"quant": {"weights": "int4", "qat_epochs": 2}}))
    with pytest.raises(ConfigError, match="quant.weights must be int8, int4 or binary"):
        validate(from_dict({"quant": {"weights": "int2"}}))
    validate(from_dict({"quant": {"weights": "int8", "embedding": "binary"}}))
    with pytest.raises(ConfigError, match=r"quant.embedding must be int8, int4, binary or empty \(the same as quant.weights\)"):
        validate(from_dict({"quant": {"embedding": "int2"}}))


def _models(width):
    # For binary other draws: random sign rows (a binary head too) with extreme or normal values
    # leave the outputs alike for most inputs, and the board test needs outputs that tell inputs
    # apart (the third model and the UBSan host test keep the extremes)
    return [random_model(36 if width == "binary" else 31, kind="sequence", hidden=[17], input_size=11, num_classes=5,
                         width=width, name="lseq"),
            random_model(32, kind="text", hidden=[13, 6], input_size=9, num_classes=4, vocab_size=300, max_len=20,
                         weights="normal" if width == "binary" else "extreme",
                         scales="mixed" if width == "binary" else "normal", width=width, name="ltxt"),
            random_model(33, kind="sequence", hidden=[3, 10], input_size=8, num_classes=3, weights="extreme",
                         scales="pow2", width=width, name="lpow")]


@pytest.mark.parametrize("width", ["int4", "binary"])
def test_portable_c_matches_the_oracle_on_the_host(width):
    for m in _models(width):
        rng = np.random.default_rng(7)
        with tempfile.TemporaryDirectory() as tmp:
            render(m, Path(tmp) / "lib")
            kernels = (Path(tmp) / "lib" / f"{m.name}_kernels.h").read_text()
            assert ("int4 gate weights: Helium splits them into nibble vectors" if width == "int4" else
                    "binary gate weights (and head): Helium sums x over the set bits") in kernels
            if m.kind == "text":
                result = verify_host(m, Path(tmp) / "lib", TEXTS, token_ids=random_token_ids(m, rng, 5, 60),
                                     every_step=True, cflags=UBSAN)
            else:
                xs = np.concatenate([random_sequences(m, rng, 4, 60), random_sequences(m, rng, 3, 60, extreme=True)])
                result = verify_host(m, Path(tmp) / "lib", list(xs), every_step=True, cflags=UBSAN)
        assert result.bitexact, f"{m.name}: {result.mismatches} samples differ; first: {result.first_mismatch}"


@pytest.mark.slow
@pytest.mark.parametrize("env, tools", [("qemu_m4", ARM), ("qemu_m55", ARM), ("qemu_m0", ARM), ("qemu_rv32", RV)])
def test_low_bit_models_are_bit_exact_on_the_boards(env, tools, tmp_path, need_tools):
    need_tools(tools)
    rng = np.random.default_rng(5)
    for width in ("int4", "binary"):
        for model in _models(width)[:2]:
            if model.kind == "text":
                inputs = [t for t in random_token_ids(model, rng, 6, model.max_len) if t]
                want = infer_tokens(model, inputs)
            else:
                inputs = list(random_sequences(model, rng, 6, 9))
                want = infer_sequences(model, np.array(inputs))
            assert len({tuple(row) for row in want.tolist()}) > len(inputs) // 2  # outputs tell inputs apart
            render(model, tmp_path / width / model.name)  # PlatformIO finds a library by its folder name
            out = run_device_bench(env, tmp_path / width / model.name, inputs,
                                   build_dir=tmp_path / f"b-{width}-{model.name}")
            # both widths: Helium on Cortex-M55, the DSP extension on Cortex-M4, an RV32 kernel and an
            # ARMv6-M one
            want_kernel = {"qemu_m4": "dsp", "qemu_m55": "mve", "qemu_rv32": "rv32", "qemu_m0": "v6m"}[env]
            assert out["model"]["kernel"] == want_kernel
            assert out["logits"] == want.tolist(), f"{width} {model.name}"


@pytest.mark.slow
@pytest.mark.parametrize("width", ["int4", "binary"])
def test_portable_flag_selects_the_c_kernels_for_low_bit(width, tmp_path, need_tools):
    need_tools(ARM)
    model = _models(width)[0]
    render(model, tmp_path / model.name)
    xs = random_sequences(model, np.random.default_rng(6), 4, 9)
    out = run_device_bench("qemu_m4", tmp_path / model.name, list(xs), build_dir=tmp_path / "b",
                           extra_flags=["-DTINYSEEK_KERNEL_PORTABLE"])
    assert out["model"]["kernel"] == "c" and out["logits"] == infer_sequences(model, xs).tolist()


def _binary_edge_model():
    """Sign rows whose lengths are no multiple of 8 or 32 (inputs 40 = one block of 32 and one
    byte, hidden 33 and 70 = two blocks and one byte), hidden sizes no multiple of 4, two layers,
    a head of 6 classes (one pass of four, one of two), all-+1 and all--1 rows in every matrix."""
    m = random_model(37, kind="sequence", hidden=[33, 70], input_size=40, num_classes=6, scales="mixed",
                     width="binary", name="lbin")
    for layer in m.layers:
        layer.w_x[0], layer.w_x[5], layer.w_h[2], layer.w_h[7] = 1, -1, 1, -1
    m.head.w[0], m.head.w[1] = 1, -1
    return m


@pytest.mark.slow
@pytest.mark.parametrize("env, flags, kernel", [("qemu_m4", [], "dsp"), ("qemu_m55", ["-U__ARM_FEATURE_MVE"], "dsp"),
                                                ("qemu_m55", [], "mve")])
def test_binary_dsp_kernel_is_bit_exact_on_tails_and_extremes(env, flags, kernel, tmp_path, need_tools):
    """The binary DSP kernel (UADD8 / SEL / USADA8 on blocks of 32 columns) on partial blocks and
    bytes, the extreme inputs -128 and 127, and single-byte rows (input 7, hidden 5); on the M55
    built without Helium, and with it the Helium kernel's four-row path on the same rows."""
    need_tools(ARM)
    small = random_model(38, kind="sequence", hidden=[5, 3], input_size=7, num_classes=3, scales="mixed",
                         weights="extreme", width="binary", name="lbsm")
    for model in (_binary_edge_model(), small):
        rng = np.random.default_rng(4)
        xs = np.concatenate([random_sequences(model, rng, 4, 7), random_sequences(model, rng, 3, 7, extreme=True)])
        xs[0], xs[1] = -128, 127
        want = infer_sequences(model, xs)
        if model.name == "lbin":
            assert len({tuple(row) for row in want.tolist()}) == len(xs)  # outputs tell inputs apart
        render(model, tmp_path / model.name)
        out = run_device_bench(env, tmp_path / model.name, list(xs), build_dir=tmp_path / f"b-{model.name}",
                               extra_flags=flags)
        assert out["model"]["kernel"] == kernel
        assert out["logits"] == want.tolist(), model.name


def test_binary_edge_model_matches_the_oracle_on_the_host():
    """The same model through the portable C on the host (UBSan): the yardstick of the board test."""
    m = _binary_edge_model()
    rng = np.random.default_rng(4)
    xs = np.concatenate([random_sequences(m, rng, 3, 7), random_sequences(m, rng, 3, 7, extreme=True)])
    with tempfile.TemporaryDirectory() as tmp:
        render(m, Path(tmp) / "lib")
        result = verify_host(m, Path(tmp) / "lib", list(xs), every_step=True, cflags=UBSAN)
    assert result.bitexact, result.first_mismatch


@pytest.mark.parametrize("cpu, int4, binary", [("cortex-m0plus", "v6m", "v6m"), ("cortex-m0", "v6m", "v6m"),
                                               ("cortex-m3", "c", "c"),
                                               ("cortex-m4", "dsp", "dsp"), ("cortex-m7", "dsp", "dsp"),
                                               ("cortex-m33", "dsp", "dsp"), ("cortex-m33+nodsp", "c", "c"),
                                               ("cortex-m55", "mve", "mve"), ("cortex-m55+nomve", "dsp", "dsp"),
                                               ("cortex-a7", "neon32", "neon32")])
def test_low_bit_variant_follows_the_cores_feature_macros(cpu, int4, binary, tmp_path, need_tools):
    need_tools({"arm-none-eabi-gcc": ARM["arm-none-eabi-gcc"]})
    for width, variant in (("int4", int4), ("binary", binary)):
        model = _models(width)[0]
        render(model, tmp_path / width)
        src = tmp_path / width / "probe.c"
        src.write_text(f'#include "{model.name}_kernels.h"\nconst char *probe = {model.name.upper()}_KERNEL;\n')
        out = subprocess.run(["arm-none-eabi-gcc", f"-mcpu={cpu}", "-mthumb", "-mfloat-abi=softfp", "-E", "-I",
                              str(tmp_path / width), str(src)], capture_output=True, text=True, check=True).stdout
        assert f'probe = "{variant}"' in out, (width, cpu)


# -- the RV32 kernels (templates/kernels/riscv.c.j2): two columns per MUL in 16-bit fields ------

def _full_scale(width, input_size, hidden, seed):
    """Rows at the packing's extremes (all 7, all -8, alternating; all +1, all -1, alternating):
    with constant full-scale inputs the two-column sums reach the bounds the kernel reads them
    out at (16 int4 columns: |M| <= 30,720; 256 binary columns: M = -32,768 at x = -128)."""
    m = random_model(seed, kind="sequence", hidden=[hidden], input_size=input_size, num_classes=3, weights="extreme",
                     width=width, name="kfull")
    hi, lo = (7, -8) if width == "int4" else (1, -1)
    for w in (m.layers[0].w_x, m.layers[0].w_h):
        w[0::4], w[1::4] = hi, lo
        w[2::4, 0::2], w[2::4, 1::2] = hi, lo
    m.validate()
    cols = m.num_features
    return m, np.stack([np.full((4, cols), -128), np.full((4, cols), 127),
                        np.tile(np.resize([127, -128], cols), (4, 1))]).astype(np.int8)


# Column counts whose packed rows end at every byte offset in a word (int4: n % 8, binary: n % 32),
# below one word, over one chunk (int4 16 columns, binary 256) and between; two layers; heads of
# 3 and 5 rows (a binary head runs through the same kernel, one row at a time).
RV32_SHAPES = [(1, [3]), (7, [13, 6]), (9, [17]), (21, [33, 2]), (64, [64]), (270, [40]), (300, [5, 10])]


@pytest.mark.parametrize("width", ["int4", "binary"])
def test_rv32_kernels_match_the_oracle_on_the_host(width, tmp_path):
    """The RV32 kernels are plain C (GCC builtins): -DTINYSEEK_TEST_FORCE_RV32 builds them on the
    host, where every step's h and c is compared, under UBSan, on every row shape; rows at full
    scale reach the bounds of the 16-bit fields (a read-out one chunk later fails here)."""
    rng = np.random.default_rng(11)
    cases = []
    for i, (inputs, hidden) in enumerate(RV32_SHAPES):
        m = random_model(70 + i, kind="sequence", hidden=hidden, input_size=inputs, num_classes=3 + i % 3,
                         weights="extreme", width=width, name="krv")
        xs = np.concatenate([random_sequences(m, rng, 3, 5), random_sequences(m, rng, 3, 5, extreme=True)])
        cases.append((m, xs))
    cases.append(_full_scale(width, 300, 6, 80))
    flags = UBSAN + ("-O2", "-DTINYSEEK_TEST_FORCE_RV32")
    for m, xs in cases:
        lib = tmp_path / f"{m.name}-{m.num_features}"
        render(m, lib)
        probe = lib / "probe.c"
        probe.write_text(f'#include "{m.name}_kernels.h"\nconst char *probe = {m.name.upper()}_KERNEL;\n')
        out = subprocess.run(["gcc", "-E", "-DTINYSEEK_TEST_FORCE_RV32", "-I", str(lib), str(probe)],
                             capture_output=True, text=True, check=True).stdout
        assert 'probe = "rv32"' in out
        result = verify_host(m, lib, list(xs), every_step=True, cflags=flags)
        assert result.bitexact, f"{width} {m.num_features} {[L.hidden for L in m.layers]}: {result.first_mismatch}"


@pytest.mark.slow
@pytest.mark.parametrize("width", ["int4", "binary"])
def test_rv32_kernels_are_bit_exact_on_rv32imc(width, tmp_path, need_tools):
    """On the emulated rv32imc: odd column counts, hidden sizes that are not multiples of 4, two
    layers, extreme weights and inputs, rows at full scale; -DTINYSEEK_KERNEL_PORTABLE still
    selects the portable C."""
    need_tools(RV)
    rng = np.random.default_rng(13)
    models = [random_model(31 if width == "int4" else 36, kind="sequence", hidden=[17], input_size=11,
                           num_classes=5, width=width, name="rva"),
              random_model(90, kind="sequence", hidden=[13, 6], input_size=21, num_classes=4, weights="extreme",
                           width=width, name="rvb"),
              random_model(91, kind="sequence", hidden=[9], input_size=270, num_classes=3, width=width, name="rvc")]
    cases = [(m, np.concatenate([random_sequences(m, rng, 4, 7), random_sequences(m, rng, 2, 7, extreme=True)]))
             for m in models]
    cases.append(_full_scale(width, 300, 6, 80))
    for m, xs in cases:
        want = infer_sequences(m, xs)
        if m.name == "rva":
            assert len({tuple(row) for row in want.tolist()}) > len(xs) // 2  # outputs tell inputs apart
        render(m, tmp_path / m.name)
        out = run_device_bench("qemu_rv32", tmp_path / m.name, list(xs), build_dir=tmp_path / f"b-{m.name}")
        assert out["model"]["kernel"] == "rv32" and out["logits"] == want.tolist(), m.name
    out = run_device_bench("qemu_rv32", tmp_path / "rva", list(cases[0][1]), build_dir=tmp_path / "b-portable",
                           extra_flags=["-DTINYSEEK_KERNEL_PORTABLE"])
    assert out["model"]["kernel"] == "c" and out["logits"] == infer_sequences(models[0], cases[0][1]).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("width", ["int4", "binary"])
def test_v6m_kernels_are_bit_exact_at_full_scale(width, tmp_path, need_tools):
    """The ARMv6-M kernels on rows at full scale against constant extreme inputs: an int4 row's
    two-word sums reach -30,720 there, so a read-out one word later fails (rows of 40 columns,
    five words, unrolled; 56, seven words in a loop; 300, a copied row of 150 bytes). Rows of odd
    columns and hidden sizes that are not multiples of 4 are in test_kernels_mcu.py;
    -DTINYSEEK_KERNEL_PORTABLE still selects the portable C on the Cortex-M0."""
    need_tools(ARM)
    cases = [_full_scale(width, inputs, hidden, 80 + i) for i, (inputs, hidden) in enumerate([(40, 6), (56, 9), (300, 5)])]
    for i, (m, xs) in enumerate(cases):
        render(m, tmp_path / str(i) / m.name)
        # an input buffer of 8 steps: 128 steps of 300 features would not fit the nRF51's 16 KiB
        out = run_device_bench("qemu_m0", tmp_path / str(i) / m.name, list(xs), build_dir=tmp_path / f"b-{i}",
                               extra_flags=["-DTINYSEEK_INPUT_STEPS=8"])
        assert out["model"]["kernel"] == "v6m" and out["logits"] == infer_sequences(m, xs).tolist(), m.num_features
    m, xs = cases[0]
    out = run_device_bench("qemu_m0", tmp_path / "0" / m.name, list(xs), build_dir=tmp_path / "b-portable",
                           extra_flags=["-DTINYSEEK_KERNEL_PORTABLE"])
    assert out["model"]["kernel"] == "c" and out["logits"] == infer_sequences(m, xs).tolist()

@pytest.mark.parametrize("march, mabi, flags, variant", [("rv32imc", "ilp32", [], "rv32"),
                                                          ("rv32imac", "ilp32", [], "rv32"),
                                                          ("rv32imc", "ilp32", ["-DTINYSEEK_KERNEL_PORTABLE"], "c"),
                                                          ("rv64imac", "lp64", [], "c")])
def test_low_bit_rv32_variant_follows_the_xlen(march, mabi, flags, variant, tmp_path, need_tools):
    need_tools({"riscv64-unknown-elf-gcc": RV["riscv64-unknown-elf-gcc"]})
    for width in ("int4", "binary"):
        model = _models(width)[0]
        render(model, tmp_path / width)
        src = tmp_path / width / "probe.c"
        src.write_text(f'#include "{model.name}_kernels.h"\nconst char *probe = {model.name.upper()}_KERNEL;\n')
        cmd = ["riscv64-unknown-elf-gcc", f"-march={march}", f"-mabi={mabi}", "--specs=picolibc.specs", *flags, "-E"]
        out = subprocess.run([*cmd, "-I", str(tmp_path / width), str(src)], capture_output=True, text=True,
                             check=True).stdout
        assert f'probe = "{variant}"' in out, (width, march, flags)


def test_fake_quant_is_the_quantizers_rounding_with_straight_through_gradients():
    torch = pytest.importorskip("torch")
    from tinyseek.distill.qat import fake_quant, fake_quantized
    w = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    for width in ("int8", "int4", "binary"):
        q, s = quantize_rows(w.double().numpy(), width)
        assert np.allclose(fake_quant(w, width).numpy(), q * s[:, None], atol=1e-6)
    lstm = torch.nn.LSTM(5, 3, num_layers=2, batch_first=True)
    x = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(1))
    with fake_quantized(lstm, "int4"):
        out, _ = lstm(x)
        out.sum().backward()
    assert all(float(getattr(lstm, f"weight_{k}_l{i}").grad.abs().sum()) > 0 for k in ("ih", "hh") for i in (0, 1))
    ref = torch.nn.LSTM(5, 3, num_layers=2, batch_first=True)
    ref.load_state_dict({k: fake_quant(v, "int4") if k.startswith("weight_") else v for k, v in lstm.state_dict().items()})
    assert torch.allclose(ref(x)[0], out)
    assert not torch.allclose(lstm(x)[0], out)  # outside the block the float weights are back


@pytest.mark.slow
def test_quantization_aware_training_recovers_binary_accuracy(tmp_path):
    from test_distill import small_cfg, text_dataset, write_knowledge

    from tinyseek.distill import distill
    from tinyseek.harness.evaluate import labeled_accuracy, oracle_logits
    from tinyseek.quant.quantize import quantize_run
    ds = text_dataset()
    knowledge = write_knowledge(tmp_path / "knowledge.safetensors", ds)
    cfg = small_cfg(**{"quant.weights": "binary", "quant.qat_epochs": 4})  # the width's own peak learning rate
    distill(ds, knowledge, cfg, tmp_path, word_dropout=0.0, progress=False)
    qat = quantize_run(cfg, tmp_path, ds, knowledge)
    ptq = QuantModel.load(tmp_path / "int8_ptq")
    assert qat.weights == ptq.weights == "binary" and (tmp_path / "student_qat" / "history.json").is_file()
    acc = {k: labeled_accuracy(oracle_logits(m, ds.val).argmax(axis=1), ds.val.y) for k, m in (("ptq", ptq), ("qat", qat))}
    hist = json.loads((tmp_path / "student_qat" / "history.json").read_text())
    assert len(hist["epochs"]) == 4 and qat.meta["qat"]["best_epoch"] == hist["best_epoch"]
    assert acc["qat"] >= max(acc["ptq"], 0.85), acc
    # without QAT the stage leaves no QAT artifacts behind
    quantize_run(small_cfg(**{"quant.weights": "binary"}), tmp_path, ds)
    assert not (tmp_path / "int8_ptq").exists() and not (tmp_path / "student_qat").exists()


def test_report_shows_float_post_training_and_qat_rows():
    from tinyseek.harness.report import render_markdown
    report = {"model": {"name": "m", "hash": "h"},
              "task": {"name": "t", "kind": "text", "labels": ["a"], "test_samples": 10, "test_labeled": 10},
              "teacher": {"accuracy": 0.8, "source": "default"},
              "student": {"float_accuracy": 0.78, "int8_accuracy": 0.76, "params": 1, "weight_bytes": 1},
              "validation": {"samples": 5, "float_accuracy": 0.8, "int8_accuracy": 0.6},
              "warnings": [], "retention": 0.95, "agreement_int8_float": 0.9, "agreement_int8_teacher": 0.9,
              "quantization": {"weights": "int4", "qat_epochs": 3,
                               "post_training": {"accuracy": 0.7, "val_accuracy": 0.4, "weight_bytes": 1}}}
    text = render_markdown(report)
    assert "| student, float | 78.00 % | 80.00 % |" in text
    assert "| student, int4 post-training (integer reference) | 70.00 % | 40.00 % |" in text
    assert "| student, int4 quantization-aware, 3 epochs (integer reference) | 76.00 % | 60.00 % |" in text
    del report["quantization"]["post_training"]
    assert "| student, int4 (integer reference) | 76.00 % | 60.00 % |" in render_markdown(report)


def test_search_prices_the_widths_with_their_own_layout_and_latency_fit():
    from test_search import toy_dataset

    from tinyseek.distill.search import plan_search
    ds = toy_dataset()
    plans = {w: plan_search(ds, from_dict({"quant": {"weights": w}})) for w in ("int8", "int4", "binary")}
    assert {w: p.kernel_cost.kernel for w, p in plans.items()} == {"int8": "dsp", "int4": "dsp", "binary": "dsp"}
    for shape, c8 in plans["int8"].costs.items():
        c4, c1 = plans["int4"].costs[shape], plans["binary"].costs[shape]
        assert c1.weight_bytes < c4.weight_bytes < c8.weight_bytes
        assert c4.instructions != c8.instructions and c1.instructions != c8.instructions
    # the same flash budget holds shapes at int4 that it does not at int8
    assert len(plans["int4"].candidates) >= len(plans["int8"].candidates)


# -- the low-bit embedding (docs/numerics.md, "Low-bit embedding") ---------------------------

def test_quantize_embedding_rows_are_integer_gains_times_codes():
    from tinyseek.quant.quantize import quantize_embedding
    t = np.array([[0.0, 0.0, 0.0], [1.26, -0.6, 0.1], [0.07, -0.032, 0.0], [-0.2, 0.2, 0.2]])
    rows, gain, s_x = quantize_embedding(t, "int4")
    assert np.isclose(s_x, 1.26 / 126)  # the largest row takes gain 18, code 7
    assert gain.tolist() == [0, 18, 1, 3] and gain.dtype == np.uint8
    # codes round(row / (gain s_x)): [7, -3.33, 0.56] * 18, [7, -3.2, 0] * 1, [-6.67, 6.67, 6.67] * 3
    assert rows.tolist() == [[0, 0, 0], [126, -54, 18], [7, -3, 0], [-21, 21, 21]]
    rows, gain, s_x = quantize_embedding(t, "binary")
    means = np.abs(t).mean(axis=1)
    assert np.isclose(s_x, means.max() / 127) and gain.tolist() == np.round(means / s_x).astype(int).tolist()
    g = gain.astype(int)
    assert rows.tolist() == [[0, 0, 0], [127, -127, 127], [g[2], -g[2], g[2]], [-g[3], g[3], g[3]]]
    rows8, none, s8 = quantize_embedding(t, "int8")
    assert none is None and np.isclose(s8, 1.26 / 127) and rows8[1].tolist() == [127, -60, 10]


@pytest.mark.parametrize("width", ["int4", "binary"])
def test_low_bit_embedding_round_trips_and_stores_codes_and_gains(width, tmp_path):
    m = random_model(8, kind="text", hidden=[6], input_size=11, vocab_size=50, width="int8", embedding_width=width)
    arrays = m.arrays()
    per = 2 if width == "int4" else 8
    assert arrays["embedding"].dtype == np.uint8 and arrays["embedding"].shape == (50, -(-11 // per))
    assert arrays["embedding.gain"].shape == (50,)
    m.save(tmp_path / "m")
    back = QuantModel.load(tmp_path / "m")
    assert back.embedding_width == width and back.weights == "int8" and back.model_hash() == m.model_hash()
    assert np.array_equal(back.embedding, m.embedding) and np.array_equal(back.embedding_gain, m.embedding_gain)
    assert json.loads((tmp_path / "m" / "model.json").read_text())["ops"][0]["weights"] == width
    assert "weights" not in random_model(8, kind="text").ir()[0]  # int8 models keep their hash
    bad = random_model(8, kind="text", hidden=[6], input_size=11, vocab_size=50, embedding_width=width)
    bad.embedding[3, 0] = 5 * int(bad.embedding_gain[3]) + 1 if width == "int4" else 3
    bad.embedding_gain[3] = max(int(bad.embedding_gain[3]), 2)
    with pytest.raises(ModelFileError, match=f"not their gain times {width} codes"):
        bad.validate()
    bad = random_model(8, kind="text", hidden=[6], input_size=11, vocab_size=50, embedding_width=width)
    bad.embedding_gain[1] = 19 if width == "int4" else 128
    with pytest.raises(ModelFileError, match="embedding gains above"):
        bad.validate()


def test_embedding_fake_quant_is_the_quantizers():
    torch = pytest.importorskip("torch")
    from tinyseek.distill.qat import fake_quant_embedding, fake_quantized_embedding
    from tinyseek.quant.quantize import quantize_embedding
    w = torch.randn(40, 9, generator=torch.Generator().manual_seed(3))
    w[0] = 0
    w[5] *= 0.01
    for width in ("int8", "int4", "binary"):
        rows, _, s_x = quantize_embedding(w.double().numpy(), width)
        assert np.allclose(fake_quant_embedding(w, width).numpy(), rows * s_x, atol=1e-6), width
    embed = torch.nn.Embedding(40, 9, padding_idx=0)
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    with fake_quantized_embedding(embed, "binary"):
        out = embed(ids)
        out.sum().backward()
    assert float(embed.weight.grad[1:6].abs().sum()) > 0  # straight through to the float table
    assert torch.allclose(out, fake_quant_embedding(embed.weight, "binary")[ids])
    assert torch.equal(embed(ids), embed.weight[ids])  # outside the block the float table is back


@pytest.mark.parametrize("weights, embedding", [("int8", "int4"), ("int8", "binary"), ("int4", "int8"),
                                                ("binary", "int4")])
def test_low_bit_embedding_with_subwords_matches_the_oracle_on_the_host(weights, embedding):
    """Whole-word steps (one row expanded) and id groups (rows expanded and averaged)."""
    for subwords in (0, 4):
        m = random_model(44, kind="text", hidden=[7], input_size=10, num_classes=3, vocab_size=200, max_len=16,
                         weights="extreme", width=weights, embedding_width=embedding, name="lemb")
        m.subwords = subwords
        rng = np.random.default_rng(9)
        with tempfile.TemporaryDirectory() as tmp:
            render(m, Path(tmp) / "lib")
            header = (Path(tmp) / "lib" / "lemb_model.h").read_text()
            assert ("#define LEMB_EMBEDDING_BITS" in header) == (embedding != "int8")
            ids = None if subwords else random_token_ids(m, rng, len(TEXTS), 16)
            result = verify_host(m, Path(tmp) / "lib", TEXTS, token_ids=ids, every_step=True, cflags=UBSAN)
        assert result.bitexact, f"{weights}/{embedding} subwords {subwords}: {result.first_mismatch}"
