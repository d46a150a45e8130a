"""Distillation: the loss parts, a small training run end to end, determinism and the
knowledge-cache checks. Datasets and knowledge caches are synthetic and built here."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

from tinyseek.config import load
from tinyseek.data import Dataset, Split
from tinyseek.distill import DistillError, distill, distill_loss, evaluate, load_knowledge, predict_logits
from tinyseek.distill.train import cached_layers, drop_tokens, fold_input_norm, input_norm, prepare
from tinyseek.student import load_student

KEYWORDS = [["lamp", "light"], ["song", "music"], ["rain", "sunny"]]
FILLER = "the a please could you now my in at for to it is".split()


def text_dataset(n_train=300, seed=0, n_val=90) -> Dataset:
    """Three classes, each marked by one keyword somewhere among 1-4 filler words."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, 3, n)
        texts = []
        for c in y:
            words = list(rng.choice(FILLER, rng.integers(1, 5)))
            words.insert(rng.integers(0, len(words) + 1), KEYWORDS[c][rng.integers(0, 2)])
            texts.append(" ".join(words))
        return Split(y=y.astype(np.int64), texts=texts, x=None)

    return Dataset("toy", "text", ["lights", "music", "weather"], split(n_train), split(n_val), split(60))


def sequence_dataset(seed=0) -> Dataset:
    """Two classes: the sign of the mean of feature 0 over a sequence of 6 steps."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, 2, n)
        x = rng.normal(0, 1, (n, 6, 3)).astype(np.float32)
        x[:, :, 0] += np.where(y == 1, 1.0, -1.0)[:, None]
        return Split(y=y.astype(np.int64), texts=None, x=x)

    return Dataset("toyseq", "sequence", ["neg", "pos"], split(200), split(60), split(60))


def write_knowledge(path, ds: Dataset, layers=(1, 3), dim=12, seed=0, metadata=True):
    """Teacher logits and pooled hidden states correlated with the labels (plus noise)."""
    rng = np.random.default_rng(seed)
    c = len(ds.labels)
    arrays = {}
    for name in ("train", "val", "test"):
        y = getattr(ds, name).y
        onehot = np.eye(c)[y]
        arrays[f"{name}.logits"] = (4 * onehot + rng.normal(0, 1, (len(y), c))).astype(np.float32)
        for layer in layers:
            proj = rng.normal(0, 1, (c, dim))
            arrays[f"{name}.hidden.{layer}"] = (onehot @ proj + rng.normal(0, 0.5, (len(y), dim)) + 7).astype(np.float32)
    meta = {"layers": json.dumps(list(layers)), "num_classes": str(c), "teacher_hash": "test"} if metadata else None
    save_file(arrays, str(path), metadata=meta)
    return path


def small_cfg(**extra):
    # The joint schedule: these tests check one training loop's epochs and losses (test_distill_schedule: the stages).
    return load(overrides={"distill.schedule": "joint", "student.hidden": 16, "student.embed_dim": 8, "student.vocab_size": 128,
                           "student.max_len": 12, "distill.epochs": 10, "distill.noise_copies": 0, "distill.batch_size": 32,
                           "distill.lr": 1e-2, **extra})


# -- the loss -----------------------------------------------------------------------------

def _loss_inputs(seed=0, n=8, c=5, d=6):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, requires_grad=True)
    t = torch.randn(n, c, generator=g) * 3
    y = torch.randint(0, c, (n,), generator=g)
    sf = torch.randn(n, d, generator=g, requires_grad=True)
    tf = torch.randn(n, d, generator=g)
    return s, t, y, sf, tf


def test_alpha_one_is_pure_kl_with_t_squared():
    s, t, y, sf, tf = _loss_inputs()
    T = 3.0
    total, parts = distill_loss(s, t, y, sf, tf, alpha=1.0, T=T, beta=0.0)
    p = torch.softmax(t / T, 1)
    kl = (p * (torch.log(p) - torch.log_softmax(s / T, 1))).sum(1).mean()
    torch.testing.assert_close(total, T * T * kl)
    assert parts["kl"] == pytest.approx(float(T * T * kl.detach()), rel=1e-5)
    assert parts["total"] == pytest.approx(parts["kl"], rel=1e-6) and parts["feature"] == 0.0
    same, _ = distill_loss(t.clone(), t, y, None, None, alpha=1.0, T=T, beta=0.0)
    assert abs(float(same)) < 1e-5


def test_alpha_zero_is_pure_cross_entropy():
    s, t, y, sf, tf = _loss_inputs()
    total, parts = distill_loss(s, t, y, sf, tf, alpha=0.0, T=4.0, beta=0.0)
    torch.testing.assert_close(total, F.cross_entropy(s, y))
    assert parts["kl"] > 0 and parts["total"] == pytest.approx(parts["ce"], rel=1e-6)


def test_feature_term_is_scale_free_cosine_and_off_at_beta_zero():
    s, t, y, sf, tf = _loss_inputs()
    base, _ = distill_loss(s, t, y, None, None, alpha=0.5, T=2.0, beta=0.0)
    total, parts = distill_loss(s, t, y, sf, tf, alpha=0.5, T=2.0, beta=0.3)
    expect = (1 - F.cosine_similarity(sf, tf, dim=1)).mean().detach()
    assert parts["feature"] == pytest.approx(float(expect), rel=1e-5)
    torch.testing.assert_close(total, base + 0.3 * expect)
    _, scaled = distill_loss(s, t, y, sf, 1000 * tf, alpha=0.5, T=2.0, beta=0.3)
    assert scaled["feature"] == pytest.approx(parts["feature"], rel=1e-5)
    _, aligned = distill_loss(s, t, y, 2 * tf, tf, alpha=0.5, T=2.0, beta=0.3)
    assert aligned["feature"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="needs student_feat"):
        distill_loss(s, t, y, None, tf, alpha=0.5, T=2.0, beta=0.3)
    with pytest.raises(ValueError, match="teacher width"):
        distill_loss(s, t, y, sf[:, :3], tf, alpha=0.5, T=2.0, beta=0.3)


def test_gradients_flow_to_logits_and_features():
    s, t, y, sf, tf = _loss_inputs()
    total, _ = distill_loss(s, t, y, sf, tf, alpha=0.7, T=4.0, beta=0.1)
    total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert sf.grad is not None and sf.grad.abs().sum() > 0


# -- the knowledge cache ------------------------------------------------------------------

def test_cached_layers_reads_metadata_or_keys():
    keys = {"train.logits", "train.hidden.4", "train.hidden.12", "train.hidden.0"}
    assert cached_layers({"layers": "[2, 5]"}, keys) == [2, 5]
    assert cached_layers({"layers": "2,5,7"}, keys) == [2, 5, 7]
    assert cached_layers(None, keys) == [0, 4, 12]
    with pytest.raises(DistillError, match="not a list of integers"):
        cached_layers({"layers": "two"}, keys)


def test_load_knowledge_picks_the_feature_layer(tmp_path):
    ds = text_dataset(n_train=20)
    path = write_knowledge(tmp_path / "k.safetensors", ds, layers=(1, 3, 5))
    logits, hidden, layer = load_knowledge(path, "train", -1)
    assert logits.shape == (20, 3) and hidden.shape == (20, 12) and layer == 5
    assert load_knowledge(path, "train", 0)[2] == 1
    assert load_knowledge(path, "train", None)[1] is None
    with pytest.raises(DistillError, match=r"feature_layer = 3 is out of range.*\[1, 3, 5\]"):
        load_knowledge(path, "train", 3)
    with pytest.raises(DistillError, match="missing: run `tinyseek teacher`"):
        load_knowledge(tmp_path / "none.safetensors", "train", -1)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage!")
    with pytest.raises(DistillError, match="not a readable knowledge cache"):
        load_knowledge(tmp_path / "bad.safetensors", "train", -1)


def test_distill_rejects_a_cache_from_another_dataset(tmp_path):
    path = write_knowledge(tmp_path / "k.safetensors", text_dataset(n_train=20))
    with pytest.raises(DistillError, match=r"'train.logits' has shape \[20, 3\], expected \[30, 3\]"):
        distill(text_dataset(n_train=30), path, small_cfg(), tmp_path, progress=False)


def test_drop_tokens_removes_words_and_closes_gaps():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (200, 9), generator=g)
    lengths = torch.randint(0, 10, (200,), generator=g)
    ids[torch.arange(9)[None, :] >= lengths[:, None]] = 0
    same, same_len = drop_tokens(ids, lengths, 0.0, g)
    assert torch.equal(same, ids) and torch.equal(same_len, lengths)
    out, out_len = drop_tokens(ids, lengths, 0.3, g)
    assert bool((out_len <= lengths).all()) and out_len.sum() < lengths.sum()
    for row, n, new, m in zip(ids.tolist(), lengths.tolist(), out.tolist(), out_len.tolist()):
        kept, it = new[:m], iter(row[:n])
        assert all(tok in it for tok in kept)  # an ordered subsequence of the original
        assert 0 not in kept and new[m:] == [0] * (9 - m)
    empty, empty_len = drop_tokens(ids, lengths, 1.0, g)
    assert int(empty_len.sum()) == 0 and int(empty.abs().sum()) == 0


def test_drop_tokens_keeps_or_drops_a_subword_group_whole():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (50, 7, 4), generator=g)
    lengths = torch.randint(0, 8, (50,), generator=g)
    ids[torch.arange(7)[None, :] >= lengths[:, None]] = 0
    out, out_len = drop_tokens(ids, lengths, 0.4, g)
    assert out_len.sum() < lengths.sum()
    for row, n, new, m in zip(ids.tolist(), lengths.tolist(), out.tolist(), out_len.tolist()):
        kept, it = new[:m], iter(row[:n])
        assert all(group in it for group in kept)  # whole groups, in their order
        assert new[m:] == [[0] * 4] * (7 - m)


# -- training -----------------------------------------------------------------------------

def test_tiny_text_distillation_learns_and_writes_the_student(tmp_path):
    ds = text_dataset()
    knowledge = write_knowledge(tmp_path / "knowledge.safetensors", ds)
    # One keyword carries each label here, so dropping words would only remove the signal.
    out = distill(ds, knowledge, small_cfg(), tmp_path, word_dropout=0.0, progress=False)
    assert out == tmp_path / "student"
    for name in ("student.safetensors", "student.json", "history.json"):
        assert (out / name).is_file()
    model, spec = load_student(out)
    assert spec.labels == ds.labels and spec.hidden == 16 and spec.vocab_size == 128
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["epochs"]) == 10 and hist["teacher_layer"] == 3
    accs = [e["val_accuracy"] for e in hist["epochs"]]
    assert hist["best_val_accuracy"] == max(accs) == accs[hist["best_epoch"] - 1]
    # The saved model is the best epoch's, not the last one's.
    assert evaluate(model, spec, ds.val) == pytest.approx(hist["best_val_accuracy"])
    assert hist["best_val_accuracy"] >= 0.9
    assert evaluate(model, spec, ds.test) >= 0.85
    assert hist["epochs"][-1]["loss_total"] < hist["epochs"][0]["loss_total"]
    assert 0 < hist["max_abs_cell"][0] < 8
    logits = predict_logits(model, spec, ds.test)
    assert logits.shape == (60, 3) and logits.dtype == np.float32


def test_distillation_is_deterministic(tmp_path):
    ds = text_dataset(n_train=120)
    knowledge = write_knowledge(tmp_path / "knowledge.safetensors", ds)
    cfg = small_cfg(**{"distill.epochs": 3})
    a = distill(ds, knowledge, cfg, tmp_path / "a", progress=False)
    b = distill(ds, knowledge, cfg, tmp_path / "b", progress=False)
    assert (a / "student.safetensors").read_bytes() == (b / "student.safetensors").read_bytes()
    assert (a / "history.json").read_text() == (b / "history.json").read_text()
    c = distill(ds, knowledge, small_cfg(**{"distill.epochs": 3, "distill.seed": 1}), tmp_path / "c", progress=False)
    assert (a / "student.safetensors").read_bytes() != (c / "student.safetensors").read_bytes()


def test_sequence_distillation_without_feature_matching(tmp_path):
    ds = sequence_dataset()
    # beta = 0 needs no hidden states in the cache at all.
    knowledge = write_knowledge(tmp_path / "knowledge.safetensors", ds, layers=())
    cfg = small_cfg(**{"distill.beta": 0.0, "distill.epochs": 6, "student.layers": 2})
    out = distill(ds, knowledge, cfg, tmp_path, progress=False)
    model, spec = load_student(out)
    assert (spec.kind, spec.num_features, spec.max_len, spec.vocab_size, spec.layers) == ("sequence", 3, 6, None, 2)
    hist = json.loads((out / "history.json").read_text())
    assert hist["teacher_layer"] is None and hist["epochs"][-1]["loss_feature"] == 0.0
    assert evaluate(model, spec, ds.val) >= 0.85


def test_sequence_students_learn_on_z_scores_and_save_a_model_of_the_raw_features(tmp_path):
    ds = sequence_dataset()
    shifted = Dataset(ds.name, ds.kind, ds.labels, *(Split(y=s.y, texts=None, x=s.x * 0.01 + 3.0)
                                                    for s in (ds.train, ds.val, ds.test)))
    knowledge = write_knowledge(tmp_path / "knowledge.safetensors", shifted, layers=())
    cfg = small_cfg(**{"distill.beta": 0.0, "distill.epochs": 2})
    tr = prepare(shifted, knowledge, cfg, progress=False)
    mean, std = tr.input_norm
    assert torch.allclose(tr.x.reshape(-1, 3).mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(tr.x.reshape(-1, 3).std(0), torch.ones(3), atol=1e-4)
    assert torch.allclose(mean, torch.full((3,), 3.0), atol=0.01)
    raw = torch.as_tensor(shifted.val.x)
    with torch.no_grad():
        on_z_scores = tr.model(tr.vx)
        fold_input_norm(tr.model, tr.input_norm)
        assert torch.allclose(tr.model(raw), on_z_scores, atol=1e-4)
    raw_trainer = prepare(shifted, knowledge, cfg, progress=False, standardize=False)  # as QAT trains a saved student
    assert raw_trainer.input_norm is None and torch.equal(raw_trainer.x, torch.as_tensor(shifted.train.x))
    # a constant feature divides by the floor, not by zero
    assert input_norm(torch.ones(2, 4, 3))[1].min() > 0
    out = distill(shifted, knowledge, small_cfg(**{"distill.beta": 0.0, "distill.epochs": 6}), tmp_path, progress=False)
    model, spec = load_student(out)
    assert evaluate(model, spec, shifted.val) >= 0.85  # the saved model reads the raw (shifted, squeezed) features
    hist = json.loads((out / "history.json").read_text())
    assert hist["train_accuracy"] == pytest.approx(evaluate(model, spec, shifted.train))


def test_cell_penalty_keeps_the_cell_state_small(tmp_path):
    ds = text_dataset(n_train=120)
    knowledge = write_knowledge(tmp_path / "knowledge.safetensors", ds)
    cfg = small_cfg(**{"distill.epochs": 4, "distill.lr": 3e-2})
    free = distill(ds, knowledge, cfg, tmp_path / "free", cell_weight=0.0, progress=False)
    held = distill(ds, knowledge, cfg, tmp_path / "held", cell_bound=0.5, cell_weight=100.0, progress=False)
    free_c = json.loads((free / "history.json").read_text())["max_abs_cell"][0]
    held_c = json.loads((held / "history.json").read_text())["max_abs_cell"][0]
    assert held_c < 1.0 < free_c


def test_unlabeled_samples_take_the_teachers_label(tmp_path):
    """A corpus without labels (y = -1, labelled zero-shot by the teacher) distills: the hard
    label of such a sample is the teacher's most likely class."""
    from dataclasses import replace

    from tinyseek.distill.train import teacher_labels_where_missing
    from tinyseek.teacher.extract import teacher_accuracy

    ds = text_dataset(n_train=60)
    knowledge = write_knowledge(tmp_path / "knowledge.safetensors", ds)
    y = ds.train.y.copy()
    y[::3] = -1
    unlabeled = replace(ds, train=replace(ds.train, y=y))
    teacher = load_knowledge(knowledge, "train", None)[0].argmax(1)
    filled = teacher_labels_where_missing(unlabeled, knowledge).train.y
    assert np.array_equal(filled[::3], teacher[::3]) and np.array_equal(np.delete(filled, np.s_[::3]), np.delete(y, np.s_[::3]))
    assert teacher_accuracy(knowledge, unlabeled)["train"] == pytest.approx(np.mean(teacher[y >= 0] == y[y >= 0]))
    out = distill(unlabeled, knowledge, small_cfg(**{"distill.epochs": 2}), tmp_path, progress=False)
    assert (out / "student.safetensors").is_file()


