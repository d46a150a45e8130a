"""Signed delta packages between two int8 models, and their reference decoder.

A package (docs/updates.md) is a 192-byte header and a body. The body codes the difference
d = new - old (mod 256) of the two slot images byte by byte, as runs of four kinds, each
announced by one op byte (kind in the top 2 bits, count - 1 in the low 6; 63 there means
64 + a LEB128 number follows):

    0  zero run     count bytes unchanged, nothing follows
    1  nibble run   count differences in -8..7, two per byte, low nibble first
    2  byte run     count differences, one byte each
    3  crumb run    count differences in -2..1, four per byte, lowest two bits first

Why this scheme: a retrained int8 model changes many weights by one step, so most differences
fit 2 or 4 bits, and untouched rows (embeddings of unseen tokens, whole tables) give long zero
runs. The device decodes it with a few bytes of state, one body byte at a time, and writes
new = old + d straight into the inactive slot while it reads old from the running one: no
buffer of the package or of the image. Subtraction keeps small signed weight changes small
(XOR would turn -1 -> 0 into 0xFF). A full package is the same coding against an all-zero base.

The tag is HMAC-SHA256 with the device's key over the header's first 160 bytes and the body;
the header carries the SHA-256 of the result, so the device checks both before it switches.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from pathlib import Path

from ..quant.model import QuantModel
from .image import SlotImage, UpdateError, slot_image

MAGIC = b"TSUP"
FORMAT = 1
HEADER = struct.Struct("<4sHHI32s16sIIII32s32s8sHHHBBI32s")
HEADER_BYTES = HEADER.size  # 192
SIGNED_BYTES = HEADER_BYTES - 32  # the tag covers the header before it, then the body
FLAG_FULL = 1
KEY_BYTES = 32
ZERO, NIBBLE, RAW, CRUMB = 0, 1, 2, 3
# bits per difference of the packed kinds
PACKED_BITS = {NIBBLE: 4, CRUMB: 2}
assert HEADER_BYTES == 192


class PackageError(UpdateError):
    """A package that cannot be applied: malformed, truncated, for another model or device."""


@dataclass(frozen=True)
class Header:
    flags: int
    layout_id: bytes
    model_hash: str
    version: int
    image_bytes: int
    body_bytes: int
    softmax_mult: int
    base_sha: bytes  # SHA-256 of the image the delta applies to; zeros in a full package
    result_sha: bytes
    kernel: str
    vocab: int
    input: int
    hidden: int
    layers: int
    classes: int
    tag: bytes

    @property
    def full(self) -> bool:
        return bool(self.flags & FLAG_FULL)


def read_key(path: str | Path) -> bytes:
    """A device key file: 32 raw bytes or 64 hex digits."""
    p = Path(path)
    if not p.is_file():
        raise UpdateError(f"key file {p} does not exist; make one with `tinyseek update key --out {p}`")
    raw = p.read_bytes()
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(raw) != KEY_BYTES:
        raise UpdateError(f"key file {p} holds {len(raw)} bytes; a device key is {KEY_BYTES} raw bytes or "
                          f"{2 * KEY_BYTES} hex digits (`tinyseek update key --out FILE` makes one)")
    return raw


# -- the body coding ----------------------------------------------------------------------

def _op(kind: int, count: int) -> bytes:
    if count <= 63:
        return bytes([kind << 6 | (count - 1)])
    rest, out = count - 64, bytearray([kind << 6 | 63])
    while True:
        b, rest = rest & 0x7F, rest >> 7
        out.append(b | (0x80 if rest else 0))
        if not rest:
            return bytes(out)


def encode_delta(old: bytes, new: bytes) -> bytes:
    """The body for old -> new (equal lengths): runs chosen by a shortest path over the four
    kinds, costed in quarter-bytes (a difference costs 0 in a zero run, 1 in a crumb run, 2 in a
    nibble run, 4 in a byte run; starting a run costs its op byte)."""
    if len(old) != len(new):
        raise PackageError(f"images of {len(old)} and {len(new)} bytes: a delta needs equal layouts")
    d = [(b - a) & 0xFF for a, b in zip(old, new)]
    n = len(d)
    if n == 0:
        return b""
    inf = 1 << 60

    def costs(x: int) -> tuple[int, int, int, int]:  # per kind: ZERO, NIBBLE, RAW, CRUMB
        s = x - 256 if x >= 128 else x
        return (0 if x == 0 else inf, 2 if -8 <= s <= 7 else inf, 4, 1 if -2 <= s <= 1 else inf)

    # cost[k]: the cheapest coding of d[:i+1] that ends in a run of kind k; back: where it came from
    cost = [c + 4 if c < inf else inf for c in costs(d[0])]
    back = bytearray(4 * n)
    for i in range(1, n):
        per = costs(d[i])
        best = min(range(4), key=cost.__getitem__)
        switch = cost[best] + 4
        new_cost = [inf] * 4
        for k in range(4):
            if per[k] == inf:
                continue
            if cost[k] <= switch:
                new_cost[k], back[4 * i + k] = cost[k] + per[k], k
            else:
                new_cost[k], back[4 * i + k] = switch + per[k], best
        cost = new_cost
    kinds = bytearray(n)
    k = min(range(4), key=cost.__getitem__)
    for i in range(n - 1, -1, -1):
        kinds[i] = k
        k = back[4 * i + k] if i else k
    out, i = bytearray(), 0
    while i < n:
        k, j = kinds[i], i
        while j < n and kinds[j] == k:
            j += 1
        out += _op(k, j - i)
        if k in PACKED_BITS:
            bits = PACKED_BITS[k]
            per_byte = 8 // bits
            vals = [x & ((1 << bits) - 1) for x in d[i:j]]
            vals += [0] * (-len(vals) % per_byte)
            for t in range(0, len(vals), per_byte):
                out.append(sum(v << (bits * q) for q, v in enumerate(vals[t:t + per_byte])))
        elif k == RAW:
            out += bytes(d[i:j])
        i = j
    return bytes(out)


def decode_delta(body: bytes, old: bytes) -> bytes:
    """The reference of the device's decoder: new image from the body and the old image."""
    out, i, n = bytearray(), 0, len(old)
    while i < len(body):
        op = body[i]
        i += 1
        kind, count = op >> 6, (op & 63) + 1
        if count == 64:
            shift, count = 0, 64
            while True:
                if i >= len(body):
                    raise PackageError("body ends inside a run length")
                b = body[i]
                i += 1
                count += (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
                if shift > 28:
                    raise PackageError("run length longer than 4 bytes")
        if len(out) + count > n:
            raise PackageError(f"body decodes past the image's {n} bytes")
        base = old[len(out):len(out) + count]
        if kind == ZERO:
            out += base
        elif kind in PACKED_BITS:
            bits = PACKED_BITS[kind]
            per_byte = 8 // bits
            need = -(-count // per_byte)
            if i + need > len(body):
                raise PackageError(f"body ends inside a {'nibble' if kind == NIBBLE else 'crumb'} run")
            for t in range(count):
                v = body[i + t // per_byte] >> (bits * (t % per_byte)) & ((1 << bits) - 1)
                out.append((base[t] + (v - (1 << bits) if v >= 1 << (bits - 1) else v)) & 0xFF)
            i += need
        else:
            if i + count > len(body):
                raise PackageError("body ends inside a byte run")
            out += bytes((a + b) & 0xFF for a, b in zip(base, body[i:i + count]))
            i += count
    if len(out) != n:
        raise PackageError(f"body decodes to {len(out)} bytes, the image has {n}")
    return bytes(out)


# -- packages -----------------------------------------------------------------------------

def _as_image(model: QuantModel | SlotImage | str | Path, kernel: str) -> SlotImage:
    if isinstance(model, SlotImage):
        return model
    if not isinstance(model, QuantModel):
        folder = Path(model)
        model = QuantModel.load(folder / "int8" if (folder / "int8").is_dir() else folder)
    return slot_image(model, kernel)


def check_same_layout(a: SlotImage, b: SlotImage) -> None:
    """Raises UpdateError naming what differs when a firmware for `a` cannot run `b`."""
    if a.layout_id == b.layout_id:
        return
    da, db = a.descriptor, b.descriptor
    for key, what in (("kernel", "kernel variant"), ("shapes", "shapes"), ("labels", "class labels"),
                      ("fields", "parameter arrays"), ("code", "generated code (requantization modes, "
                                                             "cell precision or tokenizer)")):
        if da[key] != db[key]:
            raise UpdateError(f"the models differ in their {what} ({da[key] if key != 'fields' else '...'} vs "
                              f"{db[key] if key != 'fields' else '...'}): a firmware built for one cannot run the "
                              "other, so no package can carry it; build and flash a new firmware instead")
    raise UpdateError("the models' layouts differ; build and flash a new firmware instead")


def make_package(from_model, to_model, key: bytes, *, version: int, kernel: str = "dsp",
                 full: bool = False) -> bytes:
    """The package that turns a device running `from_model` into one running `to_model`.

    Models are QuantModel objects, SlotImage objects or run / int8 folders. `version` is the
    anti-rollback number the device must not have reached yet (the firmware's own model is 1).
    `full`: code the whole image (against zeros), usable whatever the device runs."""
    if len(key) != KEY_BYTES:
        raise UpdateError(f"the device key must be {KEY_BYTES} bytes, not {len(key)}")
    if not 1 <= version < 2**32:
        raise UpdateError(f"version {version} is outside 1..{2**32 - 1}")
    old, new = _as_image(from_model, kernel), _as_image(to_model, kernel)
    check_same_layout(old, new)
    base = bytes(len(old.data)) if full else old.data
    body = encode_delta(base, new.data)
    s = new.shapes
    fields = [MAGIC, FORMAT, HEADER_BYTES, FLAG_FULL if full else 0, new.layout_id, new.model_hash.encode("ascii"),
              version, len(new.data), len(body), new.softmax_mult,
              bytes(32) if full else old.sha256, new.sha256, new.kernel.encode("ascii"),
              s["vocab"], s["input"], s["hidden"], s["layers"], s["classes"], 0, bytes(32)]
    signed = HEADER.pack(*fields)[:SIGNED_BYTES]
    tag = hmac.new(key, signed + body, hashlib.sha256).digest()
    return signed + tag + body


def read_header(package: bytes) -> Header:
    if len(package) < HEADER_BYTES:
        raise PackageError(f"package of {len(package)} bytes is truncated: the header alone is {HEADER_BYTES}; "
                           "copy it again, or make it anew with `tinyseek update make`")
    (magic, fmt, hsize, flags, layout_id, mhash, version, image_bytes, body_bytes, mult, base_sha, result_sha,
     kernel, vocab, inp, hidden, layers, classes, _res, tag) = HEADER.unpack_from(package)
    if magic != MAGIC:
        raise PackageError(f"not a tinyseek update package (magic {magic!r}, expected {MAGIC!r})")
    if fmt != FORMAT or hsize != HEADER_BYTES:
        raise PackageError(f"package format {fmt} with a {hsize}-byte header; this tool reads format {FORMAT} "
                           f"({HEADER_BYTES} bytes): make it again with this version of tinyseek")
    if len(package) != HEADER_BYTES + body_bytes:
        raise PackageError(f"package of {len(package)} bytes, its header announces {HEADER_BYTES + body_bytes}: "
                           "truncated or padded; copy it again")
    return Header(flags, layout_id, mhash.decode("ascii", "replace"), version, image_bytes, body_bytes, mult,
                  base_sha, result_sha, kernel.rstrip(b"\0").decode("ascii", "replace"), vocab, inp, hidden,
                  layers, classes, tag)


def apply_package(package: bytes, base_image: bytes, key: bytes) -> bytes:
    """The reference of what the device does: check, decode, check; returns the new image."""
    h = read_header(package)
    body = package[HEADER_BYTES:]
    tag = hmac.new(key, package[:SIGNED_BYTES] + body, hashlib.sha256).digest()
    if not hmac.compare_digest(tag, h.tag):
        raise PackageError("wrong tag: the package was not signed with this device's key, or it was altered")
    base = bytes(h.image_bytes) if h.full else base_image
    if not h.full and hashlib.sha256(base_image).digest() != h.base_sha:
        raise PackageError("the package is a delta against another image than the one given "
                           "(base SHA-256 differs); make it from the model the device runs, or a full one")
    if len(base) != h.image_bytes:
        raise PackageError(f"image of {len(base)} bytes, the package's layout has {h.image_bytes}")
    new = decode_delta(body, base)
    if hashlib.sha256(new).digest() != h.result_sha:
        raise PackageError("the decoded image's SHA-256 differs from the header's")
    return new
