"""Teacher stage: tiny DeepSeek-V3 built locally, loading checks, adaptation and the
knowledge cache, on tiny tasks so the whole file runs in seconds."""
import json
import sys
from pathlib import Path
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tinyseek.config import TeacherConfig
from tinyseek.data import Dataset, Split
from tinyseek.pipeline import hash_files
from tinyseek.teacher import (TeacherError, adapt, build_default_teacher, default_layers, extract,
                              load_teacher, select_layers, teacher_accuracy)
from tinyseek.teacher.adapt import _augment

TINY = TeacherConfig(hidden_size=32, num_layers=2, num_heads=2, pretrain_epochs=1, finetune_epochs=10,
                     batch_size=16, lr=3e-3, noise_copies=0)

WORDS = {0: ["turn on the lights", "lights on please", "switch the lamp on"],
         1: ["turn off the lights", "lights off please", "switch the lamp off"],
         2: ["what time is it", "tell me the time", "current time please"]}


def _text_split(n_per_class, seed):
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for label, phrases in WORDS.items():
        for _ in range(n_per_class):
            texts.append(phrases[rng.integers(len(phrases))] + rng.choice(["", " now", " thanks", " right now please"]))
            y.append(label)
    return Split(y=np.array(y, dtype=np.int64), texts=texts, x=None)


def _seq_split(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 0.3, (n, 6, 3)).astype(np.float32)
    x[:, :, 0] += np.where(y == 1, 1.0, -1.0)[:, None]
    return Split(y=y.astype(np.int64), texts=None, x=x)


@pytest.fixture(scope="module")
def text_task():
    return Dataset(name="tiny", kind="text", labels=["on", "off", "time"],
                   train=_text_split(20, 0), val=_text_split(3, 1), test=_text_split(4, 2))


@pytest.fixture(scope="module")
def seq_task():
    return Dataset(name="seq", kind="sequence", labels=["a", "b"], train=_seq_split(48, 0),
                   val=_seq_split(12, 1), test=_seq_split(16, 2))


