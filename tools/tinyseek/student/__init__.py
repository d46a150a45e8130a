"""The students: TinyLSTM (torch) and its tokenizer (pure Python, rendered to C); for bigger
devices TinyBert (a MobileBERT-style transformer) and the truncated teacher (docs/students.md).

The torch parts load lazily, so quantize/codegen/verify can import the tokenizer without torch.
"""
from __future__ import annotations

_TORCH_NAMES = {
    "tinylstm": ("StudentError", "StudentSpec", "TinyLSTM", "encode_texts", "expected_shapes", "export_params",
                 "exported_state", "load_student", "save_student", "split_inputs"),
    "tinybert": ("TinyBert", "TinyBertSpec", "load_tinybert", "save_tinybert"),
    "truncated": ("TruncatedTeacher",),
}

__all__ = ["HashTokenizer", *(name for names in _TORCH_NAMES.values() for name in names)]

from .tokenizer import HashTokenizer  # noqa: E402


def __getattr__(name: str):
    import importlib
    for module, names in _TORCH_NAMES.items():
        if name in names:
            return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
