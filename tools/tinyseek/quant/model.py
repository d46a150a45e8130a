"""The int8 model: the artifact between quantization and code generation.

A QuantModel holds integers only (plus the few real scales a host needs to quantize inputs
and read logits). It is saved as `model.json` (the IR: ops, shapes, scales) next to
`params.safetensors` (every integer array), and its hash is taken over both, so the same
model always gives the same hash and the same generated C.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

FORMAT_VERSION = 1
# Widths of the LSTM gate matrices (docs/numerics.md, "Low-bit weights"): the values each may hold.
WEIGHT_WIDTHS = ("int8", "int4", "binary")
INT4_MAX = 7  # int4 weights are symmetric, -7..7 (the quantizer never needs -8)
# A low-bit embedding row is a per-row gain g times codes (docs/numerics.md, "Low-bit embedding"):
# g * code must stay an int8 input, so g <= 18 for int4 codes (7 * 18 = 126) and <= 127 for signs.
EMBEDDING_GAIN_MAX = {"int4": 126 // INT4_MAX, "binary": 127}


def pack_int4(w: np.ndarray) -> np.ndarray:
    """int4 rows [R, K] (values -8..7) -> uint8 [R, ceil(K/2)]: two per byte, column 2i in the
    low nibble and 2i+1 in the high one, an odd row padded with 0."""
    w = np.asarray(w, dtype=np.int64)
    if w.shape[1] % 2:
        w = np.concatenate([w, np.zeros((w.shape[0], 1), np.int64)], axis=1)
    return ((w[:, 0::2] & 15) | (w[:, 1::2] & 15) << 4).astype(np.uint8)


def unpack_int4(p: np.ndarray, cols: int) -> np.ndarray:
    """The inverse of pack_int4: int8 [R, cols]; a nibble v is the value ((v ^ 8) - 8)."""
    p = np.asarray(p, dtype=np.int64)
    w = np.stack([p & 15, p >> 4], axis=2).reshape(p.shape[0], -1)[:, :cols]
    return ((w ^ 8) - 8).astype(np.int8)


def pack_binary(w: np.ndarray) -> np.ndarray:
    """Sign rows [R, K] (values -1, +1) -> uint8 [R, ceil(K/8)]: bit i % 8 of byte i / 8 is 1
    for +1 and 0 for -1 (least significant bit first), padding bits 0."""
    return np.packbits(np.asarray(w) > 0, axis=1, bitorder="little")


def unpack_binary(p: np.ndarray, cols: int) -> np.ndarray:
    """The inverse of pack_binary: int8 [R, cols] of -1 and +1."""
    bits = np.unpackbits(np.asarray(p, dtype=np.uint8), axis=1, count=cols, bitorder="little")
    return (2 * bits.astype(np.int8) - 1).astype(np.int8)


def pack_weights(w: np.ndarray, width: str) -> np.ndarray:
    """A gate matrix as stored (safetensors) and as the C kernels read it."""
    return {"int8": np.asarray, "int4": pack_int4, "binary": pack_binary}[width](w)


def unpack_weights(p: np.ndarray, width: str, cols: int) -> np.ndarray:
    return p if width == "int8" else {"int4": unpack_int4, "binary": unpack_binary}[width](p, cols)


def embedding_codes(embedding: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """The codes of a low-bit embedding: its int8 rows divided by their gains (a row of gain 0
    is all zeros and gets codes +1, which pack to 0 bits or to nibbles 1: any code times 0)."""
    g = np.asarray(gain, dtype=np.int64)[:, None]
    return np.where(g > 0, np.asarray(embedding, dtype=np.int64) // np.maximum(g, 1), 1).astype(np.int8)


class ModelFileError(ValueError):
    """An int8 model folder is missing, malformed or inconsistent."""


@dataclass
class LSTMLayerQ:
    input_size: int
    hidden: int
    cell_frac_bits: int
    w_x: np.ndarray  # int8 [4H, I], gate order i, f, g, o (unpacked: -7..7 for int4, +-1 for binary)
    w_h: np.ndarray  # int8 [4H, H]
    mx: np.ndarray  # int32 [4H] requant multipliers of acc_x
    nx: np.ndarray  # int32 [4H] requant shifts of acc_x
    mh: np.ndarray  # int32 [4H]
    nh: np.ndarray  # int32 [4H]
    bias: np.ndarray  # int32 [4H], Q3.12


@dataclass
class HeadQ:
    w: np.ndarray  # int8 [C, H] (unpacked: +-1 in a binary model)
    bias: np.ndarray  # int32 [C], at scale s_w[k] / 128
    m: np.ndarray  # int32 [C]
    n: np.ndarray  # int32 [C]


@dataclass
class QuantModel:
    name: str  # C identifier prefix of everything generated for this model
    kind: str  # "text" (token ids in) or "sequence" (int8 feature vectors in)
    labels: list[str]
    input_scale: float  # s_x of the first layer's input
    output_scale: float  # s_out: real logit = int16 logit * s_out
    layers: list[LSTMLayerQ]
    head: HeadQ
    sigmoid_table: np.ndarray  # int16 [257]
    tanh_table: np.ndarray  # int16 [257]
    embedding: np.ndarray | None = None  # int8 [V, E] for text models: the rows the LSTM reads
    num_features: int | None = None  # F for sequence models
    vocab_size: int | None = None
    max_len: int | None = None  # tokenizer truncation / longest sequence the host sends
    meta: dict = field(default_factory=dict)  # provenance (source hash, calibration), JSON-safe
    subwords: int = 0  # text: n-gram ids per step averaged with the word's (docs/numerics.md, "Subwords")
    weights: str = "int8"  # width of the LSTM gate matrices: int8, int4 or binary (see head_width)
    # Width of the stored embedding; int4 and binary rows are gain[v] * codes, the gains uint8 [V].
    embedding_width: str = "int8"
    embedding_gain: np.ndarray | None = None
    # Audio models (task.kind = "audio"): {"frontend": FrontendConfig's fields, "frames_per_step": k}.
    # The device runs the front end on int16 samples and steps the LSTM once per k frames, on
    # their concatenation (num_features = k * channels); None: int8 feature vectors in. A wake
    # word also records the listener settings it was measured with (tinyseek.audio.listen):
    # "wake": {"threshold", "window", "stride", "rest", "confirm"} (without "confirm": 1), the
    # firmware's defaults for it.
    audio: dict | None = None

    @property
    def frontend(self):
        """The audio front end's FrontendConfig (audio models only)."""
        from ..audio.frontend import FrontendConfig
        if self.audio is None:
            raise ModelFileError(f"int8 model '{self.name}' takes feature vectors, not audio")
        return FrontendConfig(**self.audio["frontend"])

    @property
    def head_width(self) -> str:
        """The head's weights: sign bits in a binary model (read by the binary DSP kernel and the
        portable C), int8 otherwise (the int4 DSP kernels read an int8 head)."""
        return "binary" if self.weights == "binary" else "int8"

    # -- shapes -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.head.w.shape[0])

    @property
    def input_size(self) -> int:
        return int(self.layers[0].input_size)

    def ir(self) -> list[dict]:
        """The op list codegen renders from: one dict per op, shapes and parameter names."""
        ops: list[dict] = []
        if self.kind == "text":
            ops.append({"op": "embedding", "vocab": self.vocab_size, "dim": self.input_size,
                        "params": ["embedding"]})
            if self.subwords:  # absent when 0: models without subwords keep their hash
                ops[-1]["subwords"] = self.subwords
            if self.embedding_width != "int8":  # absent for int8: int8 models keep their hash
                ops[-1]["weights"] = self.embedding_width
        else:
            ops.append({"op": "input", "features": self.num_features})
        for i, layer in enumerate(self.layers):
            ops.append({"op": "lstm", "index": i, "input": layer.input_size, "hidden": layer.hidden,
                        "cell_frac_bits": layer.cell_frac_bits,
                        "params": [f"lstm{i}.{k}" for k in ("w_x", "w_h", "mx", "nx", "mh", "nh", "bias")]})
            if self.weights != "int8":  # absent for int8: int8 models keep their hash
                ops[-1]["weights"] = self.weights
        ops.append({"op": "fc", "input": self.layers[-1].hidden, "output": self.num_classes,
                    "params": ["head.w", "head.bias", "head.m", "head.n"]})
        if self.head_width != "int8":  # absent for int8: int8 and int4 models keep their hash
            ops[-1]["weights"] = self.head_width
        return ops

    # -- arrays -------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            "sigmoid_table": self.sigmoid_table, "tanh_table": self.tanh_table,
            "head.w": pack_weights(self.head.w, self.head_width), "head.bias": self.head.bias,
            "head.m": self.head.m, "head.n": self.head.n,
        }
        if self.embedding is not None and self.embedding_width == "int8":
            out["embedding"] = self.embedding
        elif self.embedding is not None:
            out["embedding"] = pack_weights(embedding_codes(self.embedding, self.embedding_gain), self.embedding_width)
            out["embedding.gain"] = self.embedding_gain
        for i, layer in enumerate(self.layers):
            for k in ("mx", "nx", "mh", "nh", "bias"):
                out[f"lstm{i}.{k}"] = getattr(layer, k)
            out[f"lstm{i}.w_x"] = pack_weights(layer.w_x, self.weights)
            out[f"lstm{i}.w_h"] = pack_weights(layer.w_h, self.weights)
        return {k: np.ascontiguousarray(v) for k, v in sorted(out.items())}

    def header(self) -> dict:
        out = {
            "format": FORMAT_VERSION, "name": self.name, "kind": self.kind, "labels": list(self.labels),
            "input_scale": float(self.input_scale), "output_scale": float(self.output_scale),
            "num_features": self.num_features, "vocab_size": self.vocab_size, "max_len": self.max_len,
            "ops": self.ir(), "meta": self.meta,
        }
        if self.audio is not None:  # only then, so the hash of every other model stays as it was
            out["audio"] = self.audio
        return out

    def model_hash(self) -> str:
        """sha256 over the header and every array's dtype, shape and bytes (16 hex digits)."""
        h = hashlib.sha256(json.dumps(self.header(), sort_keys=True).encode())
        for k, v in self.arrays().items():
            h.update(f"{k}:{v.dtype.str}:{v.shape}".encode())
            h.update(v.tobytes())
        return h.hexdigest()[:16]

    def weight_bytes(self) -> int:
        """Bytes of the (packed) weight matrices and tables (what lands in flash besides code)."""
        return int(sum(v.nbytes for v in self.arrays().values()))

    def params(self) -> int:
        n = self.head.w.size + self.head.bias.size
        if self.embedding is not None:
            n += self.embedding.size
        for layer in self.layers:
            n += layer.w_x.size + layer.w_h.size + layer.bias.size
        return int(n)

    # -- files --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.json").write_text(json.dumps(self.header(), indent=2, sort_keys=True) + "\n")
        save_file(self.arrays(), str(folder / "params.safetensors"), metadata={"format": str(FORMAT_VERSION)})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "QuantModel":
        folder = Path(folder)
        head_file, params_file = folder / "model.json", folder / "params.safetensors"
        for f in (head_file, params_file):
            if not f.is_file():
                raise ModelFileError(f"{f} is missing: run `tinyseek quantize` to create the int8 model")
        try:
            hdr = json.loads(head_file.read_text())
            arr = load_file(str(params_file))
        except Exception as e:  # corrupt JSON or safetensors
            raise ModelFileError(f"{folder} is not a readable int8 model ({e}); re-run `tinyseek quantize`") from e
        if hdr.get("format") != FORMAT_VERSION:
            raise ModelFileError(f"{head_file}: format {hdr.get('format')} is not {FORMAT_VERSION}; re-run `tinyseek quantize`")
        try:
            layers = []
            lstm_ops = [op for op in hdr["ops"] if op["op"] == "lstm"]
            width = lstm_ops[0].get("weights", "int8") if lstm_ops else "int8"
            if width not in WEIGHT_WIDTHS or any(op.get("weights", "int8") != width for op in lstm_ops):
                raise ModelFileError(f"{head_file}: LSTM weight width {width!r} (one of {', '.join(WEIGHT_WIDTHS)}, "
                                     "the same in every layer); re-run `tinyseek quantize`")
            for op in lstm_ops:
                p = {k: arr[f"lstm{op['index']}.{k}"] for k in ("w_x", "w_h", "mx", "nx", "mh", "nh", "bias")}
                for k, cols in (("w_x", op["input"]), ("w_h", op["hidden"])):
                    p[k] = _unpacked(p[k], width, 4 * op["hidden"], cols, f"{folder}: lstm{op['index']}.{k}")
                layers.append(LSTMLayerQ(input_size=op["input"], hidden=op["hidden"],
                                         cell_frac_bits=op["cell_frac_bits"], **p))
            fc = next((op for op in hdr["ops"] if op["op"] == "fc"), None)
            if fc is None:
                raise ModelFileError(f"{head_file}: no fc (head) op; the int8 model is incomplete, re-run `tinyseek quantize`")
            fc = {**fc, "weights": fc.get("weights", "int8")}
            if fc["weights"] != ("binary" if width == "binary" else "int8"):
                raise ModelFileError(f"{head_file}: head weight width {fc['weights']!r} with {width} LSTM weights "
                                     "(a binary model has a binary head, the others an int8 one); re-run `tinyseek quantize`")
            emb_op = next((op for op in hdr["ops"] if op["op"] == "embedding"), None)
            embedding, emb_width, gain = _embedding(arr, emb_op, folder)
            model = cls(
                name=hdr["name"], kind=hdr["kind"], labels=hdr["labels"], input_scale=hdr["input_scale"],
                output_scale=hdr["output_scale"], layers=layers,
                head=HeadQ(w=_unpacked(arr["head.w"], fc["weights"], fc["output"], fc["input"], f"{folder}: head.w"),
                           bias=arr["head.bias"], m=arr["head.m"], n=arr["head.n"]),
                sigmoid_table=arr["sigmoid_table"], tanh_table=arr["tanh_table"],
                embedding=embedding, embedding_width=emb_width, embedding_gain=gain,
                num_features=hdr["num_features"],
                vocab_size=hdr["vocab_size"], max_len=hdr["max_len"], meta=hdr.get("meta", {}),
                subwords=next((op.get("subwords", 0) for op in hdr["ops"] if op["op"] == "embedding"), 0),
                weights=width, audio=hdr.get("audio"),
            )
        except KeyError as e:
            raise ModelFileError(f"{folder}: missing entry {e}; the int8 model is incomplete, re-run `tinyseek quantize`") from e
        model.validate()
        return model

    def validate(self) -> None:
        """Shapes, dtypes and ranges every consumer relies on; raises ModelFileError."""
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ModelFileError(f"int8 model '{self.name}': {what}")
        need(self.kind in ("text", "sequence"), f"kind must be 'text' or 'sequence', not {self.kind!r}")
        need(len(self.layers) >= 1, "needs at least one LSTM layer")
        need(self.sigmoid_table.dtype == np.int16 and self.sigmoid_table.shape == (257,), "sigmoid_table must be int16[257]")
        need(self.tanh_table.dtype == np.int16 and self.tanh_table.shape == (257,), "tanh_table must be int16[257]")
        if self.kind == "text":
            need(self.embedding is not None and self.embedding.dtype == np.int8, "text model needs an int8 embedding")
            need(self.vocab_size == self.embedding.shape[0], "vocab_size differs from the embedding rows")
            need(self.max_len is not None and self.max_len >= 1, "text model needs max_len >= 1")
            need(self.embedding.shape[1] == self.layers[0].input_size, "embedding width differs from the LSTM input")
            need(isinstance(self.subwords, int) and 0 <= self.subwords <= 15, "subwords must be 0..15")
            need(self.embedding_width in WEIGHT_WIDTHS,
                 f"embedding width must be one of {', '.join(WEIGHT_WIDTHS)}, not {self.embedding_width!r}")
            if self.embedding_width != "int8":
                self._validate_low_bit_embedding(need)
        else:
            need(self.subwords == 0, "a sequence model has no subwords")
            need(self.num_features == self.layers[0].input_size, "num_features differs from the LSTM input")
            if self.audio is not None:
                self._validate_audio(need)
        need(self.weights in WEIGHT_WIDTHS, f"weights must be one of {', '.join(WEIGHT_WIDTHS)}, not {self.weights!r}")
        prev = self.layers[0].input_size
        for i, L in enumerate(self.layers):
            H = L.hidden
            need(L.input_size == prev, f"lstm{i} input {L.input_size} != {prev}")
            need(L.w_x.dtype == np.int8 and L.w_x.shape == (4 * H, L.input_size), f"lstm{i}.w_x must be int8[{4*H},{L.input_size}]")
            need(L.w_h.dtype == np.int8 and L.w_h.shape == (4 * H, H), f"lstm{i}.w_h must be int8[{4*H},{H}]")
            for k in ("mx", "nx", "mh", "nh", "bias"):
                v = getattr(L, k)
                need(v.dtype == np.int32 and v.shape == (4 * H,), f"lstm{i}.{k} must be int32[{4*H}]")
            need(bool(np.all((L.nx >= 1) & (L.nx <= 62) & (L.nh >= 1) & (L.nh <= 62))), f"lstm{i} shifts outside 1..62")
            need(7 <= L.cell_frac_bits <= 12, f"lstm{i} cell_frac_bits must be in 7..12")
            for k in ("w_x", "w_h"):
                w = getattr(L, k)
                if self.weights == "int4":
                    need(bool(np.all((w >= -8) & (w <= 7))), f"lstm{i}.{k} holds values outside the int4 range -8..7")
                elif self.weights == "binary":
                    need(bool(np.all(np.abs(w) == 1)), f"lstm{i}.{k} holds values other than -1 and +1 (binary weights)")
            prev = H
        C = self.head.w.shape[0]
        need(self.head.w.dtype == np.int8 and self.head.w.shape == (C, prev), f"head.w must be int8[C,{prev}]")
        if self.head_width == "binary":
            need(bool(np.all(np.abs(self.head.w) == 1)), "head.w holds values other than -1 and +1 (a binary model's head)")
        need(len(self.labels) == C, f"{len(self.labels)} labels for {C} outputs")
        need(bool(np.all((self.head.n >= 1) & (self.head.n <= 62))), "head shifts outside 1..62")

    def _validate_audio(self, need) -> None:
        from ..audio.frontend import FrontendError
        need(isinstance(self.audio, dict) and set(self.audio) - {"wake"} == {"frontend", "frames_per_step"},
             'audio must be {"frontend": {...}, "frames_per_step": k} (and "wake": {...} for a wake word)')
        k = self.audio["frames_per_step"]
        need(isinstance(k, int) and 1 <= k <= 50, f"audio frames_per_step must be 1..50, not {k!r}")
        if "wake" in self.audio:
            w = self.audio["wake"]
            need(isinstance(w, dict) and set(w) - {"confirm"} == {"threshold", "window", "stride", "rest"}
                 and all(isinstance(v, int) and not isinstance(v, bool) for v in w.values()),
                 'audio.wake must be {"threshold", "window", "stride", "rest", "confirm"}, integers')
            need(-2**31 <= w["threshold"] < 2**31 and all(0 <= w[f] <= 65535 for f in ("window", "stride", "rest"))
                 and w["window"] >= k and w["window"] % k == 0 and w["stride"] >= 1 and 1 <= w.get("confirm", 1) <= 255,
                 f"audio.wake {w} out of range: threshold int32, window a multiple of {k} frames, stride >= 1, "
                 "confirm 1..255")
            need(self.num_classes == 2, f"a wake word has 2 classes (other, the word), not {self.num_classes}")
        try:
            fe = self.frontend
            fe.validate()
        except (TypeError, FrontendError) as e:
            need(False, f"audio front end {self.audio['frontend']!r} is not valid ({e})")
        need(self.num_features == k * fe.channels,
             f"num_features {self.num_features} is not frames_per_step {k} x {fe.channels} front-end channels")

    def _validate_low_bit_embedding(self, need) -> None:
        """Every row is its gain times codes of the width (what the stored form can hold)."""
        g = self.embedding_gain
        width = self.embedding_width
        need(g is not None and g.dtype == np.uint8 and g.shape == (self.vocab_size,),
             f"a {width} embedding needs embedding_gain uint8[{self.vocab_size}]")
        need(int(g.max(initial=0)) <= EMBEDDING_GAIN_MAX[width],
             f"embedding gains above {EMBEDDING_GAIN_MAX[width]} ({width}: gain * code must fit int8)")
        e = self.embedding.astype(np.int64)
        gi = g.astype(np.int64)[:, None]
        codes = embedding_codes(self.embedding, g).astype(np.int64)
        exact = np.all(codes * gi == e)
        ok = np.all(np.abs(codes) <= INT4_MAX) if width == "int4" else np.all(np.abs(codes) == 1)
        need(bool(exact and ok), f"embedding rows are not their gain times {width} codes")


