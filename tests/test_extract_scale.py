"""Teacher size: dtype and device settings, the hub-name error, and the sharded, resumable
knowledge extraction, on a tiny teacher so the whole file runs in seconds."""
import importlib
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from tinyseek.config import ConfigError, TeacherConfig
from tinyseek.config import load as load_config
from tinyseek.data import Dataset, Split
from tinyseek.teacher import TeacherError, adapt, build_default_teacher, extract, load_teacher
from tinyseek.teacher.classifier import mean_pool, split_inputs, trim
from tinyseek.pipeline import hash_files
from tinyseek.teacher.extract import PARTS_DIR, hash_folder, load_for_extraction
from tinyseek.teacher.load import AUTO_BF16_PARAMS, count_parameters, resolve_device, resolve_dtype

# The module, not the function of the same name that tinyseek.teacher exports.
extract_mod = importlib.import_module("tinyseek.teacher.extract")
TINY = TeacherConfig(hidden_size=32, num_layers=2, num_heads=2, pretrain_epochs=0, finetune_epochs=2,
                     batch_size=16, lr=3e-3, dtype="float32", device="cpu", layers=[0, 1, 2], attentions=True,
                     noise_copies=0)
BATCH = 4
PHRASES = ["turn on the lights", "lights off please", "what time is it", "set a timer for ten minutes",
           "play some music in the kitchen", "stop"]


