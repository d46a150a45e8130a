"""TinyLSTM: shapes, the exported state-dict contract, streaming == batched, files and errors."""
import json
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tinyseek.config import Config
from tinyseek.student import (HashTokenizer, StudentError, StudentSpec, TinyLSTM, encode_texts, expected_shapes,
                              export_params, load_student, save_student, split_inputs)

LABELS = ["on", "off", "up", "down"]


def text_spec(layers=1, **kw):
    return StudentSpec(**{"kind": "text", "labels": LABELS, "hidden": 10, "layers": layers, "embed_dim": 6,
                          "vocab_size": 50, "max_len": 7, **kw})


def seq_spec(layers=1, **kw):
    return StudentSpec(**{"kind": "sequence", "labels": LABELS, "hidden": 10, "layers": layers, "embed_dim": 6,
                          "max_len": 9, "num_features": 3, **kw})


def model_for(spec, seed=0, teacher_dim=None):
    torch.manual_seed(seed)
    m = TinyLSTM(spec, teacher_dim=teacher_dim)
    with torch.no_grad():  # non-zero biases so the zero state's logits are not trivially 0
        m.head.bias.normal_()
    return m.eval()


def text_batch(spec, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, spec.max_len + 1, (n,), generator=g)
    lengths[0], lengths[1] = 0, spec.max_len
    ids = torch.randint(1, spec.vocab_size, (n, spec.max_len), generator=g)
    ids[torch.arange(spec.max_len)[None, :] >= lengths[:, None]] = 0
    return ids, lengths


def test_shapes_text_and_sequence():
    ts, ss = text_spec(), seq_spec(layers=2)
    ids, lengths = text_batch(ts)
    assert model_for(ts)(ids, lengths).shape == (6, 4)
    assert model_for(ts).encode(ids, lengths).shape == (6, 10)
    x = torch.randn(5, 9, 3)
    assert model_for(ss)(x).shape == (5, 4)
    assert model_for(ts)(ids[:0], lengths[:0]).shape == (0, 4)


def test_state_dict_keys_are_the_documented_contract():
    # docs/architecture.md, "Student state dict keys"
    lstm = lambda k: [f"lstm.weight_ih_l{k}", f"lstm.weight_hh_l{k}", f"lstm.bias_ih_l{k}", f"lstm.bias_hh_l{k}"]
    text_keys = {"embed.weight", *lstm(0), "head.weight", "head.bias"}
    seq_keys = {"proj.weight", "proj.bias", *lstm(0), *lstm(1), "head.weight", "head.bias"}
    for spec, keys in ((text_spec(), text_keys), (seq_spec(layers=2), seq_keys)):
        m = model_for(spec, teacher_dim=5)
        sd = m.state_dict()
        assert set(sd) == keys | {"feature_proj.weight", "feature_proj.bias"}
        assert set(expected_shapes(spec)) == keys
        for name, shape in expected_shapes(spec).items():
            assert tuple(sd[name].shape) == shape, name
    shapes = expected_shapes(seq_spec(layers=2))
    assert shapes["proj.weight"] == (6, 3) and shapes["lstm.weight_ih_l1"] == (40, 10)
    assert shapes["lstm.weight_ih_l0"] == (40, 6) and shapes["head.weight"] == (4, 10)


def test_export_params_excludes_feature_proj():
    spec = text_spec()
    n = 50 * 6 + 4 * 10 * (6 + 10) + 2 * 40 + 4 * 10 + 4
    assert export_params(model_for(spec)) == n
    assert export_params(model_for(spec, teacher_dim=32)) == n


def test_default_student_fits_the_budget():
    s = Config().student
    spec = StudentSpec("text", [f"c{i}" for i in range(15)], s.hidden, s.layers, s.embed_dim, s.vocab_size, s.max_len)
    m = TinyLSTM(spec)
    assert export_params(m) <= 500_000
    int8_weight_bytes = sum(v.numel() for k, v in m.state_dict().items() if k.endswith("weight") or "weight_" in k)
    assert int8_weight_bytes <= 64 * 1024


