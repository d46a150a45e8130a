"""Model updates on the other emulated boards with a region (docs/updates.md, "Boards"):
qemu_m7_ota (the DSP kernel on mps2-an500), qemu_m55_ota (the Helium kernel's layout on
mps3-an547), qemu_rv32_ota (the RV32 kernel on riscv32 virt) and qemu_m0_ota (the ARMv6-M
kernel's layout on the microbit, its region in the nRF51's flash, where a power cut or cycle is a
system reset inside one QEMU process). On each: a delta package of the committed default model
answers bit-exactly as the new model's integer reference, also after a power cycle; a package
for another layout is refused; a dozen power cuts across the slot erase, the image, the slot
header and the boot record, and one mid-transfer that the firmware does not choose, each leave
the old or the new model whole. qemu_m4_ota's own tests
(tests/test_ota.py) cover every rejection, rollback and the long cut run; what differs here is
the board: its region, its kernel's layout, its power cut."""
import configparser
import zlib

import pytest

from tinyseek.config import load
from tinyseek.harness.bench import build_firmware
from tinyseek.harness.boards import load_profile
from tinyseek.pipeline import Run
from tinyseek.quant.model import QuantModel
from tinyseek.update import commands, device
from tinyseek.update.image import UpdateError, slot_image
from tinyseek.update.package import make_package

from test_ota import KEY, answers, cut_trial, perturbed
from test_qemu_m4 import ROOT, TOOLS

RV = {"riscv64-unknown-elf-gcc": "sudo apt-get install -y gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf",
      "qemu-system-riscv32": "sudo apt-get install -y qemu-system-misc"}
ENVS = ["qemu_m55_ota", "qemu_rv32_ota", "qemu_m7_ota", "qemu_m0_ota"]


@pytest.fixture(scope="module", params=ENVS)
def fw(request, tmp_path_factory, need_tools):
    env = request.param
    need_tools(RV if "rv32" in env else TOOLS)
    tmp = tmp_path_factory.mktemp(env)
    elf = build_firmware(env, "intents", build_dir=tmp / "build")
    old = QuantModel.load(ROOT / "models/intents/int8")
    return {"env": env, "elf": elf, "tmp": tmp, "old": old, "new": perturbed(old, 1), "kernel": device.KERNEL[env],
            "machine": load_profile(env).machine()}


def board(fw, name):
    region = device.provision(fw["tmp"] / name, KEY, env=fw["env"])  # m55: a sparse 2 GiB file; m0: the key record
    return device.OtaBoard(fw["elf"], fw["machine"], region, env=fw["env"])


def test_region_files(tmp_path):
    """Provisioning: the key record at the region's place in the file, the region erased, the
    file the machine's RAM (the AN547's 2 GiB sparse); the microbit's file is the key record its
    firmware copies into its flash, at the key page platformio.ini gives the build; boards
    without a region are named."""
    ini = configparser.ConfigParser()
    ini.read(ROOT / "platformio.ini")
    for env, spec in device.REGIONS.items():
        path = device.provision(tmp_path / f"{env}.bin", KEY, env=env)
        if isinstance(spec, device.FlashRegion):
            head = path.read_bytes()
            assert head[:4] == b"TSKY" and head[4:36] == KEY and head[36:] == zlib.crc32(head[:36]).to_bytes(4, "little")
            assert int(ini[f"env:{env}"]["custom_ota_key_page"], 0) == spec.key_page
            assert int(ini[f"env:{env}"]["custom_ota_sector"], 0) == spec.sector
            continue
        assert path.stat().st_size == spec.ram_bytes
        with path.open("rb") as f:
            f.seek(spec.offset)
            head = f.read(40)
            assert head[:4] == b"TSKY" and head[4:36] == KEY and head[36:] == zlib.crc32(head[:36]).to_bytes(4, "little")
            f.seek(spec.offset + spec.region_bytes - 4)
            assert f.read(4) == b"\xff" * 4
        if spec.ram_bytes > 64 * device.MiB:
            assert path.stat().st_blocks * 512 < 64 * device.MiB  # holes, not 2 GiB written
        path.unlink()
    assert device.REGIONS["qemu_m4_ota"] == device.RegionFile(device.REGION_BYTES)  # provision() without env
    with pytest.raises(UpdateError, match="qemu_m0 has no updatable region"):
        device.region_file("qemu_m0")


