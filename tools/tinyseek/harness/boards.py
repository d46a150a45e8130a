"""Board profiles: what the harness needs to know about each PlatformIO environment.

One TOML file per environment in tools/tinyseek/codegen/boards/ (data, not code): CPU, clock,
flash and RAM, the timing source and its unit, how to emulate it, and an active power figure
for a rough energy estimate.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .qemu import Machine

PROFILE_DIR = Path(__file__).resolve().parents[1] / "codegen" / "boards"


class BoardError(ValueError):
    """An unknown environment or a malformed board profile."""


@dataclass(frozen=True)
class BoardProfile:
    env: str
    name: str
    cpu: str
    arch: str
    emulated: bool
    pio_board: str
    clock_hz: int
    flash_bytes: int
    ram_bytes: int
    timer: str
    timer_unit: str  # "instructions" (QEMU -icount) or "cycles"
    active_power_mw: float
    qemu_system: str = ""
    qemu_machine: str = ""
    qemu_args: tuple[str, ...] = ()  # further QEMU options the machine needs
    qemu_console: str = "serial"  # "stdio": no UART, the console is semihosting on QEMU's stdin/stdout
    reference_board: str = ""  # emulated boards: the real board the energy estimate assumes
    reference_clock_hz: int = 0

    def machine(self) -> Machine:
        if not self.emulated:
            raise BoardError(f"{self.env} is a real board, not an emulated one")
        return Machine(self.qemu_system, self.qemu_machine, self.qemu_args, self.qemu_console)

    def energy_uj(self, latency: float) -> float:
        """Energy of one inference in microjoules, from a latency in this board's unit.

        Cycles at `clock_hz`; for an emulated board, instructions are taken as cycles of the
        reference board at `reference_clock_hz` (an estimate: QEMU has no pipeline model)."""
        hz = self.reference_clock_hz if self.emulated else self.clock_hz
        return latency / hz * self.active_power_mw * 1000.0


def load_profile(env: str) -> BoardProfile:
    path = PROFILE_DIR / f"{env}.toml"
    if not path.is_file():
        raise BoardError(f"no board profile for environment {env!r}; known: {', '.join(sorted(profiles()))}")
    data = tomllib.loads(path.read_text())
    known = {f.name for f in fields(BoardProfile)}
    unknown = set(data) - known
    if unknown:
        raise BoardError(f"{path}: unknown keys {sorted(unknown)}")
    data["qemu_args"] = tuple(data.get("qemu_args", ()))
    try:
        profile = BoardProfile(**data)
    except TypeError as e:
        raise BoardError(f"{path}: {e}") from e
    if profile.env != env:
        raise BoardError(f"{path} describes env {profile.env!r}, not {env!r}")
    if profile.emulated and not (profile.qemu_system and profile.qemu_machine and profile.reference_clock_hz):
        raise BoardError(f"{path}: an emulated board needs qemu_system, qemu_machine and reference_clock_hz")
    return profile


def profiles() -> dict[str, BoardProfile]:
    return {p.stem: load_profile(p.stem) for p in sorted(PROFILE_DIR.glob("*.toml"))}
