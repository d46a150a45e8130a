"""bench/cycles.py's static cycle estimate (the prices of docs/kernels.md, section Cycles) and
bench/cmsis_nn.py's checks of what the user passes; no emulator needed."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import cycles  # noqa: E402
from cycles import Insn, base_mnemonic, cpi_from_log, cycles_m4, cycles_m55  # noqa: E402


def insn(addr, mnemonic, ops="", size=4):
    return Insn(addr, size, base_mnemonic(mnemonic), ops, "f")


@pytest.mark.parametrize("raw, base", [("ldr.w", "ldr"), ("ldmia.w", "ldm"), ("bne.n", "b"), ("addeq", "add"),
                                       ("vmladava.s8", "vmladava"), ("smlad", "smlad"), ("ssat", "ssat")])
def test_mnemonics_lose_their_suffixes(raw, base):
    assert base_mnemonic(raw) == base


def test_m4_prices_follow_the_trm():
    ldr, add = insn(0, "ldr", "r1, [r0]"), insn(4, "add", "r1, r1, r2")
    assert cycles_m4(ldr, add, False) == 2  # a single load
    assert cycles_m4(ldr, ldr, False) == 1  # pipelined behind another load
    assert cycles_m4(insn(0, "ldrd", "r2, r3, [r0]"), None, False) == 3
    assert cycles_m4(insn(0, "ldmia", "r0!, {r4, r5, r6, r7}"), None, False) == 5  # 1 + N
    assert cycles_m4(insn(0, "pop", "{r4-r11, pc}"), None, True) == 1 + 9 + 2
    assert cycles_m4(insn(0, "bne", "8"), None, True) == 3 and cycles_m4(insn(0, "bne", "8"), None, False) == 1
    assert cycles_m4(insn(0, "smlad", "r0, r1, r2, r0"), None, False) == 1
    assert cycles_m4(insn(0, "mla", "r0, r1, r2, r0"), None, False) == 2


def test_m55_overlaps_vector_instructions_of_the_other_group():
    load, mac = insn(0, "vldrb.8", "q1, [r1], #16"), insn(4, "vmladava.s8", "r0, q1, q0")
    assert cycles_m55(load, None, False) == 2
    assert cycles_m55(mac, load, False) == 1  # overlaps the load's second beat pair
    assert cycles_m55(mac, mac, False) == 2  # same group: no overlap
    assert cycles_m55(insn(0, "ldrd", "r2, r3, [r0]"), None, False) == 1


def test_the_log_gives_trip_counts_and_taken_branches(tmp_path, monkeypatch):
    # A two-instruction loop run 3 times: ldr (2, then 1 behind nothing: prev is bne), bne taken twice.
    insns = {0x100: Insn(0x100, 2, "ldr", "r1, [r0]", "f"), 0x102: Insn(0x102, 2, "b", "100", "f"),
             0x104: Insn(0x104, 2, "add", "r0, r0, r1", "f")}
    pcs = [0x100, 0x102] * 3 + [0x104]
    log = tmp_path / "exec.log"
    log.write_text("".join(f"Trace 0: 0x7f00 [00000000/{pc:08x}/00000000/ff200000] f\n" for pc in pcs))
    r = cpi_from_log(log, insns, "cortex-m4")
    assert r["instructions"] == 7
    assert r["cycles"] == 3 * 2 + 2 * 3 + 1 * 1 + 1  # loads, taken bne, untaken bne, add
    assert r["cpi"] == pytest.approx(r["cycles"] / 7)


def test_unknown_functions_are_named():
    with pytest.raises(ValueError, match="not in the ELF"):
        cycles.address_ranges({0: Insn(0, 2, "add", "", "f")}, ["f", "g"])


def test_cmsis_nn_script_names_a_wrong_checkout(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cmsis_nn.py"), "--cmsis-nn", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "not a CMSIS-NN checkout" in proc.stderr and "github.com/ARM-software/CMSIS-NN" in proc.stderr


def test_mve_instructions_are_disassembled_as_mve(tmp_path):
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc is not installed")
    src = tmp_path / "f.s"
    src.write_text(".syntax unified\n.thumb\n.global f\n.type f, %function\nf:\n"
                   "vldrb.u8 q0, [r0], #16\nvmladava.s8 r2, q0, q0\nbx lr\n")
    obj = tmp_path / "f.o"
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard", "-c", str(src), "-o",
                    str(obj)], check=True)
    got = [i.mnemonic for i in cycles.disassemble(obj, "cortex-m55").values()]
    assert got[0] == "vldrb" and got[1] in ("vmladava", "vmlava")  # objdump prints the VMLAV alias
    assert all(cycles.is_vector(m) for m in got[:2])