@pytest.mark.slow
def test_update_on_the_board(fw):
    old, new, kernel = fw["old"], fw["new"], fw["kernel"]
    other = "c" if kernel != "c" else "dsp"
    with board(fw, "region.bin") as b:
        dut = b.power_on()
        s = device.running(dut)
        # the factory image, hashed on the device, is the host's image of this kernel's layout
        assert (s.slot, s.image) == ("factory", slot_image(old, kernel).sha256.hex()) and answers(dut, old)
        # a package for another layout (the portable C's arrays): refused as soon as the header is in
        with pytest.raises(UpdateError, match=f"another layout .*this firmware runs kernel {kernel}"):
            device.send(dut, make_package(old, new, KEY, version=2, kernel=other))
        s = device.running(dut)
        assert (s.slot, s.hash, device.status(dut)["state"]) == ("factory", old.model_hash(), "idle")
        # the delta, then the new model bit-exact, also after a power cycle (booted from slot A)
        device.send(dut, make_package(old, new, KEY, version=2, kernel=kernel))
        s = device.running(dut)
        assert (s.slot, s.version, s.hash, s.image) == ("A", 2, new.model_hash(), slot_image(new, kernel).sha256.hex())
        assert answers(dut, new) and dut.info()["hash"] == new.model_hash()
        qemu = b.qemu
        dut = b.power_on()
        assert device.running(dut).slot == "A" and answers(dut, new)
        assert int(device.status(dut)["boot_instructions"]) > 0
        assert (b.qemu is qemu) == b.in_process  # the microbit: a reset inside the one QEMU process


@pytest.mark.slow
def test_power_cuts_leave_old_or_new(fw):
    """12 cut points (qemu_m4_ota's tests and bench/updates.py run more): the first and last
    erase of slot A, spread over the image's words, the slot header, the boot record's erase and
    its words, the CRC word torn and the update whole."""
    old, new, kernel = fw["old"], fw["new"], fw["kernel"]
    pkg = make_package(old, new, KEY, version=2, kernel=kernel)
    images = {slot_image(old, kernel).sha256.hex(): old, slot_image(new, kernel).sha256.hex(): new}
    with board(fw, "probe.bin") as b:
        device.send(b.power_on(), pkg)
        total = int(device.status(b.dut)["flash_ops"])
    sector = device.region_file(fw["env"]).sector
    erases = -(-(sector + len(slot_image(old, kernel).data)) // sector)  # slot A's header sector and image
    points = sorted({1, erases, erases + 1, *(int(f * total) for f in (0.3, 0.5, 0.7)), total - 29, total - 5,
                     total - 4, total - 1, total, total + 1})
    seen = {}
    for point in points:
        with board(fw, "cut.bin") as b:
            outcome = cut_trial(b, pkg, point)
            # a new QEMU on the region file; the microbit booted again on its own after the cut
            dut = b.dut if b.in_process and outcome == "cut" else b.power_on()
            s = device.running(dut)
            model = images[s.image]  # the old or the new image, nothing else
            assert s.hash == model.model_hash() and answers(dut, model), (point, s)
            seen[point] = (outcome, s.slot)
            if point == points[4]:  # not bricked: the update goes through after the cut
                device.send(dut, pkg)
                assert answers(dut, new)
    assert len(seen) == 12 and seen.pop(total + 1) == ("done", "A")
    assert set(seen.values()) == {("cut", "factory")}, seen


@pytest.mark.slow
def test_power_lost_mid_transfer(fw):
    """A cut the firmware does not choose, while the package streams in and slot A is half
    erased: QEMU stopped (a new one on the region file), on the microbit a system reset from
    QEMU's monitor; the factory model runs, and the update goes through afterwards."""
    old, new, kernel = fw["old"], fw["new"], fw["kernel"]
    pkg = make_package(old, new, KEY, version=2, kernel=kernel)
    with board(fw, "lost.bin") as b:
        dut = b.power_on()
        dut.command(f"ota begin {len(pkg)}")
        for off in range(0, 600, 200):  # the header and two chunks of the body: slot A erased
            piece = pkg[off:off + 200]
            dut.command(f"ota chunk {off} {piece.hex()} {zlib.crc32(piece):08x}")
        dut = b.power_on()
        s = device.running(dut)
        assert (s.slot, s.hash, device.status(dut)["state"]) == ("factory", old.model_hash(), "idle")
        device.send(dut, pkg)
        assert answers(dut, new)


@pytest.mark.slow
def test_push_to_the_microbit_starts_from_its_factory_model(tmp_path, need_tools):
    """`tinyseek update push --env qemu_m0_ota`: the region is the chip's flash, which ends with
    the QEMU process, so each push boots the factory model (the key record file is kept) and the
    power cycle before the test split is a reset inside that process."""
    need_tools(TOOLS)
    old = QuantModel.load(ROOT / "models/intents/int8")
    new = perturbed(old, 1)
    new.save(tmp_path / "models" / "b" / "int8")
    (tmp_path / "device.key").write_bytes(KEY)
    pkg = tmp_path / "b.pkg"
    pkg.write_bytes(make_package(old, new, KEY, version=5, kernel="v6m"))
    run = Run(load(None, {"run": "b", "models_dir": str(tmp_path / "models")}))
    for limit in (6, 2):
        r = commands.push("qemu_m0_ota", pkg, run, key=tmp_path / "device.key", region=tmp_path / "key.rec",
                          limit=limit)
        assert (r["before"]["slot"], r["after"]["slot"], r["after"]["version"]) == ("factory", "A", 5)
        assert r["after"]["hash"] == new.model_hash() and r["bitexact"] and r["samples"] == limit
