"""The kernel variants on their emulated cores: the DSP extension on Cortex-M4 and M7, Helium on
Cortex-M55, the RV32 kernels on rv32imc, the ARMv6-M kernels (int8, int4, binary) on Cortex-M0. Random models whose sizes are not multiples of 4 or 16,
with extreme weights and every requantization form of the dispatch header (32-bit "pre",
"post", per-row "mixed", int64 "exact"), must reproduce the integer oracle bit for bit; the
variant the firmware reports must be the one its core's feature macros select."""
import shutil
import subprocess

import numpy as np
import pytest

from tinyseek.codegen.context import mve_layer, requant_mode
from tinyseek.codegen.render import render
from tinyseek.harness.bench import run_device_bench
from tinyseek.quant.reference import INT32_MAX, infer_sequences, infer_tokens, int_matmul, requant, trace
from tinyseek.quant.synthetic import random_model, random_sequences, random_token_ids

ARM = {"arm-none-eabi-gcc": "sudo apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi",
       "qemu-system-arm": "sudo apt-get install -y qemu-system-arm"}
RV = {"riscv64-unknown-elf-gcc": "sudo apt-get install -y gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf",
      "qemu-system-riscv32": "sudo apt-get install -y qemu-system-misc"}
VARIANTS = {"qemu_m4": ("dsp", ARM), "qemu_m7": ("dsp", ARM), "qemu_m55": ("mve", ARM), "qemu_rv32": ("rv32", RV),
            "qemu_m0": ("v6m", ARM)}


def _post_only(model):
    """Shifts raised to at least 33 (real multipliers at most halved): only the "post" form."""
    for L in model.layers:
        L.nx, L.nh = np.maximum(L.nx, 33), np.maximum(L.nh, 33)
    model.validate()
    return model


def _with_head_of(model, other):
    """`other`'s head (realistic scales), so that the logits do not all saturate."""
    model.head = other.head
    model.validate()
    return model


def _models():
    return [
        # Every dot product has a tail (7, 13, 6) and the h side of layer 1 is only a tail.
        random_model(31, kind="sequence", hidden=[13, 6], input_size=7, num_classes=3, weights="extreme",
                     name="kseq"),
        # 17 = one 16-byte chunk plus a 1-byte predicated tail; n > 32 everywhere.
        _post_only(random_model(32, kind="text", hidden=[3, 17], input_size=9, num_classes=5, vocab_size=300,
                                max_len=12, weights="extreme", name="ktxt")),
        # Powers of two: shifts 31..38, both 32-bit forms in one matrix (rounding ties are frequent).
        random_model(33, kind="sequence", hidden=[33], input_size=21, num_classes=4, scales="pow2", name="kpow"),
        # Shifts anywhere in 1..62: rows only int64 can requantize.
        _with_head_of(random_model(34, kind="sequence", hidden=[5], input_size=4, num_classes=3, scales="mixed",
                                   name="kmix"), random_model(34, hidden=[5], input_size=4, num_classes=3)),
    ]


def test_the_models_cover_every_requant_form():
    modes = set()
    for m in _models():
        for L in m.layers:
            modes |= {requant_mode(L.w_x, L.nx), requant_mode(L.w_h, L.nh)}
        modes.add(requant_mode(m.head.w, m.head.n, m.head.bias))
    # "pre" alone is what real students give on the x side: the default model covers it on
    # every board (tests/test_device_default.py) and test_requant32.py on the host.
    assert {"post", "mixed", "exact"} <= modes


def _inputs(model, rng):
    if model.kind == "text":
        ids = [t for t in random_token_ids(model, rng, 8, model.max_len) if t]
        return ids, infer_tokens(model, ids)
    xs = np.concatenate([random_sequences(model, rng, 4, 9), random_sequences(model, rng, 4, 9, extreme=True)])
    return list(xs), infer_sequences(model, xs)


