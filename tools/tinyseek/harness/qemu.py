"""Boot a firmware image in QEMU with its serial port on a local TCP socket.

The emulator runs with `-icount shift=0,align=off,sleep=off`: virtual time advances exactly
1 ns per instruction, which makes the firmware's SysTick an instruction counter (see
docs/firmware.md). Semihosting is on, so the firmware can end the emulator with an exit code.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

APT_PACKAGE = {"qemu-system-arm": "qemu-system-arm", "qemu-system-riscv32": "qemu-system-misc"}


class ToolMissingError(ValueError):
    """A program the harness needs (QEMU, a compiler, PlatformIO) is not installed."""


class QemuError(ValueError):
    """QEMU did not start, or stopped with an error."""


@dataclass(frozen=True)
class Machine:
    system: str  # qemu-system-arm | qemu-system-riscv32
    machine: str  # -M value
    extra: tuple[str, ...] = ()


def require_tool(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise ToolMissingError(f"{program} is not installed; install it with: sudo apt-get install -y {package}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class QemuProcess:
    """A running emulator; use as a context manager so it is always stopped."""

    def __init__(self, elf: str | Path, machine: Machine, port: int | None = None,
                 start_timeout: float = 10.0, wait_for_client: bool = False):
        """wait_for_client: hold the boot until a client connects (`wait=on`, as `pio run -t
        upload` does), so that client sees the boot banner, as on a real board's USB serial."""
        self.elf = Path(elf)
        if not self.elf.is_file():
            raise QemuError(f"firmware image {self.elf} does not exist; build it first (pio run)")
        program = require_tool(machine.system, APT_PACKAGE.get(machine.system, machine.system))
        self.machine = machine
        self.port = port or free_port()
        self.url = f"socket://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile(mode="a+b")  # O_APPEND: reading never moves where QEMU writes
        self.command = [
            program, "-M", machine.machine, *machine.extra, "-nographic", "-monitor", "none",
            "-serial", f"tcp:127.0.0.1:{self.port},server=on,wait={'on' if wait_for_client else 'off'},nodelay=on",
            "-icount", "shift=0,align=off,sleep=off",
            "-semihosting-config", "enable=on,target=native",
            "-kernel", str(self.elf),
        ]
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        if not wait_for_client:  # a probe connection would be the client that sees the banner
            self._wait_listening(start_timeout)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                self._log.close()
                raise QemuError(f"QEMU exited with code {self.proc.returncode} at start: {log}\n"
                                f"command: {' '.join(self.command)}")
            try:
                # A probe connection; QEMU accepts the real client after this one closes.
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        log = self.log()
        self.stop()
        raise QemuError(f"QEMU did not open its serial port {self.port} within {timeout:.0f} s: {log}")

    def log(self) -> str:
        """What QEMU printed so far (errors, semihosting output)."""
        if self._log.closed:
            return "(closed)"
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace").strip() or "(no output)"

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int:
        """Wait for the firmware to stop the emulator (semihosting exit) and return its code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise QemuError(f"QEMU still runs after {timeout:.0f} s") from e

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> "QemuProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