@pytest.fixture(scope="module")
def adapted_text(text_task, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = replace(TINY, attentions=True)
    adapt(text_task, cfg, run)
    extract(text_task, cfg, run)
    return run, cfg


def _check_attention(attn, lengths):
    """Real query rows sum to 1 over real keys; everything involving padding is 0."""
    a = attn.astype(np.float32)
    for i, n in enumerate(lengths):
        assert np.allclose(a[i, :n, :n].sum(-1), 1.0, atol=1e-2)
        assert np.all(np.triu(a[i, :n, :n], 1) == 0)  # causal: no attention to later tokens
        assert not a[i, n:].any() and not a[i, :, n:].any()


# -- layers ------------------------------------------------------------------------------------

def test_default_layers_are_evenly_spaced_and_end_at_the_last():
    assert default_layers(36) == [12, 24, 36]
    assert default_layers(4) == [1, 3, 4]
    assert default_layers(2) == [1, 2]
    assert default_layers(1) == [1]
    assert select_layers([], 6) == [2, 4, 6]
    assert select_layers([2, 0, 2], 4) == [0, 2]


@pytest.mark.parametrize("layers", [[5], [-1], [True]])
def test_out_of_range_layers_are_refused_naming_the_range(layers):
    with pytest.raises(TeacherError, match=r"valid layers are 0 \(the embeddings\) to 4"):
        select_layers(layers, 4)


def test_adapt_refuses_bad_layers_before_training(text_task, tmp_path):
    with pytest.raises(TeacherError, match="to 2"):
        adapt(text_task, replace(TINY, layers=[3]), tmp_path)
    assert not (tmp_path / "teacher").exists()


# -- build and load ----------------------------------------------------------------------------

def test_built_teacher_is_moe_deepseek_v3_and_loads_back(text_task, tmp_path):
    folder = build_default_teacher(text_task, TINY, tmp_path / "t")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3"
    assert cfg["n_routed_experts"] > 1 and cfg["first_k_dense_replace"] < cfg["num_hidden_layers"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"]) == (TINY.hidden_size, TINY.num_layers)
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    model, tok = load_teacher(folder)
    assert type(model.model.layers[-1].mlp).__name__ == "DeepseekV3MoE"
    assert len(tok) == cfg["vocab_size"] < 2000
    ids = tok(["turn on the lights"], return_tensors="pt")
    assert ids["input_ids"][0, 0] == tok.bos_token_id
    out = model(**ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == TINY.num_layers + 1
    assert out.attentions[0].shape[-1] == ids["input_ids"].shape[1]


def test_chinese_characters_are_tokens_never_merged_into_phrases():
    from tinyseek.teacher.build import train_text_tokenizer
    tok = train_text_tokenizer(["打开灯", "把灯打开", "关灯吧"] * 20 + ["turn on the lights"] * 20)
    assert len(tok.tokenize("打开灯")) == 3 and len(tok.tokenize("turn on")) == 2
    assert tok.tokenize("on")[0] == tok.tokenize("turn on")[1]
    assert tok.decode(tok("打开 Lights")["input_ids"], skip_special_tokens=True) == "打开 lights"


def test_built_teacher_is_deterministic(text_task, tmp_path):
    a = build_default_teacher(text_task, TINY, tmp_path / "a")
    b = build_default_teacher(text_task, TINY, tmp_path / "b")
    c = build_default_teacher(text_task, replace(TINY, seed=1), tmp_path / "c")
    assert hash_files(a) == hash_files(b) != hash_files(c)


def test_load_errors_name_the_problem(tmp_path, text_task):
    with pytest.raises(TeacherError, match="only local paths.*huggingface-cli download"):
        load_teacher("deepseek-ai/DeepSeek-V3")
    with pytest.raises(TeacherError, match="does not exist"):
        load_teacher(tmp_path / "nothing" / "here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match="no config.json"):
        load_teacher(tmp_path / "empty")
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(TeacherError, match="not a .gguf"):
        load_teacher(tmp_path / "weights.pt")

    folder = build_default_teacher(text_task, TINY, tmp_path / "t")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(TeacherError, match="'bert' is not a decoder-only language model.*deepseek_v2, deepseek_v3, qwen2, llama"):
        load_teacher(folder)
    (folder / "config.json").write_text(json.dumps(cfg))

    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((folder / f).read_bytes())
    with pytest.raises(TeacherError, match="no tokenizer"):
        load_teacher(no_tok)
    # A tokenizer from elsewhere can be given instead.
    model, tok = load_teacher(no_tok, tokenizer=folder)
    assert len(tok) == cfg["vocab_size"]

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(cfg))
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(TeacherError, match="pickle weights.*safetensors only"):
        load_teacher(pickled)


def test_tokenizer_larger_than_the_embedding_is_a_mismatch(tmp_path, text_task):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    folder = build_default_teacher(text_task, TINY, tmp_path / "ds")
    _, tok = load_teacher(folder)
    small = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok) - 5, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    small.save_pretrained(tmp_path / "small")
    tok.save_pretrained(tmp_path / "small")
    with pytest.raises(TeacherError, match=f"tokenizer mismatch.*{len(tok)} tokens.*{len(tok) - 5} rows"):
        load_teacher(tmp_path / "small")


def test_gguf_without_its_packages_says_how_to_install(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(TeacherError, match=r"gguf.*pip install 'tinyseek\[gguf\]'"):
        load_teacher(tmp_path / "model.gguf")


def _write_qwen2_gguf(model, tokenizer, path):
    """A float32 GGUF of a Qwen2 model with its byte-level BPE tokenizer, as llama.cpp writes one."""
    gguf = pytest.importorskip("gguf", reason="the GGUF tests need pip install 'tinyseek[gguf]'")
    c = model.config
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(c.max_position_embeddings)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_embedding_length(c.hidden_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = sorted(state["model"]["vocab"], key=state["model"]["vocab"].get) + ["<|endoftext|>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_merges([" ".join(m) for m in state["model"]["merges"]])
    specials = {"<pad>", "<bos>", "<eos>", "<unk>", "<|endoftext|>"}
    w.add_token_types([3 if t in specials else 1 for t in tokens])  # 3: control
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, c.num_hidden_layers)
    for key, value in model.state_dict().items():
        w.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), value.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_teacher_loads_with_its_own_tokenizer(text_task, tmp_path, monkeypatch):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    _, tok = load_teacher(build_default_teacher(text_task, TINY, tmp_path / "ds"))
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok) + 1, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=64, tie_word_embeddings=False)).eval()
    _write_qwen2_gguf(qwen, tok, tmp_path / "tiny.gguf")
    model, gguf_tok = load_teacher(tmp_path / "tiny.gguf")
    assert model.config.model_type == "qwen2"
    texts = ["turn on the lights now", "what time is it"]
    ids = [gguf_tok(t)["input_ids"] for t in texts]
    assert len(gguf_tok) == len(tok) + 1 and gguf_tok.pad_token == "<pad>"
    assert [gguf_tok.decode(i) for i in ids] == texts
    with torch.no_grad():
        for row in ids:
            x = torch.tensor([row])
            assert torch.allclose(model(input_ids=x).logits, qwen(input_ids=x).logits, atol=1e-5)
    # Adapted head-only, the teacher folder is a plain HF folder (safetensors) from then on.
    cfg = replace(TINY, source=str(tmp_path / "tiny.gguf"), pretrain_epochs=0, finetune_epochs=2, adapt="full")
    adapt(text_task, cfg, tmp_path / "run")
    extract(text_task, cfg, tmp_path / "run")
    assert (tmp_path / "run" / "teacher" / "model.safetensors").is_file()
    k = load_file(str(tmp_path / "run" / "knowledge.safetensors"))
    assert k["val.logits"].shape == (len(text_task.val.y), 3) and k["val.hidden.2"].shape == (len(text_task.val.y), 32)
    # The GGUF file was dequantized once, into <run>/base/ (safetensors), and is not again.
    assert json.loads((tmp_path / "run" / "base" / "gguf.json").read_text())["gguf"] == "tiny.gguf"
    assert any((tmp_path / "run" / "base").glob("*.safetensors"))
    frozen = replace(cfg, adapt="none")
    messages, calls = [], []
    adapt_module = sys.modules["tinyseek.teacher.adapt"]
    real = adapt_module.gguf_to_folder
    monkeypatch.setattr(adapt_module, "gguf_to_folder",
                        lambda *a, **kw: calls.append(a) or real(*a, **{**kw, "log": messages.append}))
    adapt(text_task, frozen, tmp_path / "run")
    adapt(text_task, frozen, tmp_path / "run")
    assert len(calls) == 2 and len([m for m in messages if "dequantizing" in m]) == 1  # frozen: its own dtype, once
    meta = json.loads((tmp_path / "run" / "teacher" / "teacher.json").read_text())
    assert Path(meta["base"]) == (tmp_path / "run" / "base").resolve() or meta["base"].endswith("base")
    extract(text_task, frozen, tmp_path / "run")  # reads the folder, not the GGUF file


