"""The Helium (MVE) int4 kernel (templates/kernels/helium.c.j2, int4 part) bit for bit against
the oracle on qemu_m55: the block layout of whole 32-column rows (h held in registers or on the
stack, "pre" and "pre32", saturating biases), and on the unit-at-a-time path odd column counts,
rows whose bytes are not multiples of 16 (predicated tails), hidden sizes that are not multiples
of 4 (the scalar cell), every requantization form, two layers, extreme nibbles -8 and 7 against
extreme inputs, and rows long enough for the looped assembly. The binary kernel (the binary part)
the same way: its block of sign-bit nibbles on whole 32-column rows, and the four-row path (sign
bits as predicates) on rows of one byte, a halfword, odd byte counts and long rows, heads whose
class counts are not multiples of 4, rows of all +1 and all -1 against inputs at the int8 ends."""
import numpy as np
import pytest

from tinyseek.codegen.render import render
from tinyseek.harness.bench import run_device_bench
from tinyseek.quant.reference import encode_multiplier, infer_sequences
from tinyseek.quant.synthetic import random_model

from test_kernels_mcu import _inputs

ARM = {"arm-none-eabi-gcc": "sudo apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi",
       "qemu-system-arm": "sudo apt-get install -y qemu-system-arm"}


def _post_only(model):
    """Shifts raised to at least 33: only the "post" form (the scalar requantization)."""
    for L in model.layers:
        L.nx, L.nh = np.maximum(L.nx, 33), np.maximum(L.nh, 33)
    model.validate()
    return model


def _extreme_rows(model):
    """A whole row of -8 and one of 7 in every matrix (the largest products, 16 * 8 * 128 = 2^14)."""
    for L in model.layers:
        for w in (L.w_x, L.w_h):
            w[0], w[5] = -8, 7
    model.validate()
    return model


def _pre32_x(model):
    """Shifts of 32 on the x side: the "pre32" form there (no shift table), "pre" on the h side."""
    for L in model.layers:
        L.nx = np.full_like(L.nx, 32)
    model.validate()
    return model


def _pre32_h(model):
    for L in model.layers:
        L.nh = np.full_like(L.nh, 32)
    model.validate()
    return model


def _saturating_biases(model):
    """Units 1 and 2 of every layer get the extreme biases the block allows (bias + 32768 below
    2^31): their gate sums saturate at both int32 ends."""
    for L in model.layers:
        H = L.hidden
        L.bias[[1, H + 1, 2 * H + 1, 2, H + 2]], L.bias[2 * H + 2] = 2**31 - 1 - 32768, -2**31
    model.validate()
    return model


def _models():
    return [
        # Tails only (7 and 13 columns: 4 and 7 bytes), odd columns, hidden 7 and 13 (scalar cells).
        _extreme_rows(random_model(44, kind="sequence", hidden=[7, 13], input_size=7, num_classes=3,
                                   weights="extreme", width="int4", name="hseq")),
        # 33 and 17 columns: one 16-byte chunk plus a 1-byte tail; only the "post" form.
        _post_only(random_model(42, kind="text", hidden=[17, 33], input_size=9, num_classes=5, vocab_size=300,
                                max_len=12, weights="extreme", width="int4", name="htxt")),
        # Powers of two (shifts around 32, both 32-bit forms in one matrix); 45 = 23 bytes.
        random_model(43, kind="sequence", hidden=[45], input_size=21, num_classes=4, scales="pow2", width="int4",
                     name="hpow"),
        # The default shape (32 -> 64: the block layout with h held in q4-q7), then 64 -> 36 (the
        # unit-at-a-time path: "pre" vectors and the four-unit cell, a tail of 2 bytes on the h side).
        random_model(44, kind="sequence", hidden=[64, 36], input_size=32, num_classes=6, weights="extreme",
                     width="int4", name="hdef"),
        # Long rows: 300 columns (150 bytes: the looped assembly and a 6-byte tail; "pre32") and 130
        # (65 bytes, four pointers: 3 x 65 is past VLDRB's immediate offsets).
        _pre32_x(random_model(45, kind="sequence", hidden=[130], input_size=300, num_classes=4, width="int4",
                              name="hlong")),
        # Block layouts: 64 -> 32 (h held in q4-q5), 32 -> 96 (h on the stack), then 96 -> 20 on the
        # unit-at-a-time path in the same build; saturating biases in the blocks.
        _saturating_biases(random_model(46, kind="sequence", hidden=[32, 96, 20], input_size=64, num_classes=5,
                                        weights="extreme", cell_frac_bits=[12, 7, 9], width="int4", name="hblk")),
        # The widest block rows (128 -> 128), "pre32" on both sides: the block's shifts are -4.
        _pre32_x(_pre32_h(random_model(47, kind="sequence", hidden=[128], input_size=128, num_classes=4,
                                       width="int4", name="hb128"))),
    ]


