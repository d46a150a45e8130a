"""LoRA domain adaptation (teacher.adapt = "lora" | "none"): tiny deepseek_v3 and qwen2 teachers
built locally; adapters are the only weights that train, are saved alone, and load back (by
tinyseek and by peft) to the same outputs on an unchanged backbone."""
import importlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from tinyseek.config import ConfigError, TeacherConfig
from tinyseek.config import load as load_config
from tinyseek.data import Dataset, Split
from tinyseek.teacher import TeacherError, adapt, build_default_teacher, extract
from tinyseek.teacher.adapt import _pretrain
from tinyseek.teacher.build import tiny_deepseek_config, train_text_tokenizer
from tinyseek.teacher.classifier import (ADAPTER_FILE, TeacherClassifier, add_lora, base_fingerprint, load_adapted,
                                         lora_expert_parameters, lora_target_names, save_adapted, tokenize)

extract_module = importlib.import_module("tinyseek.teacher.extract")
TARGETS = TeacherConfig().lora_targets
LORA = TeacherConfig(hidden_size=32, num_layers=2, num_heads=2, pretrain_epochs=1, finetune_epochs=3,
                     batch_size=16, lr=3e-3, adapt="lora", lora_rank=4, dtype="float32", device="cpu",
                     noise_copies=0)
PHRASES = {0: ["turn on the lights", "lights on please", "switch the lamp on"],
           1: ["turn off the lights", "lights off please", "switch the lamp off"],
           2: ["what time is it", "tell me the time", "current time please"]}


def _split(n_per_class, seed):
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for label, phrases in PHRASES.items():
        for _ in range(n_per_class):
            texts.append(phrases[rng.integers(3)] + rng.choice(["", " now", " thanks"]))
            y.append(label)
    return Split(y=np.array(y, dtype=np.int64), texts=texts, x=None)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task():
    return Dataset(name="tiny", kind="text", labels=["on", "off", "time"], train=_split(12, 0), val=_split(3, 1),
                   test=_split(3, 2))


