"""The edge students on the on-device frameworks: onnxruntime's int8 dynamic and 4-bit
quantizers, MNN, TVM and Core ML, each checked against onnxruntime's float logits on a tiny
TinyBert (random weights: these are float and quantized frameworks, so the checks use
tolerances, not the bit-exact integer C path's equality)."""
import json
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from tinyseek.cli import make_parser
from tinyseek.config import ConfigError
from tinyseek.config import load as load_config
from tinyseek.data import Dataset, Split
from tinyseek.distill import edge_frameworks as fw
from tinyseek.distill.edge import export_onnx
from tinyseek.export import coreml, edge_quant, mnn, tvm
from tinyseek.student.tinybert import TinyBert, TinyBertSpec, encode, save_tinybert

SPEC = TinyBertSpec(labels=["on", "off", "time"], vocab_size=256, max_len=12, hidden=64, bottleneck=32, layers=2,
                    heads=2, ffn_stack=1, embed_dim=32)
TEXTS = ["turn on the lights", "lights off please", "what time is it", "switch the lamp on now", "开灯",
         "tell me the time thanks", "turn off the lights at 7 please", "current time"]
NAMES = ["input_ids", "attention_mask"]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """(torch wrapper, float ONNX path, ids [N, L], mask [N, L]) of a tiny random TinyBert."""
    folder = tmp_path_factory.mktemp("edge_fw")
    torch.manual_seed(0)
    model = TinyBert(SPEC).eval()
    ids, mask = encode(TEXTS, SPEC)
    path = export_onnx(model, ids[:2], mask[:2], folder / "model.onnx")
    length = int(mask.sum(1).max())
    return fw._Logits(model).eval(), path, ids[:, :length].numpy(), mask[:, :length].numpy()


def _ort(path, ids, mask):
    return fw.run_all(fw.ort_runner(path), ids, mask)


def _const_matmuls(path):
    model = onnx.load(str(path))
    weights = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def _weights(path):
    """The MatMul and Gemm weights of the float graph: what both quantizers must quantize
    (the 4-bit one with the Gemm head in MatMul form)."""
    return len(_const_matmuls(path)) + edge_quant.op_counts(path).get("Gemm", 0)


# -- onnxruntime's quantizers ---------------------------------------------------------------

def test_int8_dynamic_quantizes_every_weight_matmul_and_shrinks_the_file(student, tmp_path):
    _, path, ids, mask = student
    q = edge_quant.quantize_int8(path, tmp_path / "int8.onnx", per_channel=True)
    ops = edge_quant.op_counts(q)
    # Every weight MatMul, and the head's Gemm, becomes a MatMulInteger.
    assert ops.get("MatMulInteger", 0) == len(_const_matmuls(path)) + edge_quant.op_counts(path).get("Gemm", 0)
    assert ops.get("DynamicQuantizeLinear", 0) > 0
    assert not _const_matmuls(q)  # no float MatMul with a weight left
    assert q.stat().st_size < 0.6 * path.stat().st_size  # weights 4x smaller; graph and scales stay
    ref, got = _ort(path, ids, mask), _ort(q, ids, mask)
    assert np.abs(ref - got).max() < 0.25 * np.abs(ref).max()


def test_int4_rtn_packs_matmuls_and_the_embedding_into_4_bit_blocks(student, tmp_path):
    _, path, ids, mask = student
    q, counts = edge_quant.quantize_int4(path, tmp_path / "int4.onnx", "rtn", 16)
    assert counts == {"matmuls_gptq": 0, "matmuls_rtn": _weights(path), "lstm_int4_tensors": 0, "half_scales": 2}
    ops = edge_quant.op_counts(q)
    assert ops.get("MatMulNBits", 0) == _weights(path) and "Gemm" not in ops  # the head too
    assert ops.get("GatherBlockQuantized", 0) == 2  # the token and the position embedding tables
    nodes = [n for n in onnx.load(str(q)).graph.node if n.op_type == "MatMulNBits"]
    assert all(next(a.i for a in n.attribute if a.name == "bits") == 4 for n in nodes)
    assert all(next(a.i for a in n.attribute if a.name == "block_size") == 16 for n in nodes)
    assert q.stat().st_size < 0.35 * path.stat().st_size  # 4 bits + a float32 scale per 16 weights
    ref, got = _ort(path, ids, mask), _ort(q, ids, mask)
    assert np.abs(ref - got).max() < 0.5 * np.abs(ref).max()


