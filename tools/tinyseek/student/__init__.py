"""The student: TinyLSTM (torch) and its tokenizer (pure Python, rendered to C).

The torch parts load lazily, so quantize/codegen/verify can import the tokenizer without torch.
"""
from __future__ import annotations

_TORCH_NAMES = ("StudentError", "StudentSpec", "TinyLSTM", "encode_texts", "expected_shapes", "export_params",
                "exported_state", "load_student", "save_student", "split_inputs")

__all__ = ["HashTokenizer", *_TORCH_NAMES]

from .tokenizer import HashTokenizer  # noqa: E402


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from . import tinylstm
        return getattr(tinylstm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
