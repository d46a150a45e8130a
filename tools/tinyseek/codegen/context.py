"""QuantModel -> the template context: names, shapes, the C arrays and the memory budget.

Everything the templates print comes from here, so the byte counts in the header macros are
computed from the very arrays the data file defines.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quant.model import QuantModel, embedding_codes, pack_weights
from ..quant.reference import MAX_SOFTMAX_CLASSES, check_model, softmax_multiplier
from .identifiers import CodegenError, check_name, prefixed

GENERATOR = "tinyseek"
REGENERATE = "tinyseek codegen"
# C type -> (numpy dtype the values must fit, bytes per element)
CTYPES = {"int8_t": (np.int8, 1), "uint8_t": (np.uint8, 1), "int16_t": (np.int16, 2), "int32_t": (np.int32, 4)}


@dataclass(frozen=True)
class CArray:
    """One `static const` array of the data file."""
    name: str  # full C identifier
    ctype: str
    values: np.ndarray  # flattened, row-major
    doc: str

    @property
    def length(self) -> int:
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        return self.length * CTYPES[self.ctype][1]


def _array(name: str, suffix: str, ctype: str, values: np.ndarray, doc: str) -> CArray:
    dtype = CTYPES[ctype][0]
    v = np.asarray(values).reshape(-1)
    info = np.iinfo(dtype)
    if v.size and (int(v.min()) < info.min or int(v.max()) > info.max):
        raise CodegenError(f"{suffix}: values {int(v.min())}..{int(v.max())} do not fit {ctype}")
    return CArray(prefixed(name, suffix), ctype, v.astype(dtype), doc)


def file_names(name: str, kind: str, audio: bool = False) -> dict[str, str]:
    """Template -> output file name of one model library."""
    files = {
        "lib/model.h.j2": f"{name}_model.h",
        "lib/model_data.c.j2": f"{name}_model_data.c",
        "lib/model.c.j2": f"{name}_model.c",
        "lib/library.json.j2": "library.json",
        "lib/README.md.j2": "README.md",
        # One dispatch header and one file per kernel variant; each variant's file compiles to
        # nothing unless the dispatch header selected it (the portable one is always built).
        "kernels/dispatch.h.j2": f"{name}_kernels.h",
        "kernels/portable.c.j2": f"{name}_kernels_c.c",
        "kernels/cortexm_dsp.c.j2": f"{name}_kernels_dsp.c",
        "kernels/helium.c.j2": f"{name}_kernels_mve.c",
        "kernels/riscv.c.j2": f"{name}_kernels_rv32.c",
        "kernels/neon.c.j2": f"{name}_kernels_neon.c",
        "kernels/neon32.c.j2": f"{name}_kernels_neon32.c",
        "kernels/armv6m.c.j2": f"{name}_kernels_v6m.c",
        "kernels/esp.c.j2": f"{name}_kernels_esp.c",
    }
    if kind == "text":
        files["lib/tokenizer.c.j2"] = f"{name}_tokenizer.c"
    if audio:  # the fixed-point front end the library runs on samples (templates/audio/)
        files["audio/frontend.h.j2"] = f"{name}_frontend.h"
        files["audio/frontend.c.j2"] = f"{name}_frontend.c"
    return files


# Low-bit gate rows: (weights per byte, how they are packed), docs/numerics.md "Low-bit weights".
LOW_BIT_PACKING = {"int4": (2, "two int4 per byte, even column in the low nibble"),
                   "binary": (8, "sign bits, column k in bit k % 8 of byte k / 8, 1 = +1")}


# The weight rows of a layer as the kernels read them: unit-major (row 4j+g is gate g of unit j),
# so one pass over x and h computes all four gates of a unit and its cell update at once.
def unit_major(values: np.ndarray, hidden: int) -> np.ndarray:
    v = np.asarray(values)
    return v.reshape(4, hidden, *v.shape[1:]).swapaxes(0, 1).reshape(v.shape)


def requant_mode(w: np.ndarray, n: np.ndarray, extra: np.ndarray | int = 0) -> str:
    """How a 32-bit kernel computes requant(acc, M, n) of docs/numerics.md exactly for every row.

    "pre32": n == 32 for every row (what real models give, docs/numerics.md): acc * M rounded
            to its high word (SMMULR), no shift to load.
    "pre":  n <= 32 for every row: (acc << (32 - n)) * M rounded to its high word;
            exact because acc << (32 - n) provably fits int32 (bound below).
    "post": n > 32 for every row: the high word of acc * M, then a rounding shift by n - 32.
    "mixed": either of the two, chosen per row at run time.
    "exact": a row's |acc| bound does not allow the "pre" form: int64 arithmetic.
    `extra` adds to the bound of |acc| (the head's bias)."""
    bound = np.abs(w.astype(np.int64)).sum(axis=1) * 128 + np.abs(np.asarray(extra, np.int64))
    n = np.asarray(n, np.int64)
    pre = n <= 32
    if np.any(bound[pre] << (32 - n[pre]) >= 2**31) or np.any(bound >= 2**30):
        return "exact"
    if np.all(n == 32):
        return "pre32"
    return "pre" if pre.all() else "post" if not pre.any() else "mixed"


# The DSP kernel (templates/kernels/cortexm_dsp.c.j2) multiplies two gate rows of a unit with one
# SMLAD: a halfword holds row A's weight plus 128 in its low byte and row B's weight in its high
# byte, so SMLAD on the raw word gives sum (A + 128 + 256 B) x and, after UXTB16, sum (A + 128) x.
# With both accumulators started at -128 sum(x), the first is acc_A + 256 acc_B, the second acc_A.
# Rows A are gates i and g of each unit, rows B gates f and o. Recovering acc_B from the
# difference needs |256 acc_B| < 2^31.
DSP_B_BOUND = 2**23


def _dsp_pair_words(w: np.ndarray, hidden: int, order: list[int] | None = None) -> np.ndarray:
    """Unit-major rows [4H, n] -> int32 [H, n]: per unit, for every 4 columns c0..c3 the words
    (P1 c0|c2), (P2 c0|c2), (P1 c1|c3), (P2 c1|c3), where P1 pairs gates i/f and P2 gates g/o and a
    word holds the halfword of its first column low; then one word (P1 k | P2 k) per tail column k.
    The column pairing matches the widened input (SXTB16 splits x into (x0, x2) and (x1, x3)).
    `order` lists the 4-column groups and then the tail columns (as -1 - k) in the order the
    kernel reads them; by default ascending."""
    n = w.shape[1]
    r = w.astype(np.int64).reshape(hidden, 4, n)
    p1 = r[:, 0] + 128 + 256 * r[:, 1]  # int16: low byte A + 128 (0..255), high byte B
    p2 = r[:, 2] + 128 + 256 * r[:, 3]

    def word(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return (lo & 0xFFFF) + hi * 65536

    g = n // 4
    if order is None:
        order = list(range(g)) + [-1 - k for k in range(4 * g, n)]
    words = []
    for q in order:
        if q >= 0:
            words += [word(p[:, 4 * q + a], p[:, 4 * q + a + 2]) for a in (0, 1) for p in (p1, p2)]
        else:
            words.append(word(p1[:, -1 - q], p2[:, -1 - q]))
    return np.stack(words, axis=1) if n else np.zeros((hidden, 0), np.int64)


def dsp_down_order(n: int) -> list[int]:
    """The order in which the assembly layers read the h matrix's groups and tail columns (as
    -1 - k): downwards from the top of the widened h, so that its loop ends when the pointer
    reaches sp. The tails first, then the top group alone if the count is odd, then pairs of
    groups, each one LDMDB of four pair words (the lower group first)."""
    g = n // 4
    order = [-1 - k for k in reversed(range(4 * g, n))] + ([g - 1] if g % 2 else [])
    for q in range(g - g % 2 - 2, -1, -2):
        order += [q, q + 1]
    return order


def _shift_words(values: np.ndarray) -> np.ndarray:
    """Four bytes per unit (gate g in byte g) as one little-endian int32."""
    b = np.asarray(values, np.int64).reshape(-1, 4)
    return b[:, 0] | b[:, 1] << 8 | b[:, 2] << 16 | b[:, 3] << 24


def _requant_bound(w: np.ndarray, m: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Per row, a bound on |requant(acc, M, n)| over every input the row can see."""
    bound = np.abs(w.astype(np.int64)).sum(axis=1) * 128
    return np.array([-(-(int(b) * int(mm)) >> int(nn)) + 1 for b, mm, nn in zip(bound, m, n)], dtype=object)


def dsp_layer(name: str, index: int, layer, x_requant: str, h_requant: str) -> dict | None:
    """The DSP kernel's array for one layer, or None when its rows are too long for the paired
    accumulators (|acc_B| could reach 2^23: more than 511 columns; the layer then runs the
    portable C). Per unit, one block: [H words of paired recurrent weights][shift word][Mh 4]
    [bias 4][I words of paired input weights][shift word][Mx 4], so the kernel reads every
    per-unit value with one pointer. It replaces w_x, w_h, mx, nx, mh, nh and bias byte for byte.

    `fast`: the kernel requantizes in assembly, z = sat16(SMMLAR(acc_x', Mx, SMMLAR(acc_h', Mh,
    bias))) with acc' = acc << (32 - n). That needs the "pre" forms, at most 8 bits of shift on
    rows B (which recover acc_B << s as (256 acc_B) >> (8 - s)) and a proof that the sum of the
    two requantized terms and the bias never leaves int32. The shift word then holds
    (s_i, 8 - s_f, s_g, 8 - s_o) with s = 32 - n, and the recurrent weights are in the order of
    `dsp_down_order`; otherwise the shift word holds n per gate and C code requantizes."""
    H, I = layer.hidden, layer.input_size
    um = lambda v: unit_major(v, H)  # noqa: E731
    wx, wh, nx, nh = um(layer.w_x), um(layer.w_h), um(layer.nx), um(layer.nh)
    rows_b = np.arange(4 * H) % 2 == 1
    for w in (wx, wh):
        if np.any(np.abs(w[rows_b].astype(np.int64)).sum(axis=1) * 128 >= DSP_B_BOUND):
            return None
    # The assembly's stack frame, from sp: h widened (2 words per 4 columns, 1 per tail column)
    # and its 4 start words, 9 words of constants and pointers, x's 4 start words and x widened.
    # Its offsets must fit the 12-bit immediates.
    xq_words, hq_words = (4 + n // 4 * 2 + n % 4 for n in (I, H))
    hs = 4 * (hq_words - 4)
    frame = {"hs": hs, "consts": hs + 16, "xq": hs + 52, "bytes": (hs + 52 + 4 * xq_words + 7) // 8 * 8}
    fast = x_requant in ("pre", "pre32") and h_requant in ("pre", "pre32") and frame["bytes"] + 16 <= 4095 and \
        bool(np.all(32 - nx[rows_b] <= 8)) and bool(np.all(32 - nh[rows_b] <= 8))
    if fast:
        total = _requant_bound(wx, um(layer.mx), nx) + _requant_bound(wh, um(layer.mh), nh) + \
            np.abs(um(layer.bias).astype(np.int64)).astype(object)
        fast = max(total) < 2**31
    if fast:
        code = np.where(rows_b, 8 - (32 - nx), 32 - nx), np.where(rows_b, 8 - (32 - nh), 32 - nh)
    else:
        code = nx, nh
    blocks = np.concatenate([_dsp_pair_words(wh, H, dsp_down_order(H) if fast else None),
                             _shift_words(code[1])[:, None], um(layer.mh).reshape(H, 4),
                             um(layer.bias).reshape(H, 4),
                             _dsp_pair_words(wx, H), _shift_words(code[0])[:, None], um(layer.mx).reshape(H, 4)],
                            axis=1)
    shifts = "(s_i, 8 - s_f, s_g, 8 - s_o), s = 32 - n" if fast else "n per gate"
    order = " in the kernel's order" if fast else ""
    return {
        "fast": fast, "frame": frame, "xq_words": xq_words, "hq_words": hq_words,
        "blocks": _array(name, f"l{index}_dsp", "int32_t", blocks,
                         f"layer {index} for the DSP kernel, per unit: {H} words of paired recurrent weights{order}, "
                         f"shifts {shifts}, Mh[4], bias[4], {I} words of paired input weights, shifts, Mx[4]"),
    }


# The Helium kernel (templates/kernels/helium.c.j2) runs a layer four units at a time in one
# assembly loop when its rows are whole 16-byte chunks, at most 128 long (the immediate offsets of
# its stack copies of x and h), and both matrices requantize in a "pre" form. Per group of four
# units and per gate (i, f, g, o), the block holds the four units' W_x rows chunk by chunk
# ([chunk][unit][16 bytes]), then their W_h rows the same way, then the shifts 32 - n of each
# "pre" matrix (one byte per unit), Mx[4], bias[4] + 32768 and Mh[4]: one post-incremented
# pointer reads it all, and the sums of a chunk's four VMLADAVs are one vector with lanes = units.
# The bias carries the activation's index offset (sat16(z) + 32768 = clamp(z + 32768, 0, 65535)).
# int4 rows (whole 16-byte chunks: multiples of 32 columns) are the packed bytes in the same
# order, each chunk 32 columns; their sums are 16 acc, so the block holds a signed shift 28 - n
# for both matrices (-4 for "pre32").
# Binary rows (multiples of 16 columns) hold the same bits in another order: per gate of the four
# units and per 32 columns 16 bytes, byte j with column j of unit u's row in bit u and column
# 16 + j in bit 4 + u (the kernel's nibble chains), a last 16 columns in 8 bytes the same way
# (columns j and 8 + j in byte j); the shifts are the int8 ones.
MVE_MAX = 128


def mve_layer(name: str, index: int, layer, x_requant: str, h_requant: str, width: str = "int8") -> dict | None:
    """The Helium kernel's block of one layer, or None where it does not apply (the layer then
    runs the unit-major arrays). It replaces w_x, w_h, mx, nx, mh, nh and bias in MVE builds.
    width: the gate weights' (int8, int4 or binary)."""
    H, I = layer.hidden, layer.input_size
    pre = ("pre", "pre32")
    chunk = 32 if width == "int4" else 16  # columns per 16 bytes of a row (binary: a multiple of 16)
    if I % chunk or H % chunk or I > MVE_MAX or H > MVE_MAX or x_requant not in pre or h_requant not in pre:
        return None
    if int(layer.bias.max()) + 32768 >= 2**31:
        return None
    um = lambda v: unit_major(v, H)  # noqa: E731

    def weights(w: np.ndarray) -> np.ndarray:  # [group][gate][chunk][unit][16] as bytes
        if width == "binary":  # [group][gate], per 32 columns (a last 16) the halves in bits u and 4 + u
            bits = (um(w) > 0).astype(np.uint8).reshape(H // 4, 4, 4, -1)  # [group][unit][gate][column]
            u, n, out = np.arange(4)[None, :, None, None], bits.shape[3], []
            for c in range(0, n, 32):
                half = min(32, n - c) // 2
                lo, hi = bits[..., c:c + half], bits[..., c + half:c + 2 * half]
                out.append(((lo << u) | (hi << (u + 4))).sum(axis=1, dtype=np.uint8))
            return np.concatenate(out, axis=2)
        rows = um(w).view(np.uint8) if width == "int8" else pack_weights(um(w), width)
        n = rows.shape[1]
        return rows.reshape(H // 4, 4, 4, n // 16, 16).transpose(0, 2, 3, 1, 4).reshape(H // 4, 4, -1)

    def per_gate(v: np.ndarray, dtype: str) -> np.ndarray:  # [group][gate][unit] as bytes
        return np.ascontiguousarray(um(v).reshape(H // 4, 4, 4).transpose(0, 2, 1)).astype(dtype).view(np.uint8)

    parts = [weights(layer.w_x), weights(layer.w_h)]
    if width == "int4":
        x_pre = h_pre = True
        parts += [per_gate(28 - layer.nx.astype(np.int64), "i1"), per_gate(28 - layer.nh.astype(np.int64), "i1")]
    else:
        x_pre, h_pre = x_requant == "pre", h_requant == "pre"
        if x_pre:
            parts.append(per_gate(32 - layer.nx.astype(np.int64), "u1"))
        if h_pre:
            parts.append(per_gate(32 - layer.nh.astype(np.int64), "u1"))
    parts += [per_gate(layer.mx, "<i4"), per_gate(layer.bias.astype(np.int64) + 32768, "<i4"), per_gate(layer.mh, "<i4")]
    block = np.concatenate(parts, axis=2)
    shifts = "shifts 28 - n of both matrices" if width == "int4" else "shifts 32 - n of the \"pre\" matrices"
    return {"x_pre": x_pre, "h_pre": h_pre,
            "block": _array(name, f"l{index}_mve", "int32_t", block.reshape(-1).view("<i4"),
                            f"layer {index} for the Helium kernel, per 4 units and gate: W_x and W_h "
                            f"{'packed int4 ' if width == 'int4' else ''}"
                            f"{'sign bits [chunk][16], unit u in bits u and 4 + u' if width == 'binary' else '[chunk][unit][16]'}, "
                            f"{shifts}, "
                            "Mx[4], bias[4] + 32768, Mh[4]")}


# The ESP32/S3 kernel (templates/kernels/esp.c.j2) runs ESP-DSP's float dot product on int8 data.
# Every product of two int8 values and every partial sum of a row is an integer of magnitude at
# most sum |w| * 128; float32 holds every integer up to 2^24 exactly, so while that bound is
# below 2^24 no addition or product ever rounds and the float result is the int32 accumulator,
# in any summation order, fused or not. Longer rows are split into chunks below the bound.
ESP_EXACT_LIMIT = 2**24
# dsps_dotprod_f32_aes3 (ESP32-S3) takes its 4-lane path only for lengths that are multiples of 4
# on 16-byte aligned arrays: rows are padded with zeros to a multiple of 4, chunks start on one.
ESP_LANES = 4


def esp_chunks(w: np.ndarray, limit: int = ESP_EXACT_LIMIT) -> list[tuple[int, int]]:
    """(start, length) column chunks shared by every row of `w` [rows, n], padded with zeros to a
    multiple of 4 columns: lengths are multiples of 4, and in every row each chunk's bound on
    |partial sum| (sum of |w| * 128 over the chunk) is below `limit`."""
    rows, n = w.shape
    padded = -(-n // ESP_LANES) * ESP_LANES
    mag = np.zeros((rows, padded), np.int64)
    mag[:, :n] = np.abs(w.astype(np.int64)) * 128
    groups = mag.reshape(rows, -1, ESP_LANES).sum(axis=2)
    if groups.size and int(groups.max()) >= limit:
        raise CodegenError(f"ESP chunk limit {limit} is below the bound of {ESP_LANES} columns; "
                           f"it must exceed {ESP_LANES * 128 * 128}")
    chunks, start, run = [], 0, np.zeros(rows, np.int64)
    for g in range(groups.shape[1]):
        if np.any(run + groups[:, g] >= limit):
            chunks.append((start, ESP_LANES * g - start))
            start, run = ESP_LANES * g, np.zeros(rows, np.int64)
        run += groups[:, g]
    chunks.append((start, padded - start))
    return chunks


def esp_matrix(name: str, suffix: str, w: np.ndarray, doc: str) -> dict:
    """One unit-major weight matrix as the ESP kernel reads it: float rows (printed as the int8
    values) padded with zeros to `stride` columns, and the chunks of every row's dot product."""
    rows, n = w.shape
    stride = -(-n // ESP_LANES) * ESP_LANES
    values = np.zeros((rows, stride), np.int64)
    values[:, :n] = w
    return {"name": prefixed(name, suffix), "weights": values.reshape(-1), "length": values.size, "stride": stride,
            "chunks": esp_chunks(w), "nbytes": 4 * values.size, "doc": doc}


def esp_layer(name: str, index: int, layer) -> dict:
    """The ESP kernel's float weights of one layer (input and recurrent)."""
    H = layer.hidden
    rows = f"[{H}][4], unit-major"
    return {
        "x": esp_matrix(name, f"l{index}_esp_w_x", unit_major(layer.w_x, H),
                        f"layer {index} input weights as float {rows} [{layer.input_size}], zero-padded"),
        "h": esp_matrix(name, f"l{index}_esp_w_h", unit_major(layer.w_h, H),
                        f"layer {index} recurrent weights as float {rows} [{H}], zero-padded"),
    }


# The neon-dot kernel (templates/kernels/neon.c.j2) reads a layer's matrices row-interleaved: per
# unit, 16-byte blocks of columns 4c..4c+3 of its four gate rows, so one SDOT by element (x bytes
# 4c..4c+3) adds four columns of all four rows into four int32 lanes, one lane per row, and no
# reduction follows. The same bytes as the unit-major arrays, rearranged; used when both matrices
# of a layer have rows of a multiple of 16 bytes, at most 256 (its unrolled path).
NEON_DOT_MAX = 256


def neon_dot_layer(name: str, index: int, wx: np.ndarray, wh: np.ndarray, hidden: int) -> dict | None:
    """The row-interleaved w_x and w_h of a layer (unit-major in), or None where it does not apply."""
    if any(w.shape[1] % 16 or w.shape[1] > NEON_DOT_MAX for w in (wx, wh)):
        return None

    def interleave(w: np.ndarray) -> np.ndarray:
        return w.reshape(hidden, 4, w.shape[1] // 4, 4).transpose(0, 2, 1, 3)

    blocks = f"[{hidden}][columns / 4][4 rows][4 columns], row-interleaved for SDOT by element"
    return {"w_x": _array(name, f"l{index}_w_x", "int8_t", interleave(wx), f"layer {index} input weights {blocks}"),
            "w_h": _array(name, f"l{index}_w_h", "int8_t", interleave(wh), f"layer {index} recurrent weights {blocks}")}


# The neon32 kernels of int4 and binary models (templates/kernels/neon32.c.j2) read a unit's four
# packed rows in groups of bytes, the same group of the four rows after one another ("chunk-major",
# one pointer moved on by each load), x arranged once per step to match each group. A group adds
# `cost` terms to each int16 lane of a row's accumulator: products of at most 1024 (int4: |w x|,
# 4 per 16-byte chunk) or VPADAL.S8 steps of at most 256 (binary: two |x| <= 128 each), so a
# segment of groups stays below 2^15 per lane and is then reduced to int32; `reduce` says how far
# the reduction can stay in int16 (one VPADD level doubles the bound).
NEON32_UNIT = {"int4": 1024, "binary": 256}
NEON32_LOOP = 4  # more repeats of one group than this: a loop (first and last repeat unrolled)


def _neon32_groups(width: str, n: int) -> tuple[int, list[dict]]:
    """(bytes per row, the row's groups). A group: kind, offset of its loads in the row, the loads
    (offset, bytes), bytes of arranged x, cost, and how x is taken from the (padded) x vector."""
    if width == "int4":
        rb = (n + 1) // 2
        whole, r = divmod(rb, 16)

        def g(kind, off, loads, xb, cost, src, keep=0, src2=0):
            return {"kind": kind, "off": off, "loads": loads, "x_bytes": xb, "cost": cost, "src": src, "keep": keep,
                    "src2": src2}
        if rb < 8:  # byte lane loads into one D register (nothing read past the row)
            return rb, [g("lanes", 0, [(k, 1) for k in range(rb)], 16, 2, 0)]
        if rb == 8:
            return rb, [g("d8", 0, [(0, 8)], 16, 2, 0)]
        if rb < 16:  # bytes 0..7 and rb-8..rb-1 in one Q register, the overlap's x zeroed
            return rb, [g("pair8", 0, [(0, 8), (rb - 8, 8)], 32, 4, 0, keep=16 - rb, src2=2 * (rb - 8))]
        groups = [g("q16", 16 * c, [(16 * c, 16)], 32, 4, 32 * c) for c in range(whole)]
        if r and r <= 8:  # the row's last 8 bytes, the x of the 8 - r counted before zeroed
            groups.append(g("w8", rb - 8, [(rb - 8, 8)], 16, 2, 2 * (rb - 8), keep=8 - r))
        elif r:
            groups.append(g("w16", rb - 16, [(rb - 16, 16)], 32, 4, 2 * (rb - 16), keep=16 - r))
        return rb, groups
    rb = (n + 7) // 8
    full = rb // 2  # whole halfwords: 16 columns each
    kinds = ["h4"] * (full // 4) + ["h2"] * (full % 4 // 2) + ["h1"] * (full % 2) + ["b1"] * (rb % 2)
    groups, off = [], 0
    for kind in kinds:  # b1: the odd last byte, replicated; x is zero past its 8 columns
        size = {"h4": 8, "h2": 4, "h1": 2, "b1": 1}[kind]
        groups.append({"kind": kind, "off": off, "loads": [(off, size)], "cost": {"h4": 4, "h2": 2}.get(kind, 1),
                       "x_bytes": {"h4": 64, "h2": 32}.get(kind, 16), "src": 8 * off})
        off += size
    return rb, groups


def neon32_plan(width: str, n: int) -> dict:
    """The neon32 kernel's reading of packed rows of n columns: segments of groups (each group
    with the post-increment of each of its loads for the four rows: None where it is the bytes
    loaded, else an index into `incs`), loops, x's arranged size and the padded x it reads."""
    rb, groups = _neon32_groups(width, n)
    unit, limit = NEON32_UNIT[width], 32767
    # Chunk-major: group by group, the four rows; the pointer ends at the next unit (4 rb on).
    loads = [(gi, row, li, row * rb + off, size)
             for gi, grp in enumerate(groups) for row in range(4) for li, (off, size) in enumerate(grp["loads"])]
    incs: list[int] = []
    for gi, grp in enumerate(groups):
        grp["rows"] = [[None] * len(grp["loads"]) for _ in range(4)]
    for k, (gi, row, li, addr, size) in enumerate(loads):
        step = (loads[k + 1][3] if k + 1 < len(loads) else 4 * rb) - addr
        if step != size:
            if step not in incs:
                incs.append(step)
            groups[gi]["rows"][row][li] = incs.index(step)
    segments, current = [], []
    for grp in groups:
        if current and sum(x["cost"] for x in current) + grp["cost"] > limit // unit:
            segments.append(current)
            current = []
        current.append(grp)
    segments.append(current)
    out = []
    for seg in segments:
        bound = unit * sum(x["cost"] for x in seg)
        items, i = [], 0
        while i < len(seg):  # runs of one whole-chunk group kind: first, a loop, last
            j = i
            while j < len(seg) and seg[j]["kind"] == seg[i]["kind"] and seg[i]["kind"] in ("q16", "h4"):
                j += 1
            if j - i > NEON32_LOOP:
                items += [{"group": seg[i], "loop": 0, "first": i == 0},
                          {"group": seg[i + 1], "loop": j - i - 2, "first": False},
                          {"group": seg[j - 1], "loop": 0, "first": False}]
                i = j
            else:
                items.append({"group": seg[i], "loop": 0, "first": i == 0})
                i += 1
        reduce = "p16" if 4 * bound <= limit else "p32" if 2 * bound <= limit else "w32"
        out.append({"items": items, "reduce": reduce})
    # Columns of x the arrangement reads (zeros past n).
    read = max(2 * rb, 16) if width == "int4" else 16 * ((rb + 1) // 2)
    return {"n": n, "rb": rb, "segments": out, "incs": incs, "groups": groups,
            "x_bytes": sum(grp["x_bytes"] for grp in groups), "pad": read if read > n else 0,
            "loops": any(it["loop"] for seg in out for it in seg["items"])}


def _audio_context(model: QuantModel) -> dict:
    """What an audio model's library adds: the front end's template context (cfg, t,
    digest, as templates/audio/ reads them) and the sizes of the state it keeps per stream."""
    fe = model.frontend
    k = model.audio["frames_per_step"]
    history = max(fe.window - fe.hop, 1)
    return {
        "frames_per_step": k, "hop": fe.hop, "channels": fe.channels, "sample_rate": fe.sample_rate,
        "frontend": {"cfg": fe, "t": fe.tables, "digest": fe.digest},
        # int16 history and hop buffer, uint16 fill count; int8 frames of a step, uint8 frame count
        "state_bytes": 2 * history + 2 * fe.hop + 2 + k * fe.channels + 1,
        "scratch_bytes": 4 * 2 * fe.fft,  # int32 real and imaginary rows of the FFT
        "wake": model.audio.get("wake"),  # a wake word's listener settings, or None
    }


def build_context(model: QuantModel, generator_version: str) -> dict:
    name = check_name(model.name)
    check_model(model)
    table_doc = "Q3.12 -> Q0.15, 257 samples on [-8, 8]"
    arrays: list[CArray] = [
        _array(name, "sigmoid_table", "int16_t", model.sigmoid_table, f"sigmoid, {table_doc}"),
        _array(name, "tanh_table", "int16_t", model.tanh_table, f"tanh, {table_doc}"),
    ]
    if model.kind == "text" and model.embedding_width == "int8":
        arrays.append(_array(name, "embedding", "int8_t", model.embedding,
                             f"token embedding [{model.vocab_size}][{model.input_size}]"))
    elif model.kind == "text":  # codes and a gain per row (docs/numerics.md, "Low-bit embedding")
        per, packing = LOW_BIT_PACKING[model.embedding_width]
        codes = pack_weights(embedding_codes(model.embedding, model.embedding_gain), model.embedding_width)
        arrays += [_array(name, "embedding", "uint8_t", codes,
                          f"token embedding codes [{model.vocab_size}][{-(-model.input_size // per)}], {packing}"),
                   _array(name, "embedding_gain", "uint8_t", model.embedding_gain,
                          f"token embedding gains [{model.vocab_size}]: row v is gain[v] * its codes")]
    layers = []
    for i, L in enumerate(model.layers):
        H, I = L.hidden, L.input_size
        um = lambda v: unit_major(v, H)  # noqa: E731
        rows = f"[{H}][4], unit-major"
        if model.weights == "int8":
            w_x = _array(name, f"l{i}_w_x", "int8_t", um(L.w_x), f"layer {i} input weights {rows} [{I}]")
            w_h = _array(name, f"l{i}_w_h", "int8_t", um(L.w_h), f"layer {i} recurrent weights {rows} [{H}]")
        else:  # packed rows (docs/numerics.md, "Low-bit weights"), read by the portable kernels only
            packing = LOW_BIT_PACKING[model.weights]
            w_x = _array(name, f"l{i}_w_x", "uint8_t", pack_weights(um(L.w_x), model.weights),
                         f"layer {i} input weights {rows} [{-(-I // packing[0])}], {packing[1]}")
            w_h = _array(name, f"l{i}_w_h", "uint8_t", pack_weights(um(L.w_h), model.weights),
                         f"layer {i} recurrent weights {rows} [{-(-H // packing[0])}], {packing[1]}")
        la = {
            "w_x": w_x,
            "w_h": w_h,
            "mx": _array(name, f"l{i}_mx", "int32_t", um(L.mx), f"layer {i} requant multipliers of W_x x {rows}"),
            "nx": _array(name, f"l{i}_nx", "uint8_t", um(L.nx), f"layer {i} requant shifts of W_x x {rows}"),
            "mh": _array(name, f"l{i}_mh", "int32_t", um(L.mh), f"layer {i} requant multipliers of W_h h {rows}"),
            "nh": _array(name, f"l{i}_nh", "uint8_t", um(L.nh), f"layer {i} requant shifts of W_h h {rows}"),
            "bias": _array(name, f"l{i}_bias", "int32_t", um(L.bias), f"layer {i} gate biases, Q3.12 {rows}"),
        }
        arrays += la.values()
        xr, hr = requant_mode(L.w_x, L.nx), requant_mode(L.w_h, L.nh)
        int8 = model.weights == "int8"  # the SIMD variants' own layouts exist for int8 weights only
        layers.append({"index": i, "input": I, "hidden": H, "cell_frac_bits": L.cell_frac_bits, "arrays": la,
                       "x_requant": xr, "h_requant": hr, "dsp": dsp_layer(name, i, L, xr, hr) if int8 else None,
                       "esp": esp_layer(name, i, L) if int8 else None,
                       "mve": mve_layer(name, i, L, xr, hr, model.weights),
                       "neon": neon_dot_layer(name, i, um(L.w_x), um(L.w_h), H) if int8 else None})
    C, Htop = model.num_classes, model.layers[-1].hidden
    head = {
        "w": (_array(name, "head_w", "int8_t", model.head.w, f"head weights [{C}][{Htop}]")
              if model.head_width == "int8" else
              _array(name, "head_w", "uint8_t", pack_weights(model.head.w, model.head_width),
                     f"head weights [{C}][{-(-Htop // 8)}], {LOW_BIT_PACKING[model.head_width][1]}")),
        "bias": _array(name, "head_bias", "int32_t", model.head.bias, "head biases, at scale s_w[k] / 128"),
        "m": _array(name, "head_m", "int32_t", model.head.m, "head requant multipliers"),
        "n": _array(name, "head_n", "uint8_t", model.head.n, "head requant shifts"),
    }
    arrays += head.values()
    head_requant = requant_mode(model.head.w, model.head.n, model.head.bias)

    max_hidden = max(L.hidden for L in model.layers)
    # <name>_state: the int16 c of every layer, then the int8 h, padded to the 2-byte alignment
    units = sum(L.hidden for L in model.layers)
    # (an audio model's stream also keeps samples and frames; its FFT rows join the scratch)
    audio = _audio_context(model) if model.audio is not None else None
    state_bytes = 3 * units + (audio["state_bytes"] if audio else 0)
    state_bytes += state_bytes % 2
    scratch_bytes = max_hidden + (audio["scratch_bytes"] if audio else 0)  # max_hidden: the new h of one layer
    if C > MAX_SOFTMAX_CLASSES:
        raise CodegenError(f"{C} classes: the firmware's class probabilities support at most {MAX_SOFTMAX_CLASSES}")
    return {
        "name": name, "NAME": name.upper(), "kind": model.kind, "text": model.kind == "text",
        "generator": GENERATOR, "version": generator_version, "model_hash": model.model_hash(),
        "command": REGENERATE, "files": file_names(name, model.kind, audio is not None), "audio": audio,
        **(audio["frontend"] if audio else {}),
        "labels": list(model.labels), "num_classes": C, "input_size": model.input_size,
        "num_layers": len(model.layers), "hidden_size": Htop, "max_hidden": max_hidden,
        "vocab_size": model.vocab_size, "max_len": model.max_len, "num_features": model.num_features,
        "subwords": model.subwords, "weights": model.weights, "embedding_width": model.embedding_width,
        "head_width": model.head_width,
        "embedding_row_bytes": (-(-model.input_size // LOW_BIT_PACKING[model.embedding_width][0])
                                if model.embedding_width != "int8" else model.input_size),
        "per_byte": LOW_BIT_PACKING[model.weights][0] if model.weights != "int8" else 1,
        "neon32": ({n: neon32_plan(model.weights, n) for L in model.layers for n in (L.input_size, L.hidden)}
                   if model.weights != "int8" else {}),
        "input_scale": model.input_scale, "output_scale": model.output_scale,
        "softmax_mult": softmax_multiplier(model.output_scale),
        "arrays": arrays, "layers": layers, "head": head, "head_requant": head_requant,
        "weight_bytes": sum(a.nbytes for a in arrays), "state_bytes": state_bytes,
        "scratch_bytes": scratch_bytes, "ram_bytes": state_bytes + scratch_bytes,
    }
