"""The device side of updates, from the host: the updatable region's file (provisioning the
device key), an emulated board whose region survives power cuts, and sending a package.

On most emulated update-enabled boards (REGIONS) the region lies in the machine's RAM, backed by
a file (QEMU's memory-backend-file, shared): what the firmware writes is in the file the moment
it writes it, so stopping QEMU at any instant is a power cut, and the next QEMU on the same file
is the same board powered up again. On the microbit (qemu_m0_ota) the region is the chip's own
flash, which QEMU keeps only while its process runs: a power cut, and a power cycle, is a system
reset inside that process (docs/updates.md).
"""
from __future__ import annotations

import shutil
import socket
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..harness.protocol import DutClient, ProtocolError, Reply, parse_kv
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
    sector: int = 4096  # bytes per erase (ota.c TS_OTA_SECTOR)
    in_process: bool = False  # a power cut or cycle is a reset inside one QEMU process


@dataclass(frozen=True)
class FlashRegion:
    """A region in the chip's own flash (qemu_m0_ota), which QEMU keeps only while its process
    runs: the file is the factory's key record, which QEMU's loader places at `key_page` (again
    at every reset, the same bytes); at its first boot the firmware erases its region and copies
    the record in. A power cut or cycle is a system reset inside the one QEMU process."""
    key_page: int
    sector: int = 1024
    in_process: bool = True


# The emulated update-enabled environments. mps2-an386: the PSRAM at 0x21000000 is its RAM;
# mps2-an500: 16 MiB at 0x60000000; mps3-an547: the DDR at 0x60000000, which must be 2 GiB (the
# file is sparse: only the region is written); riscv32 virt: RAM at 0x80000000, the image and
# data in its first 2 MiB, the region at 0x80800000, the device tree QEMU writes in its last 2 MiB;
# microbit: the nRF51's flash, the key page its last 1 KiB page (custom_ota_key_page).
REGIONS = {
    "qemu_m4_ota": RegionFile(16 * MiB),
    "qemu_m7_ota": RegionFile(16 * MiB),
    "qemu_m55_ota": RegionFile(2048 * MiB),
    "qemu_rv32_ota": RegionFile(32 * MiB, offset=8 * MiB),
    "qemu_m0_ota": FlashRegion(key_page=0x3FC00),
}
# The kernel variant each one's firmware runs (custom_ota_kernel): what its packages are made for.
KERNEL = {"qemu_m4_ota": "dsp", "qemu_m7_ota": "dsp", "qemu_m55_ota": "mve", "qemu_rv32_ota": "rv32",
          "qemu_m0_ota": "v6m"}


def region_file(env: str) -> RegionFile | FlashRegion:
    if env not in REGIONS:
        raise UpdateError(f"{env} has no updatable region; the emulated update-enabled boards are {', '.join(REGIONS)}")
    return REGIONS[env]


def key_record(key: bytes) -> bytes:
    """'TSKY', the key, CRC-32: what the firmware finds at its region's start (ota.c)."""
    if len(key) != KEY_BYTES:
        raise UpdateError(f"the device key must be {KEY_BYTES} bytes, not {len(key)}")
    record = struct.pack("<I", 0x594B5354) + key
    return record + struct.pack("<I", zlib.crc32(record))


def provision(path: str | Path, key: bytes, size: int = REGION_BYTES, *, env: str | None = None) -> Path:
    """A fresh region: erased flash (0xFF) with the device key record at its start, as a
    factory would write it when it flashes the firmware. With `env`, the file is that board's
    RAM (REGIONS) with the region at its offset, the rest left as holes (zeros); for a board
    whose region is its flash (FlashRegion), the key record alone, which the firmware copies into
    its region at its first boot."""
    record = key_record(key)
    spec = region_file(env) if env else RegionFile(size, 0, size)
    path = Path(path)
    if isinstance(spec, FlashRegion):
        path.write_bytes(record)
        return path
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