def _bit_exact_on_m55(model, inputs, want, tmp_path):
    # Saturated outputs would hide a wrong sum: the inputs must tell the outputs apart.
    assert len({tuple(row) for row in want.tolist()}) > len(inputs) // 2, model.name
    render(model, tmp_path / model.name)
    out = run_device_bench("qemu_m55", tmp_path / model.name, inputs, build_dir=tmp_path / "b")
    assert out["model"]["kernel"] == "mve"
    assert out["logits"] == want.tolist(), model.name


@pytest.mark.slow
@pytest.mark.parametrize("index", range(7))
def test_helium_int4_is_bit_exact(index, tmp_path, need_tools):
    need_tools(ARM)
    model = _models()[index]
    inputs, want = _inputs(model, np.random.default_rng(9 + index))
    _bit_exact_on_m55(model, inputs, want, tmp_path)


@pytest.mark.slow
def test_portable_flag_still_selects_the_c_kernels_on_helium(tmp_path, need_tools):
    need_tools(ARM)
    model = _models()[0]
    render(model, tmp_path / model.name)
    inputs, want = _inputs(model, np.random.default_rng(6))
    out = run_device_bench("qemu_m55", tmp_path / model.name, inputs, build_dir=tmp_path / "b",
                           extra_flags=["-DTINYSEEK_KERNEL_PORTABLE"])
    assert out["model"]["kernel"] == "c" and out["logits"] == want.tolist()


