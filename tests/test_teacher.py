"""Teacher stage: tiny DeepSeek-V3 built locally, loading checks, adaptation and the
knowledge cache, on tiny tasks so the whole file runs in seconds."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from tinyseek.config import TeacherConfig
from tinyseek.data import Dataset, Split
from tinyseek.teacher import (TeacherError, adapt, build_default_teacher, default_layers, extract,
                              load_teacher, select_layers, teacher_accuracy)

TINY = TeacherConfig(hidden_size=32, num_layers=2, num_heads=2, pretrain_epochs=1, finetune_epochs=10,
                     batch_size=16, lr=3e-3)

WORDS = {0: ["turn on the lights", "lights on please", "switch the lamp on"],
         1: ["turn off the lights", "lights off please", "switch the lamp off"],
         2: ["what time is it", "tell me the time", "current time please"]}


def _text_split(n_per_class, seed):
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for label, phrases in WORDS.items():
        for _ in range(n_per_class):
            texts.append(phrases[rng.integers(len(phrases))] + rng.choice(["", " now", " thanks"]))
            y.append(label)
    return Split(y=np.array(y, dtype=np.int64), texts=texts, x=None)


@pytest.fixture(scope="module")
def text_task():
    return Dataset(name="tiny", kind="text", labels=["on", "off", "time"],
                   train=_text_split(20, 0), val=_text_split(3, 1), test=_text_split(4, 2))


def _seq_split(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 0.3, (n, 6, 3)).astype(np.float32)
    x[:, :, 0] += np.where(y == 1, 1.0, -1.0)[:, None]
    return Split(y=y.astype(np.int64), texts=None, x=x)


@pytest.fixture(scope="module")
def adapted_text(text_task, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = TeacherConfig(**{**TINY.__dict__, "attentions": True})
    adapt(text_task, cfg, run)
    extract(text_task, cfg, run)
    return run, cfg


def test_default_layers_are_evenly_spaced():
    assert default_layers(36) == [12, 24, 36]
    assert default_layers(4) == [1, 3, 4]
    assert default_layers(1) == [1]
    assert select_layers([2, 1, 2], 4) == [1, 2]
    with pytest.raises(TeacherError, match="valid layers are 0"):
        select_layers([5], 4)


def test_built_teacher_is_deepseek_v3_and_loads_back(text_task, tmp_path):
    folder = build_default_teacher(text_task, TINY, tmp_path / "t")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3"
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    model, tok = load_teacher(folder)
    ids = tok(["turn on the lights"], return_tensors="pt")
    out = model(**ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == TINY.num_layers + 1
    assert out.attentions[0] is not None


def test_knowledge_cache_shapes(adapted_text, text_task):
    run, cfg = adapted_text
    k = load_file(str(run / "knowledge.safetensors"))
    layers = default_layers(cfg.num_layers)
    for name in ("train", "val", "test"):
        n = len(getattr(text_task, name).y)
        assert k[f"{name}.logits"].shape == (n, 3) and k[f"{name}.logits"].dtype == np.float32
        for layer in layers:
            assert k[f"{name}.hidden.{layer}"].shape == (n, cfg.hidden_size)
            attn = k[f"{name}.attn.{layer}"]
            assert attn.dtype == np.float16 and attn.shape[0] == n and attn.shape[1] == attn.shape[2]
            # Each real query row of a head-averaged softmax sums to one.
            assert np.allclose(attn[0].astype(np.float32).sum(-1)[:2], 1.0, atol=1e-2)
    assert np.isfinite(k["train.logits"]).all()


def test_adapted_teacher_learns_the_tiny_task(adapted_text, text_task):
    run, _ = adapted_text
    acc = teacher_accuracy(run / "knowledge.safetensors", text_task)
    assert acc["test"] >= 0.9, acc
    meta = json.loads((run / "teacher" / "teacher.json").read_text())
    assert meta["labels"] == text_task.labels


def test_sequence_teacher_through_inputs_embeds(tmp_path):
    task = Dataset(name="seq", kind="sequence", labels=["a", "b"], train=_seq_split(48, 0),
                   val=_seq_split(12, 1), test=_seq_split(16, 2))
    adapt(task, TINY, tmp_path)
    extract(task, TINY, tmp_path)
    k = load_file(str(tmp_path / "knowledge.safetensors"))
    assert k["test.logits"].shape == (16, 2)
    assert teacher_accuracy(tmp_path / "knowledge.safetensors", task)["test"] >= 0.8


def test_qwen2_folder_loads(tmp_path, text_task):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    folder = build_default_teacher(text_task, TINY, tmp_path / "ds")
    _, tok = load_teacher(folder)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    qwen.save_pretrained(tmp_path / "qwen", safe_serialization=True)
    tok.save_pretrained(tmp_path / "qwen")
    model, _ = load_teacher(tmp_path / "qwen")
    assert model.config.model_type == "qwen2"


def test_load_errors(tmp_path, text_task):
    with pytest.raises(TeacherError, match="only local paths"):
        load_teacher("deepseek-ai/DeepSeek-V3")
    with pytest.raises(TeacherError, match="does not exist"):
        load_teacher(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match="no config.json"):
        load_teacher(tmp_path / "empty")
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(TeacherError, match="not a .gguf"):
        load_teacher(tmp_path / "weights.pt")
    folder = build_default_teacher(text_task, TINY, tmp_path / "t")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(TeacherError, match="not supported"):
        load_teacher(folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    for f in folder.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(TeacherError, match="safetensors"):
        load_teacher(folder)
