"""Host side of the device-under-test protocol (MLPerf Tiny / EEMBC, plus tinyseek's commands).

Every command is sent with a trailing '%'; the reply is every line up to `m-ready`. Lines that
are neither `m-...` nor `e-[...]` (boot noise, garbage) are skipped. docs/firmware.md is the
reference of every command and reply.
"""
from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field

from .serial_link import LinkTimeout, SerialLink

READY = "m-ready"
_BRACKET = re.compile(r"^m-([a-z_-]+?)-\[(.*)\]$")


class ProtocolError(ValueError):
    """The device did not answer as the protocol says (timeout, missing reply lines)."""


class DeviceError(ProtocolError):
    """The device answered with an error line `e-[...]`."""


class DeviceFault(ProtocolError):
    """The firmware reported a CPU fault and stopped."""


@dataclass
class Reply:
    command: str
    lines: list[str] = field(default_factory=list)  # m- lines, without m-ready
    errors: list[str] = field(default_factory=list)  # texts inside e-[...]
    skipped: list[str] = field(default_factory=list)  # non-protocol lines

    def field(self, key: str) -> str:
        """The text inside `m-<key>-[...]`."""
        for line in self.lines:
            m = _BRACKET.match(line)
            if m and m.group(1) == key:
                return m.group(2)
        raise ProtocolError(f"reply to {self.command!r} has no m-{key}-[...] line: {self.lines}")

    def has(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for line in self.lines)


def parse_kv(text: str) -> dict[str, int | str | None]:
    """`a=1,b=x,c=na` -> {'a': 1, 'b': 'x', 'c': None}."""
    out: dict[str, int | str | None] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ProtocolError(f"expected key=value, got {item!r} in {text!r}")
        out[key] = None if value == "na" else int(value) if re.fullmatch(r"-?\d+", value) else value
    return out


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")] if text else []