@pytest.mark.slow
@pytest.mark.parametrize("env", sorted(VARIANTS))
def test_variant_is_bit_exact_on_its_core(env, tmp_path, need_tools):
    variant, tools = VARIANTS[env]
    need_tools(tools)
    rng = np.random.default_rng(5)
    for model in _models():
        inputs, want = _inputs(model, rng)
        # Saturated outputs would hide a wrong sum: the inputs must tell the outputs apart.
        assert len({tuple(row) for row in want.tolist()}) > len(inputs) // 2
        render(model, tmp_path / model.name)
        out = run_device_bench(env, tmp_path / model.name, inputs, build_dir=tmp_path / f"b-{model.name}")
        assert out["model"]["kernel"] == variant
        assert out["logits"] == want.tolist(), model.name


@pytest.mark.slow
@pytest.mark.parametrize("env", ["qemu_m4", "qemu_m55", "qemu_m0"])
def test_portable_flag_selects_the_c_kernels(env, tmp_path, need_tools):
    need_tools(ARM)
    model = _models()[0]
    render(model, tmp_path / model.name)
    inputs, want = _inputs(model, np.random.default_rng(6))
    out = run_device_bench(env, tmp_path / model.name, inputs, build_dir=tmp_path / "b",
                           extra_flags=["-DTINYSEEK_KERNEL_PORTABLE"])
    assert out["model"]["kernel"] == "c" and out["logits"] == want.tolist()


def _gate_sum_leaves_int32(model, xs):
    """Whether requant(acc_x) + requant(acc_h) + bias of some gate of a one-layer sequence model
    leaves int32 on these inputs (the v6m kernel's overflow branch)."""
    L = model.layers[0]
    for x, steps in zip(xs, trace(model, list(xs))):
        h_prev = np.vstack([np.zeros((1, L.hidden), np.int64), steps["h"][0][:-1]])
        acc_x, acc_h = int_matmul(x[:len(h_prev)], L.w_x), int_matmul(h_prev, L.w_h)
        s = requant(acc_x, L.mx, L.nx) + requant(acc_h, L.mh, L.nh) + L.bias.astype(np.int64)
        if np.any(np.abs(s) > INT32_MAX):
            return True
    return False


@pytest.mark.slow
def test_v6m_dot_product_on_row_and_column_counts(tmp_path, need_tools):
    """The ARMv6-M assembly dot product (four rows per call, four columns per loop pass, then
    the last n % 4 one by one) on column counts 1 to 13 (below 4: no loop pass at all) and on
    heads of 4 to 9 rows (a head that is not a multiple of 4 rows restarts its last pass at
    NUM_CLASSES - 4), with full-scale weights; biases at the int32 limits take the gate sum's
    overflow branch. Bit-exact on the Cortex-M0."""
    need_tools(ARM)
    rng = np.random.default_rng(12)
    shapes = [(1, 5, 4), (2, 7, 5), (3, 9, 6), (13, 4, 7), (11, 6, 9)]
    overflowed = False
    for i, (inputs, hidden, classes) in enumerate(shapes):
        model = random_model(60 + i, kind="sequence", hidden=[hidden], input_size=inputs, num_classes=classes,
                             weights="extreme", name=f"kdot{i}")
        if i % 2:  # two gate rows at the int32 limits, the others still tell the inputs apart
            model.layers[0].bias[:2] = [INT32_MAX, -2**31]
        model = _with_head_of(model, random_model(60 + i, hidden=[hidden], input_size=inputs, num_classes=classes))
        xs = np.concatenate([random_sequences(model, rng, 4, 6), random_sequences(model, rng, 4, 6, extreme=True)])
        want = infer_sequences(model, xs)
        assert len({tuple(row) for row in want.tolist()}) > len(xs) // 2
        overflowed |= _gate_sum_leaves_int32(model, xs)
        render(model, tmp_path / model.name)
        out = run_device_bench("qemu_m0", tmp_path / model.name, list(xs), build_dir=tmp_path / f"b-{model.name}")
        assert out["model"]["kernel"] == "v6m"
        assert out["logits"] == want.tolist(), model.name
    assert overflowed


