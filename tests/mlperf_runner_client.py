"""A client that drives the firmware the way the official MLPerf Tiny runner does
(mlcommons/tiny, benchmark/runner: serial_device.py, device_under_test.py, device_manager.py,
script.py and main.py); a re-implementation of what it does on the wire and how it scores,
none of its code:

- a reply is every line up to the first one containing `m-ready`; CR and NUL are dropped, and a
  byte that is not valid UTF-8 on its own is not skipped: the reader appends the previous
  character again (the runner's reader keeps the last decoded character);
- `e-` lines are ordinary reply lines: nothing looks at them;
- with `check_name` in devices.yaml, a first connection sends `name%` and reads until the line
  is quiet for a second, then closes; the session connects anew and sends `name%` first;
- accuracy mode: `db load N`, `db HEX` in 31-byte chunks, `infer 1 0`; the last `m-results-[...]`
  line of the reply is parsed as floats, normalised by its sum; Top-1 is the argmax, AUC the
  macro one-vs-rest ROC AUC of the normalised rows.
"""
from __future__ import annotations

import re
import time

import numpy as np
import serial

CHUNK = 31  # bytes per `db` command without a power manager


def _open(url: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return serial.serial_for_url(url, timeout=0.1)
        except (serial.SerialException, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class RunnerDevice:
    def __init__(self, url: str, timeout: float = 5.0):
        self.port = _open(url)
        self.timeout = timeout
        self._msg, self._char = "", ""
        self._lines: list[str] = []

    def _read_line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while not self._lines:
            if time.monotonic() > deadline:
                return None
            for b in self.port.read(max(1, self.port.in_waiting)):
                try:
                    self._char = bytes([b]).decode()
                except UnicodeDecodeError:
                    pass  # the runner keeps the last character and appends it again
                if self._char and self._char not in "\n\r\0":
                    self._msg += self._char
                elif self._char == "\n":
                    self._lines.append(self._msg)
                    self._msg = ""
        return self._lines.pop(0)

    def send_command(self, command: str, timeout: float | None = None) -> list[str]:
        self.port.write((command + "%").encode())
        lines = []
        while True:
            line = self._read_line(timeout or self.timeout)
            if line is None:
                raise RuntimeError(f"No response to command {command}")
            if line:
                lines.append(line)
            if "m-ready" in line:
                return lines

    def close(self) -> None:
        self.port.close()


def check_name(url: str, expected: str) -> bool:
    """The device manager's `check_name` pre-check: name%, read until a second of quiet."""
    port = _open(url)
    try:
        port.write(b"name%")
        response, quiet_since = b"", time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            chunk = port.read(max(1, port.in_waiting))
            if chunk:
                response, quiet_since = response + chunk, time.monotonic()
    finally:
        port.close()
    m = re.search(r"m-name-dut-\[(.*)\]", response.decode(errors="replace"))
    return bool(m) and m.group(1) == expected


def get_name(dev: RunnerDevice) -> str | None:
    """`name%`, up to three tries, as the runner's DUT.get_name."""
    for _ in range(3):
        for line in dev.send_command("name"):
            m = re.match(r"^m-(name)-dut-\[([^]]+)]$", line)
            if m:
                return m.group(2)
    return None


def infer_results(dev: RunnerDevice, data: bytes) -> list[float]:
    dev.send_command(f"db load {len(data)}")
    for i in range(0, len(data), CHUNK):
        dev.send_command("db " + data[i:i + CHUNK].hex())
    results: list[float] = []
    for line in dev.send_command("infer 1 0", timeout=30.0):
        m = re.match(r"^m-results-\[([^]]+)\]$", line)
        if m:
            results = [float(x) for x in m.group(1).split(",") if x.strip()]
    return results


def normalize(scores: list[float]) -> list[float]:
    total = sum(scores)
    return [s / total for s in scores]


def top1_percent(y_pred: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.sum(np.argmax(y_pred, axis=1) == labels)) / len(y_pred)


def auc_ovr(y_pred: np.ndarray, labels: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC (ties count half), over the classes present."""
    aucs = []
    for k in np.unique(labels):
        pos, neg = y_pred[labels == k, k], y_pred[labels != k, k]
        greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        aucs.append(greater / (len(pos) * len(neg)))
    return float(np.mean(aucs))
