"""Model updates on the emulated Cortex-M4 (`qemu_m4_ota`, docs/updates.md): the device's
SHA-256 and HMAC through the protocol against hashlib and hmac, an update of the committed
default model that answers bit-exactly as the new model's integer reference and survives a power
cycle, every rejection (another layout, an older version, a wrong tag, a truncated, reordered,
corrupted transfer, a delta for another base) leaving the running model as it was, rollback, and
power cuts across transfer, apply and switch."""
import copy
import hashlib
import hmac
import random
import shutil
import zlib

import numpy as np
import pytest

from tinyseek.harness.bench import build_firmware
from tinyseek.harness.boards import load_profile
from tinyseek.harness.protocol import ProtocolError
from tinyseek.harness.serial_link import LinkError
from tinyseek.quant.model import QuantModel
from tinyseek.quant.reference import infer_tokens
from tinyseek.config import load
from tinyseek.pipeline import Run
from tinyseek.update import commands, device
from tinyseek.update.image import UpdateError, slot_image
from tinyseek.update.package import make_package

from test_qemu_m4 import ROOT, TOOLS

KEY = bytes(range(1, 33))
IDS = [[5, 17, 300, 2, 9], [1000, 3, 3, 77], [12]]


def perturbed(model: QuantModel, seed: int) -> QuantModel:
    """A same-layout variant of `model` (test data: +-1 on 3 % of the embedding and head
    weights, a small package that crosses the slow emulated UART quickly; bench/updates.py
    measures a retrained model instead)."""
    rng = np.random.default_rng(seed)
    out = copy.deepcopy(model)
    for obj, attr in ((out, "embedding"), (out.head, "w")):
        a = getattr(obj, attr).astype(np.int64)
        step = rng.integers(-1, 2, a.shape) * (rng.random(a.shape) < 0.03)
        setattr(obj, attr, np.clip(a + step, -128, 127).astype(np.int8))
    return out


@pytest.fixture(scope="module")
def fw(tmp_path_factory, need_tools):
    need_tools(TOOLS)
    tmp = tmp_path_factory.mktemp("ota")
    elf = build_firmware("qemu_m4_ota", "intents", build_dir=tmp / "build")
    old = QuantModel.load(ROOT / "models/intents/int8")
    new, newer = perturbed(old, 1), perturbed(old, 2)
    return {"elf": elf, "tmp": tmp, "old": old, "new": new, "newer": newer,
            "machine": load_profile("qemu_m4").machine()}


def board(fw, name="region.bin", key=KEY):
    return device.OtaBoard(fw["elf"], fw["machine"], device.provision(fw["tmp"] / name, key))


def logits(dut, ids):
    dut.load(np.asarray(ids, "<u2").tobytes())
    return dut.infer()["logits"]


def answers(dut, model) -> bool:
    return all(logits(dut, ids) == infer_tokens(model, [ids])[0].tolist() for ids in IDS)


def test_sha256_and_hmac_on_the_device(fw):
    rng = random.Random(5)
    with board(fw) as b:
        dut = b.power_on()
        for n in (0, 1, 55, 56, 63, 64, 65, 127, 128, 129, 200, 250):
            m = bytes(rng.randrange(256) for _ in range(n))
            assert dut.command(f"ota sha {m.hex() or '-'}").field("ota-sha") == hashlib.sha256(m).hexdigest()
        for klen, n in ((0, 0), (32, 64), (64, 100), (20, 56), (64, 180)):
            k, m = bytes(rng.randrange(256) for _ in range(klen)), bytes(rng.randrange(256) for _ in range(n))
            assert dut.command(f"ota hmac {k.hex() or '-'} {m.hex() or '-'}").field("ota-hmac") == \
                hmac.new(k, m, hashlib.sha256).hexdigest()
        # the running image's SHA-256, hashed on the device over all 63 KB of the factory model
        assert device.running(dut).image == slot_image(fw["old"], "dsp").sha256.hex()


