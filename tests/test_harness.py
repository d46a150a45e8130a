"""The host harness without a device: the protocol client against a scripted fake device on a
local socket (noise, lost bytes, errors, faults, silence), reply parsing, the offline
PlatformIO bootstrap, board profiles, the linker-map split and the missing-tool errors."""
import configparser
import json
import re
import socket
import threading
from pathlib import Path

import pytest

from tinyseek.harness import qemu as qemu_mod
from tinyseek.harness.boards import BoardError, load_profile, profiles
from tinyseek.harness.elfmem import model_bytes_from_map
from tinyseek.harness.pio_offline import ensure_scons_package, package_version
from tinyseek.harness.protocol import DeviceError, DeviceFault, DutClient, ProtocolError, parse_ints, parse_kv
from tinyseek.harness.serial_link import LinkError, SerialLink

ROOT = Path(__file__).resolve().parents[1]


class FakeDevice:
    """A TCP 'serial port' that answers commands like the firmware; `lose` bytes are dropped
    first (a device still booting), `noise` is sent before every reply."""

    def __init__(self, replies: dict[str, list[str]], lose: int = 0, noise: bytes = b""):
        self.replies, self.lose, self.noise = replies, lose, noise
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.server.accept()
        buf = b""
        with conn:
            while data := conn.recv(4096):
                if self.lose:
                    dropped = min(self.lose, len(data))
                    self.lose -= dropped
                    data = data[dropped:]
                buf += data
                while b"%" in buf:
                    cmd, _, buf = buf.partition(b"%")
                    conn.sendall(self.noise + self._answer(cmd.decode(errors="replace").strip()))

    def _answer(self, cmd: str) -> bytes:
        if cmd.startswith("sync "):
            lines = [f"m-sync-[{cmd[5:]}]", "m-ready"]
        elif cmd in self.replies:
            lines = self.replies[cmd]
        else:
            lines = [f"e-[Unknown command: {cmd}]", "m-ready"]
        return "".join(line + "\r\n" for line in lines).encode()

    def close(self):
        self.server.close()


@pytest.fixture
def fake(request):
    dev = FakeDevice(**request.param)
    yield dev
    dev.close()


REPLIES = {
    "name": ["m-name-dut-[tinyseek]", "m-ready"],
    "info": ["m-info-[model=x,hash=ab,classes=3,features=0]", "m-ready"],
    "infer 1 0": ["m-warmup-start-0", "m-warmup-done", "m-infer-start-1", "m-lap-us-1", "m-lap-us-2",
                  "m-infer-done", "m-results-[0.100,-2.000]", "m-logits-[100,-2000]",
                  "m-time-[total=40,runs=1,min=40,max=40,unit=instructions]", "m-ready"],
    "crash": ["e-[fault: exception 00000003 cfsr 00000100]"],
    "hang": ["m-partial"],
}


@pytest.mark.parametrize("fake", [dict(replies=REPLIES, lose=37, noise=b"\x00\xffboot noise\r\n")], indirect=True)
def test_client_syncs_through_lost_bytes_and_skips_noise(fake):
    with SerialLink(fake.url) as link:
        dut = DutClient(link, timeout=2.0)
        dut.sync(timeout=10)
        assert dut.name() == "tinyseek"
        assert dut.info() == {"model": "x", "hash": "ab", "classes": 3, "features": 0}
        out = dut.infer(1, 0)
        assert out["logits"] == [100, -2000] and out["results"] == [0.1, -2.0]
        assert out["time"] == {"total": 40, "runs": 1, "min": 40, "max": 40, "unit": "instructions"}
        reply = dut.command("name")
        assert reply.skipped == ["\x00\ufffdboot noise"]


@pytest.mark.parametrize("fake", [dict(replies=REPLIES)], indirect=True)
def test_client_errors_are_specific(fake):
    with SerialLink(fake.url) as link:
        dut = DutClient(link, timeout=0.5)
        dut.sync(timeout=5)
        with pytest.raises(DeviceError, match="Unknown command: bogus"):
            dut.command("bogus")
        assert dut.command("bogus", check=False).errors == ["Unknown command: bogus"]
        with pytest.raises(DeviceFault, match="CPU fault"):
            dut.command("crash")
        with pytest.raises(ProtocolError, match="no m-ready after 'hang'"):
            dut.command("hang")
        with pytest.raises(ProtocolError, match="cannot contain '%'"):
            dut.command("a%b")
        with pytest.raises(ProtocolError, match="token ids"):
            dut.classify("100% sure")


def test_sync_fails_clearly_when_nothing_answers():
    server = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"
    try:
        with SerialLink(url) as link:
            with pytest.raises(ProtocolError, match="did not answer 'sync'"):
                DutClient(link).sync(timeout=1.5)
    finally:
        server.close()