def test_auto_dtype_follows_what_the_cpu_measures(monkeypatch):
    from tinyseek.teacher import load as load_module
    cpu = torch.device("cpu")
    monkeypatch.setattr(load_module, "_memory_bytes", lambda: 64 << 30)
    assert load_module.resolve_dtype("auto", 10_000_000, cpu) == torch.float32  # small: always float32
    monkeypatch.setattr(load_module, "cpu_bf16_speedup", lambda: 0.25)  # emulated bfloat16
    assert load_module.resolve_dtype("auto", 500_000_000, cpu) == torch.float32
    monkeypatch.setattr(load_module, "cpu_bf16_speedup", lambda: 2.0)  # AMX / AVX512-BF16
    assert load_module.resolve_dtype("auto", 500_000_000, cpu) == torch.bfloat16
    monkeypatch.setattr(load_module, "cpu_bf16_speedup", lambda: 0.25)
    monkeypatch.setattr(load_module, "_memory_bytes", lambda: 24 << 30)  # 7B in float32 would not fit
    assert load_module.resolve_dtype("auto", 7_000_000_000, cpu) == torch.bfloat16
    assert load_module.resolve_dtype("float32", 7_000_000_000, cpu) == torch.float32
    assert load_module.cpu_bf16_speedup() > 0


