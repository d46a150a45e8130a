"""The quantizer: the numpy float student against torch, per-row weights, folding, the
int8 model against the float one through the oracle, cell formats, and every rejection."""
import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from torch import nn

from tinyseek.config import load as load_config
from tinyseek.data import Dataset, Split
from tinyseek.quant.float_model import FloatStudent, QuantError, run_lstm
from tinyseek.quant.model import QuantModel
from tinyseek.quant.quantize import (SaturationWarning, calibration_indices, choose_cell_frac_bits,
                                     compare_int8_float, quantize, quantize_run)
from tinyseek.quant.reference import QuantRangeError, infer_sequences, infer_tokens, quantize_inputs
from tinyseek.student.tokenizer import HashTokenizer

torch.set_num_threads(1)


def make_student(folder, *, kind="text", hidden=8, layers=1, embed_dim=6, vocab_size=50, max_len=12,
                 num_features=5, num_classes=4, seed=0, scale=0.4, set_tensors=None, drop=(), spec=None):
    """A random float student as distill writes it: student.safetensors + student.json."""
    rng = np.random.default_rng(seed)
    H, E = hidden, embed_dim
    t = {}
    if kind == "text":
        t["embed.weight"] = rng.normal(0, 1.0, (vocab_size, E))
    else:
        t["proj.weight"] = rng.normal(0, scale, (E, num_features))
        t["proj.bias"] = rng.normal(0, scale, E)
    for k in range(layers):
        t[f"lstm.weight_ih_l{k}"] = rng.uniform(-scale, scale, (4 * H, E if k == 0 else H))
        t[f"lstm.weight_hh_l{k}"] = rng.uniform(-scale, scale, (4 * H, H))
        t[f"lstm.bias_ih_l{k}"] = rng.uniform(-scale, scale, 4 * H)
        t[f"lstm.bias_hh_l{k}"] = rng.uniform(-scale, scale, 4 * H)
    t["head.weight"] = rng.normal(0, 1.0, (num_classes, H))
    t["head.bias"] = rng.normal(0, 0.2, num_classes)
    t = {k: v.astype(np.float32) for k, v in t.items()}
    t.update(set_tensors or {})
    for k in drop:
        del t[k]
    folder.mkdir(parents=True, exist_ok=True)
    save_file(t, str(folder / "student.safetensors"))
    doc = {"kind": kind, "labels": [f"c{k}" for k in range(num_classes)], "hidden": H, "layers": layers,
           "embed_dim": E, "vocab_size": vocab_size if kind == "text" else None, "max_len": max_len,
           "num_features": num_features if kind == "sequence" else None}
    doc.update(spec or {})
    (folder / "student.json").write_text(json.dumps(doc))
    return folder


def token_lists(rng, n, vocab_size=50, max_len=12):
    return [[int(v) for v in rng.integers(1, vocab_size, size=int(L))] for L in rng.integers(0, max_len + 1, n)]


def torch_logits(folder, inputs):
    """The reference forward: torch nn.Embedding / nn.Linear, nn.LSTM and the head, float64,
    one sample at a time at its own length."""
    from safetensors.torch import load_file
    spec = json.loads((folder / "student.json").read_text())
    state = load_file(str(folder / "student.safetensors"))
    lstm = nn.LSTM(spec["embed_dim"], spec["hidden"], num_layers=spec["layers"], batch_first=True).double()
    lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
    out = []
    with torch.no_grad():
        for s in inputs:
            if spec["kind"] == "text":
                x = state["embed.weight"].double()[torch.as_tensor(s, dtype=torch.long)]
            else:
                x = torch.as_tensor(np.asarray(s), dtype=torch.float64) @ state["proj.weight"].double().T \
                    + state["proj.bias"].double()
            h = lstm(x[None])[0][0, -1] if len(s) else torch.zeros(spec["hidden"], dtype=torch.float64)
            out.append(h @ state["head.weight"].double().T + state["head.bias"].double())
    return torch.stack(out).numpy()