def test_noise_copies_train_on_corrupted_copies_with_the_clean_targets(tmp_path):
    """distill.noise_copies: every training sample appears again corrupted, learning its clean
    sample's teacher logits and hidden states; clean samples and validation are unchanged."""
    from tinyseek.distill.train import prepare

    ds = text_dataset(n_train=50)
    knowledge = write_knowledge(tmp_path / "knowledge.safetensors", ds)
    clean = prepare(ds, knowledge, small_cfg(), progress=False)
    noisy = prepare(ds, knowledge, small_cfg(**{"distill.noise_copies": 2, "distill.noise": "typo:0.2, filler:0.3"}),
                    progress=False)
    n = len(ds.train.y)
    assert len(noisy.y) == 3 * n and np.array_equal(noisy.y.numpy(), np.tile(ds.train.y, 3))
    assert np.array_equal(noisy.t_logits_np, np.tile(clean.t_logits_np, (3, 1)))
    for layer, feats in clean.t_feats.items():
        assert torch.allclose(noisy.t_feats[layer][:n], feats, atol=1e-5)  # standardized over 3x the rows
    # The first copy is the clean split itself; the others differ in some of their tokens.
    assert torch.equal(noisy.x[:n], clean.x) and torch.equal(noisy.vx, clean.vx)
    changed = [(noisy.x[k * n:(k + 1) * n] != clean.x).any(1).float().mean().item() for k in (1, 2)]
    assert all(0.3 < c < 1.0 for c in changed) and not torch.equal(noisy.x[n:2 * n], noisy.x[2 * n:])

    seq = sequence_dataset()
    seq_knowledge = write_knowledge(tmp_path / "seq.safetensors", seq, layers=())
    tr = prepare(seq, seq_knowledge, small_cfg(**{"distill.beta": 0.0, "distill.noise_copies": 1}), progress=False)
    assert len(tr.y) == 2 * len(seq.train.y) and not torch.equal(tr.x[:200], tr.x[200:])

    with pytest.raises(ValueError, match="'gaussian' is not a noise for text tasks"):
        prepare(ds, knowledge, small_cfg(**{"distill.noise_copies": 1, "distill.noise": "gaussian:20"}), progress=False)
    with pytest.raises(ValueError, match=r"distill.noise_copies must be -1 \(auto\) or 0..16"):
        small_cfg(**{"distill.noise_copies": -2})