def test_teacher_threads_honour_the_setting_and_omp(monkeypatch):
    from tinyseek.teacher.load import use_threads
    before = torch.get_num_threads()
    try:
        assert use_threads(1) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert use_threads(0) == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert use_threads(0) >= 1
    finally:
        torch.set_num_threads(before)


def test_an_unreadable_gguf_is_a_teacher_error(tmp_path):
    pytest.importorskip("gguf", reason="the GGUF tests need pip install 'tinyseek[gguf]'")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(TeacherError, match="broken.gguf"):
        load_teacher(tmp_path / "broken.gguf")


# -- adapt and extract -------------------------------------------------------------------------

def test_knowledge_cache_of_a_text_task(adapted_text, text_task):
    run, cfg = adapted_text
    path = run / "knowledge.safetensors"
    k = load_file(str(path))
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    layers = default_layers(cfg.num_layers)
    assert meta["layers"] == ",".join(map(str, layers)) and meta["num_classes"] == "3"
    assert meta["teacher_hash"] == hash_files(run / "teacher")
    _, tok = load_teacher(run / "teacher")
    expected = {"logits", *(f"hidden.{l}" for l in layers), *(f"attn.{l}" for l in layers)}
    for name in ("train", "val", "test"):
        split = getattr(text_task, name)
        assert {key.split(".", 1)[1] for key in k if key.startswith(name + ".")} == expected
        lengths = [len(ids) for ids in tok(split.texts)["input_ids"]]
        n, t = len(split.y), max(lengths)
        assert k[f"{name}.logits"].shape == (n, 3) and k[f"{name}.logits"].dtype == np.float32
        for layer in layers:
            hidden = k[f"{name}.hidden.{layer}"]
            assert hidden.shape == (n, cfg.hidden_size) and hidden.dtype == np.float32
            assert np.isfinite(hidden).all()
            attn = k[f"{name}.attn.{layer}"]
            assert attn.dtype == np.float16 and attn.shape == (n, t, t)
            _check_attention(attn, lengths)


def test_adapted_teacher_learns_the_tiny_task(adapted_text, text_task):
    run, _ = adapted_text
    acc = teacher_accuracy(run / "knowledge.safetensors", text_task)
    assert acc["test"] >= 0.9 and acc["accuracy"] == acc["test"], acc
    meta = json.loads((run / "teacher" / "teacher.json").read_text())
    assert meta["labels"] == text_task.labels and meta["kind"] == "text" and meta["pooling"] == "mean"
    assert meta["source"] == "default" and meta["layers"] == default_layers(2) and meta["train_backbone"]
    head = load_file(str(run / "teacher" / "classifier.safetensors"))
    assert set(head) == {"head.weight", "head.bias"} and head["head.weight"].shape == (3, TINY.hidden_size)