# -- the float student ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["text", "sequence"])
@pytest.mark.parametrize("layers", [1, 2])
def test_float_student_matches_torch_lstm(tmp_path, kind, layers):
    folder = make_student(tmp_path / "s", kind=kind, layers=layers, seed=layers)
    rng = np.random.default_rng(1)
    if kind == "text":
        inputs = token_lists(rng, 20) + [[]]
    else:  # different lengths, including an empty sequence
        inputs = [rng.normal(0, 1, (int(T), 5)).astype(np.float32) for T in rng.integers(0, 9, 20)] + \
                 [np.zeros((0, 5), np.float32)]
    got = FloatStudent.from_folder(folder).logits(inputs)
    np.testing.assert_allclose(got, torch_logits(folder, inputs), rtol=0, atol=1e-10)


def test_float_student_matches_the_tinylstm_it_reads(tmp_path):
    from tinyseek.student import StudentSpec, TinyLSTM, encode_texts, save_student
    torch.manual_seed(0)
    spec = StudentSpec(kind="text", labels=["a", "b", "c"], hidden=10, layers=2, embed_dim=6, vocab_size=40,
                       max_len=8)
    model = TinyLSTM(spec, teacher_dim=12).eval()  # feature_proj is training-only, never read
    save_student(model, spec, tmp_path / "s")
    texts = ["turn on the light", "", "関燈", "set 21 degrees in the kitchen please now"]
    ids, lengths = encode_texts(texts, spec)
    with torch.no_grad():
        want = model(ids, lengths).numpy()
    fs = FloatStudent.from_folder(tmp_path / "s")
    np.testing.assert_allclose(fs.predict(texts), want, atol=1e-5)
    np.testing.assert_allclose(fs.predict(Split(y=np.zeros(4, np.int64), texts=texts, x=None)), want, atol=1e-5)


def test_calibration_records_ranges_over_real_steps_only(tmp_path):
    fs = FloatStudent.from_folder(make_student(tmp_path / "s", kind="sequence", layers=2))
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (6, 7, 5))
    padded = [x[0], x[1, :3]]  # a list of different lengths: padding must not count
    stats = fs.calibrate(padded)
    assert stats.samples == 2 and stats.max_steps == 7
    assert stats.input_max_abs == pytest.approx(max(np.abs(x[0]).max(), np.abs(x[1, :3]).max()))
    assert stats.logits_max_abs == pytest.approx(np.abs(fs.logits(padded)).max())
    # Cell states and gate pre-activations recomputed step by step, in plain numpy.
    layers = fs.layers()
    for k in range(2):
        cells, gates = [], []
        for s in padded:
            h = [np.zeros(8), np.zeros(8)]
            c = [np.zeros(8), np.zeros(8)]
            for xt in fs.embed(s):
                inp = xt
                for j, L in enumerate(layers):
                    z = L.w_x @ inp + L.w_h @ h[j] + L.b
                    sg = 1 / (1 + np.exp(-z))
                    c[j] = sg[8:16] * c[j] + sg[:8] * np.tanh(z[16:24])
                    h[j] = sg[24:] * np.tanh(c[j])
                    inp = h[j]
                    if j == k:
                        cells.append(np.abs(c[j]).max())
                        gates.append(np.abs(z).max())
        assert stats.cell_max_abs[k] == pytest.approx(max(cells))
        assert stats.gate_max_abs[k] == pytest.approx(max(gates))
        assert stats.gate_count[k] == 4 * 8 * 10 and stats.gate_saturated[k] == 0.0


def test_folding_the_input_projection_is_exact_in_float(tmp_path):
    fs = FloatStudent.from_folder(make_student(tmp_path / "s", kind="sequence", layers=2, scale=0.8))
    x = np.random.default_rng(3).normal(0, 2, (30, 9, 5))
    lengths = np.full(30, 9)
    folded = fs.head_logits(run_lstm(fs.quant_layers(), x, lengths))
    np.testing.assert_allclose(folded, fs.logits(x), rtol=0, atol=1e-12)
    w_ih, w_p = fs.tensors["lstm.weight_ih_l0"], fs.tensors["proj.weight"]
    np.testing.assert_allclose(fs.quant_layers()[0].w_x, w_ih @ w_p, rtol=1e-12)
    assert fs.quant_layers()[0].w_x.shape == (32, 5)


# -- quantization --------------------------------------------------------------------------

