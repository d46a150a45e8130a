"""C identifiers of the generated library: the model name is the prefix of every one of them."""
from __future__ import annotations

import re


class CodegenError(ValueError):
    """The model cannot be rendered as C (bad name, unrepresentable value, missing templates)."""


C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME_LENGTH = 32
# C99 and C11 keywords, plus `asm` (a keyword of gcc and most embedded compilers).
C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "_Bool _Complex _Imaginary _Alignas _Alignof _Atomic _Generic _Noreturn _Static_assert _Thread_local asm".split())


def check_name(name: str) -> str:
    """Return `name` if it can prefix every generated identifier, else raise CodegenError."""
    fix = "set codegen.name to a short lower-case C identifier such as 'intents'"
    if not isinstance(name, str) or not C_IDENTIFIER.fullmatch(name):
        raise CodegenError(f"model name {name!r} is not a C identifier (ASCII letters, digits, '_', not starting "
                           f"with a digit); {fix}")
    if name in C_KEYWORDS:
        raise CodegenError(f"model name {name!r} is a C keyword; {fix}")
    if len(name) > MAX_NAME_LENGTH:
        raise CodegenError(f"model name {name!r} is longer than {MAX_NAME_LENGTH} characters; {fix}")
    if name.startswith("_"):
        # The macros would start with '_' and an upper-case letter: reserved for the implementation.
        raise CodegenError(f"model name {name!r} starts with '_' (reserved for the C implementation); {fix}")
    return name


def prefixed(name: str, suffix: str) -> str:
    """`<name>_<suffix>`, checked to be a valid C identifier."""
    ident = f"{name}_{suffix}"
    if not C_IDENTIFIER.fullmatch(ident) or ident in C_KEYWORDS:
        raise CodegenError(f"generated identifier {ident!r} is not a valid C identifier")
    return ident


def macro(name: str, suffix: str) -> str:
    """`<NAME>_<SUFFIX>`, checked like `prefixed`."""
    return prefixed(name.upper(), suffix.upper())