@pytest.mark.parametrize("layers", [1, 2])
def test_streaming_equals_batched_text(layers):
    spec = text_spec(layers)
    m = model_for(spec)
    ids, lengths = text_batch(spec, n=8)
    batched = m(ids, lengths).detach()
    for i in range(len(ids)):
        m.reset_state()
        for t in range(int(lengths[i])):
            m.step(int(ids[i, t]))
        torch.testing.assert_close(m.logits()[0], batched[i], atol=1e-5, rtol=1e-5)
    # Several streams at once, stepped in lockstep over equal lengths.
    m.reset_state(3)
    for t in range(spec.max_len):
        m.step(ids[1:4, t])
    full = m(ids[1:4], torch.full((3,), spec.max_len)).detach()
    torch.testing.assert_close(m.logits(), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_streaming_equals_batched_sequence(layers):
    spec = seq_spec(layers)
    m = model_for(spec)
    x = torch.randn(4, 9, 3, generator=torch.Generator().manual_seed(2))
    batched = m(x).detach()
    for i in range(len(x)):
        m.reset_state()
        for t in range(x.shape[1]):
            m.step(x[i, t])
        torch.testing.assert_close(m.logits()[0], batched[i], atol=1e-5, rtol=1e-5)
    # logits() does not change the state: reading twice gives the same answer.
    torch.testing.assert_close(m.logits(), m.logits())


def test_step_checks_the_stream_count():
    m = model_for(text_spec())
    m.reset_state(2)
    with pytest.raises(StudentError, match=r"reset_state\(3\)"):
        m.step(torch.tensor([1, 2, 3]))


def test_empty_sequences_give_the_head_on_the_zero_state():
    spec = text_spec(layers=2)
    m = model_for(spec)
    ids, lengths = encode_texts(["", "!!! ... ???", "turn on"], spec)
    assert lengths.tolist()[:2] == [0, 0] and lengths[2] == 2
    out = m(ids, lengths).detach()
    torch.testing.assert_close(out[0], m.head.bias.detach())
    torch.testing.assert_close(out[1], m.head.bias.detach())
    assert not torch.allclose(out[2], m.head.bias.detach())
    # A batch of only empty inputs, and the streaming API without any step.
    torch.testing.assert_close(m(ids[:2], lengths[:2]).detach(), m.head.bias.detach().expand(2, -1))
    m.reset_state()
    torch.testing.assert_close(m.logits()[0], m.head.bias.detach())


def test_cell_states_agree_with_encode():
    spec = text_spec(layers=2)
    m = model_for(spec)
    ids, lengths = text_batch(spec, n=7)
    last, cells = m.cell_states(ids, lengths)
    torch.testing.assert_close(last, m.encode(ids, lengths), atol=1e-6, rtol=1e-6)
    assert cells.shape == (7, int(lengths.max()), 2, 10)
    beyond = torch.arange(cells.shape[1])[None, :] >= lengths[:, None]
    assert bool((cells[beyond] == 0).all()) and bool((cells[~beyond].abs() > 0).any())


def test_encode_texts_uses_the_student_tokenizer():
    spec = text_spec(max_len=4)
    texts = ["Turn ON the lights now please", "x", "打开灯"]
    ids, lengths = encode_texts(texts, spec)
    tok = HashTokenizer(spec.vocab_size, spec.max_len)
    assert ids.shape == (3, 4) and ids.dtype == torch.long
    for i, t in enumerate(texts):
        row = tok.encode(t)
        assert lengths[i] == len(row) <= 4
        assert ids[i, : len(row)].tolist() == row and ids[i, len(row):].eq(0).all()


def test_split_inputs():
    ts, ss = text_spec(), seq_spec()
    x, lengths = split_inputs(SimpleNamespace(texts=["a b", ""], x=None), ts)
    assert lengths.tolist() == [2, 0]
    x, lengths = split_inputs(SimpleNamespace(texts=None, x=np.zeros((2, 5, 3), np.float32)), ss)
    assert x.shape == (2, 5, 3) and lengths.tolist() == [5, 5]
    with pytest.raises(StudentError, match="texts"):
        split_inputs(SimpleNamespace(texts=None, x=None), ts)
    with pytest.raises(StudentError, match=r"\[N, T, 3\], found \(2, 5, 4\)"):
        split_inputs(SimpleNamespace(texts=None, x=np.zeros((2, 5, 4), np.float32)), ss)


def test_spec_json_round_trip_and_validation():
    for spec in (text_spec(), seq_spec(layers=2)):
        assert StudentSpec.from_json(spec.to_json()) == spec
        assert set(json.loads(spec.to_json())) == {"kind", "labels", "hidden", "layers", "embed_dim", "vocab_size",
                                                   "max_len", "num_features"}
    with pytest.raises(StudentError, match="kind"):
        text_spec(kind="image")
    with pytest.raises(StudentError, match="vocab_size"):
        text_spec(vocab_size=None)
    with pytest.raises(StudentError, match="num_features"):
        seq_spec(num_features=0)
    with pytest.raises(StudentError, match="hidden"):
        text_spec(hidden=0)
    with pytest.raises(StudentError, match="labels"):
        text_spec(labels=["only"])
    with pytest.raises(StudentError, match=r"missing keys \['max_len'\], unknown keys \['maxlen'\]"):
        data = json.loads(text_spec().to_json())
        data["maxlen"] = data.pop("max_len")
        StudentSpec.from_json(json.dumps(data))


@pytest.mark.parametrize("spec", [text_spec(), seq_spec(layers=2)], ids=["text", "sequence"])
def test_save_load_round_trip(tmp_path, spec):
    m = model_for(spec, teacher_dim=8)
    folder = save_student(m, spec, tmp_path / "student")
    assert set(load_file(str(folder / "student.safetensors"))) == set(expected_shapes(spec))
    loaded, spec2 = load_student(folder)
    assert spec2 == spec and loaded.feature_proj is None and not loaded.training
    x = text_batch(spec)[0] if spec.kind == "text" else torch.randn(3, 9, 3)
    torch.testing.assert_close(loaded(x).detach(), m(x).detach(), atol=0, rtol=0)


def _saved(tmp_path, spec=None):
    spec = spec or text_spec()
    folder = save_student(model_for(spec), spec, tmp_path / "s")
    return folder, load_file(str(folder / "student.safetensors"))


def test_load_errors_missing_and_corrupt_files(tmp_path):
    with pytest.raises(StudentError, match="student.json is missing.*tinyseek distill"):
        load_student(tmp_path / "nothing")
    folder, _ = _saved(tmp_path)
    (folder / "student.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(StudentError, match="not a readable safetensors"):
        load_student(folder)
    (folder / "student.safetensors").unlink()
    with pytest.raises(StudentError, match="student.safetensors is missing"):
        load_student(folder)
    folder, _ = _saved(tmp_path)
    (folder / "student.json").write_text("{not json")
    with pytest.raises(StudentError, match="not valid JSON"):
        load_student(folder)
    (folder / "student.json").write_text(json.dumps({**json.loads(text_spec().to_json()), "layers": 3.5}))
    with pytest.raises(StudentError, match="layers must be a positive integer"):
        load_student(folder)


def test_load_errors_missing_and_unexpected_tensors(tmp_path):
    folder, state = _saved(tmp_path)
    del state["lstm.bias_hh_l0"]
    save_file(state, str(folder / "student.safetensors"))
    with pytest.raises(StudentError, match=r"missing tensors \['lstm.bias_hh_l0'\]"):
        load_student(folder)
    folder, state = _saved(tmp_path, text_spec(layers=2))
    (folder / "student.json").write_text(text_spec(layers=1).to_json())
    with pytest.raises(StudentError, match=r"unexpected tensors \['lstm.bias_hh_l1'"):
        load_student(folder)


def test_load_accepts_a_saved_feature_proj(tmp_path):
    folder, state = _saved(tmp_path)
    state["feature_proj.weight"] = torch.zeros(5, 10)
    save_file(state, str(folder / "student.safetensors"))
    assert load_student(folder)[0].feature_proj is None


def test_load_errors_wrong_shape_names_tensor_and_shapes(tmp_path):
    folder, state = _saved(tmp_path)
    state["head.weight"] = torch.zeros(4, 11)
    save_file(state, str(folder / "student.safetensors"))
    with pytest.raises(StudentError, match=r"'head.weight' has shape \[4, 11\], expected \[4, 10\]"):
        load_student(folder)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_load_errors_non_finite_weights(tmp_path, bad):
    folder, state = _saved(tmp_path)
    state["lstm.weight_hh_l0"][3, 2] = bad
    save_file(state, str(folder / "student.safetensors"))
    with pytest.raises(StudentError, match=r"'lstm.weight_hh_l0' holds 1 NaN/inf"):
        load_student(folder)


def test_load_errors_integer_weights(tmp_path):
    folder, state = _saved(tmp_path)
    state["head.bias"] = torch.zeros(4, dtype=torch.int32)
    save_file(state, str(folder / "student.safetensors"))
    with pytest.raises(StudentError, match=r"'head.bias' has dtype torch.int32"):
        load_student(folder)


def test_spec_replace_keeps_validation():
    with pytest.raises(StudentError, match="no vocab_size"):
        replace(seq_spec(), vocab_size=10)


def test_the_tokenizer_imports_without_torch():
    # quantize/codegen/verify use the tokenizer and must run where torch is not installed.
    code = "import sys; from tinyseek.student import HashTokenizer; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
