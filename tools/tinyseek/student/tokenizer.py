"""The student's own tokenizer: UTF-8 bytes -> hashed token ids.

Defined once here and rendered to C by codegen; docs/numerics.md ("The student tokenizer")
is the spec both follow, byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619

_SEPARATOR_RANGES = ((0x80, 0xBF), (0x2000, 0x206F), (0x3000, 0x303F), (0xFF00, 0xFF0F), (0xFF1A, 0xFF20))


def decode_utf8(data: bytes) -> list[int]:
    """Code points of `data`; a byte that does not start a complete valid sequence becomes -1
    (a separator), and decoding resumes at the next byte."""
    out: list[int] = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            out.append(b)
            i += 1
            continue
        if 0xC2 <= b <= 0xDF:
            length, cp = 2, b & 0x1F
        elif 0xE0 <= b <= 0xEF:
            length, cp = 3, b & 0x0F
        elif 0xF0 <= b <= 0xF4:
            length, cp = 4, b & 0x07
        else:
            out.append(-1)
            i += 1
            continue
        if i + length > n or any(not 0x80 <= data[i + k] <= 0xBF for k in range(1, length)):
            out.append(-1)
            i += 1
            continue
        for k in range(1, length):
            cp = (cp << 6) | (data[i + k] & 0x3F)
        out.append(cp)
        i += length
    return out


def _is_separator(cp: int) -> bool:
    if cp < 0:
        return True
    if cp < 0x80:
        return not chr(cp).isalnum()
    return any(lo <= cp <= hi for lo, hi in _SEPARATOR_RANGES)


def utf8_bytes(cp: int) -> bytes:
    """The generic UTF-8 form of a decoded code point, surrogates and values above U+10FFFF
    included (the decoder accepts them, so Python's strict codec cannot be used here)."""
    if cp < 0x80:
        return bytes([cp])
    if cp < 0x800:
        return bytes([0xC0 | cp >> 6, 0x80 | cp & 0x3F])
    if cp < 0x10000:
        return bytes([0xE0 | cp >> 12, 0x80 | (cp >> 6) & 0x3F, 0x80 | cp & 0x3F])
    return bytes([0xF0 | cp >> 18, 0x80 | (cp >> 12) & 0x3F, 0x80 | (cp >> 6) & 0x3F, 0x80 | cp & 0x3F])


def fnv1a(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFF
    return h


MAX_SUBWORDS = 15


@dataclass(frozen=True)
class HashTokenizer:
    """`subwords` > 0 adds hashed n-grams to every step (docs/numerics.md, "Subwords"): a word's
    step is the group (word id, up to `subwords` ids of its boundary-marked character trigrams),
    a single character's step (its id, the id of the bigram with the single character before it).
    `encode` gives the steps' first ids, `encode_steps` the whole groups."""
    vocab_size: int
    max_len: int
    subwords: int = 0

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2 (got {self.vocab_size})")
        if self.max_len < 1:
            raise ValueError(f"max_len must be at least 1 (got {self.max_len})")
        if not 0 <= self.subwords <= MAX_SUBWORDS:
            raise ValueError(f"subwords must be 0..{MAX_SUBWORDS} (got {self.subwords})")

    def _token_id(self, token: bytes) -> int:
        if token.isdigit():
            token = b"#"
        return 1 + fnv1a(token) % (self.vocab_size - 1)

    def _word_step(self, word: bytes) -> tuple[int, ...]:
        if word.isdigit() or not self.subwords:
            return (self._token_id(word),)
        marked = b"<" + word + b">"
        grams = [marked[k:k + 3] for k in range(len(marked) - 2)][: self.subwords]
        return (self._token_id(word), *(1 + fnv1a(g) % (self.vocab_size - 1) for g in grams))

    def encode_steps(self, text: str | bytes) -> list[tuple[int, ...]]:
        """The id group of every step (one id each when subwords is 0)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        steps: list[tuple[int, ...]] = []
        word = bytearray()
        prev_single = -1  # the code point just before, when it was a single character
        for cp in decode_utf8(data):
            if len(steps) >= self.max_len:
                break
            if 0 <= cp < 0x80 and not _is_separator(cp):
                word.append(ord(chr(cp).lower()))
                prev_single = -1
                continue
            if word:
                steps.append(self._word_step(bytes(word)))
                word.clear()
            if not _is_separator(cp) and len(steps) < self.max_len:
                step = (self._token_id(utf8_bytes(cp)),)
                if self.subwords and prev_single >= 0:
                    step += (1 + fnv1a(utf8_bytes(prev_single) + utf8_bytes(cp)) % (self.vocab_size - 1),)
                steps.append(step)
                prev_single = cp
            else:
                prev_single = -1
        if word and len(steps) < self.max_len:
            steps.append(self._word_step(bytes(word)))
        return steps[: self.max_len]

    def encode(self, text: str | bytes) -> list[int]:
        """The first id of every step: the whole-word / character ids."""
        return [step[0] for step in self.encode_steps(text)]

    def model_inputs(self, text: str | bytes) -> list[int] | list[tuple[int, ...]]:
        """What the model steps on: ids (subwords 0), else id groups."""
        return self.encode_steps(text) if self.subwords else self.encode(text)


def device_ids(steps, subwords: int) -> list[int]:
    """A sample's steps as the generated C reads and writes its ids (tokenize, infer_tokens, the
    firmware's db load): with subwords, 1 + subwords ids per step (the group, zero-padded)."""
    if not subwords:
        return [int(g) for g in steps]
    out: list[int] = []
    for g in steps:
        g = [int(v) for v in (g if hasattr(g, "__len__") else (g,))]  # a group (tuple, list, array) or one id
        if len(g) > 1 + subwords:
            raise ValueError(f"an id group of {len(g)} ids; this model's groups hold at most {1 + subwords}")
        out += g + [0] * (1 + subwords - len(g))
    return out