def test_int4_tables_blocked_along_the_vocabulary_store_fewer_scales(lstm, tmp_path):
    """table_axis=0 blocks the embedding table along the vocabulary: a scale per block of tokens
    and column. The fixture's 16-wide vectors hold one block per row along axis 1 (128 scales);
    along the vocabulary, blocks of 64 need 2 x 16. The logits stay near the float graph's."""
    path, ids, mask = lstm
    files = {axis: edge_quant.quantize_int4(path, tmp_path / f"int4_{axis}.onnx", "rtn", 64, table_axis=axis)[0]
             for axis in (1, 0)}
    shapes = {}
    for axis, q in files.items():
        model = onnx.load(str(q))
        node = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
        assert {a.name: a.i for a in node.attribute}.get("quantize_axis", 1) == axis
        shapes[axis] = next(list(t.dims) for t in model.graph.initializer if t.name == node.input[2])
        ref, got = _ort(path, ids, mask), _ort(q, ids, mask)
        assert np.abs(ref - got).max() < 0.5 * np.abs(ref).max()
    assert shapes == {1: [128, 1], 0: [2, 16]}
    assert files[0].stat().st_size < files[1].stat().st_size
    with pytest.raises(edge_quant.QuantizeError, match="table_axis"):
        edge_quant.quantize_int4(path, tmp_path / "bad.onnx", "rtn", 64, table_axis=2)


def test_int4_blocks_are_no_wider_than_the_weights_they_cover(student, tmp_path):
    """A block beyond a weight's input dimension K (rounded up to a power of two) would hold
    only MatMulNBits' zero padding: with block 128, the fixture's 32- and 64-wide weights get
    blocks of 32 and 64, and the file is smaller than the same graph with every block 128."""
    _, path, ids, mask = student
    q, _ = edge_quant.quantize_int4(path, tmp_path / "int4_128.onnx", "rtn", 128)
    attrs = [{a.name: a.i for a in n.attribute} for n in onnx.load(str(q)).graph.node if n.op_type == "MatMulNBits"]
    assert {a["K"] for a in attrs} >= {32, 64}
    for a in attrs:
        assert a["block_size"] == min(128, max(16, 1 << (a["K"] - 1).bit_length()))
    # What the quantizer writes with one block size for all: every weight in 128-wide blocks.
    import copy
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits
    model = edge_quant.matmul_form(onnx.load(str(path)))
    wide = nbits.MatMulNBitsQuantizer(copy.deepcopy(model), block_size=128, is_symmetric=True,
                                      algo_config=nbits.RTNWeightOnlyQuantConfig())
    wide.process()
    packed = lambda m: sum(i.ByteSize() for i in m.graph.initializer if "_Q4G" in i.name)
    assert packed(onnx.load(str(q))) < 0.8 * packed(wide.model.model)
    ref, got = _ort(path, ids, mask), _ort(q, ids, mask)
    assert np.abs(ref - got).max() < 0.5 * np.abs(ref).max()