def test_automatic_settings_scale_with_the_training_split():
    from dataclasses import replace

    from tinyseek.config import Config, scaled_settings
    c = Config()
    teacher, distill = scaled_settings(c.teacher, c.distill, 4320)  # the built-in task's measured settings
    assert (teacher.noise_copies, distill.noise_copies, distill.epochs) == (2, 6, 50)
    big_t, big_d = scaled_settings(c.teacher, c.distill, 100_000)
    assert big_t.noise_copies == 0 and big_d.noise_copies == 0 and big_d.epochs < 50
    assert 100_000 * (1 + big_d.noise_copies) * big_d.epochs <= 2 * 4320 * 7 * 50  # about the default's cost
    mid_d = scaled_settings(c.teacher, c.distill, 12_000)[1]
    assert 12_000 * (1 + mid_d.noise_copies) * mid_d.epochs <= 2 * 4320 * 7 * 50
    explicit = scaled_settings(c.teacher, replace(c.distill, noise_copies=3, epochs=7), 100_000)[1]
    assert (explicit.noise_copies, explicit.epochs) == (3, 7)
    # The progressive stages keep their epochs on the built-in task and shrink with the automatic epochs.
    assert (distill.stage1_epochs, distill.stage2_epochs, distill.stage3_epochs) == (8, 24, 6)
    assert big_d.stage2_epochs < 24 and big_d.stage3_epochs >= 1
    assert (explicit.stage1_epochs, explicit.stage2_epochs, explicit.stage3_epochs) == (1, 4, 1)  # 7 in all