def test_quantize_text_model_validates_saves_and_loads(tmp_path):
    folder = make_student(tmp_path / "s", kind="text", layers=2)
    calib = token_lists(np.random.default_rng(4), 40)
    qm = quantize(folder, calib, name="demo", meta={"note": "unit"})
    qm.validate()
    assert (qm.kind, qm.vocab_size, qm.max_len, qm.labels) == ("text", 50, 12, ["c0", "c1", "c2", "c3"])
    emb = FloatStudent.from_folder(folder).tensors["embed.weight"]
    assert qm.input_scale == pytest.approx(np.abs(emb).max() / 127)
    assert np.abs(qm.embedding.astype(int)).max() == 127
    back = QuantModel.load(qm.save(tmp_path / "int8"))
    assert back.model_hash() == qm.model_hash()
    for k, v in qm.arrays().items():
        np.testing.assert_array_equal(back.arrays()[k], v)
    files = (folder / "student.json").read_bytes(), (folder / "student.safetensors").read_bytes()
    h = hashlib.sha256()
    for name, data in zip(("student.json", "student.safetensors"), files):
        h.update(name.encode())
        h.update(data)
    assert back.meta["source_hash"] == h.hexdigest()
    assert back.meta["note"] == "unit"
    cal = back.meta["calibration"]
    assert cal["samples"] == 40 and len(cal["ranges"]["cell_max_abs"]) == 2
    assert len(cal["gate_saturation"]) == 2 and cal["max_steps"] == max(len(s) for s in calib)
    assert cal["cell_frac_bits"] == [L.cell_frac_bits for L in back.layers]


def test_weights_are_per_row_with_127_at_each_rows_maximum(tmp_path):
    zero_row = np.random.default_rng(5).uniform(-0.4, 0.4, (32, 6)).astype(np.float32)
    zero_row[3] = 0.0
    zero_row[17] *= 5  # one large row must not coarsen the others
    folder = make_student(tmp_path / "s", kind="text", set_tensors={"lstm.weight_ih_l0": zero_row})
    qm = quantize(folder, token_lists(np.random.default_rng(6), 10), name="m")
    fs = FloatStudent.from_folder(folder)
    for wq, w in ((qm.layers[0].w_x, fs.tensors["lstm.weight_ih_l0"]), (qm.layers[0].w_h, fs.tensors["lstm.weight_hh_l0"]),
                  (qm.head.w, fs.tensors["head.weight"])):
        amax = np.abs(wq.astype(int)).max(axis=1)
        nonzero = np.abs(w).max(axis=1) > 0
        assert np.all(amax[nonzero] == 127) and np.all(amax[~nonzero] == 0)
        s = np.where(nonzero, np.abs(w).max(axis=1) / 127, 1.0)
        assert np.all(np.abs(wq * s[:, None] - w) <= s[:, None] / 2 + 1e-12)
    # The all-zero row keeps scale 1.0: its multiplier encodes s_x * 4096 exactly.
    L = qm.layers[0]
    assert L.mx[3] * 2.0 ** -L.nx[3] == pytest.approx(qm.input_scale * 4096, rel=1e-9)


def test_sequence_model_stores_the_folded_layer_and_calibrated_scales(tmp_path):
    folder = make_student(tmp_path / "s", kind="sequence", layers=1, max_len=None)
    x = np.random.default_rng(7).normal(0, 1.5, (25, 9, 5)).astype(np.float32)
    qm = quantize(folder, x, name="seq")
    fs = FloatStudent.from_folder(folder)
    assert qm.num_features == 5 and qm.layers[0].input_size == 5 and qm.max_len == 9
    assert qm.input_scale == pytest.approx(np.abs(x).max() / 127)
    L0 = fs.quant_layers()[0]
    s_wx = np.abs(L0.w_x).max(axis=1) / 127
    np.testing.assert_array_equal(qm.layers[0].w_x, np.round(L0.w_x / s_wx[:, None]).astype(np.int8))
    np.testing.assert_array_equal(qm.layers[0].bias, np.round(L0.b * 4096).astype(np.int32))
    r = qm.layers[0].mx * 2.0 ** -qm.layers[0].nx.astype(float)
    np.testing.assert_allclose(r, s_wx * qm.input_scale * 4096, rtol=1e-9)
    assert qm.output_scale == pytest.approx(np.abs(fs.logits(x)).max() / 32000)
    s_wo = np.abs(fs.tensors["head.weight"]).max(axis=1) / 127
    np.testing.assert_allclose(qm.head.m * 2.0 ** -qm.head.n.astype(float), s_wo / 128 / qm.output_scale, rtol=1e-9)
    np.testing.assert_array_equal(qm.head.bias, np.round(fs.tensors["head.bias"] / (s_wo / 128)).astype(np.int32))