def test_adaptation_is_seeded(text_task, tmp_path):
    cfg = replace(TINY, finetune_epochs=1)
    for run in ("a", "b"):
        adapt(text_task, cfg, tmp_path / run)
    a = load_file(str(tmp_path / "a" / "teacher" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "teacher" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)


def test_noise_copies_adapt_the_teacher_on_corrupted_copies_too(text_task, tmp_path):
    cfg = replace(TINY, finetune_epochs=1, pretrain_epochs=0)
    adapt(text_task, cfg, tmp_path / "clean")
    adapt(text_task, replace(cfg, noise_copies=1, noise="typo:0.2"), tmp_path / "noisy")
    clean = json.loads((tmp_path / "clean" / "teacher" / "teacher.json").read_text())
    noisy = json.loads((tmp_path / "noisy" / "teacher" / "teacher.json").read_text())
    n = len(text_task.train.y)
    assert (clean["train_samples"], noisy["train_samples"], noisy["noise_copies"]) == (n, 2 * n, 1)
    a = load_file(str(tmp_path / "clean" / "teacher" / "model.safetensors"))
    b = load_file(str(tmp_path / "noisy" / "teacher" / "model.safetensors"))
    assert any(not np.array_equal(a[key], b[key]) for key in a)
    with pytest.raises(ValueError, match="'gaussian' is not a noise for text tasks"):
        adapt(text_task, replace(cfg, noise_copies=1, noise="gaussian:20"), tmp_path / "bad")


def test_sequence_teacher_through_inputs_embeds(seq_task, tmp_path):
    cfg = replace(TINY, attentions=True, layers=[0, 2])
    adapt(seq_task, cfg, tmp_path)
    extract(seq_task, cfg, tmp_path)
    k = load_file(str(tmp_path / "knowledge.safetensors"))
    for name in ("train", "val", "test"):
        n = len(getattr(seq_task, name).y)
        assert k[f"{name}.logits"].shape == (n, 2)
        assert k[f"{name}.hidden.0"].shape == k[f"{name}.hidden.2"].shape == (n, TINY.hidden_size)
        assert f"{name}.attn.0" not in k  # the embeddings have no attention
        assert k[f"{name}.attn.2"].shape == (n, 6, 6)
        _check_attention(k[f"{name}.attn.2"], [6] * n)
    assert teacher_accuracy(tmp_path / "knowledge.safetensors", seq_task)["test"] >= 0.8
    head = load_file(str(tmp_path / "teacher" / "classifier.safetensors"))
    assert head["proj.weight"].shape == (TINY.hidden_size, 3)
    assert head["proj.mean"].shape == head["proj.std"].shape == (3,)
    meta = json.loads((tmp_path / "teacher" / "teacher.json").read_text())
    assert meta["kind"] == "sequence" and meta["num_features"] == 3 and meta["pretrain_epochs"] == 0


def test_a_local_qwen2_teacher_is_adapted_head_only_and_extracted(text_task, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    _, tok = load_teacher(build_default_teacher(text_task, TINY, tmp_path / "ds"))
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=24, intermediate_size=48,
                                        num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1))
    qwen.save_pretrained(tmp_path / "qwen")
    tok.save_pretrained(tmp_path / "qwen")
    cfg = replace(TINY, source=str(tmp_path / "qwen"), pretrain_epochs=0, attentions=True, patience=5, adapt="full")
    adapt(text_task, cfg, tmp_path / "run")
    extract(text_task, cfg, tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "teacher" / "teacher.json").read_text())
    assert meta["model_type"] == "qwen2" and meta["train_backbone"] is False
    # Only the head trains, on features computed once: up to teacher.head_epochs, stopped by
    # teacher.patience once validation stops improving.
    assert meta["finetune_epochs"] < cfg.head_epochs and meta["val_accuracy"] is not None
    # The frozen backbone is saved unchanged.
    before = load_file(str(tmp_path / "qwen" / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "teacher" / "model.safetensors"))
    assert all(np.array_equal(before[key], after[key]) for key in before)
    k = load_file(str(tmp_path / "run" / "knowledge.safetensors"))
    n = len(text_task.test.y)
    assert k["test.logits"].shape == (n, 3)
    assert k["test.hidden.3"].shape == (n, 24) and "test.attn.1" in k
    assert 0.0 <= teacher_accuracy(tmp_path / "run" / "knowledge.safetensors", text_task)["test"] <= 1.0


