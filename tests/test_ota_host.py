"""The update path of the firmware (firmware/lib/harness/ota.c with dut.c) compiled on the host
with AddressSanitizer and UBSan, on a random two-layer model with the portable C kernels and a
region file mapped shared (the host port's power cut exits at once, as QEMU's does): an update
bit-exact against the new model's integer reference, hundreds of malformed but correctly
signed bodies rejected without a memory error, and a power cut at every few flash operations
of an update, each reboot running the old or the new model whole."""
import copy
import os
import subprocess

import numpy as np
import pytest

from tinyseek.codegen.render import render
from tinyseek.quant.reference import infer_tokens
from tinyseek.quant.synthetic import random_model
from tinyseek.update import device
from tinyseek.update.image import layout_header, slot_image
from tinyseek.update.package import HEADER_BYTES, SIGNED_BYTES, make_package

from test_firmware_protocol import ROOT, SANITIZE, _need_gcc

KEY = bytes(range(7, 39))
IDS = [[1, 2, 3], [400, 17, 9, 9, 250], [42]]


def _variant(model, seed):
    rng = np.random.default_rng(seed)
    out = copy.deepcopy(model)
    out.embedding = np.clip(out.embedding.astype(int) + rng.integers(-2, 3, out.embedding.shape), -128, 127).astype(np.int8)
    L = out.layers[1]
    L.w_h = np.clip(L.w_h.astype(int) + rng.integers(-1, 2, L.w_h.shape), -127, 127).astype(np.int8)
    return out


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    _need_gcc()
    tmp = tmp_path_factory.mktemp("ota_host")
    old = random_model(31, kind="text", hidden=[12, 10], input_size=8, num_classes=4, vocab_size=500, max_len=12,
                       name="upd")
    new = _variant(old, 1)
    lib = tmp / "upd"
    render(old, lib)
    (tmp / "inc").mkdir()
    (tmp / "inc" / "ota_layout.h").write_text(layout_header(slot_image(old, "c")))
    exe = tmp / "dut_ota"
    sources = [ROOT / "firmware/lib/harness/dut.c", ROOT / "firmware/lib/harness/ota.c",
               ROOT / "firmware/lib/harness/ts_listen.c",
               ROOT / "firmware/lib/harness/ts_sha256.c", ROOT / "firmware/src/model_glue.c",
               ROOT / "tests/firmware/host/host_port.c", *sorted(lib.glob("*.c"))]
    subprocess.run(["gcc", "-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *SANITIZE, "-D_DEFAULT_SOURCE",
                    "-I", str(ROOT / "firmware/lib/harness"), "-I", str(ROOT / "firmware/src"), "-I", str(lib),
                    "-I", str(tmp / "inc"), '-DTINYSEEK_MODEL_HEADER="upd_model.h"', "-DTINYSEEK_OTA=1",
                    "-DTS_OTA_PARAMS=__wrap_upd_params", "-DTS_OTA_PARAMS_REAL=__real_upd_params",
                    "-DTS_OTA_API=__wrap_upd_api", "-DTS_OTA_API_REAL=__real_upd_api",
                    "-Wl,--wrap=upd_params,--wrap=upd_api", *map(str, sources), "-o", str(exe)],
                   check=True, capture_output=True, text=True)

    def run(region, commands: list[str]) -> tuple[int, list[str]]:
        env = dict(os.environ, TS_FLASH_FILE=str(region), ASAN_OPTIONS="detect_leaks=0")
        p = subprocess.run([str(exe)], input="".join(c + "%" for c in commands).encode(), capture_output=True,
                           timeout=120, env=env)
        assert not p.stderr, p.stderr.decode(errors="replace")[-3000:]
        return p.returncode, p.stdout.decode().split("\r\n")
    return {"run": run, "old": old, "new": new, "tmp": tmp}


def transfer(pkg: bytes, chunk: int = 200) -> list[str]:
    import zlib
    return [f"ota begin {len(pkg)}"] + [f"ota chunk {o} {pkg[o:o + chunk].hex()} {zlib.crc32(pkg[o:o + chunk]):08x}"
                                         for o in range(0, len(pkg), chunk)] + ["ota commit"]