def test_update_rejections_rollback_and_reboot(fw):
    old, new, newer = fw["old"], fw["new"], fw["newer"]
    pkg = make_package(old, new, KEY, version=2)
    with board(fw) as b:
        dut = b.power_on()
        assert device.running(dut).slot == "factory" and answers(dut, old)

        def unchanged(hash_, slot):
            s = device.running(dut)
            assert (s.hash, s.slot, device.status(dut)["state"]) == (hash_, slot, "idle")

        # a wrong key: the tag fails at commit, after the whole transfer
        with pytest.raises(UpdateError, match="wrong tag"):
            device.send(dut, make_package(old, new, bytes(32), version=2))
        unchanged(old.model_hash(), "factory")
        # one body byte altered after signing
        bad = bytearray(pkg)
        bad[-10] ^= 0x01
        with pytest.raises(UpdateError, match="wrong tag|malformed|decodes"):
            device.send(dut, bytes(bad))
        unchanged(old.model_hash(), "factory")
        # a package for another kernel's layout: refused as soon as the header is in
        with pytest.raises(UpdateError, match="another layout"):
            device.send(dut, make_package(old, new, KEY, version=2, kernel="c"))
        # a delta made from another model than the running one
        with pytest.raises(UpdateError, match="delta against another model"):
            device.send(dut, make_package(new, newer, KEY, version=3))
        # truncated: commit before the last chunk
        dut.command(f"ota begin {len(pkg)}")
        piece = pkg[:200]
        dut.command(f"ota chunk 0 {piece.hex()} {zlib.crc32(piece):08x}")
        assert "truncated" in dut.command("ota commit", check=False).errors[0]
        # reordered: a chunk at the wrong offset is refused, the transfer resumes at the right one
        piece = pkg[400:600]
        err = dut.command(f"ota chunk 400 {piece.hex()} {zlib.crc32(piece):08x}", check=False).errors
        assert "out of order; the next offset is 200" in err[0]
        piece = pkg[200:400]
        assert "CRC mismatch" in dut.command(f"ota chunk 200 {piece.hex()} 00000000", check=False).errors[0]
        assert device.status(dut)["offset"] == 200 and answers(dut, old)
        dut.command("ota abort")
        unchanged(old.model_hash(), "factory")

        # the update itself, then the model answers as the new one, also after a power cycle
        device.send(dut, pkg)
        s = device.running(dut)
        assert (s.slot, s.version, s.hash, s.image) == ("A", 2, new.model_hash(), slot_image(new, "dsp").sha256.hex())
        assert answers(dut, new)
        assert dut.info()["hash"] == new.model_hash()
        dut = b.power_on()
        assert device.running(dut).slot == "A" and answers(dut, new)
        # anti-rollback: the same package again, or an older version
        with pytest.raises(UpdateError, match="not newer than the running 2"):
            device.send(dut, make_package(new, newer, KEY, version=2))
        # the next update goes to slot B; rollback returns to A, then to the factory model
        device.send(dut, make_package(new, newer, KEY, version=3))
        assert device.running(dut).slot == "B" and answers(dut, newer)
        assert "slot=A,version=2" in dut.command("ota rollback").field("ota-rolled-back")
        assert answers(dut, new)
        dut = b.power_on()
        assert device.running(dut).slot == "A"
        assert "slot=factory" in dut.command("ota rollback").field("ota-rolled-back")
        assert answers(dut, old)
        assert "nothing older" in dut.command("ota rollback", check=False).errors[0]


def cut_trial(b, pkg, point: int) -> str:
    """Arm a power cut at flash operation `point`, send the package; returns 'cut' or 'done'."""
    dut = b.power_on()
    dut.command(f"ota cut {point}")
    try:
        device.send(dut, pkg)
    except (ProtocolError, LinkError, UpdateError) as e:
        if b.in_process:  # the microbit: the firmware reset the machine, QEMU runs on
            assert isinstance(e, device.DeviceRestarted) and b.qemu.returncode is None, e
        else:
            assert b.qemu.proc.wait(10) == 3, b.qemu.log()  # the firmware cut its power
        return "cut"
    return "done"


