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
        "model.h.j2": f"{name}_model.h",
        "model_data.c.j2": f"{name}_model_data.c",
        "model.c.j2": f"{name}_model.c",
        "kernels.h.j2": f"{name}_kernels.h",
        "kernels.c.j2": f"{name}_kernels.c",
        "library.json.j2": "library.json",
        "README.md.j2": "README.md",
    }
    if kind == "text":
        files["tokenizer.c.j2"] = f"{name}_tokenizer.c"
    return files


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
        la = {
            "w_x": _array(name, f"l{i}_w_x", "int8_t", L.w_x,
                          f"layer {i} input weights [{4 * H}][{I}], gates i, f, g, o"),
            "w_h": _array(name, f"l{i}_w_h", "int8_t", L.w_h, f"layer {i} recurrent weights [{4 * H}][{H}]"),
            "mx": _array(name, f"l{i}_mx", "int32_t", L.mx, f"layer {i} requant multipliers of W_x x"),
            "nx": _array(name, f"l{i}_nx", "uint8_t", L.nx, f"layer {i} requant shifts of W_x x"),
            "mh": _array(name, f"l{i}_mh", "int32_t", L.mh, f"layer {i} requant multipliers of W_h h"),
            "nh": _array(name, f"l{i}_nh", "uint8_t", L.nh, f"layer {i} requant shifts of W_h h"),
            "bias": _array(name, f"l{i}_bias", "int32_t", L.bias, f"layer {i} gate biases, Q3.12"),
        }
        arrays += la.values()
        layers.append({"index": i, "input": I, "hidden": H, "cell_frac_bits": L.cell_frac_bits, "arrays": la})
    C, Htop = model.num_classes, model.layers[-1].hidden
    head = {
        "w": _array(name, "head_w", "int8_t", model.head.w, f"head weights [{C}][{Htop}]"),
        "bias": _array(name, "head_bias", "int32_t", model.head.bias, "head biases, at scale s_w[k] / 128"),
        "m": _array(name, "head_m", "int32_t", model.head.m, "head requant multipliers"),
        "n": _array(name, "head_n", "uint8_t", model.head.n, "head requant shifts"),
    }
    arrays += head.values()

    max_hidden = max(L.hidden for L in model.layers)
    state_bytes = sum(L.hidden * (1 + 2) for L in model.layers)  # int8 h + int16 c
    scratch_bytes = 4 * max_hidden * 2  # int16 gate pre-activations of one layer
    return {
        "name": name, "NAME": name.upper(), "kind": model.kind, "text": model.kind == "text",
        "generator": GENERATOR, "version": generator_version, "model_hash": model.model_hash(),
        "command": REGENERATE, "files": file_names(name, model.kind),
        "labels": list(model.labels), "num_classes": C, "input_size": model.input_size,
        "num_layers": len(model.layers), "hidden_size": Htop, "max_hidden": max_hidden,
        "vocab_size": model.vocab_size, "max_len": model.max_len, "num_features": model.num_features,
        "input_scale": model.input_scale, "output_scale": model.output_scale,
        "arrays": arrays, "layers": layers, "head": head,
        "weight_bytes": sum(a.nbytes for a in arrays), "state_bytes": state_bytes,
        "scratch_bytes": scratch_bytes, "ram_bytes": state_bytes + scratch_bytes,
    }
