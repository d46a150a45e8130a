"""The edge students' quantized ONNX graphs, made by onnxruntime's own quantizers
(`tinyseek edge --quantize`, docs/edge.md):

- int8: `quantize_dynamic` (weights int8 once, activations quantized per call by
  DynamicQuantizeLinear; MatMul -> MatMulInteger, Gather of the embedding -> int8 table,
  TinyLSTM's LSTM -> DynamicQuantizeLSTM). Per-channel or per-tensor weight scales, chosen on
  validation.
- int4: `MatMulNBitsQuantizer`, weights only, in blocks of `block_size` along the input
  dimension (no larger than a weight's input dimension rounded up to a power of two:
  `matmul_blocks`), each block with a scale and a zero point. The MatMul weights use GPTQ (calibrated
  on the training split: per layer, the error of rounding each column is spread over the
  columns not yet rounded, weighted by the inverse Hessian of the layer's inputs) or plain
  round-to-nearest (RTN), chosen on validation with the block size. The embedding lookup
  (Gather) has no input activations for GPTQ to weigh: its table is quantized by
  round-to-nearest in the same blocks (GatherBlockQuantized). MatMulNBits covers MatMul only:
  a Gemm (the heads on 2-D inputs) is first rewritten as MatMul + Add by onnxruntime's own
  `ONNXModel.replace_gemm_with_matmul` (what its static quantizer does for Gemm), so the heads
  are 4-bit too. No 4-bit operator computes an LSTM: its weights are stored as int4 in the
  same blocks by round-to-nearest and read through DequantizeLinear (ONNX opset 21's blocked
  int4), so the file holds 4 bits per weight and the LSTM computes in float. The tables' and
  the LSTM weights' scales are stored as float16 (`half_scales`); MatMulNBits' stay float32.
  LayerNorm gains and biases stay float.

Both read the float graph and write a new .onnx without the intermediate tensors' inferred
shapes (`value_info`: the quantizers' shape inference leaves them in, and no runtime needs
them) and with short names (`compact_names`, as the float export has them); nothing here knows
a student's architecture. `size_breakdown` says what a file's bytes
hold.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

INSTALL = "pip install -e '.[edge]' (or `make setup`)"


class QuantizeError(ValueError):
    """A quantizer is missing or failed on a graph."""


def _quantizers():
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits
    except ImportError as e:  # onnx_ir is matmul_nbits_quantizer's own import
        raise QuantizeError(f"onnxruntime's quantizers are missing ({e}): {INSTALL}") from e
    return quantize_dynamic, QuantType, nbits


@contextlib.contextmanager
def _quiet():
    """The quantizers log every tensor at INFO, warn about the opset bump they make, and GPTQ
    draws a progress bar on stdout."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_int8(float_path: Path, out_path: Path, per_channel: bool) -> Path:
    import onnx
    quantize_dynamic, QuantType, _ = _quantizers()
    try:
        with _quiet():
            quantize_dynamic(str(float_path), str(out_path), weight_type=QuantType.QInt8, per_channel=per_channel)
    except Exception as e:  # the quantizer raises plain exceptions naming the node
        raise QuantizeError(f"onnxruntime's quantize_dynamic failed on {float_path}: {e}") from e
    save(onnx.load(str(out_path)), out_path)
    return out_path


def save(model, out_path: Path) -> None:
    """Without value_info: the shapes of intermediate tensors that the quantizers' shape
    inference wrote (25 KB of a 0.7 MB TinyBert); runtimes infer them again. Duplicate nodes
    merged, names compacted."""
    import onnx
    model.graph.ClearField("value_info")
    merge_duplicates(model)
    compact_names(model)
    onnx.save(model, str(out_path))


def _short(k: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = digits[k % 36]
    while k >= 36:
        k //= 36
        out = digits[k % 36] + out
    return out


# Operators whose outputs differ between two calls with the same inputs: never merged.
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
           "Dropout"}


def merge_duplicates(model) -> int:
    """Merge the nodes of the main graph that compute the same thing (same operator, inputs and
    attributes) into their first occurrence, in place; returns how many were dropped. The
    TorchScript exporter writes a Constant node for every literal and recomputes the same shape
    arithmetic in each layer: 460 of the truncated teacher's 1,095 nodes (21 KB) were repeats.
    The logits are unchanged bit for bit (the same operations on the same values). Random
    operators and nodes that write a graph output are left alone; a graph with subgraphs (If,
    Loop, Scan), whose bodies may read the outer names, is not changed."""
    graph = model.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node for a in n.attribute):
        return 0
    outputs = {o.name for o in graph.output}
    first: dict[tuple, object] = {}
    same: dict[str, str] = {}
    repeats = []
    for node in graph.node:
        node.input[:] = [same.get(x, x) for x in node.input]
        if node.op_type in _RANDOM or set(node.output) & outputs:
            continue
        key = (node.domain, node.op_type, tuple(node.input), len(node.output),
               tuple(a.SerializeToString() for a in sorted(node.attribute, key=lambda a: a.name)))
        if key in first:
            same.update(zip(node.output, first[key].output))
            repeats.append(node)
        else:
            first[key] = node
    for node in repeats:
        graph.node.remove(node)
    return len(repeats)