def test_the_models_cover_every_requant_form_and_shape():
    from tinyseek.codegen.context import mve_layer, requant_mode
    modes, row_bytes = set(), set()
    for m in _models():
        for L in m.layers:
            modes |= {requant_mode(L.w_x, L.nx), requant_mode(L.w_h, L.nh)}
            row_bytes |= {(L.input_size + 1) // 2, (L.hidden + 1) // 2}
    assert {"pre", "pre32", "post", "mixed"} <= modes
    blocks = [[mve_layer("m", 0, L, requant_mode(L.w_x, L.nx), requant_mode(L.w_h, L.nh), "int4") is not None
               for L in m.layers] for m in _models()]
    assert blocks[3] == [True, False] and blocks[5] == [True, True, False] and blocks[6] == [True]
    assert not any(blocks[0] + blocks[1] + blocks[2] + blocks[4])
    # tails only, whole chunks, chunks and a tail, four pointers, the looped assembly
    assert {4, 16, 32, 17, 65, 150} <= row_bytes


# -- binary weights (the binary part of helium.c.j2) ---------------------------------------------

def _all_signs(model):
    """A row of all +1 and one of all -1 in every matrix and the head: with the extreme inputs the
    sums reach +-128 n, and a row whose bits are all set or all clear tells a wrong mask or shift."""
    for L in model.layers:
        for w in (L.w_x, L.w_h):
            w[0], w[5] = 1, -1
    model.head.w[0], model.head.w[-1] = 1, -1
    model.validate()
    return model


def _live(model, seed):
    """Gate multipliers of 2^2..2^5 and biases an eighth of the drawn ones, head multipliers of
    2^-3..2: sums of +-1 rows are small next to int8 ones, and with the usual draws the gates would
    follow their biases whatever the input (every output alike)."""
    rng = np.random.default_rng(seed)

    def draw(size, lo, hi):
        pairs = [encode_multiplier(2.0 ** rng.uniform(lo, hi)) for _ in range(size)]
        return np.array([m for m, _ in pairs], np.int32), np.array([n for _, n in pairs], np.int32)

    for L in model.layers:
        (L.mx, L.nx), (L.mh, L.nh) = draw(4 * L.hidden, 2, 5), draw(4 * L.hidden, 2, 5)
        L.bias = (L.bias // 8).astype(np.int32)
    model.head.m, model.head.n = draw(model.num_classes, -3, 1)
    model.validate()
    return model


def _binary_models():
    return [
        # Rows of one and two bytes (7 and 13 columns), hidden 7 and 13 (the scalar cells), 3 classes.
        _all_signs(_live(random_model(50, kind="sequence", hidden=[7, 13], input_size=7, num_classes=3,
                                      width="binary", name="bseq"), 100)),
        # Odd byte counts (40 = 5 bytes: halfwords and a last byte; 17 = 3, 33 = 5), a text model,
        # only the "post" form; a head of 5 classes over 5-byte rows.
        _post_only(random_model(51, kind="text", hidden=[17, 33], input_size=40, num_classes=5, vocab_size=300,
                                max_len=12, width="binary", name="btxt")),
        # Powers of two (both 32-bit forms in one matrix), 45 and 21 columns, 6 classes.
        random_model(52, kind="sequence", hidden=[45], input_size=21, num_classes=6, scales="pow2", width="binary",
                     name="bpow"),
        # The default shape (32 -> 64: the block with h held in q4-q7), then 64 -> 36 on the four-rows
        # path ("pre" vectors, the four-unit cell, 5-byte rows on the h side); a head of 5 classes.
        _all_signs(_live(random_model(53, kind="sequence", hidden=[64, 36], input_size=32, num_classes=5,
                                      width="binary", name="bdef"), 103)),
        # Long rows: 300 columns (38 bytes, "pre32") and 130 (17 bytes).
        _pre32_x(random_model(54, kind="sequence", hidden=[130], input_size=300, num_classes=4, width="binary",
                              name="blong")),
        # Blocks: 64 -> 32 (h held in q4-q5), 32 -> 96 (h on the stack), then 96 -> 20 on the four-rows
        # path in the same build; saturating biases in the blocks, cell fractions 12, 7, 9.
        _saturating_biases(_all_signs(_live(random_model(55, kind="sequence", hidden=[32, 96, 20], input_size=64,
                                                         num_classes=7, cell_frac_bits=[12, 7, 9], width="binary",
                                                         name="bblk"), 105))),
        # The widest block rows (128 -> 128), "pre32" on both sides (no shift vectors in the block).
        _pre32_x(_pre32_h(_live(random_model(56, kind="sequence", hidden=[128], input_size=128, num_classes=4,
                                             width="binary", name="bb128"), 106))),
        # Shifts anywhere in 1..62: rows only int64 can requantize (the scalar gates), 9 columns.
        random_model(57, kind="sequence", hidden=[6], input_size=9, num_classes=3, scales="mixed", width="binary",
                     name="bmix"),
        # Blocks whose rows end in 16 columns (8 bytes per gate, 16-bit lanes): 16 -> 48 (x only
        # those, h held in q4-q6), 48 -> 80 (h on the stack), 80 -> 16 (h only those, held in q4).
        _all_signs(_live(random_model(58, kind="sequence", hidden=[48, 80, 16], input_size=16, num_classes=5,
                                      cell_frac_bits=[8, 12, 10], width="binary", name="bhalf"), 108)),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(9))
def test_helium_binary_is_bit_exact(index, tmp_path, need_tools):
    need_tools(ARM)
    model = _binary_models()[index]
    inputs, want = _inputs(model, np.random.default_rng(19 + index))
    if model.kind == "sequence":
        inputs[-1][:] = -128  # the extreme sums: every column at the int8 ends
        inputs[-2][:] = 127
        want = infer_sequences(model, np.array(inputs))
    _bit_exact_on_m55(model, inputs, want, tmp_path)


def test_the_binary_models_cover_every_path():
    from tinyseek.codegen.context import mve_layer, requant_mode
    modes, row_bytes, head_rows = set(), set(), set()
    for m in _binary_models():
        for L in m.layers:
            modes |= {requant_mode(L.w_x, L.nx), requant_mode(L.w_h, L.nh)}
            row_bytes |= {(L.input_size + 7) // 8, (L.hidden + 7) // 8}
        head_rows.add(m.num_classes % 4)
    assert {"pre", "pre32", "post", "mixed", "exact"} <= modes
    blocks = [[mve_layer("m", 0, L, requant_mode(L.w_x, L.nx), requant_mode(L.w_h, L.nh), "binary") is not None
               for L in m.layers] for m in _binary_models()]
    assert blocks[3] == [True, False] and blocks[5] == [True, True, False] and blocks[6] == [True]
    assert blocks[8] == [True, True, True]
    assert not any(blocks[0] + blocks[1] + blocks[2] + blocks[4] + blocks[7])
    # one byte, a halfword, odd byte counts, long rows; heads of 1, 2 and 3 rows past a multiple of 4
    assert {1, 2, 3, 5, 6, 17, 38} <= row_bytes and {0, 1, 2, 3} <= head_rows


def test_binary_block_holds_the_sign_bits_in_nibbles():
    """The block's bytes unpack to the unit-major rows: per 32 columns unit u's column j in bit u of
    byte j and column 16 + j in bit 4 + u; a last 16 columns in 8 bytes, columns j and 8 + j."""
    from tinyseek.codegen.context import mve_layer, requant_mode, unit_major
    for model, index in ((3, 0), (8, 1)):  # 32 -> 64; 48 -> 80 (a whole and a half chunk of x)
        L = _binary_models()[model].layers[index]
        block = mve_layer("m", 0, L, requant_mode(L.w_x, L.nx), requant_mode(L.w_h, L.nh), "binary")["block"]
        raw = np.asarray(block.values, "<i4").view(np.uint8)
        I, H = L.input_size, L.hidden
        per_gate = I // 2 + H // 2 + 8 + 48  # x and h bits, the two matrices' shifts, Mx, bias, Mh
        assert raw.size == H // 4 * 4 * per_gate
        um = unit_major(L.w_x, H)
        for G in (0, H // 4 - 1):
            for g in range(4):
                x_bits = raw[(4 * G + g) * per_gate:][:I // 2]  # the four units' gate-g rows of W_x
                for u in range(4):
                    row = um[4 * (4 * G + u) + g] > 0
                    for c in range(0, I, 32):
                        half = min(32, I - c) // 2
                        chunk = x_bits[c // 2:c // 2 + half]
                        assert np.array_equal((chunk >> u) & 1, row[c:c + half])
                        assert np.array_equal((chunk >> (4 + u)) & 1, row[c + half:c + 2 * half])
