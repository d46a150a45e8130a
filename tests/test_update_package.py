"""Update packages on the host (tinyseek.update): the slot image and its layout, the delta
coding against its reference decoder on edge cases and random data, the signed package, and a
clear error for every malformed, truncated, foreign or mis-signed package."""
import copy
import hashlib

import numpy as np
import pytest

from tinyseek.quant.model import QuantModel
from tinyseek.update.image import UpdateError, slot_image
from tinyseek.update.package import (HEADER_BYTES, PackageError, apply_package, decode_delta, encode_delta,
                                     make_package, read_header, read_key)
from tinyseek.cli import main

from test_qemu_m4 import ROOT

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def models():
    old = QuantModel.load(ROOT / "models/intents/int8")
    new = copy.deepcopy(old)
    rng = np.random.default_rng(0)
    e = new.embedding.astype(np.int64)
    e += rng.integers(-3, 4, e.shape) * (rng.random(e.shape) < 0.05)
    new.embedding = np.clip(e, -128, 127).astype(np.int8)
    return old, new


def test_slot_image_follows_the_params_table(models):
    old, _ = models
    img = slot_image(old, "dsp")
    names = [f.name for f in img.fields]
    assert names[:3] == ["sigmoid_table", "tanh_table", "embedding"] and names[-4:] == ["head_w", "head_bias", "head_m", "head_n"]
    # the DSP build reads the layer from its one block array: w_h and the per-row arrays are NULL fields
    assert [f.nbytes > 0 for f in img.fields[3:10]] == [True, False, False, False, False, False, False]
    emb = img.fields[2]
    assert img.data[emb.offset:emb.offset + emb.nbytes] == old.embedding.tobytes()
    assert all(f.offset % 4 == 0 for f in img.fields) and len(img.data) % 4 == 0
    c = slot_image(old, "c")
    assert c.layout_id != img.layout_id and all(f.nbytes for f in c.fields)
    with pytest.raises(UpdateError, match="no update layout yet"):
        slot_image(old, "neon")


def test_slot_images_of_the_other_kernels(models):
    """Helium (qemu_m55): the layer's w_x is the MVE block, its other fields NULL. ARMv6-M and
    RV32 read the portable C's unit-major arrays: the same bytes as "c", another layout id (their
    kernel file is part of the code)."""
    from tinyseek.codegen.context import build_context

    old, _ = models
    ctx = build_context(old, "update")
    mve = slot_image(old, "mve")
    layer = mve.fields[3:10]
    assert [f.nbytes > 0 for f in layer] == [True, False, False, False, False, False, False]
    block = ctx["layers"][0]["mve"]["block"]
    assert mve.data[layer[0].offset:layer[0].offset + layer[0].nbytes] == block.values.astype("<i4").tobytes()
    c = slot_image(old, "c")
    ids = {k: slot_image(old, k).layout_id for k in ("c", "dsp", "mve", "v6m", "rv32")}
    assert len(set(ids.values())) == 5
    for k in ("v6m", "rv32"):
        img = slot_image(old, k)
        assert img.data == c.data and [f[:4] for f in img.descriptor["fields"]] == c.descriptor["fields"]



@pytest.mark.parametrize("width", ["int4", "binary"])
def test_low_bit_images_carry_the_packed_arrays_and_the_embedding_gains(width):
    """A low-bit model's image on the DSP / portable C layouts: packed gate rows, the embedding's
    codes and a gain per row in the params table's order; the other layouts refuse it."""
    from tinyseek.quant.synthetic import random_model
    m = random_model(5, kind="text", hidden=[8], input_size=12, vocab_size=40, width=width, name="upd")
    arrays = m.arrays()
    for kernel in ("dsp", "c"):
        img = slot_image(m, kernel)
        fields = {f.name: f for f in img.fields}
        assert [f.name for f in img.fields][2:4] == ["embedding", "embedding_gain"]
        for name, key in (("embedding", "embedding"), ("embedding_gain", "embedding.gain"),
                          ("layers[0].w_x", "lstm0.w_x"), ("head_w", "head.w")):
            f = fields[name]
            assert f.nbytes == arrays[key].nbytes, (kernel, name)
        assert img.data[fields["embedding_gain"].offset:][:40] == arrays["embedding.gain"].tobytes()
    for kernel in ("mve", "v6m", "rv32"):
        with pytest.raises(UpdateError, match=f"int8 gate weights only, not for {width} ones.*qemu_m4_ota"):
            slot_image(m, kernel)