def compact_names(model) -> None:
    """Rename every node and every tensor but the graph's inputs and outputs (which callers
    bind by name) to a short one, in place: the exporter's and quantizers' names
    ("/model/layers.0/self_attn/q_proj/MatMul_output_0_quantized") are most of a graph's
    bytes (46 KB of TinyBert's 57 KB, 90 KB of 103 KB int8). Names are SSA across a model's
    subgraphs, so one map serves them all."""
    graphs = [model.graph]
    for g in graphs:  # subgraphs (If, Loop, Scan bodies) too
        graphs.extend(a.g for n in g.node for a in n.attribute if a.type == a.GRAPH)
        graphs.extend(sub for n in g.node for a in n.attribute if a.type == a.GRAPHS for sub in a.graphs)
    keep = {v.name for v in list(model.graph.input) + list(model.graph.output)} | {""}
    names: dict[str, str] = {}

    def rename(old: str) -> str:
        if old in keep:
            return old
        if old not in names:
            names[old] = "t" + _short(len(names))
        return names[old]

    count = 0
    for g in graphs:
        for t in g.initializer:
            t.name = rename(t.name)
        for t in g.sparse_initializer:
            t.values.name = rename(t.values.name)
        for v in list(g.value_info) + (list(g.input) + list(g.output) if g is not model.graph else []):
            v.name = rename(v.name)
        for n in g.node:
            n.name, count = "n" + _short(count), count + 1
            n.input[:] = [rename(x) for x in n.input]
            n.output[:] = [rename(x) for x in n.output]


def matmul_form(model):
    """The graph with each Gemm as MatMul (+ Add of its bias), by onnxruntime's own rewrite
    (`ONNXModel.replace_gemm_with_matmul`), and the Gemm weights it transposed dropped
    (`clean_initializers`): MatMulNBits quantizes MatMul only. The model is changed in place."""
    from onnxruntime.quantization.onnx_model import ONNXModel
    wrapped = ONNXModel(model)
    wrapped.replace_gemm_with_matmul()
    wrapped.clean_initializers()
    return wrapped.model


INT4_OPSET = 21  # DequantizeLinear with int4 and block_size