def _embedding(arr: dict, op: dict | None, folder: Path) -> tuple[np.ndarray | None, str, np.ndarray | None]:
    """(int8 rows, width, gains) of a stored embedding: a low-bit one expanded to gain * codes."""
    width = op.get("weights", "int8") if op is not None else "int8"
    if width == "int8":
        return arr.get("embedding"), width, None
    if width not in WEIGHT_WIDTHS:
        raise ModelFileError(f"{folder}: embedding width {width!r} is not one of {', '.join(WEIGHT_WIDTHS)}; "
                             "re-run `tinyseek quantize`")
    gain = arr["embedding.gain"]
    if gain.dtype != np.uint8 or gain.shape != (op["vocab"],):
        raise ModelFileError(f"{folder}: embedding.gain must be uint8[{op['vocab']}], not "
                             f"{gain.dtype}{list(gain.shape)}; re-run `tinyseek quantize`")
    codes = _unpacked(arr["embedding"], width, op["vocab"], op["dim"], f"{folder}: embedding")
    return (codes.astype(np.int64) * gain[:, None]).clip(-128, 127).astype(np.int8), width, gain


def _unpacked(p: np.ndarray, width: str, rows: int, cols: int, what: str) -> np.ndarray:
    """A stored gate matrix back to int8 values, after checking its packed dtype and shape."""
    if width == "int8":
        return p
    per_byte = 2 if width == "int4" else 8
    shape = (rows, -(-cols // per_byte))
    if p.dtype != np.uint8 or p.shape != shape:
        raise ModelFileError(f"{what} must be uint8{list(shape)} ({width}, {per_byte} per byte), not "
                             f"{p.dtype}{list(p.shape)}; re-run `tinyseek quantize`")
    return unpack_weights(p, width, cols)
