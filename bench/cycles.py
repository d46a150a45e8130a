"""Static cycle estimate for Cortex-M4 and Cortex-M55 from the instructions an emulator executed.

QEMU counts instructions; it models no pipeline, so a multi-cycle load counts as much as a
one-cycle add. This module prices every executed instruction of the named functions with the
core's published timings (docs/kernels.md, section Cycles, cites the tables) and returns the
cycles per instruction (CPI) of that mix; an inference's estimated cycles are its measured
instructions times that CPI. The mix comes from one traced QEMU run (-singlestep, -d exec,nochain,
-dfilter on the functions' address ranges: one log line per executed instruction of those
functions), so loop trip counts, taken branches and the order of neighbouring instructions are
the real ones. It is an estimate, not a measurement: no wait states (zero-wait TCM/SRAM), no bus
contention, no branch prediction beyond what the tables state.

    .venv/bin/python bench/cycles.py ELF --env qemu_m4 --functions arm_nn_vec_mat_mul_result_acc_s8_s16,...
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OBJDUMP = "arm-none-eabi-objdump"
MACHINE = {"qemu_m4": "mps2-an386", "qemu_m7": "mps2-an500", "qemu_m55": "mps3-an547"}
CORE = {"qemu_m4": "cortex-m4", "qemu_m7": "cortex-m4", "qemu_m55": "cortex-m55"}


@dataclass(frozen=True)
class Insn:
    addr: int
    size: int
    mnemonic: str  # without condition/width suffixes: "ldr", "smlad", "vmladava"
    operands: str
    function: str


# objdump's architecture per core: without armv8.1-m.main it shows MVE instructions as the
# coprocessor instructions (LDC, CDP) that share their encodings.
OBJDUMP_ARCH = {"cortex-m4": "armv7e-m", "cortex-m55": "armv8.1-m.main"}


def disassemble(elf: Path, core: str = "cortex-m4") -> dict[int, Insn]:
    out = subprocess.run([OBJDUMP, "-d", "-m", OBJDUMP_ARCH[core], str(elf)], capture_output=True, text=True,
                         check=True).stdout
    insns, func = {}, ""
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(\S+)>:$", line)
        if m:
            func = m.group(1)
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+((?:[0-9a-f]{4}\s)+)\s*(\S+)\s*(.*)$", line)
        if m and not m.group(3).startswith("."):
            words = m.group(2).split()
            insns[int(m.group(1), 16)] = Insn(int(m.group(1), 16), 2 * len(words), base_mnemonic(m.group(3)),
                                              m.group(4), func)
    return insns


CONDS = ("eq", "ne", "cs", "cc", "hs", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al")


def base_mnemonic(m: str) -> str:
    """'ldr.w' -> 'ldr', 'addeq' -> 'add', 'vmladava.s8' -> 'vmladava', 'ldmia.w' -> 'ldm'."""
    m = m.split(".")[0].lower()
    if m.startswith("v"):
        return m
    for suffix in ("ia", "db"):
        if m.startswith(("ldm", "stm")) and m.endswith(suffix):
            m = m[:-2]
    if len(m) > 3 and m[-2:] in CONDS and m[:-2] not in ("b", "bl", "bx") and not m.startswith("ssat"):
        # A condition inside an IT block (the flag-setting 's' stays; it costs nothing).
        if m[:-2] in KNOWN:
            m = m[:-2]
    if m.startswith("b") and m[1:] in CONDS:
        m = "b"
    if m.endswith("s") and m[:-1] in KNOWN and m not in KNOWN:
        m = m[:-1]
    return m


LOADS = {"ldr", "ldrb", "ldrh", "ldrsb", "ldrsh"}
STORES = {"str", "strb", "strh"}
MULTI = {"ldm", "stm", "push", "pop"}
BRANCHES = {"b", "bl", "blx", "bx", "cbz", "cbnz", "le", "letp", "wls", "dls", "wlstp", "dlstp", "tbb", "tbh"}
MUL2 = {"mla", "mls"}  # Cortex-M4: 2 cycles
DIV = {"sdiv", "udiv"}
KNOWN = LOADS | STORES | MULTI | BRANCHES | MUL2 | DIV | {
    "ldrd", "strd", "mov", "movw", "movt", "mvn", "add", "adds", "adc", "sub", "subs", "sbc", "rsb", "and", "orr", "eor",
    "bic", "orn", "lsl", "lsr", "asr", "ror", "cmp", "cmn", "tst", "teq", "mul", "smull", "umull", "smlal", "umlal",
    "smlad", "smladx", "smlsd", "smuad", "smusd", "smlabb", "smlabt", "smlatb", "smlatt", "smulbb", "smulbt",
    "smultb", "smultt", "smlawb", "smlawt", "smulwb", "smulwt", "smmul", "smmulr", "smmla", "smmlar", "smlald",
    "ssat", "usat", "ssat16", "usat16", "sxtb", "sxth", "uxtb", "uxth", "sxtb16", "sxtab16", "uxtb16", "sxtab",
    "sxtah", "uxtab", "uxtah", "pkhbt", "pkhtb", "qadd", "qsub", "qadd16", "sadd16", "ssub16", "clz", "rev",
    "ubfx", "sbfx", "bfi", "bfc", "it", "ite", "itt", "itte", "ittt", "itee", "nop", "qdadd", "sel", "asrl", "lsll",
    "lsrl", "sqrshr", "sqrshrl", "srshr", "srshrl", "uqshl", "csel", "csinc", "csneg", "csinv", "cset", "csetm"}


def is_vector(m: str) -> bool:
    return m.startswith("v") and m not in ("vmov", "vmrs", "vmsr", "vpush", "vpop") or m in ("vpst", "vpt")


def vector_memory(m: str) -> bool:
    return m.startswith(("vldr", "vstr", "vld2", "vld4", "vst2", "vst4"))


def registers(ops: str) -> int:
    """Registers in a register list {r4, r5-r7}."""
    m = re.search(r"\{([^}]*)\}", ops)
    if not m:
        return 1
    n = 0
    for part in m.group(1).split(","):
        a = re.findall(r"\d+", part)
        n += int(a[1]) - int(a[0]) + 1 if "-" in part and len(a) == 2 else 1
    return n


def cycles_m4(i: Insn, prev: Insn | None, taken: bool) -> int:
    """Cortex-M4 TRM (Arm 100166_0001_00_en) 3.3.1 and 3.3.2. P, the pipeline refill of a taken
    branch, is taken as 2 (the table gives 1 to 3 depending on alignment and width)."""
    m, P = i.mnemonic, 2
    if m in LOADS or m in STORES:
        # Neighbouring single loads/stores pipeline: 1 cycle after the first (3.3.2).
        pipelined = prev is not None and (prev.mnemonic in LOADS or prev.mnemonic in STORES)
        return (1 if pipelined else 2) + (P if m == "ldr" and i.operands.startswith("pc") else 0)
    if m in ("ldrd", "strd"):
        return 3
    if m in MULTI:
        pc = m in ("pop", "ldm") and "pc" in i.operands
        return 1 + registers(i.operands) + (P if pc else 0)
    if m in BRANCHES:
        if m in ("tbb", "tbh"):
            return 2 + P
        return 1 + P if taken or m in ("bl", "blx", "bx") else 1
    if m in MUL2:
        return 2
    if m in DIV:
        return 7  # 2-12, data dependent: the middle
    if m.startswith("v"):
        return 1  # VMOV/VPUSH of the FPU: not in these kernels' loops
    return 1


def cycles_m55(i: Insn, prev: Insn | None, taken: bool) -> int:
    """Cortex-M55 Software Optimization Guide: scalar single-issue (in-order 4-stage) with a 64-bit
    data path (LDRD, two words of LDM/POP/PUSH per cycle); MVE dual-beat (a 128-bit instruction
    takes 2 cycles) and an instruction of the other group (memory / arithmetic) overlaps the
    previous one's second cycle. Taken branches refill 2 cycles; a taken LE from the loop cache
    1."""
    m = i.mnemonic
    if is_vector(m) and m not in ("vpst", "vpt"):
        overlap = prev is not None and is_vector(prev.mnemonic) and vector_memory(prev.mnemonic) != vector_memory(m)
        return 1 if overlap else 2
    if m in ("vpst", "vpt"):
        return 1
    if m in MULTI:
        pc = m in ("pop", "ldm") and "pc" in i.operands
        return 1 + (registers(i.operands) + 1) // 2 + (2 if pc else 0)
    if m in BRANCHES:
        if m in ("le", "letp"):
            return 1
        if m in ("tbb", "tbh"):
            return 4
        return 3 if taken or m in ("bl", "blx", "bx") else 1
    if m in DIV:
        return 7
    return 1


COST = {"cortex-m4": cycles_m4, "cortex-m55": cycles_m55}


def address_ranges(insns: dict[int, Insn], functions: list[str]) -> list[tuple[int, int]]:
    want, spans = set(functions), {}
    for a, i in insns.items():
        if i.function in want:
            lo, hi = spans.get(i.function, (a, a + i.size))
            spans[i.function] = (min(lo, a), max(hi, a + i.size))
    missing = want - spans.keys()
    if missing:
        raise ValueError(f"functions not in the ELF: {sorted(missing)}")
    return sorted(spans.values())


def trace_command(env: str, ranges: list[tuple[int, int]], log: Path) -> list[str]:
    """QEMU options that log one line per executed instruction inside `ranges`."""
    dfilter = ",".join(f"0x{lo:x}+0x{hi - lo:x}" for lo, hi in ranges)
    return ["-singlestep", "-d", "exec,nochain", "-dfilter", dfilter, "-D", str(log)]


PC = re.compile(rb"\[[0-9a-f]+/([0-9a-f]+)/")


def cpi_from_log(log: Path, insns: dict[int, Insn], core: str) -> dict:
    """Price the logged instructions; a branch is taken when the next logged pc is not the next
    instruction (a jump out of the ranges counts as taken)."""
    parts, rest = [], b""
    with open(log, "rb") as f:
        while chunk := f.read(1 << 24):
            buf = rest + chunk
            cut = buf.rfind(b"\n") + 1
            buf, rest = buf[:cut], buf[cut:]
            parts.append(np.array([int(x, 16) for x in PC.findall(buf)], np.int64))
    pcs = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if len(pcs) == 0:
        raise ValueError(f"{log}: no instruction of the functions ran")
    nxt = np.append(pcs[1:], -1)
    prev = np.insert(pcs[:-1], 0, -1)
    keys, counts = np.unique(np.stack([prev, pcs, nxt], axis=1), axis=0, return_counts=True)
    cost, total, mix = COST[core], 0, {}
    for (p, a, n), c in zip(keys.tolist(), counts.tolist()):
        i = insns.get(a)
        if i is None:
            raise ValueError(f"pc 0x{a:x} is not an instruction of the ELF")
        cyc = cost(i, insns.get(p), n != a + i.size)
        total += cyc * c
        e = mix.setdefault(i.mnemonic, [0, 0])
        e[0] += c
        e[1] += cyc * c
    n = int(counts.sum())
    top = sorted(mix.items(), key=lambda kv: -kv[1][1])[:12]
    return {"core": core, "instructions": n, "cycles": int(total), "cpi": total / n,
            "mix": {k: {"instructions": v[0], "cycles": v[1]} for k, v in top}}


def estimate_elf(elf: Path, env: str, functions: list[str], *, run=None) -> dict:
    """CPI of `functions` in one traced run of `elf` on `env`'s machine. `run(extra_args)` runs the
    firmware with those QEMU options added (default: a standalone program that exits by itself)."""
    insns = disassemble(elf, CORE[env])
    ranges = address_ranges(insns, functions)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "exec.log"
        extra = trace_command(env, ranges, log)
        if run is None:
            subprocess.run(["qemu-system-arm", "-M", MACHINE[env], "-nographic", "-monitor", "none", "-serial", "null",
                            "-semihosting-config", "enable=on,target=native", *extra, "-kernel", str(elf)],
                           check=True, capture_output=True, timeout=1800)
        else:
            run(extra)
        out = cpi_from_log(log, insns, CORE[env])
    out["functions"] = sorted(functions)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("elf", type=Path)
    ap.add_argument("--env", default="qemu_m4", choices=sorted(MACHINE))
    ap.add_argument("--functions", required=True, help="comma-separated function names")
    args = ap.parse_args()
    r = estimate_elf(args.elf, args.env, args.functions.split(","))
    print(f"{r['instructions']:,} instructions, {r['cycles']:,} estimated cycles, CPI {r['cpi']:.3f}")
    for k, v in r["mix"].items():
        print(f"  {k:10s} {v['instructions']:>10,} {v['cycles']:>10,}")


if __name__ == "__main__":
    main()