@pytest.mark.parametrize("kind", ["text", "sequence"])
def test_int8_logits_follow_the_float_logits(tmp_path, kind):
    folder = make_student(tmp_path / "s", kind=kind, layers=2, hidden=16, embed_dim=8, seed=11, scale=0.5)
    rng = np.random.default_rng(12)
    fs = FloatStudent.from_folder(folder)
    if kind == "text":
        calib, test = token_lists(rng, 200), token_lists(rng, 200)
        qm = quantize(folder, calib, name="m")
        int8 = infer_tokens(qm, test)
    else:
        calib, test = (rng.normal(0, 1, (200, 10, 5)).astype(np.float32) for _ in range(2))
        qm = quantize(folder, calib, name="m")
        int8 = infer_sequences(qm, quantize_inputs(qm, test))
    want = fs.logits(test)
    err = np.abs(int8 * qm.output_scale - want)
    span = np.abs(want).max()
    assert err.max() < 0.06 * span, err.max() / span
    assert err.mean() < 0.015 * span, err.mean() / span
    assert np.mean(int8.argmax(1) == want.argmax(1)) >= 0.9


def test_compare_reports_accuracies_and_agreement(tmp_path):
    folder = make_student(tmp_path / "s", kind="sequence", hidden=12, seed=13)
    rng = np.random.default_rng(14)
    x = rng.normal(0, 1, (80, 8, 5)).astype(np.float32)
    qm = quantize(folder, x, name="m")
    float_pred = FloatStudent.from_folder(folder).logits(x).argmax(1)
    res = compare_int8_float(folder, qm, x, float_pred)
    int8_pred = infer_sequences(qm, quantize_inputs(qm, x)).argmax(1)
    assert res["samples"] == 80 and res["float_accuracy"] == 1.0
    assert res["int8_accuracy"] == res["agreement"] == pytest.approx(np.mean(int8_pred == float_pred))
    assert res["agreement"] >= 0.9 and 0 < res["max_abs_logit_error"] < 0.1 * np.abs(x).max()
    wrong = (float_pred + 1) % 4
    assert compare_int8_float(folder, qm, list(x), wrong)["float_accuracy"] == 0.0


def test_compare_tokenizes_texts(tmp_path):
    folder = make_student(tmp_path / "s", kind="text", vocab_size=64, max_len=6)
    texts = ["turn on the lamp", "open the door", "打开灯", ""]
    tok = HashTokenizer(64, 6)
    qm = quantize(folder, [tok.encode(t) for t in texts], name="m")
    a = compare_int8_float(folder, qm, texts, [0, 1, 2, 3])
    b = compare_int8_float(folder, qm, [tok.encode(t) for t in texts], [0, 1, 2, 3])
    assert a == b and a["samples"] == 4


# -- the cell-state format -------------------------------------------------------------------

def _growing_cell(folder, steps_bias=7.5):
    """A 1-layer student whose i, f and g gates sit near 1: c grows by about 1 per step."""
    H = 4
    w = np.zeros((4 * H, 6), np.float32)
    b = np.zeros(4 * H, np.float32)
    b[: 3 * H] = steps_bias
    return make_student(folder, kind="text", hidden=H, set_tensors={
        "lstm.weight_ih_l0": w, "lstm.weight_hh_l0": np.zeros((4 * H, H), np.float32),
        "lstm.bias_ih_l0": b, "lstm.bias_hh_l0": np.zeros(4 * H, np.float32)})


def test_cell_frac_bits_shrinks_as_the_cell_state_grows(tmp_path):
    folder = _growing_cell(tmp_path / "s")
    cfs = []
    for steps in (2, 5, 20, 100):
        calib = [[1] * steps]
        cell = FloatStudent.from_folder(folder).calibrate(calib).cell_max_abs[0]
        qm = quantize(folder, calib, name="m")
        cf = qm.layers[0].cell_frac_bits
        assert cell * 1.1 < 2 ** (15 - cf) and (cf == 12 or cell * 1.1 >= 2 ** (14 - cf))
        cfs.append(cf)
    assert cfs == sorted(cfs, reverse=True) and cfs[0] == 12 and cfs[-1] < 9
    # A random small model keeps the finest format.
    assert quantize(make_student(tmp_path / "r"), [[1, 2, 3]], name="m").layers[0].cell_frac_bits == 12