@pytest.mark.parametrize("cpu, variant", [("cortex-m0plus", "v6m"), ("cortex-m0", "v6m"), ("cortex-m3", "c"), ("cortex-m4", "dsp"),
                                          ("cortex-m7", "dsp"), ("cortex-m33", "dsp"), ("cortex-m55", "mve"),
                                          ("cortex-m55+nomve", "dsp"),
                                          ("cortex-a7", "neon32")])
def test_the_variant_follows_the_cores_feature_macros(cpu, variant, tmp_path, need_tools):
    """A kernel for a richer ISA cannot be built for a poorer core by accident."""
    need_tools({"arm-none-eabi-gcc": ARM["arm-none-eabi-gcc"]})
    model = _models()[0]
    render(model, tmp_path)
    src = tmp_path / "probe.c"
    src.write_text(f'#include "{model.name}_kernels.h"\nconst char *probe = {model.name.upper()}_KERNEL;\n')
    out = subprocess.run(["arm-none-eabi-gcc", f"-mcpu={cpu}", "-mthumb", "-mfloat-abi=softfp", "-E", "-I", str(tmp_path),
                          str(src)], capture_output=True, text=True, check=True).stdout
    assert f'probe = "{variant}"' in out



# The ARMv6-M int4 and binary kernels (templates/kernels/armv6m.c.j2): (inputs, hidden sizes,
# classes). int4 rows are ceil(n / 8) words: 1 (1, 5, 7 and 8 columns), 2 (9, 11, 13), 3 (24),
# 5 (33, 40), from 6 words on a loop (41, 47, 56: odd and even counts); rows of 4k bytes (7, 8, 24,
# 40, 47, 56 columns) are read in place, the others from a word-aligned copy. Sign rows of 1 to 7
# bytes. Heads of 3 to 9 rows (4 per pass, the last from NUM_CLASSES - 4; below 4 the binary head
# runs in C, the int4 one is int8).
V6M_LOW_BIT_SHAPES = [(1, [5], 4), (7, [13, 7], 5), (9, [11], 6), (13, [8], 7), (24, [40], 9), (56, [47], 8),
                      (33, [41], 3)]


@pytest.mark.slow
@pytest.mark.parametrize("width", ["int4", "binary"])
def test_v6m_low_bit_kernels_on_row_and_column_counts(width, tmp_path, need_tools):
    """The ARMv6-M int4 and binary kernels on every row form above, with extreme weights and
    inputs; biases at the int32 limits take the gate sum's overflow branch. Bit-exact on the
    Cortex-M0, and the variant it reports is v6m."""
    need_tools(ARM)
    rng = np.random.default_rng(14)
    overflowed = False
    for i, (inputs, hidden, classes) in enumerate(V6M_LOW_BIT_SHAPES):
        model = random_model(100 + i, kind="sequence", hidden=hidden, input_size=inputs, num_classes=classes,
                             weights="extreme", scales="mixed" if width == "binary" else "normal", width=width,
                             name=f"klb{i}")
        model = _with_head_of(model, random_model(100 + i, hidden=hidden, input_size=inputs, num_classes=classes,
                                                  width=width))
        xs = np.concatenate([random_sequences(model, rng, 4, 6), random_sequences(model, rng, 4, 6, extreme=True)])
        if i % 2 and len(hidden) == 1:  # two gate rows at the int32 limits
            model.layers[0].bias[:2] = [INT32_MAX, -2**31]
            overflowed |= _gate_sum_leaves_int32(model, xs)
        want = infer_sequences(model, xs)
        assert len({tuple(row) for row in want.tolist()}) > len(xs) // 2, model.name
        render(model, tmp_path / model.name)
        out = run_device_bench("qemu_m0", tmp_path / model.name, list(xs), build_dir=tmp_path / f"b-{model.name}")
        assert out["model"]["kernel"] == "v6m"
        assert out["logits"] == want.tolist(), model.name
    assert overflowed