def test_extract_refuses_a_teacher_adapted_to_other_labels(adapted_text, text_task, tmp_path):
    run, cfg = adapted_text
    other = replace(text_task, labels=["x", "y", "z"])
    with pytest.raises(TeacherError, match="labels"):
        extract(other, cfg, run)
    with pytest.raises(TeacherError, match="not an adapted teacher"):
        extract(text_task, cfg, tmp_path)


def test_teacher_accuracy_refuses_a_stale_cache(adapted_text, text_task):
    run, _ = adapted_text
    shorter = replace(text_task, test=_text_split(2, 5))
    with pytest.raises(TeacherError, match="test split"):
        teacher_accuracy(run / "knowledge.safetensors", shorter)


def test_augment_shuffles_and_drops_only_real_tokens():
    ids = torch.tensor([[1, 5, 6, 7, 8, 0, 0], [1, 9, 10, 11, 0, 0, 0]])
    mask = (ids != 0).long()
    gen = torch.Generator().manual_seed(0)
    shuffled = _augment(ids, mask, 0.0, 1.0, 3, gen)
    assert torch.equal(shuffled[:, 0], ids[:, 0]) and torch.equal(shuffled == 0, ids == 0)
    assert all(sorted(s.tolist()) == sorted(i.tolist()) for s, i in zip(shuffled, ids))
    dropped = _augment(ids, mask, 1.0, 0.0, 3, gen)
    assert torch.equal(dropped, torch.where((mask == 1) & (torch.arange(7) > 0), 3, ids))
    assert torch.equal(_augment(ids, mask, 0.0, 0.0, 3, gen), ids)


def test_a_text_without_tokens_is_read_as_one_pad_token():
    from tinyseek.teacher.build import special_tokens_tokenizer
    from tinyseek.teacher.classifier import tokenize
    tok = special_tokens_tokenizer()  # adds no bos, so "" has no tokens at all
    ids, mask = tokenize(tok, ["", "<eos> <eos>"], 8)
    assert ids.tolist() == [[tok.pad_token_id, tok.pad_token_id], [2, 2]]
    assert mask.tolist() == [[1, 0], [1, 1]]
    ids, mask = tokenize(tok, [""], 8)
    assert ids.tolist() == [[tok.pad_token_id]] and mask.tolist() == [[1]]


def test_the_adapted_teacher_writes_a_labelled_transfer_set(text_task, tmp_path):
    from tinyseek.teacher.adapt import _with_eos
    from tinyseek.teacher.transfer import read_transfer_set, write_transfer_set
    ids, mask = torch.tensor([[1, 5, 6, 0], [1, 7, 8, 9]]), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    e_ids, e_mask = _with_eos(ids, mask, 2)
    assert e_ids.tolist() == [[1, 5, 6, 2, 2], [1, 7, 8, 9, 2]] and e_mask.sum(1).tolist() == [4, 5]

    cfg = replace(TINY, transfer_samples=24, transfer_confidence=0.5, pretrain_epochs=3)
    adapt(text_task, cfg, tmp_path / "run")
    path = write_transfer_set(text_task, cfg, tmp_path / "run", log=lambda s: None)
    texts, y = read_transfer_set(path, text_task.labels)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert 0 < len(texts) <= 24 + len(text_task.labels) and len(set(texts)) == len(texts)
    known = set(text_task.train.texts) | set(text_task.val.texts) | set(text_task.test.texts)
    assert not set(texts) & known and all(t.strip() for t in texts)
    assert all(r["confidence"] >= 0.5 for r in rows) and set(y.tolist()) <= {0, 1, 2}
    # Seeded: the same teacher writes the same set.
    again = write_transfer_set(text_task, cfg, tmp_path / "run", log=lambda s: None)
    assert again.read_text() == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    assert write_transfer_set(text_task, replace(cfg, transfer_samples=0), tmp_path / "run") is None
    assert not path.exists()