def test_power_cuts_leave_old_or_new(fw):
    """Cuts at flash operations spread over the erase, the image writes, the slot header and the
    boot record (bench/updates.py runs 200 and more): every reboot runs the old or the new model
    whole (its image's SHA-256 checked at boot, its logits bit-exact), and says which."""
    old, new = fw["old"], fw["new"]
    pkg = make_package(old, new, KEY, version=2)
    images = {slot_image(old, "dsp").sha256.hex(): old, slot_image(new, "dsp").sha256.hex(): new}
    with board(fw, "probe.bin") as b:
        dut = b.power_on()
        device.send(dut, pkg)
        total = int(device.status(dut)["flash_ops"])
    # the order of operations: 17 sector erases of slot A, the image's words, the slot header's
    # 25 words, the boot record's sector erase and its 4 words
    points = [1, 17, 18, total // 2, total - 29, total - 5, total - 4, total - 1, total, total + 1]
    seen = {}
    for point in points:
        with board(fw, f"cut{point}.bin") as b:
            outcome = cut_trial(b, pkg, point)
            b.power_off()
            dut = b.power_on()
            s = device.running(dut)
            model = images[s.image]  # the old or the new image, nothing else
            assert s.hash == model.model_hash() and answers(dut, model)
            seen[point] = (outcome, s.slot)
            if point == total // 2:  # not bricked: the update goes through after the cut
                device.send(dut, pkg)
                assert answers(dut, new)
    # the switch is the boot record's last word: torn, it leaves the old model; whole, the new one
    assert seen.pop(total + 1) == ("done", "A")
    assert set(seen.values()) == {("cut", "factory")}

    # the second update writes slot B, which nothing names yet, while slot A keeps running
    back = make_package(new, old, KEY, version=3)
    for point in (18, total - 4, total, total + 1):
        region = shutil.copyfile(fw["tmp"] / "probe.bin", fw["tmp"] / "second.bin")
        with device.OtaBoard(fw["elf"], fw["machine"], region) as b:
            outcome = cut_trial(b, back, point)
            b.power_off()
            dut = b.power_on()
            s = device.running(dut)
            model = images[s.image]
            assert s.hash == model.model_hash() and answers(dut, model)
            assert (outcome, s.slot) == (("done", "B") if point == total + 1 else ("cut", "A"))


def test_qemu_killed_mid_transfer(fw):
    """A cut the firmware does not choose: QEMU killed (SIGKILL) while the package streams in."""
    pkg = make_package(fw["old"], fw["new"], KEY, version=2)
    with board(fw, "kill.bin") as b:
        dut = b.power_on()
        dut.command(f"ota begin {len(pkg)}")
        for off in range(0, 600, 200):  # the header and two chunks of the body are in, slot A erased
            piece = pkg[off:off + 200]
            dut.command(f"ota chunk {off} {piece.hex()} {zlib.crc32(piece):08x}")
        b.qemu.proc.kill()
        b.qemu.proc.wait(10)
        with pytest.raises((ProtocolError, LinkError)):
            dut.command("ota status")
        dut = b.power_on()
        s = device.running(dut)
        assert (s.slot, s.hash) == ("factory", fw["old"].model_hash()) and answers(dut, fw["old"])
        device.send(dut, pkg)  # and the update goes through afterwards
        assert answers(dut, fw["new"])


def test_push_sends_and_checks_the_test_split(fw, tmp_path):
    """`tinyseek update push` as the CLI runs it: build, provision, send, power cycle, then the
    test split on the device against the new model's integer reference."""
    fw["new"].save(tmp_path / "models" / "b" / "int8")
    (tmp_path / "device.key").write_bytes(KEY)
    pkg = tmp_path / "b.pkg"
    pkg.write_bytes(make_package(fw["old"], fw["new"], KEY, version=5))
    run = Run(load(None, {"run": "b", "models_dir": str(tmp_path / "models")}))
    r = commands.push("qemu_m4_ota", pkg, run, key=tmp_path / "device.key", region=tmp_path / "region.bin", limit=6)
    assert (r["before"]["slot"], r["after"]["slot"], r["after"]["version"]) == ("factory", "A", 5)
    assert r["after"]["hash"] == fw["new"].model_hash() and r["bitexact"] and r["samples"] == 6
    with pytest.raises(UpdateError, match="not newer than the running 5"):  # the board kept b
        commands.push("qemu_m4_ota", pkg, run, region=tmp_path / "region.bin", limit=1)