@pytest.mark.parametrize("width", ["int8", "int4", "binary"])
def test_v6m_kernels_compile_for_cortex_m0plus_at_every_level(width, tmp_path, need_tools):
    """The ARMv6-M dot products are assembly functions, not inline assembly: gcc at -Os and -O0
    hands out neither r8-r11 nor eight low registers to an asm statement. Every file compiles
    for the Cortex-M0+ at -O2, -Os and -O0 without a warning, the kernel file with its steps."""
    need_tools({"arm-none-eabi-gcc": ARM["arm-none-eabi-gcc"]}, pio=False)
    model = random_model(110, kind="text", hidden=[13, 47], input_size=56, num_classes=5, vocab_size=50, width=width,
                         name="kc0")
    render(model, tmp_path)
    for level in ("-O2", "-Os", "-O0"):
        for src in sorted(tmp_path.glob("*.c")):
            obj = tmp_path / f"{src.stem}{level}.o"
            proc = subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft", "-std=c99",
                                   level, "-Wall", "-Wextra", "-Werror", "-pedantic", "-c", str(src), "-o", str(obj)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, f"{level} {src.name}:\n{proc.stderr}"
        nm = shutil.which("arm-none-eabi-nm") or "nm"
        symbols = subprocess.run([nm, "--defined-only", str(tmp_path / f"kc0_kernels_v6m{level}.o")], capture_output=True,
                                 text=True, check=True).stdout
        assert " T kc0_l1_step_v6m" in symbols and " T kc0_head_v6m" in symbols, level

@pytest.mark.slow
def test_dsp_long_rows_take_the_exact_fallbacks(tmp_path, need_tools):
    """Rows too long for the paired-weight DSP loop at full-scale weights (the generator falls
    back to the portable step), and long rows of small weights whose frame exceeds the
    assembly routine's immediates (C requantization): still bit-exact on the M4."""
    need_tools(ARM)
    rng = np.random.default_rng(9)
    full = random_model(40, kind="sequence", hidden=[4], input_size=520, num_classes=3, name="klong")
    full.layers[0].w_x = np.where(rng.random(full.layers[0].w_x.shape) < 0.5, -127, 127).astype(np.int8)
    small = random_model(41, kind="sequence", hidden=[4], input_size=2200, num_classes=3, name="kwide")
    small.layers[0].w_x = rng.integers(-3, 4, size=small.layers[0].w_x.shape).astype(np.int8)
    for model in (full, small):
        model.validate()
        xs = random_sequences(model, rng, 4, 5)
        want = infer_sequences(model, xs)
        render(model, tmp_path / model.name)
        out = run_device_bench("qemu_m4", tmp_path / model.name, list(xs), build_dir=tmp_path / f"b-{model.name}")
        assert out["logits"] == want.tolist(), model.name


