"""The device side of updates, from the host: the updatable region's file (provisioning the
device key), an emulated board whose region survives power cuts, and sending a package.

On the emulated update-enabled boards (REGIONS) the region lies in the machine's RAM, backed by
a file (QEMU's memory-backend-file, shared): what the firmware writes is in the file the moment
it writes it, so stopping QEMU at any instant is a power cut, and the next QEMU on the same file
is the same board powered up again (docs/updates.md).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..harness.protocol import DutClient, Reply, parse_kv
from ..harness.qemu import Machine, QemuProcess
from ..harness.serial_link import LinkError, SerialLink
from .image import UpdateError
from .package import KEY_BYTES

MiB = 1024 * 1024
REGION_BYTES = 16 * MiB  # the region of every emulated board (TS_OTA_REGION_BYTES in platformio.ini)
CHUNK_BYTES = 200  # package bytes per `ota chunk` (400 hex digits: well inside the 512-byte line)


@dataclass(frozen=True)
class RegionFile:
    """Where the region lies in the RAM QEMU backs with the file: the file is the machine's whole
    RAM (`ram_bytes`, which the machine may fix), the region `region_bytes` from `offset`."""
    ram_bytes: int
    offset: int = 0
    region_bytes: int = REGION_BYTES


# The emulated update-enabled environments. mps2-an386: the PSRAM at 0x21000000 is its RAM;
# mps2-an500: 16 MiB at 0x60000000; mps3-an547: the DDR at 0x60000000, which must be 2 GiB (the
# file is sparse: only the region is written); riscv32 virt: RAM at 0x80000000, the image and
# data in its first 2 MiB, the region at 0x80800000, the device tree QEMU writes in its last 2 MiB.
REGIONS = {
    "qemu_m4_ota": RegionFile(16 * MiB),
    "qemu_m7_ota": RegionFile(16 * MiB),
    "qemu_m55_ota": RegionFile(2048 * MiB),
    "qemu_rv32_ota": RegionFile(32 * MiB, offset=8 * MiB),
}
# The kernel variant each one's firmware runs (custom_ota_kernel): what its packages are made for.
KERNEL = {"qemu_m4_ota": "dsp", "qemu_m7_ota": "dsp", "qemu_m55_ota": "mve", "qemu_rv32_ota": "rv32"}


def region_file(env: str) -> RegionFile:
    if env not in REGIONS:
        raise UpdateError(f"{env} has no updatable region; the emulated update-enabled boards are {', '.join(REGIONS)}")
    return REGIONS[env]


def provision(path: str | Path, key: bytes, size: int = REGION_BYTES, *, env: str | None = None) -> Path:
    """A fresh region: erased flash (0xFF) with the device key record at its start, as a
    factory would write it when it flashes the firmware. With `env`, the file is that board's
    RAM (REGIONS) with the region at its offset, the rest left as holes (zeros)."""
    if len(key) != KEY_BYTES:
        raise UpdateError(f"the device key must be {KEY_BYTES} bytes, not {len(key)}")
    spec = region_file(env) if env else RegionFile(size, 0, size)
    record = struct.pack("<I", 0x594B5354) + key
    record += struct.pack("<I", zlib.crc32(record))
    path = Path(path)
    with path.open("wb") as f:
        f.truncate(spec.ram_bytes)
        f.seek(spec.offset)
        f.write(record + b"\xff" * (4096 - len(record)))
        block = b"\xff" * MiB
        size = spec.region_bytes
        for _ in range((size - 4096) // len(block)):
            f.write(block)
        f.write(b"\xff" * ((size - 4096) % len(block)))
    return path


def ota_machine(machine: Machine, region: str | Path) -> Machine:
    """`machine` with its RAM backed by `region` (shared: writes reach the file)."""
    region = Path(region).resolve()
    size = region.stat().st_size
    return Machine(machine.system, f"{machine.machine},memory-backend=ota_region",
                   (*machine.extra, "-object", f"memory-backend-file,id=ota_region,size={size},mem-path={region},share=on"),
                   machine.console)


@dataclass
class OtaState:
    slot: str
    version: int
    hash: str
    image: str  # SHA-256 of the running image, hex

    @classmethod
    def parse(cls, text: str) -> "OtaState":
        kv = parse_kv(text)
        return cls(str(kv["slot"]), int(kv["version"]), str(kv["hash"]), str(kv["image"]))


def status(dut: DutClient) -> dict:
    return parse_kv(dut.command("ota status").field("ota-status"))


def running(dut: DutClient) -> OtaState:
    s = status(dut)
    return OtaState(str(s["slot"]), int(s["version"]), str(s["hash"]), str(s["image"]))


def send(dut: DutClient, package: bytes, *, chunk: int = CHUNK_BYTES, commit: bool = True) -> Reply | None:
    """`ota begin`, the chunks (each with its CRC-32; a chunk the device refuses for a CRC or
    offset error is resent from the offset `ota status` gives), then `ota commit`."""
    dut.command(f"ota begin {len(package)}")
    offset, retries = 0, 0
    while offset < len(package):
        piece = package[offset:offset + chunk]
        reply = dut.command(f"ota chunk {offset} {piece.hex()} {zlib.crc32(piece):08x}", check=False)
        if reply.errors:
            state = status(dut)
            if state["state"] != "receiving" or retries >= 3:  # the device gave up on the package
                raise UpdateError(f"the device refused the package at offset {offset}: {'; '.join(reply.errors)}")
            retries += 1
            offset = int(state["offset"])
            continue
        retries = 0
        offset = int(parse_kv(reply.field("ota-chunk"))["offset"])
    if not commit:
        return None
    reply = dut.command("ota commit", check=False)
    if reply.errors:
        raise UpdateError(f"the device did not commit the package: {'; '.join(reply.errors)}")
    return reply


class OtaBoard:
    """An emulated update-enabled board on a region file: power_on / power_off, a DutClient."""

    def __init__(self, elf: str | Path, machine: Machine, region: str | Path, timeout: float = 30.0):
        self.elf, self.machine, self.region, self.timeout = Path(elf), ota_machine(machine, region), Path(region), timeout
        self.qemu: QemuProcess | None = None
        self.link: SerialLink | None = None
        self.dut: DutClient | None = None

    def power_on(self) -> DutClient:
        self.power_off()
        self.qemu = QemuProcess(self.elf, self.machine)
        self.link = SerialLink(self.qemu.url)
        self.dut = DutClient(self.link, timeout=self.timeout)
        self.dut.sync()
        return self.dut

    def power_off(self) -> None:
        """Stop at once (SIGTERM: QEMU exits without running the guest further)."""
        if self.link is not None:
            try:
                self.link.close()
            except LinkError:
                pass
        if self.qemu is not None:
            self.qemu.stop()
        self.qemu = self.link = self.dut = None

    def __enter__(self) -> "OtaBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.power_off()
