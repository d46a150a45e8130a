"""A line-oriented serial link that works the same over a real port and over QEMU.

`SerialLink("/dev/ttyUSB0")` opens a USB serial adapter at 115200 baud;
`SerialLink("socket://127.0.0.1:PORT")` connects to QEMU's TCP serial port. Reads are
line-based with deadlines; bytes that are not valid UTF-8 are replaced, never fatal.
"""
from __future__ import annotations

import time

import serial

_MAX_LINE = 1 << 16


class LinkError(ValueError):
    """The serial port cannot be opened or used."""


class LinkTimeout(LinkError):
    """No complete line arrived before the deadline."""


class SerialLink:
    def __init__(self, url: str, baudrate: int = 115200, open_timeout: float = 5.0):
        self.url = url
        self._buf = bytearray()
        self.transcript: list[str] = []  # every line received, for error messages
        deadline = time.monotonic() + open_timeout
        while True:
            try:
                self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.05)
                break
            except (serial.SerialException, OSError, ValueError) as e:
                # QEMU may still be starting; a real port may be enumerating after a flash.
                if time.monotonic() >= deadline:
                    raise LinkError(f"cannot open serial port {url}: {e}") from e
                time.sleep(0.05)

    def write(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"writing to {self.url} failed: {e}") from e

    def drain(self) -> bytes:
        """Discard everything received so far (and return it)."""
        out = bytes(self._buf)
        self._buf.clear()
        while True:
            chunk = self._read_some()
            if not chunk:
                return out
            out += chunk

    def _read_some(self) -> bytes:
        try:
            n = max(1, self._port.in_waiting)
            return self._port.read(n)
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"reading from {self.url} failed: {e}") from e

    def read_line(self, timeout: float) -> str:
        """The next line without its line ending; raises LinkTimeout after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if time.monotonic() >= deadline:
                raise LinkTimeout(f"no reply line from {self.url} within {timeout:.1f} s"
                                  + (f" (partial: {bytes(self._buf)[:80]!r})" if self._buf else ""))
            self._buf += self._read_some()
            if len(self._buf) > _MAX_LINE and b"\n" not in self._buf:
                del self._buf[:-_MAX_LINE]  # a garbage stream without line breaks
        raw, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        self.transcript.append(line)
        del self.transcript[:-200]
        return line

    def close(self) -> None:
        try:
            self._port.close()
        except (serial.SerialException, OSError):
            pass

    def __enter__(self) -> "SerialLink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