def test_gptq_reads_the_calibration_data_and_rounds_what_it_cannot_pack(student, tmp_path):
    _, path, ids, mask = student
    calib = [{"input_ids": ids[n:n + 1, :max(1, int(mask[n].sum()))],
              "attention_mask": mask[n:n + 1, :max(1, int(mask[n].sum()))]} for n in range(len(ids))]
    gptq, counts = edge_quant.quantize_int4(path, tmp_path / "gptq.onnx", "gptq", 16, calib)
    rtn, _ = edge_quant.quantize_int4(path, tmp_path / "rtn.onnx", "rtn", 16)
    assert counts == {"matmuls_gptq": _weights(path), "matmuls_rtn": 0, "lstm_int4_tensors": 0,
                      "half_scales": 2}
    assert edge_quant.op_counts(gptq)["MatMulNBits"] == edge_quant.op_counts(rtn)["MatMulNBits"]
    def packed(p):  # the MatMulNBits weights, in graph order
        graph = onnx.load(str(p)).graph
        init = {i.name: i for i in graph.initializer}
        return [onnx.numpy_helper.to_array(init[n.input[1]]) for n in graph.node if n.op_type == "MatMulNBits"]
    g, r = packed(gptq), packed(rtn)
    assert g and len(g) == len(r) and any(not np.array_equal(a, b) for a, b in zip(g, r))  # GPTQ moved some weights
    # K = 32 (the bottleneck) is one block of 32, which onnxruntime's GPTQ cannot pack: those
    # MatMuls are rounded to nearest, the 64-wide ones still go through GPTQ.
    odd = edge_quant.odd_block_counts(path, 32)
    assert 0 < len(odd) < _weights(path)
    mixed, counts = edge_quant.quantize_int4(path, tmp_path / "mixed.onnx", "gptq", 32, calib)
    assert counts == {"matmuls_gptq": _weights(path) - len(odd), "matmuls_rtn": len(odd), "lstm_int4_tensors": 0,
                      "half_scales": 2}
    assert edge_quant.op_counts(mixed)["MatMulNBits"] == _weights(path)
    ref, got = _ort(path, ids, mask), _ort(mixed, ids, mask)
    assert np.abs(ref - got).max() < 0.5 * np.abs(ref).max()
    with pytest.raises(edge_quant.QuantizeError, match="calibration"):
        edge_quant.quantize_int4(path, tmp_path / "none.onnx", "gptq", 16)


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):
    """(float ONNX path, ids [N, L], mask [N, L]) of a tiny random TinyLSTM graph, as the
    frameworks export it."""
    import warnings
    from tinyseek.export.onnx import _wrapper
    from tinyseek.student import StudentSpec, TinyLSTM, encode_texts
    torch.manual_seed(0)
    spec = StudentSpec(kind="text", labels=["a", "b", "c"], hidden=32, layers=1, embed_dim=16, vocab_size=128,
                       max_len=8)
    ids, lengths = encode_texts(TEXTS, spec)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        path = export_onnx(_wrapper(TinyLSTM(spec).eval()).eval(), ids[:2, :4], mask[:2, :4],
                           tmp_path_factory.mktemp("edge_lstm") / "model.onnx")
    return path, ids.numpy(), mask.numpy()


def test_quantized_graphs_keep_no_float_weight_and_no_inferred_shapes(student, lstm, tmp_path):
    """Every weight (MatMul, the Gemm head, the embedding Gathers, the LSTM) is quantized in
    both graphs, no float copy of it stays behind, and the quantizers' value_info is dropped:
    what kept the int8 and 4-bit files from their 4x / 8x."""
    for name, path, ids, mask in (("tinybert", student[1], student[2], student[3]), ("tinylstm", *lstm)):
        float_bytes = edge_quant.size_breakdown(path)
        assert sum(float_bytes.values()) == path.stat().st_size
        q8 = edge_quant.quantize_int8(path, tmp_path / f"{name}_int8.onnx", per_channel=False)
        q4, _ = edge_quant.quantize_int4(path, tmp_path / f"{name}_int4.onnx", "rtn", 16)
        b8, b4 = edge_quant.size_breakdown(q8), edge_quant.size_breakdown(q4)
        for q, b in ((q8, b8), (q4, b4)):
            assert sum(b.values()) == q.stat().st_size
            assert "float weight" not in b, (name, q.name, b)
            assert b["value_info"] == 0
            assert "Gemm" not in edge_quant.op_counts(q) and not _const_matmuls(q)
            ref, got = _ort(path, ids, mask), _ort(q, ids, mask)
            assert np.abs(ref - got).max() < 0.5 * np.abs(ref).max()
        # int8 weights: a quarter of the float bytes (plus their names); 4 bits: an eighth
        assert b8["integer weight"] < 0.27 * float_bytes["float weight"]
        assert b4["integer weight"] < 0.14 * float_bytes["float weight"]
        if name == "tinylstm":  # int8: DynamicQuantizeLSTM; 4-bit: W and R stored as int4, read through DequantizeLinear
            assert "LSTM" not in edge_quant.op_counts(q8)
            ops = edge_quant.op_counts(q4)
            assert ops["DequantizeLinear"] == 2 and ops["MatMulNBits"] == 1 and ops["GatherBlockQuantized"] == 1