def ota_machine(machine: Machine, region: str | Path, spec: RegionFile | FlashRegion | None = None,
                monitor: str | Path | None = None) -> Machine:
    """`machine` with its RAM backed by `region` (shared: writes reach the file); for a
    FlashRegion, with the key record `region` loaded at the key page and, with `monitor`, QEMU's
    monitor on that Unix socket (the harness's reset)."""
    region = Path(region).resolve()
    if isinstance(spec, FlashRegion):
        extra = ("-device", f"loader,file={region},addr=0x{spec.key_page:x},force-raw=on")
        if monitor:
            extra += ("-monitor", f"unix:{monitor},server=on,wait=off")
        return Machine(machine.system, machine.machine, (*machine.extra, *extra), machine.console)
    size = region.stat().st_size
    return Machine(machine.system, f"{machine.machine},memory-backend=ota_region",
                   (*machine.extra, "-object", f"memory-backend-file,id=ota_region,size={size},mem-path={region},share=on"),
                   machine.console)


class DeviceRestarted(ProtocolError):
    """The device booted again while a command ran: its boot lines came instead of the reply (a
    board whose power cut is a reset inside its QEMU process)."""


class OtaDut(DutClient):
    """A DutClient that says so when the device restarted during a command (DeviceRestarted),
    having read the boot lines to their m-ready, so the next command's reply is its own."""

    def _read_until_ready(self, command: str, deadline: float) -> Reply:
        reply = super()._read_until_ready(command, deadline)
        boot = [line for line in reply.lines if line.startswith("m-ota-boot-[")]
        if boot:
            raise DeviceRestarted(f"the device restarted during {command[:40]!r}: {boot[-1]}")
        return reply


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
    """An emulated update-enabled board on a region file: power_on / power_off, a DutClient.

    `env` names the board's REGIONS entry (default: a RAM-backed region, as qemu_m4_ota's). On a
    board whose region is its flash (`in_process`), power_on while QEMU runs is a power cycle by
    a system reset inside the process (QEMU's monitor `system_reset`, the machine reset the
    firmware's own power cut requests), and power_off ends the board: its flash goes with QEMU."""

    def __init__(self, elf: str | Path, machine: Machine, region: str | Path, timeout: float = 30.0, *,
                 env: str | None = None):
        self.spec = region_file(env) if env else None
        self.in_process = bool(self.spec and self.spec.in_process)
        self.elf, self.region, self.timeout = Path(elf), Path(region), timeout
        self._machine = machine
        self.machine = ota_machine(machine, region, self.spec)
        self._tmp: Path | None = None  # the monitor socket's folder while QEMU runs (in_process)
        self.qemu: QemuProcess | None = None
        self.link: SerialLink | None = None
        self.dut: DutClient | None = None

    def power_on(self) -> DutClient:
        if self.in_process and self.qemu is not None and self.qemu.returncode is None:
            self._system_reset()
            self.dut.sync()
            return self.dut
        self.power_off()
        machine = self.machine
        if self.in_process:
            self._tmp = Path(tempfile.mkdtemp(prefix="ota-"))
            machine = ota_machine(self._machine, self.region, self.spec, self._tmp / "monitor.sock")
        self.qemu = QemuProcess(self.elf, machine)
        self.link = SerialLink(self.qemu.url)
        self.dut = OtaDut(self.link, timeout=self.timeout)
        self.dut.sync()
        return self.dut

    def _system_reset(self, timeout: float = 10.0) -> None:
        """`system_reset` on QEMU's monitor, then the device's boot lines on the serial line (a
        sync before them could be answered by the firmware about to be reset)."""
        def prompt(mon) -> None:  # up to the monitor's next prompt (or its closing)
            seen = b""
            while not seen.endswith(b"(qemu) "):
                seen += mon.recv(4096) or b"(qemu) "

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mon:
            mon.settimeout(timeout)
            mon.connect(str(self._tmp / "monitor.sock"))
            prompt(mon)
            mon.sendall(b"system_reset\n")
            prompt(mon)  # the command ran
        deadline = time.monotonic() + timeout
        while self.link.read_line(max(0.0, deadline - time.monotonic())) != "m-init-done":
            pass
        self.link.read_line(max(0.0, deadline - time.monotonic()))  # its m-ready

    def power_off(self) -> None:
        """Stop at once (SIGTERM: QEMU exits without running the guest further)."""
        if self.link is not None:
            try:
                self.link.close()
            except LinkError:
                pass
        if self.qemu is not None:
            self.qemu.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self.qemu = self.link = self.dut = self._tmp = None

    def __enter__(self) -> "OtaBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.power_off()