def test_choose_cell_frac_bits_bounds():
    assert choose_cell_frac_bits(0.0, 0) == 12
    assert choose_cell_frac_bits(7.27, 0) == 12 and choose_cell_frac_bits(7.28, 0) == 11
    assert choose_cell_frac_bits(232.7, 1) == 7
    with pytest.raises(QuantRangeError, match=r"lstm1: .*cell state.*\+-256.*weight decay"):
        choose_cell_frac_bits(232.8, 1)


def test_a_cell_state_beyond_the_widest_format_is_an_error(tmp_path):
    folder = _growing_cell(tmp_path / "s")
    with pytest.raises(QuantRangeError, match=r"lstm0: .*cell state reaches .*retrain"):
        quantize(folder, [[1] * 300], name="m")


def test_saturating_gates_warn(tmp_path):
    folder = _growing_cell(tmp_path / "s", steps_bias=9.0)
    with pytest.warns(SaturationWarning, match=r"lstm0: 75.0% of the gate pre-activations"):
        quantize(folder, [[1] * 4], name="m")


# -- the stage -----------------------------------------------------------------------------

def test_calibration_indices_spread_over_the_split():
    np.testing.assert_array_equal(calibration_indices(10, 4), [0, 2, 5, 7])
    np.testing.assert_array_equal(calibration_indices(3, 8), [0, 1, 2])


@pytest.mark.parametrize("kind", ["text", "sequence"])
def test_quantize_run_reads_the_run_folder_and_saves_int8(tmp_path, kind):
    run_dir = tmp_path / "run"
    make_student(run_dir / "student", kind=kind, vocab_size=64, max_len=8)
    rng = np.random.default_rng(15)
    n = 30
    words = ["light", "on", "off", "door", "open", "music", "灯", "开"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 6)))) for _ in range(n)] if kind == "text" else None
    x = rng.normal(0, 1, (n, 6, 5)).astype(np.float32) if kind == "sequence" else None
    split = Split(y=np.zeros(n, np.int64), texts=texts, x=x)
    ds = Dataset(name="toy", kind=kind, labels=["c0", "c1", "c2", "c3"], train=split, val=split, test=split)
    cfg = load_config(overrides={"run": "toyrun", "quant.calibration_samples": 10})
    qm = quantize_run(cfg, run_dir, ds)
    assert qm.name == "toyrun" and qm.meta["calibration"]["samples"] == 10 and qm.meta["task"] == "toy"
    assert QuantModel.load(run_dir / "int8").model_hash() == qm.model_hash()
    idx = calibration_indices(n, 10)
    calib = [HashTokenizer(64, 8).encode(texts[i]) for i in idx] if kind == "text" else x[idx]
    assert quantize(run_dir / "student", calib, name="toyrun", meta={"task": "toy"}).model_hash() == qm.model_hash()

    other = Dataset(name="toy", kind="sequence" if kind == "text" else "text", labels=ds.labels,
                    train=split, val=split, test=split)
    with pytest.raises(QuantError, match="re-run `tinyseek distill`"):
        quantize_run(cfg, run_dir, other)
    with pytest.raises(QuantError, match="calibration_samples must be at least 1"):
        quantize_run(load_config(overrides={"quant.calibration_samples": 0}), run_dir, ds)


# -- rejections ----------------------------------------------------------------------------

def _text(tmp_path, **kw):
    return make_student(tmp_path / "s", kind="text", **kw)