def test_int4_lstm_weights_dequantize_to_their_rounded_blocks(lstm, tmp_path):
    """The 4-bit TinyLSTM's LSTM computes with exactly the round-to-nearest blocks of its float
    weights (`int4_blocks`), stored two per byte: onnxruntime's DequantizeLinear reads them back
    bit for bit. A wrong nibble order or block layout would not."""
    path, ids, mask = lstm
    q4, counts = edge_quant.quantize_int4(path, tmp_path / "int4.onnx", "rtn", 16)
    assert counts["lstm_int4_tensors"] == 2
    model = onnx.load(str(q4))
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) >= edge_quant.INT4_OPSET
    dq_inputs = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    packed = [t for t in model.graph.initializer if t.name in dq_inputs]
    assert len(packed) == 2 and all(t.data_type == onnx.TensorProto.INT4 for t in packed)
    assert all(len(t.raw_data) == (int(np.prod(t.dims)) + 1) // 2 for t in packed)  # two per byte
    # onnxruntime's DequantizeLinear on the file's own int4 tensors gives q * scale of the float
    # weights, bit for bit.
    import onnxruntime as ort
    inits = {t.name: t for t in model.graph.initializer}
    float_model = onnx.load(str(path))
    floats = {t.name: onnx.numpy_helper.to_array(t) for t in float_model.graph.initializer}
    float_lstm = next(n for n in float_model.graph.node if n.op_type == "LSTM")
    int4_lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    dq_nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    # each DequantizeLinear's float16 output (its scales are float16: half_scales) is cast back
    cast = {n.input[0]: n for n in model.graph.node if n.op_type == "Cast"}
    assert sorted(list(int4_lstm.input).index(cast[n.output[0]].output[0]) for n in dq_nodes) == [1, 2]  # W and R
    for node in dq_nodes:
        read = cast[node.output[0]].output[0]
        w = floats[float_lstm.input[list(int4_lstm.input).index(read)]]
        graph = onnx.helper.make_graph([node, cast[node.output[0]]], "dq", [], [onnx.helper.make_tensor_value_info(
            read, onnx.TensorProto.FLOAT, None)], [inits[x] for x in node.input])
        one = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", edge_quant.INT4_OPSET)])
        got = ort.InferenceSession(one.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
        q, scale = edge_quant.int4_blocks(w.astype(np.float32), 16)
        assert q.min() >= -8 and q.max() <= 7 and scale.shape == w.shape[:-1] + (-(-w.shape[-1] // 16),)
        assert inits[node.input[1]].data_type == onnx.TensorProto.FLOAT16
        half = np.repeat(scale.astype(np.float16), 16, axis=-1)[..., :w.shape[-1]]
        want = (q.astype(np.float16) * half).astype(np.float32)  # q * float16 scale, rounded to float16
        assert np.array_equal(got, want)
        assert np.abs(want - w).max() <= scale.max() * (0.5 + 2.0 ** -9)  # round to nearest
    # The edge sessions fold them into float constants at load: no DequantizeLinear runs per call.
    from tinyseek.distill.edge import session_options
    opts = session_options()
    opts.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    ort.InferenceSession(str(q4), opts, providers=["CPUExecutionProvider"])
    assert "DequantizeLinear" not in edge_quant.op_counts(tmp_path / "loaded.onnx")


def _exporters_own(model_t, ids, mask, path: Path) -> Path:
    """The TorchScript exporter's graph as it writes it: long names, repeated nodes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model_t, (torch.as_tensor(ids[:2]), torch.as_tensor(mask[:2])), str(path),
                          input_names=NAMES, output_names=["logits"], opset_version=18, dynamo=False,
                          dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
                                        "logits": {0: "b"}})
    return path


def test_graphs_carry_short_names_and_compute_the_same(student, tmp_path):
    """The exported and quantized graphs name their nodes and tensors shortly (the exporter's
    names were most of the graph's bytes), keep the inputs and outputs callers bind by name,
    and compute exactly what the long-named graph computes; the int8 weight scales are still
    told apart from other Mul constants without their names."""
    model_t, path, ids, mask = student
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == NAMES and [o.name for o in model.graph.output] == ["logits"]
    values = {x for n in model.graph.node for x in list(n.input) + list(n.output)} - set(NAMES) - {"logits", ""}
    assert values and max(len(v) for v in values) <= 4 and max(len(n.name) for n in model.graph.node) <= 4
    # The same graph under the exporter's own names: the same logits, bit for bit, more bytes.
    long_path = _exporters_own(model_t, ids, mask, tmp_path / "long.onnx")
    assert np.array_equal(_ort(long_path, ids, mask), _ort(path, ids, mask))
    assert path.stat().st_size < long_path.stat().st_size
    q8 = edge_quant.quantize_int8(path, tmp_path / "int8.onnx", per_channel=True)
    assert max(len(n.name) for n in onnx.load(str(q8)).graph.node) <= 4
    b8 = edge_quant.size_breakdown(q8)
    matmuls = edge_quant.op_counts(q8)["MatMulInteger"]
    assert b8.get("float scale", 0) > matmuls * 4 and "float other" not in b8, b8  # a float scale per weight


def test_repeated_nodes_are_merged_and_compute_the_same(student, tmp_path):
    """merge_duplicates keeps the first of the nodes that compute the same thing (the
    exporter's repeated Constant nodes and shape arithmetic): the exported graph holds no two
    such nodes and gives the same logits, bit for bit, as the exporter's own graph. Random
    operators and a node that writes a graph output are never merged."""
    model_t, path, ids, mask = student
    raw = _exporters_own(model_t, ids, mask, tmp_path / "raw.onnx")
    raw_model = onnx.load(str(raw))
    merged = onnx.load(str(raw))
    dropped = edge_quant.merge_duplicates(merged)
    assert dropped > 0 and len(merged.graph.node) == len(raw_model.graph.node) - dropped
    assert edge_quant.merge_duplicates(merged) == 0  # nothing left to merge
    onnx.checker.check_model(merged)
    onnx.save(merged, str(tmp_path / "merged.onnx"))
    assert np.array_equal(_ort(raw, ids, mask), _ort(tmp_path / "merged.onnx", ids, mask))
    assert len(onnx.load(str(path)).graph.node) == len(merged.graph.node)  # export_onnx merges too

    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    one = lambda out: helper.make_node("Constant", [], [out], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    nodes = [one("c1"), one("c2"), helper.make_node("Add", ["x", "c1"], ["a1"]),
             helper.make_node("Add", ["x", "c2"], ["a2"]),  # the same as a1 once c2 is c1
             helper.make_node("RandomUniformLike", ["x"], ["r1"]), helper.make_node("RandomUniformLike", ["x"], ["r2"]),
             helper.make_node("Mul", ["a1", "a2"], ["m"]), helper.make_node("Add", ["r1", "r2"], ["r"]),
             helper.make_node("Add", ["x", "c2"], ["y"])]  # writes a graph output: kept
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("m", "r", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs))
    assert edge_quant.merge_duplicates(model) == 2
    kept = [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    assert ("Mul", ["a1", "a1"], ["m"]) in kept and ("Add", ["x", "c1"], ["y"]) in kept
    assert sum(op == "RandomUniformLike" for op, _, _ in kept) == 2


def test_int4_table_settings_share_one_quantization_of_the_matmuls(student, tmp_path):
    """int4_variants quantizes the MatMuls once and the embedding tables once per (axis, block):
    the variants' MatMulNBits weights are identical, their table scales are not; quantize_int4
    with the same table setting writes the same graph. A table block onnxruntime cannot take
    is named."""
    _, path, ids, mask = student
    variants = edge_quant.int4_variants(path, "rtn", 16, None, [(1, 16), (0, 64)])
    assert list(variants) == [(1, 16), (0, 64)]

    def parts(model):
        inits = {t.name: t for t in model.graph.initializer}
        get = lambda op, k: [onnx.numpy_helper.to_array(inits[n.input[k]]) for n in model.graph.node if n.op_type == op]
        return get("MatMulNBits", 1), get("GatherBlockQuantized", 2)

    (w1, s1), (w0, s0) = (parts(variants[t][0]) for t in ((1, 16), (0, 64)))
    assert len(w1) == _weights(path) and all(np.array_equal(a, b) for a, b in zip(w1, w0))
    assert [s.shape for s in s1] != [s.shape for s in s0]
    q, counts = edge_quant.quantize_int4(path, tmp_path / "one.onnx", "rtn", 16, table_axis=0, table_block=64)
    assert counts == variants[(0, 64)][1]
    edge_quant.save(variants[(0, 64)][0], tmp_path / "variant.onnx")
    assert q.read_bytes() == (tmp_path / "variant.onnx").read_bytes()
    with pytest.raises(edge_quant.QuantizeError, match="table block 48"):
        edge_quant.int4_variants(path, "rtn", 16, None, [(0, 48)])


def test_table_and_lstm_scales_are_stored_in_float16_and_read_back_exactly(student, tmp_path):
    """half_scales stores the 4-bit tables' (GatherBlockQuantized) and LSTM weights'
    (DequantizeLinear) scales as float16, each output cast back to float32: onnxruntime's
    lookup gives q * the float16 scale, rounded to float16, bit for bit. MatMulNBits keeps float32
    scales (they must be its activations' type); a scale float16 would move (beyond its range)
    stays float32."""
    import onnxruntime as ort
    _, path, ids, mask = student
    (model, counts), = edge_quant.int4_variants(path, "rtn", 16, None, [(1, 16)]).values()
    assert counts["half_scales"] == 2  # the token and the position tables
    inits = {t.name: t for t in model.graph.initializer}
    gathers = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert all(inits[n.input[2]].data_type == onnx.TensorProto.FLOAT16 for n in gathers)
    assert all(inits[n.input[2]].data_type == onnx.TensorProto.FLOAT
               for n in model.graph.node if n.op_type == "MatMulNBits")
    readers = {x: n for n in model.graph.node for x in n.input}
    for node in gathers:
        cast = readers[node.output[0]]
        assert cast.op_type == "Cast" and {a.name: a.i for a in cast.attribute}["to"] == onnx.TensorProto.FLOAT
        # the whole table looked up, against numpy's float16 product of the stored codes and scales
        rows = next(t.dims[0] for t in model.graph.initializer if t.name == node.input[0])
        graph = onnx.helper.make_graph(
            [node, cast], "table", [onnx.helper.make_tensor_value_info(node.input[1], onnx.TensorProto.INT64, None)],
            [onnx.helper.make_tensor_value_info(cast.output[0], onnx.TensorProto.FLOAT, None)],
            [inits[node.input[0]], inits[node.input[2]]])
        one = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
        got = ort.InferenceSession(one.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {node.input[1]: np.arange(rows, dtype=np.int64)})[0]
        codes = onnx.numpy_helper.to_array(inits[node.input[0]]).astype(np.int8)
        scale = onnx.numpy_helper.to_array(inits[node.input[2]])
        want = (codes.astype(np.float16) * np.repeat(scale, 16, axis=-1)[:, :codes.shape[1]]).astype(np.float32)
        assert np.array_equal(got, want)
    edge_quant.save(model, tmp_path / "half.onnx")
    ref, got = _ort(path, ids, mask), _ort(tmp_path / "half.onnx", ids, mask)
    assert np.abs(ref - got).max() < 0.5 * np.abs(ref).max()
    # A scale beyond float16's range is left float32, and its node uncast.
    import ml_dtypes
    codes = onnx.numpy_helper.from_array(np.zeros((4, 16), ml_dtypes.int4), "codes")
    scale = onnx.numpy_helper.from_array(np.full((4, 1), 1e6, np.float32), "scale")
    table = onnx.helper.make_node("GatherBlockQuantized", ["codes", "ids", "scale"], ["rows"], domain="com.microsoft",
                                  gather_axis=0, quantize_axis=1, block_size=16, bits=4)
    big = onnx.helper.make_model(onnx.helper.make_graph(
        [table], "big", [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, None)],
        [onnx.helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, None)], [codes, scale]))
    assert edge_quant.half_scales(big) == 0
    assert [n.op_type for n in big.graph.node] == ["GatherBlockQuantized"]
    scale = big.graph.initializer[1]
    assert scale.data_type == onnx.TensorProto.FLOAT


# -- MNN --------------------------------------------------------------------------------------

def test_mnn_runs_the_converted_graph_like_onnxruntime(student, tmp_path):
    _, path, ids, mask = student
    ref = _ort(path, ids, mask)
    got = fw.run_all(mnn.Runner(mnn.convert(path, tmp_path / "float.mnn"), NAMES), ids, mask)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    q = mnn.convert(path, tmp_path / "int8.mnn", weight_bits=8)
    assert q.stat().st_size < 0.6 * (tmp_path / "float.mnn").stat().st_size
    got8 = fw.run_all(mnn.Runner(q, NAMES), ids, mask)
    assert 0 < np.abs(got8 - ref).max() < 0.1 * np.abs(ref).max()


def test_mnn_runs_beside_tensorflow(student, tmp_path):
    """MNN aborts the interpreter when it loads into a process that holds TensorFlow: the
    converter and the runtime live in a worker process, so `tinyseek edge` can use both."""
    _, path, ids, mask = student
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    script = f"""
import numpy as np, tensorflow
from tinyseek.export import mnn
from tinyseek.distill.edge_frameworks import latency
from pathlib import Path
runner = mnn.Runner(mnn.convert(Path({str(path)!r}), Path({str(tmp_path / "m.mnn")!r})), {NAMES!r})
ids, mask = np.load({str(tmp_path / "ids.npy")!r}), np.load({str(tmp_path / "mask.npy")!r})
np.save({str(tmp_path / "got.npy")!r}, np.stack([runner(ids[n:n + 1], mask[n:n + 1]) for n in range(len(ids))]))
print(latency(runner, ids, mask, 3, 1))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'samples': 3" in done.stdout
    np.testing.assert_allclose(np.load(tmp_path / "got.npy"), _ort(path, ids, mask), atol=1e-4)


def test_mnn_names_the_operator_it_cannot_convert(student, tmp_path):
    _, path, _, _ = student
    q, _ = edge_quant.quantize_int4(path, tmp_path / "int4.onnx", "rtn", 16)
    with pytest.raises(mnn.MnnError, match="MatMulNBits"):
        mnn.convert(q, tmp_path / "int4.mnn")


# -- TVM --------------------------------------------------------------------------------------

def test_tvm_compiles_for_x86_and_aarch64_and_runs_like_onnxruntime(student, tmp_path):
    _, path, ids, mask = student
    static = edge_quant.fixed_shape(path, tmp_path / "static.onnx", ids.shape[1])
    got = fw.run_all(tvm.Runner(tvm.compile_x86(static)), ids, mask)
    np.testing.assert_allclose(got, _ort(path, ids, mask), atol=1e-4)
    arm = tvm.compile_aarch64(static, tmp_path / "model_aarch64.so")
    header = arm.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    # Run by the aarch64 TVM runtime (PyPI's aarch64 wheels, cached in build/) under qemu-aarch64.
    from tinyseek.pipeline import REPO_ROOT
    runtime = tvm.aarch64_runtime(REPO_ROOT / "build" / "tvm-aarch64")
    np.testing.assert_allclose(tvm.run_aarch64(arm, runtime, ids[:3], mask[:3], 3), got[:3], atol=1e-4)


def test_tvm_names_the_operators_its_frontend_lacks(student, tmp_path):
    _, path, ids, _ = student
    q, _ = edge_quant.quantize_int4(path, tmp_path / "int4.onnx", "rtn", 16)
    static = edge_quant.fixed_shape(q, tmp_path / "int4_static.onnx", ids.shape[1])
    with pytest.raises(tvm.TvmError, match="no converter for GatherBlockQuantized, MatMulNBits"):
        tvm.compile_x86(static)


# -- Core ML ----------------------------------------------------------------------------------

def test_coreml_converts_quantizes_and_says_where_it_runs(student, tmp_path):
    wrapper, _, ids, mask = student
    f = coreml.convert(wrapper, (ids[:1], mask[:1]), NAMES, tmp_path / "float.mlpackage")
    q = coreml.convert(wrapper, (ids[:1], mask[:1]), NAMES, tmp_path / "int8.mlpackage", "int8")
    spec_f, spec_q = coreml.inspect(f), coreml.inspect(q)
    assert spec_f["type"] == "mlProgram" and spec_f["outputs"] == ["logits"]
    assert spec_f["inputs"] == {"input_ids": [1, ids.shape[1]], "attention_mask": [1, ids.shape[1]]}
    assert not any(op.startswith("constexpr") for op in spec_f["ops"])
    assert any(op.startswith("constexpr") for op in spec_q["ops"])  # int8 weights, dequantized on load
    assert spec_q["bytes"] < spec_f["bytes"]
    runner = coreml.Runner(f, NAMES)
    if platform.system() == "Darwin":
        np.testing.assert_allclose(fw.run_all(runner, ids, mask), _ort(student[1], ids, mask), atol=1e-3)
    else:  # Core ML's predictions need the macOS framework: the wheel says so rather than guess
        assert not coreml.runnable()
        with pytest.raises(coreml.CoremlError, match="macOS"):
            runner(ids[:1], mask[:1])


# -- missing runtimes, the driver, the CLI ----------------------------------------------------

@pytest.mark.parametrize("module, names, error, pip", [
    (mnn, ["MNN", "_tools"], mnn.MnnError, "pip install MNN"),
    (tvm, ["tvm"], tvm.TvmError, "pip install apache-tvm"),
    (coreml, ["coremltools"], coreml.CoremlError, "pip install coremltools")])
def test_a_missing_runtime_names_its_pip_command(monkeypatch, tmp_path, module, names, error, pip):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    with pytest.raises(error, match=pip):
        if module is coreml:
            coreml.convert(None, (), [], tmp_path / "x.mlpackage")
        elif module is tvm:
            tvm.compile_x86(tmp_path / "x.onnx")
        else:
            mnn.convert(tmp_path / "x.onnx", tmp_path / "x.mnn")


def test_coreml_takes_a_block_every_weight_divides():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 96), torch.nn.Linear(96, 64), torch.nn.Linear(64, 3))
    assert fw.coreml_block(model, 128) == 32 and fw.coreml_block(model, 16) == 16
    assert fw.coreml_block(torch.nn.Linear(12, 2), 32) == 0  # 4 would be a scale per 4 weights: per channel


def test_the_smallest_setting_within_the_tolerance_is_kept():
    tried = [{"name": "gptq16", "val_accuracy": 0.742, "bytes": 350}, {"name": "gptq32", "val_accuracy": 0.740,
             "bytes": 308}, {"name": "rtn32", "val_accuracy": 0.741, "bytes": 308},
             {"name": "rtn128", "val_accuracy": 0.729, "bytes": 303}]
    assert fw.pick(tried, 0)["name"] == "gptq16"  # the most accurate
    assert fw.pick(tried, 1)["name"] == "rtn32"  # within 1 point: the smallest, then the more accurate
    assert fw.pick(tried, 1.3)["name"] == "rtn128"  # exactly at the edge counts
    with pytest.raises(ConfigError, match="edge.quant_tolerance"):
        load_config(overrides={"edge.quant_tolerance": -1})


def test_evaluate_scores_every_runtime_against_onnxruntime_float_and_keeps_going(tmp_path):
    split = lambda n: Split(y=np.arange(n) % 3, texts=[TEXTS[i % len(TEXTS)] for i in range(n)], x=None)
    dataset = Dataset(name="tiny", kind="text", labels=SPEC.labels, train=split(12), val=split(6), test=split(9))
    run = SimpleNamespace(dir=tmp_path, dataset=dataset)
    folder = tmp_path / "edge" / "tinybert"
    torch.manual_seed(1)
    model = TinyBert(SPEC).eval()
    save_tinybert(model, folder)
    ids, mask = encode(TEXTS[:2], SPEC)
    export_onnx(model, ids, mask, folder / "model.onnx")
    result = json.loads(fw.evaluate(run, "tinybert", ("onnxruntime", "mnn"), ("float", "int8"),
                                    latency_samples=3, progress=False).read_text())
    cells = {(c["runtime"], c["quant"]): c for c in result["cells"]}
    assert len(cells) == 4 and result["test_samples"] == 9
    assert cells["onnxruntime", "float"]["max_abs_diff"] == 0.0
    assert cells["mnn", "float"]["agreement"] == 1.0 and cells["mnn", "float"]["max_abs_diff"] < 1e-4
    for c in cells.values():
        assert "error" not in c and c["latency"]["median_ms"] > 0 and c["bytes"] > 0
    assert cells["onnxruntime", "int8"]["bytes"] < cells["onnxruntime", "float"]["bytes"]
    assert set(result["settings"]["int8"]) >= {"per_channel", "val_accuracy", "tried"}
    for q in ("float", "int8"):  # onnxruntime's files say what their bytes hold
        c = cells["onnxruntime", q]
        assert sum(c["breakdown"].values()) == c["bytes"]
    # bench/edge_frameworks.py's account of what keeps the int8 file from 4x: the parts' excesses
    # over a quarter of the float file's parts add up to the file's excess.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from edge_frameworks import _parts, size_text
    f, q = _parts(cells["onnxruntime", "float"]["breakdown"]), _parts(cells["onnxruntime", "int8"]["breakdown"])
    excess = cells["onnxruntime", "int8"]["bytes"] - result["float_onnx_bytes"] / 4
    assert sum(q[k] - f[k] / 4 for k in q) == pytest.approx(excess)
    assert "int8: weights" in size_text(result) and "against 4x" in size_text(result)


def test_the_cli_takes_runtimes_and_quantizations():
    args = make_parser().parse_args(["edge", "--student", "tinylstm", "--runtime", "mnn", "--runtime", "tvm",
                                     "--quantize", "int4"])
    assert args.runtime == ["mnn", "tvm"] and args.quantize == ["int4"]
    with pytest.raises(SystemExit):
        make_parser().parse_args(["edge", "--student", "tinybert", "--runtime", "tflite"])