def test_recombined_training_texts_make_a_transfer_set_without_a_language_model(adapted_text, text_task, tmp_path):
    """teacher.transfer_writer = "recombine": pairs of a class's training texts spliced, a piece
    swapped, inserted or left out (words; single characters in Chinese), kept where the head
    gives the class they came from; seeded."""
    import random

    from tinyseek.teacher.transfer import RECOMBINE, _join, _pieces, recombine, write_transfer_set
    assert _pieces("把灯 打开 now, please") == ["把", "灯", "打", "开", "now,", "please"]
    assert _join(_pieces("turn  the light on")) == "turn the light on" and _join(["把", "灯", "on"]) == "把灯on"
    a, b = "turn the kitchen light on", "switch on the lamp please"
    outs = {recombine(a, b, random.Random(k)) for k in range(200)}
    pa, pb = set(a.split()), set(b.split())
    assert len(outs) > 20 and all(set(o.split()) <= pa | pb for o in outs)
    assert {o for o in outs if len(o.split()) == 4 and set(o.split()) <= pa}  # a piece left out
    assert {o for o in outs if o.startswith("turn") and o.endswith("please")}  # spliced
    chinese = {recombine("把灯打开", "请开灯", random.Random(k)) for k in range(50)}
    assert all(" " not in o and set(o) <= set("把灯打开请") for o in chinese)

    run, cfg = adapted_text
    rcfg = replace(cfg, transfer_samples=9, transfer_confidence=0.0, transfer_writer=RECOMBINE)
    logs = []
    path = write_transfer_set(text_task, rcfg, run, log=logs.append)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    known = set(text_task.train.texts) | set(text_task.val.texts) | set(text_task.test.texts)
    assert rows and all(r["text"] and r["text"] not in known for r in rows)
    # Every kept text is made of pieces of its own class's training texts.
    for r in rows:
        c = text_task.labels.index(r["label"])
        pieces = {p for t, y in zip(text_task.train.texts, text_task.train.y) if y == c for p in _pieces(t)}
        assert set(_pieces(r["text"])) <= pieces, r
    assert any("recombined texts" in line for line in logs)
    assert write_transfer_set(text_task, rcfg, run, log=logs.append).read_text() == path.read_text()


