"""SHA-256, HMAC-SHA256 and CRC-32 of the update path (firmware/lib/harness/ts_sha256.c),
compiled on the host with sanitizers, against Python's hashlib, hmac and zlib: every length
around the padding boundaries (0, 55, 56, 63, 64, 65, ...), multi-block messages, streamed input
in odd pieces, keys shorter than, equal to and longer than a block. The same code on qemu_m4,
through the firmware's `ota sha` and `ota hmac` commands, is in tests/test_ota.py."""
import hashlib
import hmac
import os
import random
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = [0, 1, 3, 31, 32, 55, 56, 57, 63, 64, 65, 100, 119, 120, 127, 128, 129, 191, 192, 1000, 4097]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if shutil.which("gcc") is None:
        msg = "gcc is not on PATH; install it with: sudo apt-get install -y gcc"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    exe = tmp_path_factory.mktemp("sha") / "sha_driver"
    subprocess.run(["gcc", "-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pedantic",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-I", str(ROOT / "firmware/lib/harness"), str(ROOT / "tests/firmware/host/sha_driver.c"),
                    str(ROOT / "firmware/lib/harness/ts_sha256.c"), "-o", str(exe)], check=True)

    def run(lines: list[str]) -> list[str]:
        p = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and not p.stderr, p.stderr[-2000:]
        return p.stdout.split()
    return run


def _hex(b: bytes) -> str:
    return b.hex() or "-"


def test_sha256_every_padding_boundary(driver):
    rng = random.Random(1)
    msgs = [bytes(rng.randrange(256) for _ in range(n)) for n in LENGTHS] + [b"abc", b"a" * 1000]
    got = driver([f"sha {_hex(m)}" for m in msgs])
    assert got == [hashlib.sha256(m).hexdigest() for m in msgs]
    # the FIPS 180-4 example values themselves, so the test does not only compare with itself
    assert got[-2] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_sha256_streamed_in_odd_pieces(driver):
    sizes = [0, 64, 1000, 63_051, 65_536 + 13]
    got = driver([f"shabig {n}" for n in sizes])
    assert got == [hashlib.sha256(bytes((i * 31 + 7) & 255 for i in range(n))).hexdigest() for n in sizes]


def test_hmac_sha256_keys_and_messages(driver):
    rng = random.Random(2)
    cases = []
    for klen in (0, 1, 20, 32, 63, 64, 65, 131):
        for mlen in (0, 55, 56, 64, 65, 200):
            cases.append((bytes(rng.randrange(256) for _ in range(klen)), bytes(rng.randrange(256) for _ in range(mlen))))
    got = driver([f"hmac {_hex(k)} {_hex(m)}" for k, m in cases])
    assert got == [hmac.new(k, m, hashlib.sha256).hexdigest() for k, m in cases]
    # RFC 4231 test case 2
    assert driver([f"hmac {b'Jefe'.hex()} {b'what do ya want for nothing?'.hex()}"]) == [
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"]


def test_crc32_matches_zlib(driver):
    rng = random.Random(3)
    msgs = [bytes(rng.randrange(256) for _ in range(n)) for n in LENGTHS]
    assert driver([f"crc {_hex(m)}" for m in msgs]) == [f"{zlib.crc32(m):08x}" for m in msgs]