@pytest.mark.parametrize("build, pattern", [
    (lambda p: _text(p, set_tensors={"lstm.weight_hh_l0": np.full((32, 8), np.nan, np.float32)}),
     r"'lstm.weight_hh_l0' holds 256 NaN/inf values.*distill"),
    (lambda p: _text(p, set_tensors={"head.bias": np.array([0, np.inf, 0, 0], np.float32)}),
     r"'head.bias' holds 1 NaN/inf"),
    (lambda p: _text(p, set_tensors={"head.weight": np.zeros((4, 9), np.float32)}),
     r"'head.weight' has shape \[4, 9\], expected \[4, 8\]"),
    (lambda p: _text(p, set_tensors={"embed.weight": np.zeros((50, 6), np.int32)}),
     r"'embed.weight' has dtype int32"),
    (lambda p: _text(p, drop=["lstm.bias_hh_l0"]), r"missing tensors \['lstm.bias_hh_l0'\]"),
    (lambda p: _text(p, set_tensors={"lstm.weight_ih_l0_reverse": np.zeros((32, 6), np.float32)}),
     r"lstm.weight_ih_l0_reverse.*bidirectional"),
    (lambda p: _text(p, set_tensors={"lstm.weight_hr_l0": np.zeros((4, 8), np.float32)}), r"proj_size"),
    (lambda p: _text(p, layers=2, spec={"layers": 1}), r"lstm.weight_hh_l1.*beyond student.json's layers"),
    (lambda p: _text(p, layers=3), r"3 LSTM layers; the int8 spec runs 1 or 2"),
    (lambda p: _text(p, set_tensors={"proj.weight": np.zeros((6, 5), np.float32)}),
     r"proj.weight.*does not match student.json's kind"),
    (lambda p: _text(p, spec={"bidirectional": True}), r"unknown keys \['bidirectional'\]"),
    (lambda p: _text(p, spec={"kind": "image"}), r"kind must be 'text' or 'sequence'"),
    (lambda p: _text(p, spec={"labels": ["only"]}), r"labels must be a list of at least 2"),
    (lambda p: _text(p, spec={"vocab_size": None}), r"text student needs vocab_size"),
])
def test_bad_students_are_rejected_by_name(tmp_path, build, pattern):
    folder = build(tmp_path)
    with pytest.raises(QuantError, match=pattern):
        quantize(folder, [[1, 2]], name="m")


def test_training_only_tensors_are_ignored(tmp_path):
    folder = _text(tmp_path, set_tensors={"feature_proj.weight": np.ones((3, 8), np.float32)})
    assert quantize(folder, [[1, 2]], name="m").num_classes == 4