def test_a_pretrained_writer_writes_the_transfer_set_the_teacher_labels(adapted_text, text_task, tmp_path):
    """teacher.transfer_writer: a pretrained LM (here a tiny random llama) continues lists of a
    class's training examples; what it writes is kept only where the teacher's head gives the
    class it was asked for."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tinyseek.teacher.classifier import load_adapted
    from tinyseek.teacher.transfer import _keep, _writer_prompt, write_transfer_set
    run, cfg = adapted_text
    _, tok = load_teacher(build_default_teacher(text_task, TINY, tmp_path / "ds"))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")

    # The prompt: the header, then examples in the script of the first one only, then "-".
    import random
    prompt = _writer_prompt(cfg, random.Random(0), ["开灯", "把灯打开", "lights on", "打开台灯"])
    lines = prompt.split("\n")
    assert lines[0] == cfg.transfer_prompt.strip() and lines[-1] == "-"
    scripts = {any("\u4e00" <= ch <= "\u9fff" for ch in line) for line in lines[1:-1]}
    assert len(lines) - 2 == (3 if scripts == {True} else 1) and len(scripts) == 1

    # The filter: a confident text is kept only for the class it was asked for.
    model, tokenizer, _ = load_adapted(run / "teacher")
    texts = ["switch on the lights please thanks", "tell me the current time now please"]
    probs = model(*__import__("tinyseek.teacher.classifier", fromlist=["tokenize"]).tokenize(
        tokenizer, texts, cfg.max_tokens)).softmax(-1).detach().numpy()
    heads = [int(np.argmax(p)) for p in probs]
    for asked, keeps in ((heads, 2), ([(h + 1) % 3 for h in heads], 0)):
        kept = {c: [] for c in range(3)}
        with torch.no_grad():
            assert _keep(model, tokenizer, replace(cfg, transfer_confidence=0.0), texts, set(), kept, 5,
                         asked) == keeps
        assert sorted(c for c in kept for _ in kept[c]) == (sorted(heads) if keeps else [])

    # One read of each prompt, its cache shared by the samples: the texts generate() writes when
    # it reads every prompt once per sample (prompts of different lengths: left padding).
    from tinyseek.teacher.transfer import WRITER_SAMPLES, load_writer, write_batch
    writer, wtok = load_writer(replace(cfg, transfer_writer=str(tmp_path / "llama"), dtype="float32"), run)
    prompts = [_writer_prompt(cfg, random.Random(k), [t for t in text_task.train.texts[:40]]) for k in range(3)]
    enc = wtok(prompts, return_tensors="pt", padding=True)
    assert len({int(m.sum()) for m in enc["attention_mask"]}) > 1
    stops = [wtok.eos_token_id]
    with torch.no_grad():
        shared = write_batch(writer, wtok, prompts, replace(cfg, max_tokens=12), stops, 5)
        torch.manual_seed(5)
        examples = [line for p in prompts for line in p.split("\n")[1:-1]]
        longest = max(len(ids) for ids in wtok(examples, add_special_tokens=False)["input_ids"])
        ids = writer.generate(**enc, do_sample=True, temperature=cfg.transfer_temperature, top_k=40, top_p=1.0,
                              max_new_tokens=min(12, longest * 3 // 2 + 2), num_return_sequences=WRITER_SAMPLES,
                              eos_token_id=stops, pad_token_id=wtok.pad_token_id)
    plain = [line.split("\n")[0].strip().lstrip("-").strip()
             for line in wtok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    assert len(shared) == len(prompts) * WRITER_SAMPLES and shared == plain and len(set(shared)) > 1

    # The whole path, seeded: the same writer and teacher write the same set.
    wcfg = replace(cfg, transfer_samples=6, transfer_confidence=0.0, transfer_writer=str(tmp_path / "llama"),
                   max_tokens=12)
    logs = []
    path = write_transfer_set(text_task, wcfg, run, log=logs.append)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    known = set(text_task.train.texts) | set(text_task.val.texts) | set(text_task.test.texts)
    assert rows and all(r["text"] and r["text"] not in known and "\n" not in r["text"] for r in rows)
    assert any("transfer set, round 1" in line for line in logs)
    assert write_transfer_set(text_task, wcfg, run, log=logs.append).read_text() == path.read_text()
    with pytest.raises(TeacherError, match="transfer_writer"):
        write_transfer_set(text_task, replace(wcfg, transfer_writer=str(tmp_path / "nothing")), run)


def test_a_base_inside_the_run_is_recorded_relative_to_the_teacher_folder(tmp_path, monkeypatch):
    """A GGUF's dequantized base/ lies in the run: teacher.json names it relative to the teacher
    folder (the run can move, and a relative models_dir works from any directory); a base
    elsewhere is named by its absolute path."""
    from tinyseek.teacher.adapt import _base_path
    from tinyseek.teacher.classifier import resolve_base
    monkeypatch.chdir(tmp_path)
    run = Path("models") / "r"
    (run / "base").mkdir(parents=True)
    (run / "teacher").mkdir()
    (tmp_path / "elsewhere").mkdir()
    inside = _base_path(run / "base", run / "teacher", run)
    assert inside == "../base" and resolve_base(run / "teacher", {"base": inside}).resolve() == (run / "base").resolve()
    outside = _base_path(Path("elsewhere"), run / "teacher", run)
    assert Path(outside).is_absolute() and Path(outside) == tmp_path / "elsewhere"
