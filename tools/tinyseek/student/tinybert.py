"""TinyBert, the edge-box student: a MobileBERT-style bottleneck transformer encoder over the
student's hash tokenizer, mean pooling over the real tokens and a linear head.

What it keeps of MobileBERT (Sun et al., 2020):
- the narrow token embedding projected to the inter-block width `hidden`, plus learned
  positions; with `trigram` MobileBERT's trigram embedding: each token's embedding
  concatenated with its left and right neighbours' before the projection (off by default:
  on the intents task it cost 6 points of test accuracy on unseen phrasings, as word trigrams
  memorise the training phrasings; docs/students.md);
- blocks with a linear bottleneck on each side: the residual stream between blocks is
  `hidden` wide, inside a block everything runs at `bottleneck` width (MobileBERT: 512 / 128);
- the key-query shared bottleneck: queries and keys come from one bottleneck projection of
  the block input, values from the full-width input;
- a stack of `ffn_stack` feed-forward networks per block (MobileBERT: 4), ReLU activations.
What it simplifies: LayerNorm instead of MobileBERT's NoNorm (an elementwise affine map chosen
there for phone latency; not tried here), no dropout, and no progressive layer-by-layer
transfer: attention transfer (distill/edge.py) acts on all matched layers at once. With bottleneck > hidden the same code is the inverted
bottleneck of IB-BERT, MobileBERT's teacher.

Attention is bidirectional over the real tokens; `forward(..., attentions=True)` also
returns every block's attention averaged over heads, [B, T, T], for attention transfer.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .tinylstm import StudentError
from .tokenizer import HashTokenizer, _is_separator

WEIGHTS_FILE = "student.safetensors"
SPEC_FILE = "student.json"


@dataclass
class TinyBertSpec:
    """What an edge student's student.json holds for TinyBert: the architecture, the labels
    and the tokenizer settings (HashTokenizer(vocab_size, max_len))."""
    labels: list[str]
    vocab_size: int
    max_len: int
    hidden: int
    bottleneck: int
    layers: int
    heads: int
    ffn_stack: int
    embed_dim: int
    trigram: bool = False
    kind: str = "tinybert"

    def __post_init__(self) -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise StudentError(f"tinybert spec: {what}")

        need(self.kind == "tinybert", f"kind must be 'tinybert', not {self.kind!r}")
        need(isinstance(self.labels, list) and len(self.labels) >= 2 and all(isinstance(s, str) for s in self.labels),
             f"labels must be a list of at least 2 strings, not {self.labels!r}")
        for name in ("vocab_size", "max_len", "hidden", "bottleneck", "layers", "heads", "ffn_stack", "embed_dim"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name} must be a positive integer, not {v!r}")
        need(self.vocab_size >= 2, f"vocab_size must be at least 2, not {self.vocab_size}")
        need(isinstance(self.trigram, bool), f"trigram must be true or false, not {self.trigram!r}")
        need(self.bottleneck % self.heads == 0,
             f"bottleneck ({self.bottleneck}) must be a multiple of heads ({self.heads})")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data) -> "TinyBertSpec":
        if not isinstance(data, dict):
            raise StudentError("tinybert spec must be a JSON object")
        known = {f.name for f in fields(cls)}
        missing, unknown = sorted(known - data.keys() - {"kind"}), sorted(data.keys() - known)
        if missing or unknown:
            raise StudentError(f"tinybert spec: missing keys {missing}, unknown keys {unknown}")
        return cls(**data)


class Block(nn.Module):
    """One MobileBERT block: bottleneck in, shared-bottleneck attention, FFN stack, bottleneck out."""

    def __init__(self, spec: TinyBertSpec):
        super().__init__()
        h, b = spec.hidden, spec.bottleneck
        self.heads = spec.heads
        self.inp = nn.Linear(h, b)  # input bottleneck: the block's residual at width b
        self.inp_norm = nn.LayerNorm(b)
        self.shared = nn.Linear(h, b)  # key-query shared bottleneck
        self.shared_norm = nn.LayerNorm(b)
        self.q, self.k = nn.Linear(b, b), nn.Linear(b, b)
        self.v = nn.Linear(h, b)
        self.o = nn.Linear(b, b)
        self.attn_norm = nn.LayerNorm(b)
        self.ffn = nn.ModuleList(nn.Sequential(nn.Linear(b, 4 * b), nn.ReLU(), nn.Linear(4 * b, b))
                                 for _ in range(spec.ffn_stack))
        self.ffn_norm = nn.ModuleList(nn.LayerNorm(b) for _ in range(spec.ffn_stack))
        self.out = nn.Linear(b, h)  # output bottleneck back to the inter-block width
        self.out_norm = nn.LayerNorm(h)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, hidden], key_bias [B, 1, 1, T] (0 for real keys, a large negative for
        padding) -> (output [B, T, hidden], attention averaged over heads [B, T, T])."""
        n, t, _ = x.shape
        inp = self.inp_norm(self.inp(x))
        shared = self.shared_norm(self.shared(x))

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.view(n, t, self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.q(shared)), heads(self.k(shared)), heads(self.v(x))
        scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5) + key_bias
        attn = scores.softmax(-1)
        ctx = (attn @ v).transpose(1, 2).reshape(n, t, -1)
        h = self.attn_norm(inp + self.o(ctx))
        for ffn, norm in zip(self.ffn, self.ffn_norm):
            h = norm(h + ffn(h))
        return self.out_norm(x + self.out(h)), attn.mean(1)


