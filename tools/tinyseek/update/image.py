"""The slot image: an int8 model's constants as the firmware's kernels read them, one
contiguous block, and the layout descriptor that says which firmware can run it.

A firmware built with updates (`qemu_m4_ota`, docs/updates.md) reads every weight through the
generated `<name>_params` table of pointers; the image holds the arrays those pointers name, in
the table's order, each at a 4-byte aligned offset (zero padding between them), with the
kernel's own arrangement (the DSP kernel's paired blocks on Cortex-M4). Two models share a
layout when a firmware built for one runs the other correctly: the same kernel, the same field
table and the same generated code apart from the model hash and the scale macros (the
probabilities' multiplier travels in the package instead). The layout id is the SHA-256 of the
descriptor.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import numpy as np

from ..codegen.context import CTYPES, build_context
from ..codegen.render import make_env
from ..quant.model import QuantModel

# Kernel variants whose parameter table the image follows: the portable C (host builds, every
# board with -DTINYSEEK_KERNEL_PORTABLE), the Cortex-M DSP kernel (qemu_m4, qemu_m7,
# qemu_stm32f4) with its paired blocks, the Helium kernel (qemu_m55) with its own block per
# layer, and the ARMv6-M (qemu_m0) and RV32 (qemu_rv32) kernels, which read the portable C's
# unit-major int8 arrays through the same table. The others would need their own arrangement
# here first.
KERNELS = ("c", "dsp", "mve", "v6m", "rv32")
# The kernel files a build compiles besides the dispatch header: the portable C (the fallback,
# always built) and the variant's own; every other variant's file compiles to nothing there.
_BASE_FILES = {"kernels/dispatch.h.j2", "kernels/portable.c.j2"}
_KERNEL_FILES = {"c": _BASE_FILES,
                 "dsp": _BASE_FILES | {"kernels/cortexm_dsp.c.j2"},
                 "mve": _BASE_FILES | {"kernels/helium.c.j2"},
                 "v6m": _BASE_FILES | {"kernels/armv6m.c.j2"},
                 "rv32": _BASE_FILES | {"kernels/riscv.c.j2"}}
# Variants whose update layout is made and checked on a device for int8 gate weights only: with
# int4 or binary weights the dispatch header selects other code on these cores (an M55 runs the
# Helium int4 or binary kernel, each with its own block order, the M0 and the RV32 their
# low-bit kernels), which no update test has run yet.
_INT8_ONLY = {"mve", "v6m", "rv32"}
LAYER_KEYS = ("w_x", "w_h", "mx", "nx", "mh", "nh", "bias")
# Lines of <name>_model.h that differ between two models a firmware can swap: host-only scales
# and the multiplier of the probabilities (carried by the package and the slot header).
_SWAPPABLE = re.compile(r"^#define \w+_(MODEL_HASH|INPUT_SCALE|OUTPUT_SCALE|SOFTMAX_MULT) .*$", re.M)


class UpdateError(ValueError):
    """A model, package or device state an update cannot use; the message says why and what to do."""


@dataclass(frozen=True)
class Field:
    name: str  # the params table's field, e.g. "layers[0].w_x"
    ctype: str  # of the C array, "" for a NULL field
    offset: int  # in the image
    nbytes: int  # 0 for a NULL field (the DSP kernel's per-row arrays live in its blocks)


@dataclass(frozen=True)
class SlotImage:
    model_name: str
    model_hash: str
    kernel: str
    fields: tuple[Field, ...]
    data: bytes
    descriptor: dict  # what the layout id hashes
    softmax_mult: int

    @property
    def layout_id(self) -> bytes:
        return hashlib.sha256(json.dumps(self.descriptor, sort_keys=True).encode()).digest()

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.data).digest()

    @property
    def shapes(self) -> dict:
        return self.descriptor["shapes"]


def _code_digest(ctx: dict, kernel: str) -> str:
    """SHA-256 of the generated code a `kernel` build compiles for this model, the data file and
    the swappable lines left out and the model hash blanked: equal digests mean one firmware
    runs both models. (The ESP-DSP kernel's file, for one, carries float copies of the weights:
    it is data there, and not compiled here.)"""
    env = make_env()
    h = hashlib.sha256()
    data_file = ctx["files"]["lib/model_data.c.j2"]
    for tpl, out in sorted(ctx["files"].items()):
        if out in (data_file, "README.md", "library.json"):
            continue
        if tpl.startswith("kernels/") and tpl not in _KERNEL_FILES[kernel]:
            continue
        text = env.get_template(tpl).render(ctx)
        text = _SWAPPABLE.sub("", text).replace(ctx["model_hash"], "<model-hash>")
        h.update(out.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def _table(ctx: dict, kernel: str) -> list[tuple[str, object]]:
    """The params table's fields in struct order, each with its CArray or None (NULL)."""
    rows: list[tuple[str, object]] = [("sigmoid_table", ctx["arrays"][0]), ("tanh_table", ctx["arrays"][1])]
    if ctx["text"]:
        rows.append(("embedding", ctx["arrays"][2]))
        if ctx["embedding_width"] != "int8":
            rows.append(("embedding_gain", ctx["arrays"][3]))
    for L in ctx["layers"]:
        i = L["index"]
        if kernel == "dsp" and L["dsp"]:
            blocks = {"w_x": L["dsp"]["blocks"]}
            rows += [(f"layers[{i}].{k}", blocks.get(k)) for k in LAYER_KEYS]
        elif kernel == "mve" and L["mve"]:  # the Helium block; the other fields NULL, as in model_data.c
            blocks = {"w_x": L["mve"]["block"]}
            rows += [(f"layers[{i}].{k}", blocks.get(k)) for k in LAYER_KEYS]
        else:
            rows += [(f"layers[{i}].{k}", L["arrays"][k]) for k in LAYER_KEYS]
    head = ctx["head"]
    rows += [("head_w", head["w"]), ("head_bias", head["bias"]), ("head_m", head["m"]), ("head_n", head["n"])]
    return rows