class DutClient:
    """Talks to the firmware over a SerialLink."""

    def __init__(self, link: SerialLink, timeout: float = 10.0):
        self.link = link
        self.timeout = timeout

    # -- low level ----------------------------------------------------------------------
    def sync(self, timeout: float = 15.0) -> None:
        """Make sure the next line read answers the next command: end any partial line on the
        device with '%', then wait for the echo of a fresh random token (the boot banner may
        have been lost, and stale replies may be queued)."""
        deadline = time.monotonic() + timeout
        self.link.drain()
        # Phase 1: knock until the device answers at all (it may still be booting).
        alive = False
        while not alive and time.monotonic() < deadline:
            token = secrets.token_hex(8)
            self.link.write(f"%sync {token}%")
            attempt_end = min(deadline, time.monotonic() + 1.0)
            while not alive and time.monotonic() < attempt_end:
                try:
                    line = self.link.read_line(max(0.01, attempt_end - time.monotonic()))
                except LinkTimeout:
                    break
                self._check_fault(line)
                alive = line.startswith("m-sync-[")
        if not alive:
            raise ProtocolError(f"the device on {self.link.url} did not answer 'sync' within {timeout:.0f} s; "
                                f"is the firmware running and the port right? last lines: "
                                f"{self.link.transcript[-5:]}")
        # Phase 2: one more token, sent once: every stale reply of phase 1 comes before its echo.
        token = secrets.token_hex(8)
        self.link.write(f"sync {token}%")
        end = time.monotonic() + self.timeout
        while True:
            try:
                line = self.link.read_line(max(0.0, end - time.monotonic()))
            except LinkTimeout as e:
                raise ProtocolError(f"the device on {self.link.url} stopped answering during sync") from e
            self._check_fault(line)
            if line == f"m-sync-[{token}]":
                self._read_until_ready("sync", end)
                return

    def _check_fault(self, line: str) -> None:
        if line.startswith("e-[fault"):
            raise DeviceFault(f"the firmware stopped with a CPU fault: {line}")

    def _read_until_ready(self, command: str, deadline: float) -> Reply:
        reply = Reply(command)
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.link.read_line(max(0.0, remaining))
            except LinkTimeout as e:
                raise ProtocolError(f"no m-ready after {command!r} ({e}); received so far: "
                                    f"{reply.lines + reply.errors}") from e
            self._check_fault(line)
            if line == READY:
                return reply
            if line.startswith("e-[") and line.endswith("]"):
                reply.errors.append(line[3:-1])
            elif line.startswith("m-"):
                reply.lines.append(line)
            else:
                reply.skipped.append(line)

    def command(self, command: str, timeout: float | None = None, check: bool = True) -> Reply:
        if "%" in command:
            raise ProtocolError(f"a command cannot contain '%' (the terminator): {command!r}")
        self.link.write(command + "%")
        reply = self._read_until_ready(command, time.monotonic() + (timeout or self.timeout))
        if check and reply.errors:
            raise DeviceError(f"device error for {command[:60]!r}: {'; '.join(reply.errors)}")
        return reply

    # -- commands -----------------------------------------------------------------------
    def name(self) -> str:
        """The vendor name of `m-name-dut-[NAME]` (tinyseek)."""
        return self.command("name").field("name-dut")

    def info(self) -> dict:
        return parse_kv(self.command("info").field("info"))

    def mem(self) -> dict:
        return parse_kv(self.command("mem").field("mem"))

    def reset(self) -> None:
        reply = self.command("reset")
        if not reply.has("m-reset-done"):
            raise ProtocolError(f"reset was not confirmed: {reply.lines}")

    def load(self, data: bytes, chunk: int = 64) -> None:
        """`db load N` then `db HEX` chunks of `chunk` bytes."""
        if not data:
            raise ProtocolError("the device cannot load an empty input (db load needs N > 0)")
        self.command(f"db load {len(data)}")
        done = False
        for i in range(0, len(data), chunk):
            done = self.command("db " + data[i:i + chunk].hex()).has("m-load-done")
        if not done:
            raise ProtocolError(f"the device did not confirm the load of {len(data)} bytes")

    def _result(self, reply: Reply) -> dict:
        logits = parse_ints(reply.field("logits"))
        text = reply.field("results")
        # m-results: class probabilities (what the MLPerf Tiny runner scores); m-logits: the exact values.
        out = {"logits": logits, "results": [float(v) for v in text.split(",") if v], "results_text": text}
        if any(line.startswith("m-time-[") for line in reply.lines):
            out["time"] = parse_kv(reply.field("time"))
        return out

    def infer(self, runs: int = 1, warmups: int = 0, timeout: float | None = None) -> dict:
        reply = self.command(f"infer {runs} {warmups}", timeout=timeout)
        return self._result(reply)

    def results(self) -> dict:
        return self._result(self.command("results"))

    def stream(self) -> dict:
        return self._result(self.command("stream"))

    def classify(self, text: str) -> dict:
        """`cls TEXT`: the device tokenizes and classifies."""
        if any(c in text for c in "%\r\n"):
            raise ProtocolError("cls text cannot contain '%', CR or LF; send token ids with load() instead")
        reply = self.command("cls " + text)
        out = self._result(reply)
        out["class"] = int(reply.field("class"))
        out["label"] = reply.field("label")
        return out

    # -- the listener: a wake word gating commands (firmware/lib/harness/ts_listen.h) --------
    def listen_config(self, cfg=None) -> dict:
        """`listen set` with a ListenConfig's threshold, window, stride, rest, capture and confirm
        (None: `listen config`); the device's settings as it reports them."""
        command = ("listen config" if cfg is None else
                   f"listen set {cfg.threshold} {cfg.window} {cfg.stride} {cfg.rest} {cfg.capture} {cfg.confirm}")
        return parse_kv(self.command(command).field("listen-config"))

    def listen_reset(self) -> None:
        if not self.command("listen reset").has("m-listen-reset-done"):
            raise ProtocolError("listen reset was not confirmed")

    def listen(self) -> dict:
        """`listen` on the loaded samples: {"events": [...] as tools/tinyseek/audio/listen.py
        gives them (a command's logits when the reply carries them: its last command's),
        "frames": heard since the reset, "time": ...}."""
        reply = self.command("listen")
        events = []
        for line in reply.lines:
            m = _BRACKET.match(line)
            if m and m.group(1) == "wake":
                kv = parse_kv(m.group(2))
                events.append({"event": "wake", "frame": kv["frame"], "margin": kv["margin"]})
            elif m and m.group(1) == "command":
                kv = parse_kv(m.group(2))
                events.append({"event": "command", "frame": kv["frame"], "class": kv["class"], "label": kv["label"]})
        summary = parse_kv(reply.field("listen"))
        if summary["dropped"]:
            raise ProtocolError(f"the device heard {summary['events']} events in one chunk and printed only "
                                f"{summary['events'] - summary['dropped']}; send shorter chunks")
        commands = [e for e in events if e["event"] == "command"]
        if commands:
            commands[-1]["logits"] = parse_ints(reply.field("logits"))
        return {"events": events, "frames": summary["frames"], "time": parse_kv(reply.field("time"))}

    def quit(self) -> None:
        """End the emulator (semihosting exit); the reply may be cut short by the exit."""
        self.link.write("quit%")