def int4_blocks(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric round-to-nearest int4 in blocks of `block_size` along the last axis:
    (q in [-8, 7] with w's shape, scales [..., ceil(K / block_size)]), w ~ q * scale."""
    k = w.shape[-1]
    nb = -(-k // block_size)
    padded = np.zeros(w.shape[:-1] + (nb * block_size,), np.float32)
    padded[..., :k] = w
    blocks = padded.reshape(w.shape[:-1] + (nb, block_size))
    scale = (np.abs(blocks).max(-1) / 7.0).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero block: any scale dequantizes it to zeros
    q = np.clip(np.rint(blocks / scale[..., None]), -8, 7).reshape(padded.shape)[..., :k].astype(np.int8)
    return q, scale


def _lstm_int4(model, block_size: int) -> int:
    """Each LSTM's input and recurrent weights (inputs W, R) stored as int4 blocks read through
    DequantizeLinear, in place; the model's ONNX opset raised to 21 for that. Returns how many
    tensors were converted."""
    import ml_dtypes  # onnx's own dependency: numpy_helper packs its int4 two per byte
    from onnx import helper, numpy_helper
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    converted = 0
    for node in [n for n in graph.node if n.op_type == "LSTM"]:
        for name in node.input[1:3]:
            if name not in inits:
                raise QuantizeError(f"LSTM node {node.name}'s weight {name} is not a constant: it cannot be stored "
                                    "in 4 bits")
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            q, scale = int4_blocks(w, block_size)
            q_t = numpy_helper.from_array(q.astype(ml_dtypes.int4), name + "_q4")
            s_t = numpy_helper.from_array(scale, name + "_scale")
            graph.initializer.remove(inits[name])
            graph.initializer.extend([q_t, s_t])
            graph.node.insert(0, helper.make_node("DequantizeLinear", [q_t.name, s_t.name], [name],
                                                  axis=w.ndim - 1, block_size=block_size))
            converted += 1
    if converted:
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = max(o.version, INT4_OPSET)
    return converted


def quantize_int4(float_path: Path, out_path: Path, algorithm: str, block_size: int,
                  calibration: list[dict] | None = None, table_axis: int = 1,
                  table_block: int | None = None) -> tuple[Path, dict]:
    """4-bit weights: MatMul (Gemm in MatMul form) by `algorithm` ("gptq" needs `calibration`,
    a list of input feeds from the training split; "rtn") in blocks of `block_size`, then the
    embedding Gathers by round-to-nearest in blocks of `table_block` (default `block_size`)
    along `table_axis` (1: along each token's vector; 0: along the vocabulary, one scale per
    block of tokens and column: fewer scales when a vector is narrower than a block), and LSTM
    weights stored as int4 by round-to-nearest (`_lstm_int4`). Returns the path, how many
    MatMuls each algorithm quantized and how many LSTM weight tensors were stored in 4 bits:
    onnxruntime's GPTQ cannot take a MatMul whose input dimension holds an odd number of blocks
    (`odd_block_counts`), so with "gptq" those are rounded to nearest instead, and counted as
    such."""
    table = (table_axis, table_block or block_size)
    (model, counts), = int4_variants(float_path, algorithm, block_size, calibration, [table]).values()
    save(model, out_path)
    return out_path, counts


def int4_variants(float_path: Path, algorithm: str, block_size: int, calibration: list[dict] | None,
                  tables: list[tuple[int, int]]) -> dict[tuple[int, int], tuple[object, dict]]:
    """quantize_int4's models for each (table_axis, table_block) of `tables`, unsaved, with
    their counts: the MatMuls (GPTQ's slow part) are quantized once for all of them."""
    import onnx
    _, _, nbits = _quantizers()
    if algorithm not in ("gptq", "rtn"):
        raise QuantizeError(f"unknown 4-bit algorithm {algorithm!r}; choose gptq or rtn")
    for table_axis, table_block in tables:
        if table_axis not in (0, 1):
            raise QuantizeError(f"table_axis must be 0 (blocks along the vocabulary) or 1 (along each vector), not "
                                f"{table_axis}")
        if table_block < 16 or table_block & (table_block - 1):
            raise QuantizeError(f"table block {table_block} is not a power of two from 16 (onnxruntime's "
                                "GatherBlockQuantized)")
    if algorithm == "gptq" and not calibration:
        raise QuantizeError("GPTQ needs calibration inputs (the training split)")
    model = matmul_form(onnx.load(str(float_path)))
    matmuls = weight_matmuls(model)
    blocks = matmul_blocks(model, block_size)
    odd = set(odd_block_counts(model, block_size))
    gptq_nodes = [n for n in matmuls if n not in odd] if algorithm == "gptq" else []
    out = {}
    try:
        with _quiet():
            if gptq_nodes:
                from onnxruntime.quantization.neural_compressor import gptq_quantize
                # What MatMulNBitsQuantizer's GPTQ path passes, with the odd-block MatMuls left float
                # ("fp32" is the skip mark gptq_quantize reads) for the RTN pass below.
                config = {n: "fp32" if n in odd else {"bits": 4, "group_size": blocks[n], "scheme": "sym"}
                          for n in matmuls}
                model = gptq_quantize(model, ((feed, None) for feed in calibration), weight_config=config,
                                      num_bits=4, group_size=block_size, scheme="sym", n_samples=-1, percdamp=0.01,
                                      blocksize=128, actorder=False, mse=False, perchannel=True).model
            q = nbits.MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True,
                                           algo_config=nbits.RTNWeightOnlyQuantConfig(customized_weight_config={
                                               n: {"group_size": b} for n, b in blocks.items()}))
            q.process()
            for table_axis, table_block in tables:
                gather = nbits.MatMulNBitsQuantizer(
                    copy.deepcopy(q.model.model), block_size=table_block, is_symmetric=True,
                    algo_config=nbits.DefaultWeightOnlyQuantConfig(block_size=table_block, is_symmetric=True,
                                                                   op_types_to_quantize=("Gather",),
                                                                   quant_axes=(("Gather", table_axis),)))
                gather.process()
                out[(table_axis, table_block)] = gather.model.model
    except Exception as e:
        raise QuantizeError(f"onnxruntime's MatMulNBits quantizer ({algorithm}) failed on {float_path}: {e}") from e
    counts = {"matmuls_gptq": len(gptq_nodes), "matmuls_rtn": len(matmuls) - len(gptq_nodes)}
    return {t: (m, counts | {"lstm_int4_tensors": _lstm_int4(m, block_size), "half_scales": half_scales(m)})
            for t, m in out.items()}


# 4-bit operators whose scales may be float16 whatever the graph computes in (input 2 of
# GatherBlockQuantized, input 1 of DequantizeLinear): their output takes the scales' type and a
# Cast brings it back to float32. MatMulNBits' scales must be its activations' type, so they stay.
_HALF_SCALE_INPUT = {"GatherBlockQuantized": 2, "DequantizeLinear": 1}


def half_scales(model) -> int:
    """Store the float32 scales of the 4-bit embedding tables and LSTM weights as float16, in
    place, each node's output cast back to float32; returns how many scale tensors changed.
    Half the scale bytes (the truncated teacher's table: 12 KB -> 6 KB); a float16 scale is
    within a relative 2^-11 of the float32 one, against int4's rounding step of 1/7 of a
    block's largest weight. A tensor is left float32 where float16 would move any scale
    further (beyond float16's range, or so small it loses precision), or where any other node
    reads it."""
    from onnx import TensorProto, helper, numpy_helper
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers = Counter(name for node in graph.node for name in node.input)
    changed = 0
    for node in list(graph.node):
        k = _HALF_SCALE_INPUT.get(node.op_type)
        if k is None or len(node.input) <= k or node.input[k] not in inits:
            continue
        scale = inits[node.input[k]]
        if scale.data_type != TensorProto.FLOAT or readers[scale.name] != 1:
            continue
        full = numpy_helper.to_array(scale)
        with np.errstate(over="ignore", invalid="ignore"):
            half = full.astype(np.float16)
            if not np.all(np.abs(half.astype(np.float32) - full) <= np.abs(full) * 2.0 ** -11):
                continue
        scale.CopyFrom(numpy_helper.from_array(half, scale.name))
        out = node.output[0]
        node.output[0] = out + "_half"
        graph.node.insert(list(graph.node).index(node) + 1,
                          helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT))
        changed += 1
    return changed


def matmul_blocks(model, block_size: int) -> dict[str, int]:
    """Each weight MatMul's block size: `block_size`, but no larger than its input dimension K
    rounded up to a power of two (MatMulNBits' blocks are powers of two, at least 16). A block
    beyond that holds only the zeros MatMulNBits pads K with: the same scales and weights in up
    to twice the bytes (TinyBert's 64-wide inputs in blocks of 128)."""
    weights = {i.name: i.dims for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    return {name: min(block_size, max(16, 1 << (int(weights[nodes[name].input[1]][0]) - 1).bit_length()))
            for name in weight_matmuls(model)}


def weight_matmuls(model) -> list[str]:
    """Names of the MatMul nodes with a constant 2-D weight: what MatMulNBits quantizes."""
    weights = {i.name: i.dims for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and len(n.input) > 1 and len(weights.get(n.input[1], ())) == 2]


def odd_block_counts(graph, block_size: int) -> list[str]:
    """Weight MatMul nodes of `graph` (a path: the float graph, its Gemms in MatMul form; or a
    loaded model, as it is) whose ceil(K / block_size) is odd. onnxruntime 1.32's GPTQ
    (quantization/neural_compressor/weight_only.py) packs two 4-bit zero points per byte
    across the whole [N, blocks] table and then reshapes it to [N, -1], which fails for them;
    its RTN path packs per row and has no such limit."""
    import onnx
    model = matmul_form(onnx.load(str(graph))) if isinstance(graph, (str, Path)) else graph
    weights = {i.name: i.dims for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    return [name for name, block in matmul_blocks(model, block_size).items()
            if math.ceil(weights[nodes[name].input[1]][0] / block) % 2]


def op_counts(path: Path) -> dict[str, int]:
    """Nodes per op type, e.g. {"MatMulNBits": 19, ...}: what a quantizer changed."""
    import onnx
    return dict(sorted(Counter(n.op_type for n in onnx.load(str(path)).graph.node).items()))


def fixed_shape(float_path: Path, out_path: Path, length: int) -> Path:
    """The graph with batch 1 and sequence `length` fixed and the shape arithmetic folded
    (onnxruntime's basic optimizations): TVM's ONNX frontend cannot import the dynamic graph's
    Shape -> Gather chains (relax `shape_of` on a shape), and static shapes let every runtime
    plan its memory once."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed
    model = onnx.load(str(float_path))
    for name, value in (("batch", 1), ("sequence", length)):
        make_dim_param_fixed(model.graph, name, value)
    fix_output_shapes(model)
    raw = out_path.with_suffix(".unfolded.onnx")
    onnx.save(model, str(raw))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out_path)
    ort.InferenceSession(str(raw), opts, providers=["CPUExecutionProvider"])
    raw.unlink()
    return out_path


def agreement(ref: np.ndarray, got: np.ndarray, y: np.ndarray) -> dict:
    """Against the reference logits [N, C]: share of equal predictions, largest logit
    difference, and the accuracy of `got`."""
    if not len(y):
        return {"samples": 0, "agreement": 1.0, "max_abs_diff": 0.0, "accuracy": 0.0}
    return {"samples": int(len(y)), "agreement": float(np.mean(ref.argmax(1) == got.argmax(1))),
            "max_abs_diff": float(np.abs(ref - got).max()), "accuracy": float(np.mean(got.argmax(1) == y))}


# What each input of an operator holds, for size_breakdown: (op type, input index) -> role.
# Anything not listed is "other" (shape constants, attention masks' fill values, ...).
_WEIGHT = {("MatMul", 1), ("Gemm", 1), ("Gather", 0), ("LSTM", 1), ("LSTM", 2), ("MatMulInteger", 1),
           ("MatMulNBits", 1), ("GatherBlockQuantized", 0), ("DynamicQuantizeLSTM", 1), ("DynamicQuantizeLSTM", 2),
           ("DequantizeLinear", 0)}
_SCALE = {("MatMulNBits", 2), ("MatMulNBits", 3), ("GatherBlockQuantized", 2), ("GatherBlockQuantized", 3),
          ("MatMulInteger", 2), ("MatMulInteger", 3), ("DequantizeLinear", 1), ("DequantizeLinear", 2),
          *(("DynamicQuantizeLSTM", i) for i in range(8, 12))}
_BIAS = {("Gemm", 2), ("LSTM", 3), ("DynamicQuantizeLSTM", 3), ("MatMulNBits", 5)}
_NORM = {("LayerNormalization", 1), ("LayerNormalization", 2), ("SimplifiedLayerNormalization", 1),
         ("RMSNormalization", 1)}


def _times_dynamic_scale(graph) -> set[str]:
    """The names multiplied by a scale DynamicQuantizeLinear computes (its second output):
    quantize_dynamic's weight scales (per tensor, or per channel)."""
    scales = {n.output[1] for n in graph.node if n.op_type == "DynamicQuantizeLinear" and len(n.output) > 1}
    return {x for n in graph.node if n.op_type == "Mul" and set(n.input) & scales for x in n.input}


def size_breakdown(path: Path) -> dict[str, int]:
    """The .onnx file's bytes by what they hold: each initializer's serialized bytes under
    "<float|integer> <role>" (weight: what a MatMul, Gemm, Einsum, Gather or LSTM multiplies or
    looks up; scale: quantization scales and zero points; bias: vectors added; norm:
    LayerNorm's gains and biases, RMSNorm's gains (vectors multiplied); other: shape constants
    and the like), "value_info" (the inferred
    shapes of intermediate tensors, optional), and "graph" for the rest (nodes, Constant nodes' values
    included, names, inputs, outputs). The values sum to the file's size. A tensor read by several nodes takes the
    first listed role among its readers (weight, scale, bias, norm)."""
    import onnx
    model = onnx.load(str(path))
    readers: dict[str, set] = {}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            readers.setdefault(name, set()).add((node.op_type, k))
    dynamic_scales = _times_dynamic_scale(model.graph)
    out: Counter = Counter()
    for t in model.graph.initializer:
        read = readers.get(t.name, set())
        role = next((r for r, table in (("weight", _WEIGHT), ("scale", _SCALE), ("bias", _BIAS), ("norm", _NORM))
                     if read & table), None)
        ops = {op for op, _ in read}
        if role is None and ops == {"Mul"} and t.name in dynamic_scales:
            role = "scale"  # quantize_dynamic's weight scale, multiplied into the MatMulInteger's output
        if role is None and len(t.dims) >= 2 and "Einsum" in ops:
            role = "weight"
        if role is None and len(t.dims) == 1 and t.dims[0] > 1:  # a vector added (bias) or multiplied in (a gain:
            role = "bias" if ops & {"Add", "Sub"} else "norm" if ops & {"Mul", "Div"} else None  # RMSNorm's)
        role = role or "other"
        kind = "float" if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                          onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE) else "integer"
        out[f"{kind} {role}"] += t.ByteSize()
    out["value_info"] = sum(v.ByteSize() for v in model.graph.value_info)
    out["graph"] = Path(path).stat().st_size - sum(out.values())
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