@pytest.mark.parametrize("case", ["equal", "all-different", "small", "tiny", "mixed", "long-runs", "empty"])
def test_delta_coding_round_trips(case):
    rng = np.random.default_rng(1)
    n = 0 if case == "empty" else 20_000
    old = rng.integers(0, 256, n).astype(np.uint8)
    new = old.copy()
    if case == "all-different":
        new = (old + rng.integers(1, 256, n)).astype(np.uint8)
    elif case == "small":
        new = (old + rng.integers(-8, 8, n)).astype(np.uint8)
    elif case == "tiny":  # differences of -2..1: four per byte
        new = (old + rng.integers(-2, 2, n)).astype(np.uint8)
    elif case == "mixed":
        mask = rng.random(n) < 0.3
        new[mask] = (old[mask] + rng.integers(-100, 100, mask.sum())).astype(np.uint8)
    elif case == "long-runs":
        new[5000:5001] += 1
        new[19_999] += 100
    body = encode_delta(old.tobytes(), new.tobytes())
    assert decode_delta(body, old.tobytes()) == new.tobytes()
    if case == "equal":
        assert len(body) <= 4  # one zero run with its LEB128 length
    if case == "tiny":
        assert len(body) < n * 0.3
    if case == "small":
        assert len(body) < n * 0.55  # two differences per byte
    if case == "long-runs":
        assert len(body) < 16


def test_package_applies_and_every_bad_package_is_named(models):
    old, new = models
    a, b = slot_image(old, "dsp"), slot_image(new, "dsp")
    pkg = make_package(old, new, KEY, version=2)
    h = read_header(pkg)
    assert (h.version, h.model_hash, h.kernel, h.layout_id) == (2, new.model_hash(), "dsp", b.layout_id)
    assert h.base_sha == hashlib.sha256(a.data).digest() and h.result_sha == b.sha256
    assert apply_package(pkg, a.data, KEY) == b.data
    full = make_package(old, new, KEY, version=2, full=True)
    assert read_header(full).full and apply_package(full, b"", KEY) == b.data
    assert len(pkg) < len(full) / 4
    with pytest.raises(PackageError, match="truncated: the header alone"):
        read_header(pkg[:100])
    with pytest.raises(PackageError, match="truncated or padded"):
        apply_package(pkg[:-1], a.data, KEY)
    with pytest.raises(PackageError, match="not a tinyseek update package"):
        read_header(b"XXXX" + pkg[4:])
    with pytest.raises(PackageError, match="wrong tag"):
        apply_package(pkg, a.data, bytes(32))
    bad = bytearray(pkg)
    bad[HEADER_BYTES + 3] ^= 0x40
    with pytest.raises(PackageError, match="wrong tag"):
        apply_package(bytes(bad), a.data, KEY)
    with pytest.raises(PackageError, match="another image"):
        apply_package(pkg, b.data, KEY)
    with pytest.raises(PackageError, match="ends inside a crumb run"):
        decode_delta(b"\xc4", a.data)
    with pytest.raises(PackageError, match="ends inside a run length"):
        decode_delta(b"\x7f\xff", a.data)
    with pytest.raises(PackageError, match="past the image"):
        decode_delta(b"\x3f\xff\xff\x7f", a.data)


def test_other_layouts_and_bad_arguments_are_refused(models):
    old, _ = models
    other = copy.deepcopy(old)
    other.labels = list(reversed(old.labels))
    with pytest.raises(UpdateError, match="class labels"):
        make_package(old, other, KEY, version=2)
    with pytest.raises(UpdateError, match="32 bytes"):
        make_package(old, old, b"short", version=2)
    with pytest.raises(UpdateError, match="outside"):
        make_package(old, old, KEY, version=0)


def test_cli_make_writes_a_package_and_checks_it(models, tmp_path, capsys):
    old, new = models
    new.save(tmp_path / "b" / "int8")
    key = tmp_path / "device.key"
    assert main(["update", "key", "--out", str(key)]) == 0
    assert len(read_key(key)) == 32
    out = tmp_path / "u.pkg"
    assert main(["update", "make", "--from", str(ROOT / "models/intents"), "--to", str(tmp_path / "b"),
                 "--key", str(key), "--version", "7", "--out", str(out)]) == 0
    assert read_header(out.read_bytes()).version == 7
    assert "bytes" in capsys.readouterr().out
    # --env: the package carries the kernel that environment's firmware runs
    assert main(["update", "make", "--from", str(ROOT / "models/intents"), "--to", str(tmp_path / "b"),
                 "--key", str(key), "--env", "qemu_m55_ota", "--out", str(tmp_path / "m55.pkg")]) == 0
    assert "kernel mve" in capsys.readouterr().out
    assert main(["update", "make", "--from", str(ROOT / "models/intents"), "--to", str(tmp_path / "b"),
                 "--key", str(key), "--env", "qemu_m0_ota", "--out", str(tmp_path / "m0.pkg")]) == 0
    assert "kernel v6m" in capsys.readouterr().out
    assert main(["update", "make", "--from", str(ROOT / "models/intents"), "--to", str(tmp_path / "b"),
                 "--key", str(key), "--env", "qemu_m0", "--out", str(tmp_path / "m0.pkg")]) == 2
    assert "qemu_m0 is not an update-enabled environment" in capsys.readouterr().err
    assert main(["update", "make", "--from", str(tmp_path / "nowhere"), "--to", str(tmp_path / "b"),
                 "--key", str(key), "--out", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "bad.key").write_bytes(b"123")
    with pytest.raises(UpdateError, match="holds 3 bytes"):
        read_key(tmp_path / "bad.key")
