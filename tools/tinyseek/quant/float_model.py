"""The float student in numpy: read `student/` without torch, run it exactly as torch's
nn.LSTM does, and record the activation ranges the quantizer calibrates on.

The state-dict keys and student.json fields are those of docs/architecture.md. Tensors
outside the student's namespaces (e.g. `feature_proj.*`, used only in training) are ignored;
unexpected tensors inside them (a reverse direction, a third layer, an LSTM projection) mean
another architecture and are rejected, because the int8 spec cannot run it.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from ..student.tokenizer import MAX_SUBWORDS

WEIGHTS_FILE = "student.safetensors"
SPEC_FILE = "student.json"
SPEC_KEYS = ("kind", "labels", "hidden", "layers", "embed_dim", "vocab_size", "max_len", "num_features")
OPTIONAL_SPEC_KEYS = ("subwords",)  # absent = 0
MAX_LAYERS = 2
# Q3.12 gate pre-activations saturate at +-8 (docs/numerics.md).
GATE_LIMIT = 8.0
# Prefixes of the tensors the quantizer owns; anything else in the file is training-only.
_OWN_PREFIXES = ("embed.", "proj.", "lstm.", "head.")


class QuantError(ValueError):
    """The float student or the calibration inputs cannot be quantized; names the fix."""


def sigmoid(z: np.ndarray) -> np.ndarray:
    # The tanh form never overflows exp() for large |z|.
    return 0.5 * (np.tanh(0.5 * z) + 1.0)


@dataclass
class LayerParams:
    """One LSTM layer as the integer spec sees it: z = W_x x + W_h h + b (b = b_ih + b_hh)."""
    w_x: np.ndarray  # [4H, I]
    w_h: np.ndarray  # [4H, H]
    b: np.ndarray  # [4H]

    @property
    def hidden(self) -> int:
        return int(self.w_h.shape[1])


@dataclass
class ActivationStats:
    """Largest magnitudes seen over every real step of the calibration inputs."""
    samples: int
    max_steps: int  # the longest calibration input
    input_max_abs: float  # the first layer's input: embedding rows (text) or raw features (sequence)
    cell_max_abs: list[float]  # per layer, max |c| over all steps
    gate_max_abs: list[float]  # per layer, max |z| of the gate pre-activations
    gate_saturated_count: list[int]  # per layer, pre-activations with |z| >= 8
    gate_count: list[int]  # per layer, pre-activations seen
    logits_max_abs: float

    @property
    def gate_saturated(self) -> list[float]:
        """Per layer, the fraction of gate pre-activations outside the Q3.12 range."""
        return [s / t if t else 0.0 for s, t in zip(self.gate_saturated_count, self.gate_count)]


def run_lstm(layers: Sequence[LayerParams], xs: np.ndarray, lengths: np.ndarray,
             stats: ActivationStats | None = None) -> np.ndarray:
    """The stacked LSTM over xs [N, T, I] (padded), gate order i, f, g, o; returns the top
    layer's h at each sample's last real step [N, H] (zeros for length 0). Samples past their
    length keep their state, so padding never reaches the result or the statistics."""
    n, t_max = xs.shape[0], xs.shape[1]
    h = [np.zeros((n, L.hidden), xs.dtype) for L in layers]
    c = [np.zeros((n, L.hidden), xs.dtype) for L in layers]
    for t in range(t_max):
        live = lengths > t
        x = xs[:, t]
        for k, L in enumerate(layers):
            H = L.hidden
            z = x @ L.w_x.T + h[k] @ L.w_h.T + L.b
            i, f, g, o = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
            c_new = f * c[k] + i * g
            h_new = o * np.tanh(c_new)
            if stats is not None and live.any():
                za, ca = np.abs(z[live]), np.abs(c_new[live])
                stats.gate_max_abs[k] = max(stats.gate_max_abs[k], float(za.max()))
                stats.cell_max_abs[k] = max(stats.cell_max_abs[k], float(ca.max()))
                stats.gate_saturated_count[k] += int(np.count_nonzero(za >= GATE_LIMIT))
                stats.gate_count[k] += int(za.size)
            h[k] = np.where(live[:, None], h_new, h[k])
            c[k] = np.where(live[:, None], c_new, c[k])
            x = h[k]
    return h[-1]


def _is_positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@dataclass
class FloatStudent:
    """The float student's weights (float64) and spec, with a numpy forward."""
    kind: str
    labels: list[str]
    hidden: int
    num_layers: int
    embed_dim: int
    vocab_size: int | None
    max_len: int | None
    num_features: int | None
    tensors: dict[str, np.ndarray]  # the state-dict tensors the quantizer owns, float64
    subwords: int = 0  # text: n-gram ids averaged into each step (tokenizer.py)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str | Path) -> "FloatStudent":
        folder = Path(folder)
        spec_file, weights_file = folder / SPEC_FILE, folder / WEIGHTS_FILE
        for f in (spec_file, weights_file):
            if not f.is_file():
                raise QuantError(f"{f} is missing: run `tinyseek distill` to train the float student first")
        try:
            spec = json.loads(spec_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise QuantError(f"{spec_file} is not valid JSON ({e}); re-run `tinyseek distill`") from e
        try:
            raw = load_file(str(weights_file))
        except Exception as e:  # safetensors raises its own types for a corrupt or unsupported file
            raise QuantError(f"{weights_file} is not a readable safetensors file of numpy dtypes ({e}); "
                             "re-run `tinyseek distill`") from e
        return cls.from_arrays(spec, raw, where=str(folder))

    @classmethod
    def from_arrays(cls, spec: dict, raw: dict[str, np.ndarray], where: str = "student") -> "FloatStudent":
        """Validate a student.json dict and a state dict; QuantError names the bad field or tensor."""
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise QuantError(f"{where}: {what}")

        need(isinstance(spec, dict), "student.json must hold a JSON object")
        missing = sorted(set(SPEC_KEYS) - spec.keys())
        unknown = sorted(spec.keys() - set(SPEC_KEYS) - set(OPTIONAL_SPEC_KEYS))
        need(not missing and not unknown, f"student.json has missing keys {missing} and unknown keys {unknown}; "
             f"the quantizer reads exactly {list(SPEC_KEYS)} (another architecture? re-run `tinyseek distill`)")
        kind, labels = spec["kind"], spec["labels"]
        need(kind in ("text", "sequence"), f"student.json kind must be 'text' or 'sequence', not {kind!r}")
        need(isinstance(labels, list) and len(labels) >= 2 and all(isinstance(s, str) for s in labels),
             f"student.json labels must be a list of at least 2 strings, not {labels!r}")
        for key in ("hidden", "layers", "embed_dim"):
            need(_is_positive_int(spec[key]), f"student.json {key} must be a positive integer, not {spec[key]!r}")
        need(spec["layers"] <= MAX_LAYERS, f"the student has {spec['layers']} LSTM layers; the int8 spec runs 1 or "
             f"{MAX_LAYERS}: retrain with student.layers = 1 or 2")
        need(spec["max_len"] is None or _is_positive_int(spec["max_len"]),
             f"student.json max_len must be a positive integer or null, not {spec['max_len']!r}")
        if kind == "text":
            need(_is_positive_int(spec["vocab_size"]) and spec["vocab_size"] >= 2,
                 f"a text student needs vocab_size >= 2, not {spec['vocab_size']!r}")
            need(spec["max_len"] is not None, "a text student needs max_len (the tokenizer's truncation)")
        subwords = spec.get("subwords", 0)
        need(isinstance(subwords, int) and not isinstance(subwords, bool) and 0 <= subwords <= MAX_SUBWORDS,
             f"student.json subwords must be an integer 0..{MAX_SUBWORDS}, not {subwords!r}")
        need(kind == "text" or subwords == 0, "a sequence student has no subwords")
        if kind != "text":
            need(_is_positive_int(spec["num_features"]),
                 f"a sequence student needs num_features >= 1, not {spec['num_features']!r}")

        H, E, C, nl = spec["hidden"], spec["embed_dim"], len(labels), spec["layers"]
        want: dict[str, tuple[int, ...]] = (
            {"embed.weight": (spec["vocab_size"], E)} if kind == "text"
            else {"proj.weight": (E, spec["num_features"]), "proj.bias": (E,)})
        for k in range(nl):
            want |= {f"lstm.weight_ih_l{k}": (4 * H, E if k == 0 else H), f"lstm.weight_hh_l{k}": (4 * H, H),
                     f"lstm.bias_ih_l{k}": (4 * H,), f"lstm.bias_hh_l{k}": (4 * H,)}
        want |= {"head.weight": (C, H), "head.bias": (C,)}

        own = {k: v for k, v in raw.items() if k.startswith(_OWN_PREFIXES)}
        extra = sorted(own.keys() - want.keys())
        if extra:
            raise QuantError(f"{where}: unexpected tensors {extra} for a {nl}-layer unidirectional {kind} TinyLSTM: "
                             f"{_architecture_hint(extra)}; the int8 spec runs only the architecture of "
                             "docs/architecture.md")
        absent = sorted(want.keys() - own.keys())
        need(not absent, f"missing tensors {absent} for a {nl}-layer {kind} student; the weights do not match "
             "student.json, re-run `tinyseek distill`")
        tensors: dict[str, np.ndarray] = {}
        for name, shape in want.items():
            t = own[name]
            need(np.issubdtype(t.dtype, np.floating), f"tensor '{name}' has dtype {t.dtype}, expected float32")
            need(t.shape == shape,
                 f"tensor '{name}' has shape {list(t.shape)}, expected {list(shape)} from student.json")
            bad = int(np.count_nonzero(~np.isfinite(t)))
            need(bad == 0, f"tensor '{name}' holds {bad} NaN/inf values: the training diverged; re-run "
                 "`tinyseek distill` (e.g. with a lower distill.lr)")
            tensors[name] = t.astype(np.float64)
        return cls(kind=kind, labels=list(labels), hidden=H, num_layers=nl, embed_dim=E,
                   vocab_size=spec["vocab_size"], max_len=spec["max_len"], num_features=spec["num_features"],
                   tensors=tensors, subwords=subwords)

    # -- parameters -------------------------------------------------------------------------
    def layers(self) -> list[LayerParams]:
        """The LSTM layers with b = b_ih + b_hh, on the embedded/projected input."""
        t = self.tensors
        return [LayerParams(t[f"lstm.weight_ih_l{k}"], t[f"lstm.weight_hh_l{k}"],
                            t[f"lstm.bias_ih_l{k}"] + t[f"lstm.bias_hh_l{k}"]) for k in range(self.num_layers)]

    def quant_layers(self) -> list[LayerParams]:
        """The layers the int8 model runs: for sequence models the input projection is folded
        into layer 0 (W_x' = W_ih W_proj, b' = b_ih + b_hh + W_ih b_proj), so layer 0 reads the
        raw features."""
        layers = self.layers()
        if self.kind == "sequence":
            w_p, b_p = self.tensors["proj.weight"], self.tensors["proj.bias"]
            l0 = layers[0]
            layers[0] = LayerParams(l0.w_x @ w_p, l0.w_h, l0.b + l0.w_x @ b_p)
        return layers

    def head_logits(self, h: np.ndarray) -> np.ndarray:
        return h @ self.tensors["head.weight"].T + self.tensors["head.bias"]

    # -- inputs -----------------------------------------------------------------------------
    def raw_inputs(self, inputs) -> tuple[np.ndarray, np.ndarray]:
        """Validated inputs as a padded array and lengths: token ids int64 [N, T] (text; id
        groups [N, T, K] zero-padded when a sample's steps are groups) or float64 features
        [N, T, F] (sequence). Text takes lists of token ids or of id groups (tuples); sequence
        takes float [N, T, F] or a list of [T_n, F] arrays."""
        if self.kind == "text":
            if isinstance(inputs, np.ndarray) and inputs.dtype.kind == "f":
                raise QuantError(f"a text student takes token-id lists, got a float array {inputs.shape}; "
                                 "tokenize texts with HashTokenizer(vocab_size, max_len)")
            rows = []
            for n, s in enumerate(inputs):
                if isinstance(s, str):
                    raise QuantError(f"sample {n} is a string; a text student takes token-id lists "
                                     "(tokenize with HashTokenizer(vocab_size, max_len))")
                row = _steps_array(s)
                if row.size and row.dtype.kind not in "iu":
                    raise QuantError(f"sample {n}: token ids must be integers, got {row.dtype}")
                bad = np.flatnonzero((row < 0) | (row >= self.vocab_size))
                if bad.size:
                    raise QuantError(f"sample {n}: token id {int(row[bad[0]])} at position {int(bad[0])} is outside "
                                     f"the vocabulary 0..{self.vocab_size - 1}; tokenize with the student's "
                                     f"HashTokenizer(vocab_size={self.vocab_size}, max_len={self.max_len})")
                rows.append(row.astype(np.int64))
            lengths = np.array([len(r) for r in rows], np.int64)
            k = max((r.shape[1] for r in rows if r.ndim == 2), default=0)
            ids = np.zeros((len(rows), int(lengths.max()) if rows else 0) + ((k,) if k else ()), np.int64)
            for n, r in enumerate(rows):
                if k:
                    r = r.reshape(len(r), -1) if len(r) else r.reshape(0, k)
                    ids[n, :len(r), :r.shape[1]] = r
                else:
                    ids[n, :len(r)] = r
            return ids, lengths
        F = self.num_features
        if isinstance(inputs, np.ndarray):
            if inputs.ndim != 3 or inputs.shape[2] != F:
                raise QuantError(f"a sequence student takes float features [N, T, {F}], got shape {inputs.shape}")
            samples = list(inputs)
        else:
            samples = [np.asarray(s) for s in inputs]
            for n, s in enumerate(samples):
                if s.ndim != 2 or s.shape[1] != F:
                    raise QuantError(f"sample {n}: a sequence student takes float features [T, {F}], got "
                                     f"shape {s.shape}")
        for n, s in enumerate(samples):
            if s.dtype.kind not in "fiu":
                raise QuantError(f"sample {n}: features must be numbers, got {s.dtype}")
            bad = np.argwhere(~np.isfinite(s.astype(np.float64)))
            if bad.size:
                t, f = (int(v) for v in bad[0])
                raise QuantError(f"sample {n}, step {t}, feature {f} is {s[t, f]}: NaN/inf features cannot be "
                                 "calibrated or quantized; clean or impute the data first")
        lengths = np.array([len(s) for s in samples], np.int64)
        x = np.zeros((len(samples), int(lengths.max()) if samples else 0, F), np.float64)
        for n, s in enumerate(samples):
            x[n, :len(s)] = s
        return x, lengths

    def embed(self, raw: np.ndarray) -> np.ndarray:
        """The first LSTM layer's input as torch computes it: embedding lookup or proj Linear."""
        if self.kind == "text":
            if raw.ndim == 2:
                return self.tensors["embed.weight"][raw]
            # id groups: the mean of the rows present (slot 0 always; 0 pads the rest), as torch.
            used = raw != 0
            used[..., 0] = True
            return (self.tensors["embed.weight"][raw] * used[..., None]).sum(-2) / used.sum(-1, keepdims=True)
        return raw @ self.tensors["proj.weight"].T + self.tensors["proj.bias"]

    # -- running ----------------------------------------------------------------------------
    def logits(self, inputs) -> np.ndarray:
        """Float logits [N, C] of token-id lists (text) or float feature sequences."""
        raw, lengths = self.raw_inputs(inputs)
        return self.head_logits(run_lstm(self.layers(), self.embed(raw), lengths))

    def predict(self, data) -> np.ndarray:
        """Logits [N, C] of a data split (`texts` are tokenized with the student's tokenizer,
        `x` used as is), a list of texts, or inputs as `logits` takes them."""
        if hasattr(data, "texts") or hasattr(data, "x"):
            data = data.texts if self.kind == "text" else data.x
            if data is None:
                raise QuantError(f"a {self.kind} student needs a split with "
                                 f"{'texts' if self.kind == 'text' else 'x'}")
        if self.kind == "text" and len(data) and isinstance(data[0], str):
            data = self.tokenize(data)
        return self.logits(data)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of texts with the student's own tokenizer (docs/numerics.md)."""
        from ..student.tokenizer import HashTokenizer
        tok = HashTokenizer(self.vocab_size, self.max_len, self.subwords)
        return [tok.model_inputs(t) for t in texts]

    def calibrate(self, inputs) -> ActivationStats:
        """Run the inputs and record the ranges the quantizer needs (see ActivationStats)."""
        raw, lengths = self.raw_inputs(inputs)
        if len(lengths) == 0:
            raise QuantError("calibration needs at least one sample (got none)")
        nl = self.num_layers
        stats = ActivationStats(samples=len(lengths), max_steps=int(lengths.max()), input_max_abs=0.0,
                                cell_max_abs=[0.0] * nl, gate_max_abs=[0.0] * nl, gate_saturated_count=[0] * nl,
                                gate_count=[0] * nl, logits_max_abs=0.0)
        xs = self.embed(raw)
        # Only real steps count: padded positions (ids 0, zero features) are never fed.
        real = np.arange(raw.shape[1])[None, :] < lengths[:, None]
        first = raw if self.kind == "sequence" else xs
        if real.any():
            stats.input_max_abs = float(np.abs(first[real]).max())
        logits = self.head_logits(run_lstm(self.layers(), xs, lengths, stats))
        stats.logits_max_abs = float(np.abs(logits).max())
        return stats


def _steps_array(sample) -> np.ndarray:
    """One sample's steps: ids -> int [T]; id groups (tuples, lengths may differ) -> int [T, K]
    zero-padded."""
    steps = list(sample) if not isinstance(sample, np.ndarray) else sample
    if isinstance(steps, np.ndarray) or not any(isinstance(g, (tuple, list, np.ndarray)) for g in steps):
        return np.asarray(steps).reshape(-1) if len(steps) else np.zeros(0, np.int64)
    groups = [np.asarray(g).reshape(-1) for g in steps]
    out = np.zeros((len(groups), max(len(g) for g in groups)), np.result_type(*groups))
    for t, g in enumerate(groups):
        out[t, :len(g)] = g
    return out


def _architecture_hint(extra: list[str]) -> str:
    if any(k.endswith("_reverse") for k in extra):
        return "a bidirectional LSTM (the device runs one direction, streaming)"
    if any(re.match(r"lstm\.weight_hr_l\d+", k) for k in extra):
        return "an LSTM with proj_size (not in the int8 spec)"
    layer_ids = {int(m.group(1)) for k in extra if (m := re.match(r"lstm\.\w+_l(\d+)$", k))}
    if layer_ids:
        return f"LSTM layer(s) {sorted(layer_ids)} beyond student.json's layers (at most {MAX_LAYERS} are supported)"
    if any(k.startswith("embed.") for k in extra) or any(k.startswith("proj.") for k in extra):
        return "an input layer that does not match student.json's kind"
    return "tensors of another architecture"