_CACHE: dict[tuple[str, str], SlotImage] = {}


def slot_image(model: QuantModel, kernel: str) -> SlotImage:
    """The image of `model` for a firmware whose kernel variant is `kernel` (remembered by model
    hash: rendering the code for the layout's digest is the slow part)."""
    if kernel not in KERNELS:
        raise UpdateError(f"kernel variant {kernel!r} has no update layout yet; supported: {', '.join(KERNELS)}")
    key = (model.model_hash(), kernel)
    if key not in _CACHE:
        if len(_CACHE) >= 16:
            _CACHE.clear()
        _CACHE[key] = _slot_image(model, kernel)
    return _CACHE[key]


def _slot_image(model: QuantModel, kernel: str) -> SlotImage:
    ctx = build_context(model, "update")
    if kernel in _INT8_ONLY and ctx["weights"] != "int8":
        raise UpdateError(f"kernel variant {kernel!r} has update layouts for int8 gate weights only, not for "
                          f"{ctx['weights']} ones: update {ctx['weights']} models on a board with the 'dsp' or 'c' "
                          "kernel (qemu_m4_ota, qemu_m7_ota)")
    fields, chunks, offset = [], [], 0
    for name, arr in _table(ctx, kernel):
        if arr is None:
            fields.append(Field(name, "", 0, 0))
            continue
        pad = -offset % 4
        chunks.append(b"\0" * pad)
        offset += pad
        raw = np.ascontiguousarray(arr.values, dtype=np.dtype(CTYPES[arr.ctype][0]).newbyteorder("<")).tobytes()
        fields.append(Field(name, arr.ctype, offset, len(raw)))
        chunks.append(raw)
        offset += len(raw)
    chunks.append(b"\0" * (-offset % 4))
    data = b"".join(chunks)
    shapes = {"kind": model.kind, "vocab": model.vocab_size or 0, "input": model.input_size,
              "hidden": ctx["hidden_size"], "layers": len(model.layers), "classes": model.num_classes}
    descriptor = {
        "format": 1, "name": ctx["name"], "kernel": kernel, "shapes": shapes, "labels": ctx["labels"],
        "fields": [[f.name, f.ctype, f.offset, f.nbytes] for f in fields], "image_bytes": len(data),
        "code": _code_digest(ctx, kernel),
    }
    return SlotImage(ctx["name"], ctx["model_hash"], kernel, tuple(fields), data, descriptor, ctx["softmax_mult"])


def layout_header(image: SlotImage, factory_version: int = 1) -> str:
    """C header for an update-enabled firmware: the layout it expects (ota.c includes it)."""
    n = len(image.fields)
    offs = ", ".join(str(f.offset) for f in image.fields)
    sizes = ", ".join(str(f.nbytes) for f in image.fields)
    lid = ", ".join(f"0x{b:02x}" for b in image.layout_id)
    s = image.shapes
    return (
        f"/* Update layout of model '{image.model_name}' (hash {image.model_hash}), kernel {image.kernel}: written by\n"
        f" * tinyseek.update.image.layout_header for an update-enabled build. Generated, do not edit. */\n"
        f"#define TS_OTA_KERNEL \"{image.kernel}\"\n"
        f"#define TS_OTA_FIELDS {n}\n"
        f"#define TS_OTA_IMAGE_BYTES {len(image.data)}u\n"
        f"#define TS_OTA_FACTORY_VERSION {factory_version}u\n"
        f"#define TS_OTA_SHAPES \"vocab={s['vocab']},input={s['input']},hidden={s['hidden']},"
        f"layers={s['layers']},classes={s['classes']}\"\n"
        f"static const uint32_t ts_ota_field_offset[TS_OTA_FIELDS] = {{{offs}}};\n"
        f"static const uint32_t ts_ota_field_bytes[TS_OTA_FIELDS] = {{{sizes}}};\n"
        f"static const uint8_t ts_ota_layout_id[32] = {{{lid}}};\n"
    )