def test_serial_link_names_the_port_it_cannot_open():
    port = qemu_mod.free_port()
    with pytest.raises(LinkError, match=f"cannot open serial port socket://127.0.0.1:{port}"):
        SerialLink(f"socket://127.0.0.1:{port}", open_timeout=0.3)


def test_reply_parsing():
    assert parse_kv("a=1,b=x,c=na,d=-5") == {"a": 1, "b": "x", "c": None, "d": -5}
    assert parse_ints("1,-2,32767") == [1, -2, 32767] and parse_ints("") == []
    with pytest.raises(ProtocolError, match="key=value"):
        parse_kv("a=1,oops")


# -- QEMU launcher -----------------------------------------------------------------------------

def test_missing_qemu_names_the_apt_package(tmp_path, monkeypatch):
    elf = tmp_path / "fw.elf"
    elf.write_bytes(b"\x7fELF")
    monkeypatch.setattr(qemu_mod.shutil, "which", lambda name: None)
    with pytest.raises(qemu_mod.ToolMissingError, match="apt-get install -y qemu-system-misc"):
        qemu_mod.QemuProcess(elf, qemu_mod.Machine("qemu-system-riscv32", "virt"))


def test_missing_image_is_a_clear_error(tmp_path):
    with pytest.raises(qemu_mod.QemuError, match="does not exist; build it first"):
        qemu_mod.QemuProcess(tmp_path / "none.elf", qemu_mod.Machine("qemu-system-arm", "mps2-an386"))


# -- offline PlatformIO ----------------------------------------------------------------------

def test_scons_package_version_mapping():
    assert package_version("4.11.1") == "4.41101.0"
    assert package_version("4.8.1") == "4.40801.0"


def test_scons_package_is_installed_once_with_owner_platformio(tmp_path, monkeypatch):
    monkeypatch.setenv("PLATFORMIO_CORE_DIR", str(tmp_path / "core"))
    path = ensure_scons_package(tmp_path)
    meta = json.loads((path / ".piopm").read_text())
    assert meta["spec"]["owner"] == "platformio" and meta["name"] == "tool-scons"
    assert meta["version"] == json.loads((path / "package.json").read_text())["version"]
    assert (path / "scons.py").is_file() and (path / "SCons" / "Script" / "__init__.py").is_file()
    assert not list(path.rglob("__pycache__"))
    stamp = (path / ".piopm").stat().st_mtime_ns
    assert ensure_scons_package(tmp_path) == path and (path / ".piopm").stat().st_mtime_ns == stamp


# -- board profiles --------------------------------------------------------------------------

def test_every_environment_has_a_profile_and_emulated_ones_match_their_manifest():
    ini = configparser.ConfigParser()
    ini.read(ROOT / "platformio.ini")
    envs = {s[4:] for s in ini.sections() if s.startswith("env:")}
    assert envs == set(profiles())
    for env, p in profiles().items():
        board = ini[f"env:{env}"]["board"]
        assert p.pio_board == board
        if p.emulated:
            manifest = json.loads((ROOT / f"firmware/platform/tinyseek-qemu/boards/{board}.json").read_text())
            assert manifest["build"]["qemu_machine"] == p.qemu_machine
            assert int(manifest["build"]["f_cpu"].rstrip("L")) == p.clock_hz
            assert manifest["upload"]["maximum_size"] == p.flash_bytes
            assert manifest["upload"]["maximum_ram_size"] == p.ram_bytes


def test_energy_estimate_and_unknown_board():
    m4 = load_profile("qemu_m4")
    # 1.8 M instructions taken as cycles at 180 MHz: 10 ms at 125 mW = 1250 uJ.
    assert m4.energy_uj(1_800_000) == pytest.approx(1250.0)
    assert load_profile("nucleo_f446re").energy_uj(180_000) == pytest.approx(125.0)
    with pytest.raises(BoardError, match="known: .*qemu_m4"):
        load_profile("qemu_z80")


# -- linker map ------------------------------------------------------------------------------

MAP = """Discarded input sections

 .text.unused   0x00000000       0x40 /b/libm4txt.a(m4txt_model.o)

Linker script and memory map

.text           0x00000000     0x1000
 *(.isr_vector)
 .isr_vector    0x00000000       0x40 /b/src/board/cortexm_qemu.o
 .text.m4txt_reset
                0x00000040       0x1c /b/lib1f6/libm4txt.a(m4txt_model.o)
 .rodata.m4txt_w
                0x0000005c      0x200 /b/lib1f6/libm4txt.a(m4txt_model_data.o)
 .rodata.str1.1
                0x0000025c        0x9 /b/lib1f6/libm4txt.a(m4txt_model.o)
 .text.dut_feed
                0x00000268      0x300 /b/lib526/libharness.a(dut.o)
 *fill*         0x00000568        0x3
.bss            0x20000000      0x120
 .bss.m4txt_h0  0x20000000       0x20 /b/lib1f6/libm4txt.a(m4txt_model.o)
 COMMON         0x20000020      0x100 /b/src/model_glue.o
"""