@pytest.mark.slow
def test_dsp_assembly_layers_on_every_row_shape(tmp_path, need_tools):
    """The assembly layers of the DSP kernel unroll and loop by row length: h walks down (tails,
    an odd top group, pairs of groups, a loop from 16 groups on), x walks up (pairs below 16
    groups, a loop from there). Layers whose rows cover every tail length and each of these
    cases, all on the assembly path, stay bit-exact on the M4."""
    need_tools(ARM)
    from tinyseek.codegen.context import build_context, dsp_down_order

    # hidden / input: 70 = 17 groups + 2 (loop and an odd group), 36 = 9 groups (pairs, odd),
    # 9, 13, 45 (3 tails), 3 and 2 (tails only), 64 = 16 groups (a loop of two passes).
    models = [random_model(50, kind="sequence", hidden=[70, 9, 36], input_size=5, num_classes=3, name="kra"),
              random_model(51, kind="sequence", hidden=[3, 45, 13], input_size=47, num_classes=3, name="krb"),
              random_model(52, kind="sequence", hidden=[64, 2, 31], input_size=32, num_classes=3, name="krc")]
    lengths = set()
    for model in models:
        ctx = build_context(model, "test")
        assert all(L["dsp"] and L["dsp"]["fast"] for L in ctx["layers"]), model.name
        lengths |= {n for L in model.layers for n in (L.input_size, L.hidden)}
    assert {n % 4 for n in lengths} == {0, 1, 2, 3}
    assert {n // 4 >= 16 for n in lengths} == {True, False}
    # The h order reads each group and tail column once.
    assert sorted(dsp_down_order(70)) == sorted(list(range(17)) + [-1 - k for k in (68, 69)])
    rng = np.random.default_rng(12)
    for model in models:
        xs = np.concatenate([random_sequences(model, rng, 3, 7), random_sequences(model, rng, 3, 7, extreme=True)])
        want = infer_sequences(model, xs)
        assert len({tuple(row) for row in want.tolist()}) > len(xs) // 2
        render(model, tmp_path / model.name)
        out = run_device_bench("qemu_m4", tmp_path / model.name, list(xs), build_dir=tmp_path / f"b-{model.name}")
        assert out["model"]["kernel"] == "dsp"
        assert out["logits"] == want.tolist(), model.name


def _block_models():
    """Models whose layers take the Helium kernel's block layout (rows of whole 16-byte chunks,
    at most 128) and one that does not, with saturating inputs and biases."""
    # 32 -> 16 -> 48 in blocks ("pre" on both sides, cell fractions 12 and 7), then 48 -> 20 on
    # the unit-major path in the same build. Extreme weights and inputs reach both ends of the
    # tables. In every layer units 1 and 2 get the extreme biases (as large as the block's
    # bias + 32768 allows), which saturate the int32 adds: gates i, f, g of unit 1 and i, f of
    # unit 2 at the top, g of unit 2 at the bottom, so their cells run into both int16 limits.
    a = random_model(50, kind="sequence", hidden=[16, 48, 20], input_size=32, num_classes=5, weights="extreme",
                     cell_frac_bits=[12, 7, 9], name="kblk")
    for L in a.layers:
        H = L.hidden
        L.bias[[1, H + 1, 2 * H + 1, 2, H + 2]], L.bias[2 * H + 2] = 2**31 - 1 - 32768, -2**31
    # The widest rows, "pre32" on both sides (the block holds no shifts).
    b = random_model(51, kind="sequence", hidden=128, input_size=128, num_classes=4, name="kb128")
    b.layers[0].nx, b.layers[0].nh = np.full_like(b.layers[0].nx, 32), np.full_like(b.layers[0].nh, 32)
    b.validate()
    return [a, b]


def test_the_helium_block_layout_applies_to_whole_chunks_up_to_128():
    a, b = _block_models()
    modes = [[mve_layer("m", 0, L, requant_mode(L.w_x, L.nx), requant_mode(L.w_h, L.nh)) for L in m.layers]
             for m in (a, b)]
    assert [m is not None for m in modes[0]] == [True, True, False]
    assert modes[0][0]["x_pre"] and modes[0][1]["h_pre"] and not (modes[1][0]["x_pre"] or modes[1][0]["h_pre"])
    wide = random_model(52, hidden=16, input_size=144)
    post = _post_only(random_model(53, hidden=16, input_size=16))
    for m in (wide, post):
        L = m.layers[0]
        assert mve_layer("m", 0, L, requant_mode(L.w_x, L.nx), requant_mode(L.w_h, L.nh)) is None


@pytest.mark.slow
def test_the_helium_block_layout_is_bit_exact(tmp_path, need_tools):
    need_tools(ARM)
    rng = np.random.default_rng(8)
    for model in _block_models():
        # 16 steps: the saturated cells reach their limits after 8 and must stay there
        inputs = list(np.concatenate([random_sequences(model, rng, 4, 16), random_sequences(model, rng, 4, 16, extreme=True)]))
        want = infer_sequences(model, np.stack(inputs))
        assert len({tuple(row) for row in want.tolist()}) > len(inputs) // 2
        render(model, tmp_path / model.name)
        out = run_device_bench("qemu_m55", tmp_path / model.name, inputs, build_dir=tmp_path / f"b-{model.name}")
        assert out["model"]["kernel"] == "mve"
        assert out["logits"] == want.tolist(), model.name