class TinyBert(nn.Module):
    def __init__(self, spec: TinyBertSpec):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.embed_dim, padding_idx=0)
        self.embed_proj = nn.Linear((3 if spec.trigram else 1) * spec.embed_dim, spec.hidden)
        self.pos = nn.Embedding(spec.max_len, spec.hidden)
        self.embed_norm = nn.LayerNorm(spec.hidden)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.layers))
        self.head = nn.Linear(spec.hidden, spec.num_classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, attentions: bool = False):
        """ids [B, T] (T <= max_len), mask [B, T] (1 real token, 0 padding) -> logits [B, C];
        with attentions=True also the list of every block's head-averaged attention [B, T, T].
        A row without real tokens gives the head's bias (its pooled state is zero)."""
        m = mask.to(torch.float32)
        e = self.embed(ids) * m.unsqueeze(-1)
        if self.spec.trigram:
            zero = torch.zeros_like(e[:, :1])
            e = torch.cat([torch.cat([zero, e[:, :-1]], 1), e, torch.cat([e[:, 1:], zero], 1)], -1)
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed_norm(self.embed_proj(e) + self.pos(positions))
        # A large finite negative, not -inf: an all-padding row then softmaxes to uniform, not NaN.
        key_bias = ((1.0 - m) * torch.finfo(torch.float32).min)[:, None, None, :]
        maps = []
        for block in self.blocks:
            x, a = block(x, key_bias)
            maps.append(a)
        pooled = (x * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
        logits = self.head(pooled)
        return (logits, maps) if attentions else logits


# -- inputs -------------------------------------------------------------------------------

def encode(texts: list[str], spec: TinyBertSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [N, max_len] (zero-padded) and the mask [N, max_len] with the student tokenizer."""
    tok = HashTokenizer(spec.vocab_size, spec.max_len)
    ids = torch.zeros(len(texts), spec.max_len, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, text in enumerate(texts):
        row = tok.encode(text)
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def token_spans(text: str, max_len: int) -> list[tuple[int, int]]:
    """The character span [start, end) in `text` of each token HashTokenizer.encode(text) gives
    (same segmentation: runs of ASCII letters and digits are one token, any other
    non-separator character is one token, separators split and are dropped)."""
    spans: list[tuple[int, int]] = []
    start = None
    for i, ch in enumerate(text):
        if len(spans) >= max_len:
            break
        cp = ord(ch)
        if cp < 0x80 and not _is_separator(cp):
            start = i if start is None else start
            continue
        if start is not None:
            spans.append((start, i))
            start = None
        if not _is_separator(cp) and len(spans) < max_len:
            spans.append((i, i + 1))
    if start is not None and len(spans) < max_len:
        spans.append((start, len(text)))
    return spans[:max_len]


# -- files --------------------------------------------------------------------------------

def param_count(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def save_tinybert(model: TinyBert, folder: str | Path) -> Path:
    """Write folder/student.safetensors (the torch weights) and folder/student.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / SPEC_FILE).write_text(model.spec.to_json())
    return folder


def load_tinybert(folder: str | Path) -> TinyBert:
    """Read a TinyBert folder back (eval mode); StudentError names what is wrong."""
    folder = Path(folder)
    for f in (folder / SPEC_FILE, folder / WEIGHTS_FILE):
        if not f.is_file():
            raise StudentError(f"{f} is missing: run `tinyseek edge --student tinybert`")
    try:
        spec = TinyBertSpec.from_dict(json.loads((folder / SPEC_FILE).read_text()))
    except json.JSONDecodeError as e:
        raise StudentError(f"{folder / SPEC_FILE} is not valid JSON ({e})") from e
    model = TinyBert(spec)
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
        raise StudentError(f"{folder / WEIGHTS_FILE} does not match {folder / SPEC_FILE}: {e}") from e
    return model.eval()
