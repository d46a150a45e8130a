"""QuantModel -> the template context: names, shapes, the C arrays and the memory budget.

Everything the templates print comes from here, so the byte counts in the header macros are
computed from the very arrays the data file defines.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quant.model import QuantModel
from ..quant.reference import check_model
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


def file_names(name: str, kind: str) -> dict[str, str]:
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
    }
    if kind == "text":
        files["lib/tokenizer.c.j2"] = f"{name}_tokenizer.c"
    return files


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


def build_context(model: QuantModel, generator_version: str) -> dict:
    name = check_name(model.name)
    check_model(model)
    table_doc = "Q3.12 -> Q0.15, 257 samples on [-8, 8]"
    arrays: list[CArray] = [
        _array(name, "sigmoid_table", "int16_t", model.sigmoid_table, f"sigmoid, {table_doc}"),
        _array(name, "tanh_table", "int16_t", model.tanh_table, f"tanh, {table_doc}"),
    ]
    if model.kind == "text":
        arrays.append(_array(name, "embedding", "int8_t", model.embedding,
                             f"token embedding [{model.vocab_size}][{model.input_size}]"))
    layers = []
    for i, L in enumerate(model.layers):
        H, I = L.hidden, L.input_size
        um = lambda v: unit_major(v, H)  # noqa: E731
        rows = f"[{H}][4], unit-major"
        la = {
            "w_x": _array(name, f"l{i}_w_x", "int8_t", um(L.w_x), f"layer {i} input weights {rows} [{I}]"),
            "w_h": _array(name, f"l{i}_w_h", "int8_t", um(L.w_h), f"layer {i} recurrent weights {rows} [{H}]"),
            "mx": _array(name, f"l{i}_mx", "int32_t", um(L.mx), f"layer {i} requant multipliers of W_x x {rows}"),
            "nx": _array(name, f"l{i}_nx", "uint8_t", um(L.nx), f"layer {i} requant shifts of W_x x {rows}"),
            "mh": _array(name, f"l{i}_mh", "int32_t", um(L.mh), f"layer {i} requant multipliers of W_h h {rows}"),
            "nh": _array(name, f"l{i}_nh", "uint8_t", um(L.nh), f"layer {i} requant shifts of W_h h {rows}"),
            "bias": _array(name, f"l{i}_bias", "int32_t", um(L.bias), f"layer {i} gate biases, Q3.12 {rows}"),
        }
        arrays += la.values()
        layers.append({"index": i, "input": I, "hidden": H, "cell_frac_bits": L.cell_frac_bits, "arrays": la,
                       "x_requant": requant_mode(L.w_x, L.nx), "h_requant": requant_mode(L.w_h, L.nh)})
    C, Htop = model.num_classes, model.layers[-1].hidden
    head = {
        "w": _array(name, "head_w", "int8_t", model.head.w, f"head weights [{C}][{Htop}]"),
        "bias": _array(name, "head_bias", "int32_t", model.head.bias, "head biases, at scale s_w[k] / 128"),
        "m": _array(name, "head_m", "int32_t", model.head.m, "head requant multipliers"),
        "n": _array(name, "head_n", "uint8_t", model.head.n, "head requant shifts"),
    }
    arrays += head.values()
    head_requant = requant_mode(model.head.w, model.head.n, model.head.bias)

    max_hidden = max(L.hidden for L in model.layers)
    state_bytes = sum(L.hidden * (1 + 2) for L in model.layers)  # int8 h + int16 c
    scratch_bytes = max_hidden  # the new h of one layer (every unit reads the old one)
    return {
        "name": name, "NAME": name.upper(), "kind": model.kind, "text": model.kind == "text",
        "generator": GENERATOR, "version": generator_version, "model_hash": model.model_hash(),
        "command": REGENERATE, "files": file_names(name, model.kind),
        "labels": list(model.labels), "num_classes": C, "input_size": model.input_size,
        "num_layers": len(model.layers), "hidden_size": Htop, "max_hidden": max_hidden,
        "vocab_size": model.vocab_size, "max_len": model.max_len, "num_features": model.num_features,
        "input_scale": model.input_scale, "output_scale": model.output_scale,
        "arrays": arrays, "layers": layers, "head": head, "head_requant": head_requant,
        "weight_bytes": sum(a.nbytes for a in arrays), "state_bytes": state_bytes,
        "scratch_bytes": scratch_bytes, "ram_bytes": state_bytes + scratch_bytes,
    }
