"""The only places Python writes C text: literals, used as Jinja filters by the templates."""
from __future__ import annotations

import math

import numpy as np

from .identifiers import CodegenError

INT32_MIN, INT32_MAX = -2**31, 2**31 - 1


def c_int(v: int) -> str:
    """One integer literal that has the intended value and an int-sized type in C99.

    `-2147483648` would be the negation of a long (long) constant, so INT32_MIN is written as
    an expression of two ints.
    """
    v = int(v)
    if not INT32_MIN <= v <= INT32_MAX:
        raise CodegenError(f"integer {v} does not fit int32_t")
    return "(-2147483647 - 1)" if v == INT32_MIN else str(v)


def c_ints(values, per_line: int | None = None, indent: int = 4, line_width: int = 100) -> str:
    """Integers as initialiser lines, right-aligned to one width, each line ending with a comma
    (allowed after the last element of a C initialiser). `per_line` defaults to as many as fit
    `line_width` characters, at most 16."""
    lits = [c_int(v) for v in np.asarray(values).reshape(-1)]
    if not lits:
        raise CodegenError("C arrays cannot be empty")
    width = max(len(s) for s in lits)
    if per_line is None:
        per_line = max(1, min(16, (line_width - indent) // (width + 2)))
    return "\n".join(" " * indent + ", ".join(s.rjust(width) for s in lits[i:i + per_line]) + ","
                     for i in range(0, len(lits), per_line))


def c_string(text: str) -> str:
    """A C string literal of `text`'s UTF-8 bytes. Printable ASCII stays as is; `"`, `\\` and
    `?` (trigraphs, active under -std=c99) are backslash-escaped, every other byte is a
    three-digit octal escape, which cannot swallow a following digit."""
    out = []
    for b in text.encode("utf-8"):
        ch = chr(b)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def c_double(x: float) -> str:
    """A double literal that round-trips to the same float64 value."""
    x = float(x)
    if not math.isfinite(x):
        raise CodegenError(f"{x} has no C literal; the model's scales must be finite")
    return repr(x)
