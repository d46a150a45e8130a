"""TinyLSTM, the float student: an embedding (text) or a linear input projection (sequences),
a 1-2 layer LSTM and a linear head on the last real step's top-layer hidden state.

The exported state dict has exactly the keys in docs/architecture.md ("Student state dict
keys"); the quantizer reads them. `feature_proj` exists only while distilling (feature
matching against the teacher) and is never saved.

The streaming API (`reset_state`, `step`, `logits`) mirrors the device: one input at a time,
state kept between calls, an empty sequence gives the head applied to the zero state.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .tokenizer import MAX_SUBWORDS, HashTokenizer

WEIGHTS_FILE = "student.safetensors"
SPEC_FILE = "student.json"
_TRAINING_ONLY = "feature_proj."


class StudentError(ValueError):
    """A student folder or spec is missing, malformed or does not match the architecture."""


@dataclass
class StudentSpec:
    """What student.json holds: the architecture, the labels and the tokenizer settings.

    Text models use vocab_size and max_len (the tokenizer's) and have num_features None;
    sequence models use num_features, have vocab_size None, and max_len is the longest
    sequence the model was trained on.
    """
    kind: str  # "text" | "sequence"
    labels: list[str]
    hidden: int
    layers: int
    embed_dim: int
    vocab_size: int | None = None
    max_len: int | None = None
    num_features: int | None = None
    # Text: hashed n-gram ids averaged into each step's embedding (tokenizer.py; 0 = off). Left
    # out of student.json when 0, so students without it read and write as before.
    subwords: int = 0

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def validate(self) -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise StudentError(f"student spec: {what}")

        def positive(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        need(self.kind in ("text", "sequence"), f"kind must be 'text' or 'sequence', not {self.kind!r}")
        need(isinstance(self.labels, list) and len(self.labels) >= 2 and all(isinstance(s, str) for s in self.labels),
             f"labels must be a list of at least 2 strings, not {self.labels!r}")
        for name in ("hidden", "layers", "embed_dim"):
            need(positive(getattr(self, name)), f"{name} must be a positive integer, not {getattr(self, name)!r}")
        need(self.max_len is None or positive(self.max_len), f"max_len must be a positive integer, not {self.max_len!r}")
        if self.kind == "text":
            need(positive(self.vocab_size) and self.vocab_size >= 2,
                 f"a text student needs vocab_size >= 2, not {self.vocab_size!r}")
            need(self.max_len is not None, "a text student needs max_len (the tokenizer's truncation)")
            need(self.num_features is None, "a text student has no num_features (set it to null)")
            need(isinstance(self.subwords, int) and not isinstance(self.subwords, bool)
                 and 0 <= self.subwords <= MAX_SUBWORDS, f"subwords must be 0..{MAX_SUBWORDS}, not {self.subwords!r}")
        else:
            need(positive(self.num_features), f"a sequence student needs num_features >= 1, not {self.num_features!r}")
            need(self.vocab_size is None, "a sequence student has no vocab_size (set it to null)")
            need(self.subwords == 0, "a sequence student has no subwords (leave it out)")

    def to_json(self) -> str:
        data = asdict(self)
        if not self.subwords:
            del data["subwords"]
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "StudentSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise StudentError(f"student spec is not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise StudentError("student spec must be a JSON object")
        known = {f.name for f in fields(cls)}
        missing = sorted(known - data.keys() - {"subwords"})
        unknown = sorted(data.keys() - known)
        if missing or unknown:
            raise StudentError(f"student spec: missing keys {missing}, unknown keys {unknown}; "
                               f"expected exactly {sorted(known)}")
        return cls(**data)


def expected_shapes(spec: StudentSpec) -> dict[str, tuple[int, ...]]:
    """Every exported tensor's name and shape for this spec (docs/architecture.md)."""
    H, E, C = spec.hidden, spec.embed_dim, spec.num_classes
    out: dict[str, tuple[int, ...]] = {}
    if spec.kind == "text":
        out["embed.weight"] = (spec.vocab_size, E)
    else:
        out["proj.weight"] = (E, spec.num_features)
        out["proj.bias"] = (E,)
    for k in range(spec.layers):
        out[f"lstm.weight_ih_l{k}"] = (4 * H, E if k == 0 else H)
        out[f"lstm.weight_hh_l{k}"] = (4 * H, H)
        out[f"lstm.bias_ih_l{k}"] = (4 * H,)
        out[f"lstm.bias_hh_l{k}"] = (4 * H,)
    out["head.weight"] = (C, H)
    out["head.bias"] = (C,)
    return out


class TinyLSTM(nn.Module):
    """The student. `teacher_dim` adds `feature_proj` (hidden -> teacher width) for training."""

    def __init__(self, spec: StudentSpec, teacher_dim: int | None = None):
        super().__init__()
        self.spec = spec
        if spec.kind == "text":
            self.embed = nn.Embedding(spec.vocab_size, spec.embed_dim, padding_idx=0)
        else:
            self.proj = nn.Linear(spec.num_features, spec.embed_dim)
        self.lstm = nn.LSTM(spec.embed_dim, spec.hidden, num_layers=spec.layers, batch_first=True)
        self.head = nn.Linear(spec.hidden, spec.num_classes)
        self.feature_proj = nn.Linear(spec.hidden, teacher_dim) if teacher_dim else None
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- batched ------------------------------------------------------------------------
    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.kind != "text":
            return self.proj(x)
        if x.dim() == 1 or not self.spec.subwords:
            return self.embed(x)
        # id groups [..., K]: the mean of the rows of the ids present (slot 0 always, 0 = padding
        # elsewhere), as the integer spec computes it (docs/numerics.md, "Subwords").
        used = x != 0
        used[..., 0] = True
        e = self.embed(x) * used.unsqueeze(-1)
        return e.sum(-2) / used.sum(-1, keepdim=True)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Top-layer hidden state at each sample's last real step, [N, H]; zeros for length 0.

        x: token ids [N, T] (text; [N, T, 1 + subwords] id groups with subwords) or features
        [N, T, F] (sequence); lengths [N] (None: all T).
        An LSTM output at step t depends only on steps <= t, so reading it at length-1 of a
        padded batch is exact.
        """
        n = x.shape[0]
        if lengths is None:
            lengths = torch.full((n,), x.shape[1], dtype=torch.long)
        lengths = lengths.to(torch.long)
        t_max = int(lengths.max()) if n else 0
        if t_max == 0:
            return torch.zeros(n, self.spec.hidden, device=self.head.weight.device)
        out, _ = self.lstm(self._input(x[:, :t_max]))
        last = out[torch.arange(n), (lengths - 1).clamp(min=0)]
        return last * (lengths > 0).unsqueeze(1).to(last.dtype)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encode(x, lengths))

    def cell_states(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(last, cells): the top-layer hidden state as in `encode`, and every layer's cell
        state at every step, [N, T, layers, H], zeroed beyond each sample's length.

        Steps the LSTM one element at a time (slower than `encode`) because nn.LSTM returns
        only the final cell state; used for the cell-range penalty and report.
        """
        n, t_total = x.shape[0], x.shape[1]
        if lengths is None:
            lengths = torch.full((n,), t_total, dtype=torch.long)
        lengths = lengths.to(torch.long)
        t_max = int(lengths.max()) if n else 0
        L, H = self.spec.layers, self.spec.hidden
        h = torch.zeros(L, n, H, device=self.head.weight.device)
        c = torch.zeros_like(h)
        last = torch.zeros(n, H, device=h.device)
        cells = []
        inp = self._input(x[:, :t_max]) if t_max else None
        for t in range(t_max):
            out, (h_new, c_new) = self.lstm(inp[:, t : t + 1], (h, c))
            live = t < lengths
            # Finished samples keep their state so `last` ends at their own final step.
            h = torch.where(live.view(1, n, 1), h_new, h)
            c = torch.where(live.view(1, n, 1), c_new, c)
            last = torch.where(live.view(n, 1), out[:, 0], last)
            cells.append(torch.where(live.view(n, 1, 1), c_new.permute(1, 0, 2), 0.0))
        cells_t = torch.stack(cells, dim=1) if cells else torch.zeros(n, 0, L, H)
        return last, cells_t

    # -- streaming ----------------------------------------------------------------------
    def reset_state(self, batch_size: int = 1) -> None:
        """Zero h and c of every layer (for `batch_size` independent streams)."""
        shape = (self.spec.layers, batch_size, self.spec.hidden)
        device = self.head.weight.device
        self._state = (torch.zeros(shape, device=device), torch.zeros(shape, device=device))

    @torch.no_grad()
    def step(self, x_t) -> None:
        """Advance every layer by one input: a token id (int or LongTensor [B]; with subwords
        an id group [K] or [B, K]) for text models, a feature vector ([F] or [B, F]) for
        sequence models."""
        if self._state is None:
            self.reset_state()
        if self.spec.kind == "text":
            x_t = torch.as_tensor(x_t, dtype=torch.long)
            x_t = x_t.reshape(-1) if not self.spec.subwords else x_t.reshape(-1, x_t.shape[-1] if x_t.dim() else 1)
        else:
            x_t = torch.as_tensor(x_t, dtype=torch.float32)
            x_t = x_t.reshape(1, -1) if x_t.dim() == 1 else x_t
        if x_t.shape[0] != self._state[0].shape[1]:
            raise StudentError(f"step got a batch of {x_t.shape[0]} inputs but the state holds "
                               f"{self._state[0].shape[1]} streams; call reset_state({x_t.shape[0]})")
        _, self._state = self.lstm(self._input(x_t).unsqueeze(1), self._state)

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        """The head on the current top-layer hidden state, [B, C]; the state is unchanged."""
        if self._state is None:
            self.reset_state()
        return self.head(self._state[0][-1])


# -- inputs -------------------------------------------------------------------------------

def encode_texts(texts: list[str], spec: StudentSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [N, max_len] (zero-padded; with subwords id groups [N, max_len, 1 + subwords])
    and lengths [N] with the student's tokenizer."""
    tok = HashTokenizer(spec.vocab_size, spec.max_len, spec.subwords)
    shape = (len(texts), spec.max_len) + ((1 + spec.subwords,) if spec.subwords else ())
    ids = torch.zeros(shape, dtype=torch.long)
    lengths = torch.zeros(len(texts), dtype=torch.long)
    for i, text in enumerate(texts):
        steps = tok.encode_steps(text)
        for t, group in enumerate(steps):
            if spec.subwords:
                ids[i, t, : len(group)] = torch.tensor(group, dtype=torch.long)
            else:
                ids[i, t] = group[0]
        lengths[i] = len(steps)
    return ids, lengths


def split_inputs(split, spec: StudentSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs (x, lengths) of a data split: tokenized texts, or the float sequences at
    full length."""
    if spec.kind == "text":
        if split.texts is None:
            raise StudentError("a text student needs a split with texts")
        return encode_texts(list(split.texts), spec)
    if split.x is None or split.x.ndim != 3 or split.x.shape[2] != spec.num_features:
        found = None if split.x is None else tuple(split.x.shape)
        raise StudentError(f"a sequence student needs x of shape [N, T, {spec.num_features}], found {found}")
    x = torch.as_tensor(split.x, dtype=torch.float32)
    return x, torch.full((x.shape[0],), x.shape[1], dtype=torch.long)


# -- files --------------------------------------------------------------------------------

def exported_state(model: TinyLSTM) -> dict[str, torch.Tensor]:
    """The state dict the quantizer reads: everything except training-only tensors."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith(_TRAINING_ONLY)}


def export_params(model: TinyLSTM) -> int:
    """Number of exported parameters (feature_proj excluded; both LSTM biases counted)."""
    return int(sum(v.numel() for v in exported_state(model).values()))


def save_student(model: TinyLSTM, spec: StudentSpec, folder: str | Path) -> Path:
    """Write folder/student.safetensors (exported tensors only) and folder/student.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(exported_state(model), str(folder / WEIGHTS_FILE))
    (folder / SPEC_FILE).write_text(spec.to_json())
    return folder


def load_student(folder: str | Path) -> tuple[TinyLSTM, StudentSpec]:
    """Read a student folder back; StudentError names what is wrong and how to fix it."""
    folder = Path(folder)
    spec_file, weights_file = folder / SPEC_FILE, folder / WEIGHTS_FILE
    for f in (spec_file, weights_file):
        if not f.is_file():
            raise StudentError(f"{f} is missing: run `tinyseek distill` to train the student")
    try:
        spec = StudentSpec.from_json(spec_file.read_text())
    except (StudentError, UnicodeDecodeError) as e:
        raise StudentError(f"{spec_file}: {e}; re-run `tinyseek distill`") from e
    try:
        state = load_file(str(weights_file))
    except Exception as e:  # safetensors raises its own error types for a corrupt header/body
        raise StudentError(f"{weights_file} is not a readable safetensors file ({e}); re-run `tinyseek distill`") from e
    state = {k: v for k, v in state.items() if not k.startswith(_TRAINING_ONLY)}
    want = expected_shapes(spec)
    missing = sorted(want.keys() - state.keys())
    unknown = sorted(state.keys() - want.keys())
    if missing or unknown:
        raise StudentError(f"{weights_file}: missing tensors {missing}, unexpected tensors {unknown} for a "
                           f"{spec.layers}-layer {spec.kind} student; the weights do not match {spec_file}")
    for name, shape in want.items():
        t = state[name]
        if tuple(t.shape) != shape:
            raise StudentError(f"{weights_file}: tensor '{name}' has shape {list(t.shape)}, expected {list(shape)} "
                               f"from {spec_file}")
        if not t.is_floating_point():
            raise StudentError(f"{weights_file}: tensor '{name}' has dtype {t.dtype}, expected a float type")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise StudentError(f"{weights_file}: tensor '{name}' holds {bad} NaN/inf values; the training "
                               "diverged, re-run `tinyseek distill` (e.g. with a lower distill.lr)")
    model = TinyLSTM(spec)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    model.eval()
    return model, spec