def _tiny_teacher(folder, task, model):
    """Save `model(vocab_size)` and a tokenizer trained on the task's texts as a teacher folder."""
    tok = train_text_tokenizer(task.train.texts, 300)
    torch.manual_seed(0)
    model(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen_dir(task, tmp_path_factory):
    """A tiny local qwen2 teacher folder (config, safetensors weights, tokenizer)."""
    return _tiny_teacher(tmp_path_factory.mktemp("qwen"), task, lambda vocab: Qwen2ForCausalLM(Qwen2Config(
        vocab_size=vocab, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1)))


@pytest.fixture(scope="module")
def gemma_dir(task, tmp_path_factory):
    """A tiny local gemma3 teacher folder: another decoder-only family through the same path."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    return _tiny_teacher(tmp_path_factory.mktemp("gemma"), task, lambda vocab: Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=vocab, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=12, sliding_window=8)))


def _deepseek(vocab_size=64):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_deepseek_config(vocab_size, 32, 2, 2, 16), attn_implementation="eager")


def _lora_names(model):
    return [n for n, _ in model.named_parameters() if "lora_" in n]


def _assert_base_unchanged(before: dict, after: dict) -> None:
    """Every base weight equal; peft keeps a wrapped layer's own weight and bias under `base_layer`."""
    for key, value in before.items():
        stem, leaf = key.rsplit(".", 1)
        got = after[key] if key in after else after[f"{stem}.base_layer.{leaf}"]
        assert torch.equal(got, value), key


# -- targets -------------------------------------------------------------------------------------

def test_targets_are_found_by_module_name_in_deepseek_v3_and_qwen2(qwen_dir):
    names = lora_target_names(_deepseek(), TARGETS)
    # MLA projections, the dense first MLP and the shared expert; routed experts are fused parameters
    assert {"0.self_attn.q_a_proj", "0.self_attn.kv_a_proj_with_mqa", "1.self_attn.kv_b_proj", "0.mlp.gate_proj",
            "1.mlp.shared_experts.down_proj"} <= set(names)
    assert not [n for n in names if ".experts." in n and "shared" not in n]
    qwen = AutoModelForCausalLM.from_pretrained(qwen_dir)
    assert {n.split(".", 1)[1] for n in lora_target_names(qwen, TARGETS)} == {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    with pytest.raises(TeacherError, match=r"name no linear layer.*q_proj"):
        lora_target_names(qwen, ["wq", "wk"])


def test_deepseek_adapters_cover_the_dense_and_shared_mlps():
    model = _deepseek()
    add_lora(model, 4, 8.0, TARGETS)
    names = _lora_names(model)
    assert any("layers.0.mlp.gate_proj.lora_A" in n for n in names)
    assert any("layers.1.mlp.shared_experts.up_proj.lora_B" in n for n in names)


def test_routed_experts_get_adapters_when_named_and_reload_to_the_same_outputs(task, tmp_path):
    """"experts" among the targets: each routed expert's fused weights get a low-rank update
    (peft target_parameters); it trains, saves and reloads like the Linear adapters."""
    tok = train_text_tokenizer(task.train.texts, 300)
    vocab = len(tok)
    assert lora_expert_parameters(_deepseek(vocab), TARGETS) == []
    backbone = _deepseek(vocab)
    config = add_lora(backbone, 4, 8.0, [*TARGETS, "experts"])
    assert {n.split(".", 3)[-1] for n in config.target_parameters} == {"mlp.experts.gate_up_proj",
                                                                        "mlp.experts.down_proj"}
    experts = [n for n in _lora_names(backbone) if ".mlp.experts." in n]
    assert experts and all(p.requires_grad for n, p in backbone.named_parameters() if n in experts)
    ids = torch.randint(0, vocab, (4, 10))
    backbone(input_ids=ids).logits.square().mean().backward()
    for name, p in backbone.named_parameters():
        if name in experts and "lora_A" in name:
            torch.nn.init.normal_(p, std=0.2)
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)  # a trained adapter is not the identity
    grads = {n: p.grad for n, p in backbone.named_parameters() if n in experts and "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())  # the router's picks train

    model = TeacherClassifier(backbone, 3).eval()
    base = tmp_path / "base"
    _deepseek(vocab).save_pretrained(base)
    meta = {"labels": ["on", "off", "time"], "kind": "text", "adapt": "lora", "labels_from": "head",
            "base": str(base), "base_fingerprint": base_fingerprint(base), "max_tokens": 10}
    save_adapted(model, tok, tmp_path / "teacher", meta, config)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = model(ids, mask)
        plain = TeacherClassifier(_deepseek(vocab), 3)
        plain.head.load_state_dict(model.head.state_dict())
        assert not torch.allclose(plain.eval()(ids, mask), want, atol=1e-4)
        loaded, _, _ = load_adapted(tmp_path / "teacher")
        assert torch.allclose(loaded(ids, mask), want, atol=1e-5)


# -- training touches only the adapters -----------------------------------------------------------

def test_only_adapters_train_and_the_backbone_stays_unchanged(qwen_dir, task):
    model, tok = AutoModelForCausalLM.from_pretrained(qwen_dir), AutoTokenizer.from_pretrained(qwen_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, 4, 8.0, TARGETS)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and set(trainable) == set(_lora_names(model))
    ids, mask = tokenize(tok, task.train.texts, 16)
    _pretrain(model, ids, mask, replace(LORA, pretrain_epochs=1), torch.Generator().manual_seed(0))
    after = model.state_dict()
    _assert_base_unchanged(before, after)
    assert any(after[n].abs().sum() > 0 for n in after if "lora_B" in n)  # B starts at 0 and has moved


def test_an_adapter_reloads_to_the_same_outputs_and_loads_with_peft(qwen_dir, task, tmp_path):
    torch.manual_seed(1)
    backbone, tok = AutoModelForCausalLM.from_pretrained(qwen_dir), AutoTokenizer.from_pretrained(qwen_dir)
    config = add_lora(backbone, 4, 8.0, TARGETS)
    for name, p in backbone.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)  # a trained adapter is not the identity
    model = TeacherClassifier(backbone, 3).eval()
    meta = {"labels": ["on", "off", "time"], "kind": "text", "adapt": "lora", "labels_from": "head",
            "base": str(qwen_dir), "base_fingerprint": base_fingerprint(qwen_dir), "max_tokens": 16}
    out = tmp_path / "teacher"
    save_adapted(model, tok, out, meta, config)
    ids, mask = tokenize(tok, task.test.texts, 16)
    with torch.no_grad():
        want_head, want_lm = model(ids, mask), backbone(input_ids=ids, attention_mask=mask).logits
    assert not (out / "model.safetensors").exists()
    adapter, base = (out / ADAPTER_FILE).stat().st_size, (qwen_dir / "model.safetensors").stat().st_size
    assert adapter < base / 2

    loaded, _, _ = load_adapted(out)
    with torch.no_grad():
        assert torch.allclose(loaded(ids, mask), want_head, atol=1e-5)
    from peft import PeftModel
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(qwen_dir), str(out)).eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids, attention_mask=mask).logits, want_lm, atol=1e-5)
        plain = AutoModelForCausalLM.from_pretrained(qwen_dir)(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(plain, want_lm, atol=1e-3)  # the adapter does change the model


# -- adapt end to end ------------------------------------------------------------------------------

def test_builtin_deepseek_teacher_adapted_with_lora_and_extracted(task, tmp_path):
    out = adapt(task, LORA, tmp_path / "run")
    meta = json.loads((out / "teacher.json").read_text())
    assert meta["adapt"] == "lora" and meta["model_type"] == "deepseek_v3" and meta["base"] == "base"
    assert not (out / "model.safetensors").exists() and (out / "adapter_config.json").is_file()
    assert {"q_a_proj", "kv_b_proj", "gate_proj", "down_proj"} <= set(meta["lora"]["targets"])
    assert 0 < meta["lora"]["adapter_parameters"] < meta["lora"]["backbone_parameters"] / 4
    # The base is the untrained built-in teacher, bit for bit: adaptation changed no backbone weight.
    fresh = load_file(str(build_default_teacher(task, LORA, tmp_path / "fresh") / "model.safetensors"))
    saved = load_file(str(out / "base" / "model.safetensors"))
    assert fresh.keys() == saved.keys() and all(torch.equal(fresh[k], saved[k]) for k in fresh)
    adapter = load_file(str(out / ADAPTER_FILE))
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    # The extraction loads base + adapter + head (classifier.load_adapted).
    cache = extract(task, LORA, tmp_path / "run")
    acc = extract_module.teacher_accuracy(cache, task)
    assert acc["val"] == pytest.approx(meta["val_accuracy"])  # the reloaded teacher predicts as the trained one
    assert load_file(str(cache))["test.logits"].shape == (len(task.test.y), 3)


def test_auto_adapts_a_pretrained_teacher_with_lora_and_the_builtin_in_full(task, qwen_dir, tmp_path):
    cfg = replace(LORA, adapt="auto", pretrain_epochs=0, finetune_epochs=1)
    out = adapt(task, replace(cfg, source=str(qwen_dir)), tmp_path / "pretrained")
    assert json.loads((out / "teacher.json").read_text())["adapt"] == "lora"
    out = adapt(task, replace(cfg, source="default"), tmp_path / "builtin")
    assert json.loads((out / "teacher.json").read_text())["adapt"] == "full"


@pytest.mark.parametrize("family", ["qwen_dir", "gemma_dir"])
def test_local_pretrained_teacher_adapted_with_lora(task, family, request, tmp_path):
    qwen_dir = request.getfixturevalue(family)
    cfg = replace(LORA, source=str(qwen_dir), finetune_epochs=2)
    out = adapt(task, cfg, tmp_path / "run")
    meta = json.loads((out / "teacher.json").read_text())
    assert meta["adapt"] == "lora" and meta["base"] == str(qwen_dir.resolve()) and not (out / "base").exists()
    model, tok, _ = load_adapted(out)
    _assert_base_unchanged(load_file(str(qwen_dir / "model.safetensors")), model.backbone.state_dict())
    with torch.no_grad():
        ids, mask = tokenize(tok, task.val.texts, cfg.max_tokens)
        acc = float((model(ids, mask).argmax(1).numpy() == task.val.y).mean())
    assert acc == pytest.approx(meta["val_accuracy"])  # the reloaded teacher predicts as the trained one


def test_none_keeps_the_base_and_notices_it_moving_or_changing(task, qwen_dir, tmp_path):
    import shutil
    base = tmp_path / "qwen"
    shutil.copytree(qwen_dir, base)
    out = adapt(task, replace(LORA, source=str(base), adapt="none"), tmp_path / "run")
    meta = json.loads((out / "teacher.json").read_text())
    assert meta["adapt"] == "none" and meta["pretrain_epochs"] == 0
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors") == ["classifier.safetensors"]
    model, _, _ = load_adapted(out)
    assert _lora_names(model) == [] and model.head.out_features == 3
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    with pytest.raises(TeacherError, match="changed since the teacher"):
        load_adapted(out)
    shutil.rmtree(base)
    with pytest.raises(TeacherError, match="does not exist any more"):
        load_adapted(out)


# -- settings ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    ({"teacher.adapt": "qlora"}, "teacher.adapt must be auto, full, lora or none"),
    ({"teacher.lora_rank": 0}, "lora_rank must be >= 1"),
    ({"teacher.lora_targets": []}, "lora_targets not empty"),
])
def test_bad_lora_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_adapt_refuses_unknown_mode_before_loading(task, tmp_path):
    with pytest.raises(TeacherError, match="teacher.adapt 'qlora' is unknown"):
        adapt(task, replace(LORA, adapt="qlora"), tmp_path)
    with pytest.raises(TeacherError, match="lora_rank >= 1"):
        adapt(task, replace(LORA, lora_rank=0), tmp_path)
    assert not (tmp_path / "teacher").exists()