def _split(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    texts = [PHRASES[rng.integers(len(PHRASES))] + " " * int(rng.integers(2)) + ["", " now", " thanks"][i % 3]
             for i in range(n)]
    return Split(y=y.astype(np.int64), texts=texts, x=None)


@pytest.fixture(scope="module")
def task():
    return Dataset(name="tiny", kind="text", labels=["a", "b", "c"],
                   train=_split(22, 0), val=_split(9, 1), test=_split(0, 2))  # an empty split too


@pytest.fixture(scope="module")
def adapted(task, tmp_path_factory):
    """A run folder with an adapted teacher, and its knowledge extracted in one shard per split."""
    run = tmp_path_factory.mktemp("run")
    adapt(task, TINY, run)
    extract(task, replace(TINY, shard_size=10_000), run, batch_size=BATCH)
    return run, load_file(str(run / "knowledge.safetensors")), _metadata(run / "knowledge.safetensors")


def _metadata(path):
    with safe_open(str(path), "np") as f:
        return f.metadata()


def _copy_teacher(run, tmp_path):
    shutil.copytree(run / "teacher", tmp_path / "teacher")
    return tmp_path


class Interrupted(Exception):
    pass


def _stop_after(count):
    seen = []

    def callback(split, k, path):
        seen.append((split, k))
        if len(seen) == count:
            raise Interrupted
    return callback


@pytest.fixture
def counted(monkeypatch):
    """The sample count of every shard actually computed, in order."""
    computed = []
    real = extract_mod._run_shard

    def run_shard(model, shard, *args):
        computed.append(len(shard.mask))
        return real(model, shard, *args)
    monkeypatch.setattr(extract_mod, "_run_shard", run_shard)
    return computed


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


# -- sharding ------------------------------------------------------------------------------------

def test_shards_merge_to_the_unsharded_cache(adapted, task, tmp_path):
    run, reference, ref_meta = adapted
    run2 = _copy_teacher(run, tmp_path)
    stamps = []

    def check(split, k, path):
        assert path == run2 / PARTS_DIR / f"{split}-{k:05d}.safetensors"
        meta = _metadata(path)
        stamps.append(meta["stamp"])
        assert len(meta["stamp"]) == len(meta["content"]) == 64
    extract(task, replace(TINY, shard_size=8), run2, batch_size=BATCH, on_shard=check)
    assert len(stamps) == len(set(stamps)) == 3 + 2  # train 22 -> 3 shards, val 9 -> 2, test none
    merged = load_file(str(run2 / "knowledge.safetensors"))
    _assert_same(merged, reference)
    assert _metadata(run2 / "knowledge.safetensors") == ref_meta
    assert merged["test.logits"].shape == (0, 3) and merged["train.attn.2"].shape[0] == 22
    assert not (run2 / PARTS_DIR).exists()


def test_hooked_layers_equal_the_models_hidden_states_and_attentions(adapted, task):
    run, reference, _ = adapted
    model, tok, meta = load_for_extraction(run / "teacher", "float32", "cpu")
    inputs, mask = split_inputs(tok, task.train, "text", meta["max_tokens"])
    with torch.no_grad():
        for start in range(0, len(mask), BATCH):
            inp, m = trim(inputs[start:start + BATCH], mask[start:start + BATCH])
            out = model.encode(inp, m, output_hidden_states=True, output_attentions=True)
            rows = slice(start, start + len(m))
            assert len(out.hidden_states) == 3
            for layer in (0, 1, 2):
                expected = mean_pool(out.hidden_states[layer], m).numpy()
                assert np.allclose(reference[f"train.hidden.{layer}"][rows], expected, atol=1e-6), layer
            for layer in (1, 2):
                real = m.float()
                a = (out.attentions[layer - 1].mean(1) * real[:, :, None] * real[:, None, :]).half().numpy()
                t = m.shape[1]
                assert np.array_equal(reference[f"train.attn.{layer}"][rows, :t, :t], a)
    assert np.abs(reference["train.hidden.0"] - reference["train.hidden.2"]).max() > 1e-3


def test_an_interrupted_extraction_resumes_with_only_the_missing_shards(adapted, task, tmp_path, counted):
    run, reference, _ = adapted
    run2 = _copy_teacher(run, tmp_path)
    cfg = replace(TINY, shard_size=8)
    with pytest.raises(Interrupted):
        extract(task, cfg, run2, batch_size=BATCH, on_shard=_stop_after(3))
    assert sorted(p.name for p in (run2 / PARTS_DIR).glob("*.safetensors")) == [
        "train-00000.safetensors", "train-00001.safetensors", "train-00002.safetensors"]
    assert not (run2 / "knowledge.safetensors").exists()
    counted.clear()
    resumed = []
    extract(task, cfg, run2, batch_size=BATCH, on_shard=lambda s, k, p: resumed.append((s, k)))
    assert resumed == [("val", 0), ("val", 1)] and counted == [8, 1]
    _assert_same(load_file(str(run2 / "knowledge.safetensors")), reference)


def test_a_truncated_or_corrupt_shard_is_redone_with_a_warning(adapted, task, tmp_path, counted):
    run, reference, _ = adapted
    run2 = _copy_teacher(run, tmp_path)
    cfg = replace(TINY, shard_size=8)
    with pytest.raises(Interrupted):
        extract(task, cfg, run2, batch_size=BATCH, on_shard=_stop_after(4))
    parts = run2 / PARTS_DIR
    truncated = (parts / "train-00000.safetensors").read_bytes()
    (parts / "train-00000.safetensors").write_bytes(truncated[: len(truncated) // 2])
    flipped = bytearray((parts / "train-00002.safetensors").read_bytes())
    flipped[-3] ^= 0xFF  # inside the tensor data: the header still parses
    (parts / "train-00002.safetensors").write_bytes(bytes(flipped))
    counted.clear()
    redone = []
    with pytest.warns(UserWarning) as caught:
        extract(task, cfg, run2, batch_size=BATCH, on_shard=lambda s, k, p: redone.append((s, k)))
    messages = [str(w.message) for w in caught]
    assert any("train-00000.safetensors is unreadable" in m for m in messages)
    assert any("train-00002.safetensors is corrupt" in m for m in messages)
    assert redone == [("train", 0), ("train", 2), ("val", 1)] and counted == [8, 6, 1]
    _assert_same(load_file(str(run2 / "knowledge.safetensors")), reference)


def test_shards_of_other_settings_are_stale_and_redone_quietly(adapted, task, tmp_path, counted, recwarn):
    run, _, _ = adapted
    run2 = _copy_teacher(run, tmp_path)
    with pytest.raises(Interrupted):
        extract(task, replace(TINY, shard_size=8), run2, batch_size=BATCH, on_shard=_stop_after(2))
    counted.clear()
    extract(task, replace(TINY, shard_size=8, layers=[2]), run2, batch_size=BATCH)
    assert counted == [8, 8, 6, 8, 1] and not recwarn.list
    assert {k for k in load_file(str(run2 / "knowledge.safetensors")) if k.startswith("val.")} == {
        "val.logits", "val.hidden.2", "val.attn.2"}


def test_the_teacher_hash_is_streamed_and_equals_the_pipelines(adapted):
    run, _, meta = adapted
    assert meta["teacher_hash"] == hash_files(run / "teacher") == hash_folder(run / "teacher", chunk=1000)
    assert hash_folder(run / "teacher") != hash_folder(run / "teacher" / "..")


def test_a_zero_shot_teacher_caches_its_verbaliser_scores_shard_by_shard(task, tmp_path):
    from tinyseek.teacher.verbalize import zero_shot_from_meta
    cfg = replace(TINY, labels="zero-shot", attentions=False, shard_size=8)
    adapt(task, cfg, tmp_path)
    k = load_file(str(extract(task, cfg, tmp_path, batch_size=BATCH)))
    model, tok, meta = load_for_extraction(tmp_path / "teacher", "float32", "cpu")
    assert model.head is None
    want = zero_shot_from_meta(model, tok, task.train.texts, meta, BATCH)
    assert k["train.logits"].shape == (22, 3) and np.allclose(k["train.logits"], want, atol=1e-5)
    assert np.allclose(np.exp(k["val.logits"]).sum(1), 1.0, atol=1e-5)
    assert k["train.hidden.2"].shape == (22, TINY.hidden_size)


# -- dtype and device ------------------------------------------------------------------------------

def test_bfloat16_extraction_of_text_and_sequence_teachers(adapted, task, tmp_path):
    run, reference, _ = adapted
    run2 = _copy_teacher(run, tmp_path / "text")
    extract(task, replace(TINY, dtype="bfloat16", shard_size=8), run2, batch_size=BATCH)
    bf16 = load_file(str(run2 / "knowledge.safetensors"))
    assert bf16.keys() == reference.keys()
    for key in bf16:
        assert bf16[key].dtype == reference[key].dtype and bf16[key].shape == reference[key].shape
    assert not np.array_equal(bf16["train.logits"], reference["train.logits"])  # it did run in bfloat16
    assert np.allclose(bf16["train.logits"], reference["train.logits"], atol=0.1)
    assert np.allclose(bf16["train.hidden.2"], reference["train.hidden.2"], atol=0.1)
    model, _, _ = load_for_extraction(run2 / "teacher", "bfloat16", "cpu")
    assert model.backbone.dtype == torch.bfloat16 and model.head.weight.dtype == torch.float32

    rng = np.random.default_rng(0)
    seq = Dataset(name="seq", kind="sequence", labels=["a", "b"],
                  train=Split(y=rng.integers(0, 2, 12), texts=None, x=rng.normal(size=(12, 5, 3)).astype(np.float32)),
                  val=Split(y=np.zeros(0, np.int64), texts=None, x=np.zeros((0, 5, 3), np.float32)),
                  test=Split(y=rng.integers(0, 2, 6), texts=None, x=rng.normal(size=(6, 5, 3)).astype(np.float32)))
    cfg = replace(TINY, finetune_epochs=1, dtype="bfloat16")
    adapt(seq, cfg, tmp_path / "seq")
    k = load_file(str(extract(seq, cfg, tmp_path / "seq", batch_size=BATCH)))
    assert k["test.logits"].shape == (6, 2) and k["train.attn.2"].shape == (12, 5, 5)
    assert np.isfinite(k["train.hidden.1"]).all() and k["train.hidden.1"].dtype == np.float32


def test_auto_dtype_is_bfloat16_only_for_large_teachers(task, tmp_path):
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", AUTO_BF16_PARAMS, cpu) == torch.float32
    assert resolve_dtype("auto", 7_000_000_000, cpu) == torch.bfloat16
    assert resolve_dtype("float16", 10, cpu) == torch.float16
    with pytest.raises(TeacherError, match="teacher.dtype 'fp8' is unknown; choose auto, bfloat16"):
        resolve_dtype("fp8", 10, cpu)
    folder = build_default_teacher(task, TINY, tmp_path / "t")
    model, _ = load_teacher(folder, dtype="auto")
    assert model.dtype == torch.float32
    assert count_parameters(model.config) == sum(p.numel() for p in model.parameters()) < AUTO_BF16_PARAMS
    assert load_teacher(folder, dtype="bfloat16")[0].dtype == torch.bfloat16
    with pytest.raises(TeacherError, match="unknown"):
        load_teacher(folder, dtype="int4")


def test_auto_device_follows_cuda_and_cuda_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(TeacherError, match="sees no CUDA GPU.*teacher.device = \"auto\" or \"cpu\""):
        resolve_device("cuda")
    with pytest.raises(TeacherError, match="'tpu' is unknown"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.parametrize("key, value, message", [
    ("teacher.dtype", "fp8", "teacher.dtype must be"), ("teacher.device", "tpu", "teacher.device must be"),
    ("teacher.shard_size", 0, "teacher.shard_size must be >= 1")])
def test_size_settings_are_validated(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={key: value})


# -- the hub-name error ----------------------------------------------------------------------------

def test_a_hub_name_says_how_to_get_the_files(task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TeacherError) as e:
        load_teacher("deepseek-ai/deepseek-llm-7b-base")
    msg = str(e.value)
    assert "only local paths" in msg and "teacher.source" in msg
    assert "huggingface-cli download deepseek-ai/deepseek-llm-7b-base --local-dir deepseek-llm-7b-base" in msg
    # The same name as an existing folder is a local path.
    build_default_teacher(task, TINY, tmp_path / "deepseek-ai" / "deepseek-llm-7b-base")
    model, _ = load_teacher("deepseek-ai/deepseek-llm-7b-base")
    assert model.config.model_type == "deepseek_v3"