def probe(ids) -> list[str]:
    data = np.asarray(ids, "<u2").tobytes()
    return [f"db load {len(data)}", f"db {data.hex()}", "infer 1 0"]


def logits_of(lines: list[str]) -> list[list[int]]:
    return [[int(v) for v in ln[len("m-logits-["):-1].split(",")] for ln in lines if ln.startswith("m-logits-[")]


def state(lines: list[str]) -> dict:
    line = next(ln for ln in lines if ln.startswith("m-ota-status-["))
    return dict(kv.split("=") for kv in line[len("m-ota-status-["):-1].split(","))


def test_update_on_the_host_is_bit_exact(host):
    region = device.provision(host["tmp"] / "r1.bin", KEY, size=1 << 20)
    pkg = make_package(host["old"], host["new"], KEY, version=2, kernel="c")
    checks = [c for ids in IDS for c in probe(ids)]
    rc, out = host["run"](region, checks + transfer(pkg) + checks + ["ota status"])
    got = logits_of(out)
    assert rc == 0 and any(ln.startswith("m-ota-committed-[slot=A") for ln in out)
    assert got[:3] == infer_tokens(host["old"], IDS).tolist() and got[3:] == infer_tokens(host["new"], IDS).tolist()
    assert state(out)["image"] == slot_image(host["new"], "c").sha256.hex()


def test_malformed_signed_bodies_are_rejected_cleanly(host):
    """Random bodies and random edits of a real one, each signed with the device's key, so they
    reach the decoder: every one ends in an e- reply (or, never, a commit of a wrong image)."""
    import hashlib
    import hmac
    rng = np.random.default_rng(3)
    good = make_package(host["old"], host["new"], KEY, version=2, kernel="c")
    region = device.provision(host["tmp"] / "r2.bin", KEY, size=1 << 20)
    commands = []
    for i in range(150):
        body = bytearray(good[HEADER_BYTES:])
        if i % 3 == 0:
            body = bytearray(rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes())
        else:
            for _ in range(int(rng.integers(1, 6))):
                body[int(rng.integers(0, len(body)))] = int(rng.integers(0, 256))
            if i % 3 == 2:
                body = body[:int(rng.integers(1, len(body)))]
        head = bytearray(good[:SIGNED_BYTES])
        head[68:72] = len(body).to_bytes(4, "little")
        tag = hmac.new(KEY, bytes(head) + bytes(body), hashlib.sha256).digest()
        commands += transfer(bytes(head) + tag + bytes(body))
    rc, out = host["run"](region, commands + [c for ids in IDS for c in probe(ids)] + ["ota status"])
    assert rc == 0
    assert not any(ln.startswith("m-ota-committed") for ln in out)
    assert sum(ln.startswith("e-[ota") for ln in out) >= 150
    assert state(out)["slot"] == "factory" and logits_of(out) == infer_tokens(host["old"], IDS).tolist()


def test_power_cut_every_few_operations(host):
    old, new = host["old"], host["new"]
    pkg = make_package(old, new, KEY, version=2, kernel="c")
    template = device.provision(host["tmp"] / "template.bin", KEY, size=1 << 20)
    region = host["tmp"] / "cut.bin"
    region.write_bytes(template.read_bytes())
    rc, out = host["run"](region, transfer(pkg) + ["ota status"])
    total = int(state(out)["flash_ops"])
    images = {slot_image(old, "c").sha256.hex(): old, slot_image(new, "c").sha256.hex(): new}
    seen = {}
    for point in sorted(set(range(1, total + 2, max(1, total // 60))) | {total - 4, total - 1, total, total + 1}):
        region.write_bytes(template.read_bytes())
        rc, _ = host["run"](region, [f"ota cut {point}"] + transfer(pkg))
        assert rc == (0 if point > total else 3)
        rc, out = host["run"](region, ["ota status"] + [c for ids in IDS for c in probe(ids)])
        s = state(out)
        model = images[s["image"]]
        assert s["hash"] == model.model_hash() and logits_of(out) == infer_tokens(model, IDS).tolist()
        seen[point] = s["slot"]
    assert seen.pop(total + 1) == "A" and set(seen.values()) == {"factory"} and len(seen) >= 60