def test_missing_or_corrupt_files(tmp_path):
    with pytest.raises(QuantError, match=r"student.json is missing: run `tinyseek distill`"):
        FloatStudent.from_folder(tmp_path)
    folder = _text(tmp_path)
    (folder / "student.json").write_text("{not json")
    with pytest.raises(QuantError, match="not valid JSON"):
        FloatStudent.from_folder(folder)
    folder = _text(tmp_path)
    (folder / "student.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(QuantError, match="not a readable safetensors"):
        FloatStudent.from_folder(folder)


@pytest.mark.parametrize("kind, calib, pattern", [
    ("text", [], r"at least one sample"),
    ("text", [[1, 50]], r"sample 0: token id 50 at position 1 is outside the vocabulary 0..49"),
    ("text", [[1, -1]], r"token id -1"),
    ("text", ["turn on"], r"sample 0 is a string.*HashTokenizer"),
    ("text", np.zeros((2, 3, 5), np.float32), r"takes token-id lists, got a float array"),
    ("text", [[1.5]], r"token ids must be integers"),
    ("sequence", np.zeros((2, 3, 4), np.float32), r"float features \[N, T, 5\], got shape \(2, 3, 4\)"),
    ("sequence", [np.zeros((3, 5)), np.zeros(5)], r"sample 1: .*\[T, 5\]"),
    ("sequence", np.array([[[0, 1, np.nan, 0, 0]]], np.float32), r"sample 0, step 0, feature 2 is nan.*impute"),
    ("sequence", np.zeros((4, 3, 5), np.float32), r"all zeros or empty.*real training samples"),
    ("sequence", np.zeros((4, 0, 5), np.float32), r"all zeros or empty"),
])
def test_bad_calibration_inputs_are_rejected(tmp_path, kind, calib, pattern):
    folder = make_student(tmp_path / "s", kind=kind)
    with pytest.raises(QuantError, match=pattern):
        quantize(folder, calib, name="m")


@pytest.mark.filterwarnings("ignore::tinyseek.quant.quantize.SaturationWarning")  # the huge bias saturates
def test_ranges_the_integer_spec_cannot_hold(tmp_path):
    # A tiny input range makes lstm0's multiplier s_w * s_x * 4096 need a shift beyond 62.
    folder = make_student(tmp_path / "a", kind="sequence")
    with pytest.raises(QuantRangeError, match=r"lstm0.mx\[\d+\].*outside 1..62.*input scale s_x"):
        quantize(folder, np.full((2, 3, 5), 1e-14, np.float32), name="m")
    # A gate bias beyond int32 in Q3.12.
    b = np.zeros(32, np.float32)
    b[5] = 1e6
    with pytest.raises(QuantRangeError, match=r"lstm0.bias\[5\] = .* int32.*weight decay"):
        quantize(_text(tmp_path / "b", set_tensors={"lstm.bias_ih_l0": b}), [[1]], name="m")
    # A head bias huge next to its tiny weight row.
    with pytest.raises(QuantRangeError, match=r"head.bias\[\d\] = .* int32.*weight decay"):
        quantize(_text(tmp_path / "c", set_tensors={"head.weight": np.full((4, 8), 1e-6, np.float32),
                                                    "head.bias": np.full(4, 1e3, np.float32)}), [[1]], name="m")
    with pytest.raises(QuantError, match="'embed.weight' is all zeros"):
        quantize(_text(tmp_path / "d", set_tensors={"embed.weight": np.zeros((50, 6), np.float32)}), [[1]], name="m")
    with pytest.raises(QuantError, match="JSON-serialisable"):
        quantize(_text(tmp_path / "e"), [[1]], name="m", meta={"bad": object()})


def test_an_all_zero_head_still_quantizes(tmp_path):
    folder = _text(tmp_path, set_tensors={"head.weight": np.zeros((4, 8), np.float32),
                                          "head.bias": np.zeros(4, np.float32)})
    qm = quantize(folder, [[1, 2, 3]], name="m")
    assert qm.output_scale == pytest.approx(1 / 32000)
    assert np.all(infer_tokens(qm, [[1, 2, 3], []]) == 0)


def test_subwords_float_torch_int8_agree_and_round_trip(tmp_path):
    """student.subwords: torch, the numpy float student and the int8 oracle all average a
    step's id group; the setting survives student.json and the int8 model, and is absent
    from both (and from the model hash) when 0."""
    from tinyseek.student import StudentSpec, TinyLSTM, encode_texts, save_student
    torch.manual_seed(1)
    spec = StudentSpec(kind="text", labels=["a", "b", "c"], hidden=12, layers=1, embed_dim=8, vocab_size=64,
                       max_len=10, subwords=4)
    model = TinyLSTM(spec).eval()
    save_student(model, spec, tmp_path / "s")
    assert json.loads((tmp_path / "s" / "student.json").read_text())["subwords"] == 4
    texts = ["turn on the lihgts", "", "打开客厅的灯", "set 21 degrees please", "xyzzy"] * 8
    ids, lengths = encode_texts(texts, spec)
    assert ids.shape == (len(texts), 10, 5)
    with torch.no_grad():
        want = model(ids, lengths).numpy()
    fs = FloatStudent.from_folder(tmp_path / "s")
    assert fs.subwords == 4
    np.testing.assert_allclose(fs.predict(texts), want, atol=1e-5)
    # Streaming one group at a time gives the batch's logits.
    model.reset_state()
    for group in HashTokenizer(64, 10, 4).encode_steps(texts[0]):
        model.step(torch.tensor(group))
    np.testing.assert_allclose(model.logits().numpy()[0], want[0], atol=1e-5)

    qm = quantize(tmp_path / "s", fs.tokenize(texts), name="m")
    qm.save(tmp_path / "q")
    back = QuantModel.load(tmp_path / "q")
    assert back.subwords == 4 and back.model_hash() == qm.model_hash()
    int8 = infer_tokens(back, fs.tokenize(texts))
    assert np.mean(int8.argmax(1) == want.argmax(1)) >= 0.8
    # Whole-word ids alone are not the model's input: the groups change the logits.
    assert not np.array_equal(int8, infer_tokens(back, [HashTokenizer(64, 10).encode(t) for t in texts]))
    qm.subwords = 0
    assert "subwords" not in json.dumps(qm.header()) and qm.model_hash() != back.model_hash()
    spec.subwords = 0
    assert "subwords" not in spec.to_json()
