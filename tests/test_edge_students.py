"""The students for bigger devices: TinyBert and the truncated teacher, trained on a tiny task
from a real (tiny, untrained DeepSeek-V3) teacher's knowledge cache, exported to ONNX and run
in onnxruntime; the attention mapping between the two tokenizations."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from tinyseek.cli import make_parser
from tinyseek.config import TeacherConfig, load
from tinyseek.data import Dataset, Split
from tinyseek.distill.edge import (EdgeError, align, attention_transfer_loss, build_edge, check_onnx, export_onnx,
                                   layer_pairs, map_attention, onnx_logits, read_cache, train_tinybert,
                                   train_truncated)
from tinyseek.student import HashTokenizer, StudentError, TruncatedTeacher
from tinyseek.student.tinybert import TinyBert, encode, load_tinybert, save_tinybert, token_spans
from tinyseek.teacher import build_default_teacher, extract, load_teacher
from tinyseek.teacher.classifier import TeacherClassifier, load_adapted, save_adapted, tokenize

PHRASES = {0: ["turn on the lights", "lights on please", "switch the lamp on", "开灯"],
           1: ["turn off the lights", "lights off please", "switch the lamp off", "关灯"],
           2: ["what time is it", "tell me the time", "current time please", "几点了"]}
TEACHER = TeacherConfig(hidden_size=32, num_layers=3, num_heads=2, max_tokens=24, attentions=True, noise_copies=0, seed=0)


def _split(n_per_class, seed):
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for label, phrases in PHRASES.items():
        for _ in range(n_per_class):
            texts.append(phrases[rng.integers(len(phrases))] + rng.choice(["", " now", " thanks", " at 7 please"]))
            y.append(label)
    return Split(y=np.array(y, dtype=np.int64), texts=texts, x=None)


def small_cfg(**extra):
    return load(overrides={"edge.hidden": 32, "edge.bottleneck": 16, "edge.layers": 2, "edge.heads": 2,
                           "edge.ffn_stack": 1, "edge.embed_dim": 16, "edge.vocab_size": 256, "edge.max_len": 12,
                           "edge.epochs": 6, "edge.lr": 5e-3, "edge.batch_size": 16, "edge.truncated_epochs": 2,
                           "edge.truncated_lr": 1e-3, **extra})


@pytest.fixture(scope="module")
def task():
    return Dataset(name="tiny", kind="text", labels=["on", "off", "time"],
                   train=_split(16, 0), val=_split(4, 1), test=_split(5, 2))


@pytest.fixture(scope="module")
def run_dir(task, tmp_path_factory):
    """A run folder as the teacher stage leaves it: a 3-layer DeepSeek-V3 teacher (dense, MoE,
    MoE; untrained, with a random head) and its knowledge cache with attention maps, whose
    logits are then replaced by label-correlated ones so there is something to distill."""
    run = tmp_path_factory.mktemp("edge_run")
    teacher_dir = run / "teacher"
    build_default_teacher(task, TEACHER, teacher_dir)
    backbone, tok = load_teacher(teacher_dir)
    torch.manual_seed(0)
    model = TeacherClassifier(backbone, len(task.labels))
    save_adapted(model, tok, teacher_dir, {"labels": task.labels, "kind": "text", "num_layers": TEACHER.num_layers,
                                           "hidden_size": TEACHER.hidden_size, "max_tokens": TEACHER.max_tokens,
                                           "num_features": 0, "model_type": "deepseek_v3"})
    path = extract(task, TEACHER, run)
    cache = load_file(str(path))
    rng = np.random.default_rng(0)
    for name in ("train", "val", "test"):
        y = getattr(task, name).y
        cache[f"{name}.logits"] = (4 * np.eye(3)[y] + rng.normal(0, 1, (len(y), 3))).astype(np.float32)
    save_file(cache, str(path), metadata={"layers": "1,2,3", "num_classes": "3", "teacher_hash": "test"})
    return run


# -- the attention mapping ----------------------------------------------------------------

@pytest.mark.parametrize("text", ["Turn ON the lights, please!", "把客厅的灯打开 at 7", "  a--b  c3po 20°C ", "",
                                  "one two three four five six seven eight nine ten eleven twelve thirteen"])
def test_token_spans_are_the_student_tokenizers_tokens(text):
    tok = HashTokenizer(256, 12)
    spans = token_spans(text, 12)
    ids = tok.encode(text)
    assert len(spans) == len(ids)
    assert [tok.encode(text[a:b]) for a, b in spans] == [[i] for i in ids]


def _causal_map(rng, t):
    a = np.tril(rng.random((t, t)).astype(np.float32) + 0.05)
    return a / a.sum(1, keepdims=True)


def test_identical_tokenizations_map_the_attention_unchanged_and_cost_nothing():
    rng = np.random.default_rng(0)
    teacher = _causal_map(rng, 5)
    spans = [(0, 3), (4, 6), (7, 9), (10, 12), (13, 15)]
    mapped, valid = map_attention(teacher, align(spans, spans))
    assert valid.all()
    np.testing.assert_allclose(mapped, teacher, atol=1e-6)
    a = torch.from_numpy(mapped)[None]
    v = torch.from_numpy(valid)[None]
    assert float(attention_transfer_loss(a, a, v)) == 0.0
    other = torch.from_numpy(_causal_map(rng, 5))[None]
    assert float(attention_transfer_loss(other, a, v)) > 0.01


def test_subwords_merge_into_the_student_word_and_bos_drops_out():
    text = "turn lights"
    # Teacher: <bos>, " turn" (as the BPE gives it, from 0), " li", "ghts"; student: "turn", "lights".
    teacher_offsets = [(0, 0), (0, 4), (4, 7), (7, 11)]
    student = token_spans(text, 8)
    assert student == [(0, 4), (5, 11)]
    t = np.zeros((4, 4), np.float32)
    t[0, 0] = 1.0
    t[1] = [0.5, 0.5, 0, 0]  # " turn": half on bos, half on itself
    t[2] = [0, 0, 1.0, 0]  # " li": itself
    t[3] = [0, 1.0, 0, 0]  # "ghts": " turn"
    mapped, valid = map_attention(t, align(teacher_offsets, student))
    assert valid.tolist() == [True, True]
    # "turn": bos's half drops out, the rest is on "turn". "lights": " li" (2 shared characters)
    # on "lights", "ghts" (4) on "turn".
    np.testing.assert_allclose(mapped, [[1.0, 0.0], [4 / 6, 2 / 6]], atol=1e-6)


def test_token_dropout_renormalizes_the_target_over_the_keys_kept():
    target = torch.tensor([[[0.5, 0.25, 0.25], [0.2, 0.4, 0.4], [0.1, 0.1, 0.8]]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    mask = torch.tensor([[1, 0, 1]])
    student = torch.tensor([[[2 / 3, 0.0, 1 / 3], [0.5, 0.0, 0.5], [1 / 9, 0.0, 8 / 9]]])
    # Rows 0 and 2 match the renormalized target exactly; row 1 (dropped) does not count.
    assert float(attention_transfer_loss(student, target, valid, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(attention_transfer_loss(student, target, valid)) > 0.1


def test_teacher_layers_map_to_student_blocks_by_depth():
    assert layer_pairs([1, 3, 4], 4, 4) == [(0, 1), (2, 3), (3, 4)]
    assert layer_pairs([1, 3, 4], 4, 2) == [(0, 1), (1, 3)]
    assert layer_pairs([0, 12, 24, 36], 36, 6) == [(1, 12), (3, 24), (5, 36)]


# -- TinyBert -----------------------------------------------------------------------------

def test_tinybert_distills_with_attention_transfer_exports_and_matches_onnxruntime(task, run_dir, tmp_path):
    cfg = small_cfg()
    model, history = train_tinybert(task, run_dir / "knowledge.safetensors", cfg, run_dir / "teacher", progress=False)
    att = [h["attention"] for h in history]
    assert att[-1] < 0.8 * att[0]
    assert history[-1]["loss"] < history[0]["loss"]
    ids, mask = encode(task.test.texts, model.spec)
    with torch.no_grad():
        logits, maps = model(ids, mask, attentions=True)
    assert len(maps) == cfg.edge.layers and maps[0].shape == (len(ids), 12, 12)
    real = mask.bool()
    assert torch.allclose(maps[-1].sum(-1)[real], torch.ones(int(real.sum())), atol=1e-5)
    assert float(maps[-1][~real[:, None, :].expand_as(maps[-1])].abs().max()) == 0.0  # padding gets no attention
    assert np.mean(logits.argmax(1).numpy() == task.test.y) > 0.6

    onnx = export_onnx(model, ids[:2, :4], mask[:2, :4], tmp_path / "model.onnx")
    check = check_onnx(model, onnx, ids, mask, task.test.y)  # all 15 samples, other batch and sequence sizes
    assert check["agreement"] == 1.0 and check["max_abs_diff"] < 1e-4
    assert check["accuracy_onnx"] == check["accuracy_torch"]

    save_tinybert(model, tmp_path / "tb")
    again = load_tinybert(tmp_path / "tb")
    assert torch.equal(again(ids, mask), model(ids, mask))


@pytest.mark.parametrize("trigram", [False, True])
def test_an_all_padding_row_gives_the_head_bias_not_nan(trigram, tmp_path):
    cfg = small_cfg(**{"edge.trigram": trigram})
    from tinyseek.distill.edge import tinybert_spec
    torch.manual_seed(0)
    model = TinyBert(tinybert_spec(SimpleNamespace(labels=["a", "b", "c"]), cfg)).eval()
    assert model.embed_proj.in_features == (3 if trigram else 1) * cfg.edge.embed_dim
    ids, mask = encode(["", "lights on"], model.spec)
    with torch.no_grad():
        out = model(ids, mask)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], model.head.bias)
    again = load_tinybert(save_tinybert(model, tmp_path / "tb"))
    assert again.spec.trigram is trigram and torch.equal(again(ids, mask), out)


def test_attention_transfer_without_cached_maps_says_how_to_get_them(task, run_dir, tmp_path):
    cache = {k: v for k, v in load_file(str(run_dir / "knowledge.safetensors")).items() if ".attn." not in k}
    save_file(cache, str(tmp_path / "k.safetensors"))
    with pytest.raises(EdgeError, match="teacher.attentions = true.*edge.attention_weight = 0"):
        train_tinybert(task, tmp_path / "k.safetensors", small_cfg(), run_dir / "teacher", progress=False)


def test_a_sequence_task_is_refused(run_dir):
    seq = Dataset(name="seq", kind="sequence", labels=["a", "b"],
                  train=Split(y=np.zeros(3, np.int64), texts=None, x=np.zeros((3, 4, 2), np.float32)),
                  val=Split(y=np.zeros(0, np.int64), texts=None, x=np.zeros((0, 4, 2), np.float32)),
                  test=Split(y=np.zeros(0, np.int64), texts=None, x=np.zeros((0, 4, 2), np.float32)))
    with pytest.raises(EdgeError, match="read text"):
        train_tinybert(seq, run_dir / "knowledge.safetensors", small_cfg(**{"edge.attention_weight": 0.0}),
                       progress=False)


# -- the truncated teacher ----------------------------------------------------------------

def test_truncated_teacher_keeps_n_layers_and_equals_the_teacher_there(task, run_dir):
    teacher, tok, _ = load_adapted(run_dir / "teacher")
    ids, mask = tokenize(tok, task.test.texts, TEACHER.max_tokens)
    with torch.no_grad():  # the full teacher first, with its own sparse experts
        full = teacher.encode(ids, mask, output_hidden_states=True)
        hidden = [h.clone() for h in full.hidden_states]
        teacher_logits = teacher(ids, mask)
    real = mask.bool()
    for n in (1, 2):  # layer 1 is dense, layer 2 a mixture of experts
        model = TruncatedTeacher(teacher, n).eval()
        assert len(model.layers) == n and model.teacher_layers == 3
        assert all(a is b for a, b in zip(model.layers, teacher.backbone.base_model.layers[:n]))
        with torch.no_grad():
            got = model.encode(ids, mask)
        torch.testing.assert_close(got[real], hidden[n][real], atol=1e-5, rtol=1e-5)
    whole = TruncatedTeacher(teacher, 3).eval()
    with torch.no_grad():
        torch.testing.assert_close(whole(ids, mask), teacher_logits, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in TruncatedTeacher(teacher, 1).parameters()) < sum(p.numel() for p in whole.parameters())


def test_truncated_teacher_converts_to_core_ml_with_concatenated_keys(task, run_dir, tmp_path):
    """DeepSeek's latent attention copies its keys into slices of an empty tensor, which
    coremltools 9 converts with the wrong shape; within `concatenated_keys` they are
    concatenated: the same logits, bit for bit, and the truncated teacher (attention, rotary
    embedding, MoE router) converts, float and quantized. Core ML cannot run here; the spec is
    checked."""
    from tinyseek.distill.edge_frameworks import _Logits
    from tinyseek.export import coreml
    from tinyseek.student.truncated import concatenated_keys
    teacher, tok, _ = load_adapted(run_dir / "teacher")
    model = _Logits(TruncatedTeacher(teacher, 2).eval()).eval()  # layer 2 is a mixture of experts
    ids, mask = tokenize(tok, task.test.texts, TEACHER.max_tokens)
    with torch.no_grad():
        own = model(ids, mask)
        with concatenated_keys(model) as patched:
            assert any("expand_kv" in vars(m) for m in patched.modules())
            concatenated = model(ids, mask)
    assert not any("expand_kv" in vars(m) for m in model.modules())  # restored
    assert torch.equal(own, concatenated)
    example = (ids[:1].numpy(), mask[:1].numpy())
    with concatenated_keys(model):
        for quant in ("float", "int8"):
            path = coreml.convert(model, example, ["input_ids", "attention_mask"], tmp_path / f"{quant}.mlpackage",
                                  quant)
            spec = coreml.inspect(path)
            assert spec["inputs"] == {"input_ids": list(ids[:1].shape), "attention_mask": list(ids[:1].shape)}
            assert spec["outputs"] == ["logits"]
    with pytest.raises(coreml.CoremlError, match="update tensor should have shape"):  # its own attention
        coreml.convert(model, example, ["input_ids", "attention_mask"], tmp_path / "own.mlpackage")


@pytest.mark.parametrize("n", [0, 4, 9])
def test_more_layers_than_the_teacher_has_is_a_clear_error(run_dir, n):
    teacher, _, _ = load_adapted(run_dir / "teacher")
    with pytest.raises(StudentError, match=r"teacher has 3 decoder layers; choose --layers 1\.\.3"):
        TruncatedTeacher(teacher, n)


def test_truncated_student_distills_exports_and_matches_onnxruntime(task, run_dir, tmp_path):
    cfg = small_cfg()
    model, tok, meta, history = train_truncated(task, run_dir / "knowledge.safetensors", cfg, run_dir / "teacher",
                                                layers=2, progress=False)
    assert len(model.layers) == 2 and len(history) == 2
    assert history[-1]["loss"] < history[0]["loss"]
    ids, mask = tokenize(tok, task.test.texts, meta["max_tokens"])
    onnx = export_onnx(model, ids[:2, :3], mask[:2, :3], tmp_path / "model.onnx")
    check = check_onnx(model, onnx, ids, mask, task.test.y)
    assert check["agreement"] == 1.0 and check["max_abs_diff"] < 1e-4
    # Dynamic axes: one sample, unpadded, gives the same logits as inside the padded batch.
    one = onnx_logits(onnx, ids[3:4, : int(mask[3].sum())], mask[3:4, : int(mask[3].sum())])
    np.testing.assert_allclose(one[0], onnx_logits(onnx, ids, mask)[3], atol=1e-4)


def test_build_edge_writes_the_folder_the_cli_names(task, run_dir, tmp_path):
    run = SimpleNamespace(cfg=small_cfg(), dataset=task, dir=tmp_path, knowledge=run_dir / "knowledge.safetensors",
                          teacher_dir=run_dir / "teacher")
    out = build_edge(run, "truncated", layers=1, progress=False)
    assert out == tmp_path / "edge" / "truncated"
    assert {"model.onnx", "student.json", "metrics.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    spec = json.loads((out / "student.json").read_text())
    assert spec["layers"] == 1 and spec["teacher_layers"] == 3 and spec["labels"] == task.labels
    m = json.loads((out / "metrics.json").read_text())
    assert m["onnx_bytes"] == (out / "model.onnx").stat().st_size
    assert m["onnx_check"]["agreement"] == 1.0 and m["latency"]["median_ms"] > 0
    teacher_logits, _ = read_cache(run.knowledge, "test")
    assert m["teacher_accuracy"] == pytest.approx(float(np.mean(teacher_logits.argmax(1) == task.test.y)))
    with pytest.raises(EdgeError, match="--layers applies to the truncated student only"):
        build_edge(run, "tinybert", layers=2, progress=False)
    with pytest.raises(EdgeError, match="unknown edge student"):
        build_edge(run, "bert", progress=False)


def test_cli_edge_arguments():
    args = make_parser().parse_args(["edge", "--student", "truncated", "--layers", "2", "--set", "run=scratch"])
    assert (args.command, args.student, args.layers, args.set) == ("edge", "truncated", 2, ["run=scratch"])
    with pytest.raises(SystemExit):
        make_parser().parse_args(["edge", "--student", "bert"])