def test_linker_map_split_counts_only_placed_model_sections(tmp_path):
    path = tmp_path / "firmware.map"
    path.write_text(MAP)
    assert model_bytes_from_map(path, "m4txt") == {(".text", "code"): 0x1C, (".text", "data"): 0x209,
                                                   (".bss", "data"): 0x20}


def test_flash_refuses_an_emulated_board_and_says_what_to_run(capsys):
    from tinyseek.cli import main
    assert main(["flash", "--env", "qemu_m4"]) == 2
    assert "tinyseek bench --env qemu_m4" in capsys.readouterr().err


# -- platformio.ini well-formedness (offline) ---------------------------------------------------

def test_every_environment_is_well_formed_and_registry_platforms_are_pinned():
    """What can be checked without the registry: PlatformIO's own parser and validator accept
    the file, every option of every environment is one PlatformIO knows (or a custom_ one), a
    registry platform carries a version (`name @ x.y.z`), and real boards name a framework
    PlatformIO has. Board ids of registry platforms cannot be checked here: PlatformIO ships
    board manifests only with the platforms (docs/firmware.md)."""
    from platformio.project.config import ProjectConfig
    from platformio.project.options import ProjectOptions

    config = ProjectConfig(str(ROOT / "platformio.ini"))
    assert config.validate(silent=True)
    unpinned = []
    for env in config.envs():
        section = f"env:{env}"
        unknown = [o for o in config.options(section) if f"env.{o}" not in ProjectOptions and not o.startswith("custom_")]
        assert not unknown, (env, unknown)
        platform = config.get(section, "platform")
        if platform.startswith("symlink://"):
            assert config.get(section, "board") in {p.stem for p in (ROOT / "firmware/platform/tinyseek-qemu/boards").glob("*.json")}
            continue
        if not re.fullmatch(r"[a-z0-9_-]+ @ \d+\.\d+\.\d+", platform):
            unpinned.append(env)
        assert config.get(section, "framework") == ["arduino"], env
    assert not unpinned, unpinned  # a registry platform without a release drifts with the registry


def test_only_the_projects_own_platform_is_kept_per_checkout(monkeypatch):
    """Registry platforms go to PlatformIO's shared core folder (no platforms_dir in the ini);
    builds on the project's symlink:// platform get a platforms folder of their checkout."""
    from platformio.project.config import ProjectConfig

    from tinyseek.harness.bench import own_platform_environ

    monkeypatch.delenv("PLATFORMIO_PLATFORMS_DIR", raising=False)
    config = ProjectConfig(str(ROOT / "platformio.ini"))
    assert not config.has_option("platformio", "platforms_dir")
    own = {"PLATFORMIO_PLATFORMS_DIR": str(ROOT / ".pio" / "platforms")}
    for env in config.envs():
        symlink = config.get(f"env:{env}", "platform").startswith("symlink://")
        assert own_platform_environ(ROOT, env) == (own if symlink else {}), env
    assert own_platform_environ(ROOT, "qemu_m4_ota") == own and own_platform_environ(ROOT, "pico") == {}
    monkeypatch.setenv("PLATFORMIO_PLATFORMS_DIR", "/elsewhere")  # the user's choice stands
    assert own_platform_environ(ROOT, "qemu_m4") == {}


class _RecordingDut:
    """Stands in for DutClient: records what `db load` receives."""
    def __init__(self):
        self.loaded = b""

    def classify(self, text):
        raise AssertionError("a text longer than the line is loaded as ids, not classified")

    def load(self, data):
        self.loaded = data

    def infer(self, runs, warmups, timeout):
        return {}


@pytest.mark.parametrize("subwords", [0, 3])
def test_a_text_tokenized_on_the_host_is_sent_as_the_device_tokenizes_it(subwords):
    import numpy as np

    from tinyseek.harness.bench import _send
    from tinyseek.student.tokenizer import HashTokenizer
    text = "turn on the kitchen lights " * 4 + "打开灯"
    dut = _RecordingDut()
    _, mode = _send(dut, text, {"kind": "text", "line": 16, "vocab": 1024, "max_len": 32}, 1, 0, 5.0, subwords)
    sent = np.frombuffer(dut.loaded, "<u2").tolist()
    steps = HashTokenizer(1024, 32, subwords).encode_steps(text)
    group = subwords + 1
    assert mode == "token_ids" and len(sent) == group * len(steps)
    for k, step in enumerate(steps):  # each step's group, padded with 0 (docs/numerics.md, "Subwords")
        assert sent[k * group:(k + 1) * group] == [*step, *[0] * (group - len(step))]
    if subwords:
        assert any(len(step) > 1 for step in steps)
