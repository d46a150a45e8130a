"""Flash and RAM of a firmware image, split into the model library and the rest (runtime).

Section sizes come from the ELF (pyelftools). The model's share comes from the linker map
(every input section the linker placed, with the archive it came from: PlatformIO archives the
library as lib<name>.a), which also counts the library's string literals and padding; without a
map it falls back to the symbols whose names carry the model prefix `<name>_`. The model's state,
which the firmware owns (`tinyseek_model_state`), counts as the model's RAM too.
"""
from __future__ import annotations

import re
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile


class ElfMemoryError(ValueError):
    """The image or its map cannot be read."""


_MAP_START = "Linker script and memory map"
_ONE_LINE = re.compile(r"^ (\S+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+(\S.*)$")
_NAME_ONLY = re.compile(r"^ (\.\S+|COMMON)$")
_CONTINUED = re.compile(r"^\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)\s+(\S.*)$")
_OUTPUT = re.compile(r"^(\.\S+)(?:\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+))?")


def _alloc_sections(elf: ELFFile) -> dict[str, dict]:
    out = {}
    for s in elf.iter_sections():
        flags = s["sh_flags"]
        if not flags & SH_FLAGS.SHF_ALLOC or s["sh_size"] == 0:
            continue
        out[s.name] = {"size": int(s["sh_size"]), "nobits": s["sh_type"] == "SHT_NOBITS",
                       "write": bool(flags & SH_FLAGS.SHF_WRITE)}
    return out


def _is_stack(name: str) -> bool:
    return "stack" in name


# The model's state is the firmware's (a caller-owned <name>_state in firmware/src/model_glue.c);
# it counts as the model's RAM like the library's own scratch.
STATE_SYMBOL = "tinyseek_model_state"
STATE_SECTION = ".bss." + STATE_SYMBOL


def model_bytes_from_map(map_file: Path, model: str) -> dict[tuple[str, str], int]:
    """Bytes of the model's library per (output section, "code" | "data")."""
    owner = re.compile(rf"(lib{re.escape(model)}\.a\(|[/\\]{re.escape(model)}[/\\][^/\\]*\.o$)")
    per_section: dict[tuple[str, str], int] = {}
    current, pending = None, None
    started = False
    for line in map_file.read_text(errors="replace").splitlines():
        if not started:
            started = line.startswith(_MAP_START)
            continue
        if line and not line[0].isspace():
            m = _OUTPUT.match(line)
            current = m.group(1) if m else None
            pending = None
            continue
        if current is None:
            continue
        m = _ONE_LINE.match(line)
        if m and not m.group(1).startswith("0x"):
            name, size, origin = m.group(1), int(m.group(3), 16), m.group(4)
        elif pending and (c := _CONTINUED.match(line)):
            name, size, origin = pending, int(c.group(2), 16), c.group(3)
        else:
            n = _NAME_ONLY.match(line)
            pending = n.group(1) if n else None
            continue
        pending = None
        if owner.search(origin.strip()) or name == STATE_SECTION:
            key = (current, "code" if name.startswith(".text") else "data")
            per_section[key] = per_section.get(key, 0) + size
    return per_section


def model_bytes_from_symbols(elf: ELFFile, model: str) -> dict[tuple[str, str], int]:
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        raise ElfMemoryError("the image has no symbol table (stripped?) and no linker map was given")
    names = {i: s.name for i, s in enumerate(elf.iter_sections())}
    per_section: dict[tuple[str, str], int] = {}
    for sym in symtab.iter_symbols():
        kind = {"STT_FUNC": "code", "STT_OBJECT": "data"}.get(sym["st_info"]["type"])
        if (sym.name.startswith(model + "_") or sym.name == STATE_SYMBOL) and sym["st_size"] > 0 and isinstance(sym["st_shndx"], int) and kind:
            key = (names[sym["st_shndx"]], kind)
            per_section[key] = per_section.get(key, 0) + int(sym["st_size"])
    return per_section


def memory_report(elf_path: str | Path, model: str, map_file: str | Path | None = None) -> dict:
    """Flash and static RAM of the image, and the model library's share of each, in bytes.

    flash = every allocated section with contents (code, read-only data, the .data image);
    ram = .data + .bss; the stack region is reported apart (`stack_reserved`)."""
    elf_path = Path(elf_path)
    try:
        with elf_path.open("rb") as f:
            elf = ELFFile(f)
            sections = _alloc_sections(elf)
            if map_file is not None and Path(map_file).is_file():
                model_part, method = model_bytes_from_map(Path(map_file), model), "linker map"
            else:
                model_part, method = model_bytes_from_symbols(elf, model), "symbols"
    except (OSError, ValueError) as e:
        raise ElfMemoryError(f"cannot read {elf_path}: {e}") from e
    def model(where, kind=None) -> int:
        return sum(v for (sec, k), v in model_part.items()
                   if sec in sections and where(sections[sec]) and kind in (None, k))

    in_flash = lambda s: not s["nobits"]  # noqa: E731
    flash = sum(s["size"] for s in sections.values() if in_flash(s))
    flash_model = model(in_flash)
    ram = sum(s["size"] for k, s in sections.items() if s["write"] and not _is_stack(k))
    ram_model = model(lambda s: s["write"])
    stack = sum(s["size"] for k, s in sections.items() if _is_stack(k))
    return {
        "method": method,
        # code: everything but the model's data (weights, tables, labels): the runtime and the
        # model library's kernels, API and tokenizer
        "flash": {"total": flash, "model": flash_model, "model_code": model(in_flash, "code"),
                  "model_data": model(in_flash, "data"), "runtime": flash - flash_model,
                  "code": flash - model(in_flash, "data")},
        "ram": {"static": ram, "model": ram_model, "runtime": ram - ram_model, "stack_reserved": stack},
        "sections": {k: s["size"] for k, s in sorted(sections.items())},
    }
