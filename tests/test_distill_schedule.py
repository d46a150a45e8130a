"""Distillation schedules: the layer mapping, what each progressive stage trains, the
temperature annealing, the feedback step and a tiny progressive run end to end. Datasets and
knowledge caches are synthetic and built here."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from test_distill import text_dataset as toy_text_dataset
from tinyseek.config import ConfigError, load
from tinyseek.data import Dataset
from tinyseek.distill import DistillError, distill, evaluate, feature_loss, train_student
from tinyseek.distill.schedule import (annealed_temperature, default_layer_map, feedback_targets, logit_stages,
                                       parse_layer_map, plan, resolve_layer_map)
from tinyseek.distill.train import layer_states, predict_inputs, prepare
from tinyseek.student import StudentSpec, load_student
from tinyseek.student.tinylstm import TinyLSTM, split_inputs

def text_dataset(n_train=150, seed=0) -> Dataset:
    """test_distill's toy task: three classes, each marked by one keyword among filler words."""
    return toy_text_dataset(n_train, seed, n_val=60)


def write_knowledge(path, ds: Dataset, layers=(1, 3), dim=12, seed=0, flip=0):
    """Teacher logits and pooled hidden states correlated with the labels; the teacher gets
    the first `flip` training samples wrong (so student and teacher can disagree there)."""
    rng = np.random.default_rng(seed)
    c = len(ds.labels)
    arrays = {}
    for name in ("train", "val", "test"):
        y = getattr(ds, name).y.copy()
        if name == "train":
            y[:flip] = (y[:flip] + 1) % c
        onehot = np.eye(c)[y]
        arrays[f"{name}.logits"] = (4 * onehot + rng.normal(0, 1, (len(y), c))).astype(np.float32)
        for layer in layers:
            proj = rng.normal(0, 1, (c, dim))
            arrays[f"{name}.hidden.{layer}"] = (onehot @ proj + rng.normal(0, 0.5, (len(y), dim)) + 7).astype(np.float32)
    save_file(arrays, str(path), metadata={"layers": json.dumps(list(layers)), "num_classes": str(c)})
    return path


def cfg(**extra):
    return load(overrides={"student.hidden": 16, "student.embed_dim": 8, "student.vocab_size": 128,
                           "student.max_len": 12, "distill.batch_size": 32, "distill.lr": 1e-2,
                           "distill.schedule": "progressive", "distill.stage1_epochs": 3,
                           "distill.stage2_epochs": 4, "distill.stage3_epochs": 2, "distill.noise_copies": 0,
                           **extra})


# prepare/run outside train_student: one thread, as train_student uses
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    ds = text_dataset()
    return ds, write_knowledge(tmp_path_factory.mktemp("k") / "knowledge.safetensors", ds, flip=15)


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- layer mapping ------------------------------------------------------------------------

def test_default_layer_map_spreads_cached_layers_last_to_last():
    assert default_layer_map([1, 3, 4], 1) == [(1, 0), (3, 0), (4, 0)]
    assert default_layer_map([12, 24, 36], 3) == [(12, 0), (24, 1), (36, 2)]
    assert default_layer_map([12, 24, 36], 2) == [(12, 0), (24, 1), (36, 1)]
    assert default_layer_map([8], 2) == [(8, 1)]
    assert default_layer_map([2, 4, 6, 8], 2) == [(2, 0), (4, 0), (6, 1), (8, 1)]


def test_layer_map_setting_is_parsed_and_checked_against_the_cache():
    assert parse_layer_map(" 12:0, 24:1 ,36 : 2") == [(12, 0), (24, 1), (36, 2)]
    assert resolve_layer_map("", [1, 3], 1) == [(1, 0), (3, 0)]
    assert resolve_layer_map("3:0", [1, 3], 2) == [(3, 0)]
    with pytest.raises(DistillError, match=r"teacher layer 7, which the knowledge cache does not hold: "
                                           r"the cached layers are \[1, 3\]"):
        resolve_layer_map("1:0, 7:0", [1, 3], 1)
    with pytest.raises(DistillError, match=r"student layer 1, but the student has 1 LSTM layer\(s\), numbered 0..0"):
        resolve_layer_map("3:1", [1, 3], 1)
    with pytest.raises(DistillError, match="'3-0' is not 'teacher:student'"):
        parse_layer_map("1:0, 3-0")
    with pytest.raises(DistillError, match="names a teacher layer twice"):
        parse_layer_map("3:0, 3:1")
    with pytest.raises(DistillError, match="holds no hidden states"):
        resolve_layer_map("", [], 1)
    with pytest.raises(ConfigError, match="distill.layer_map"):
        load(overrides={"distill.layer_map": "12->0"})


def test_training_names_the_cached_layers_for_an_unmapped_teacher_layer(toy, tmp_path):
    ds, knowledge = toy
    with pytest.raises(DistillError, match=r"teacher layer 2, which .* cached layers are \[1, 3\]"):
        distill(ds, knowledge, cfg(**{"distill.layer_map": "2:0"}), tmp_path, progress=False)
    # The joint schedule without feature matching needs no hidden state at all.
    tr = prepare(ds, knowledge, cfg(**{"distill.schedule": "joint", "distill.beta": 0.0, "distill.layer_map": "2:0"}),
                 progress=False)
    assert tr.pairs == [] and tr.t_feats == {}


def test_layer_states_are_each_layers_last_real_step():
    torch.manual_seed(0)
    spec = cfg().student
    model = TinyLSTM(StudentSpec(kind="text", labels=["a", "b"], hidden=spec.hidden, layers=2, embed_dim=spec.embed_dim,
                                 vocab_size=spec.vocab_size, max_len=spec.max_len))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 128, (9, 7), generator=g)
    lengths = torch.tensor([7, 1, 3, 0, 5, 7, 2, 6, 4])
    stepped, cells = layer_states(model, x, lengths, cells=True)
    packed, none = layer_states(model, x, lengths, cells=False)
    assert stepped.shape == (2, 9, 16) and none is None and cells.shape == (9, 7, 2, 16)
    torch.testing.assert_close(stepped, packed, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stepped[-1], model.encode(x, lengths), rtol=1e-5, atol=1e-6)
    _, ref_cells = model.cell_states(x, lengths)
    torch.testing.assert_close(cells, ref_cells)
    # Layer 0 alone: a one-layer LSTM with layer 0's weights.
    one = torch.nn.LSTM(spec.embed_dim, spec.hidden, batch_first=True)
    one.load_state_dict({k: v for k, v in model.lstm.state_dict().items() if k.endswith("_l0")})
    out, _ = one(model.embed(x))
    want = out[torch.arange(9), (lengths - 1).clamp(min=0)] * (lengths > 0)[:, None]
    torch.testing.assert_close(stepped[0], want, rtol=1e-5, atol=1e-6)
    assert float(stepped[:, 3].detach().abs().sum()) == 0.0


def test_feature_loss_averages_the_pairs_and_mse_asks_for_the_magnitude():
    g = torch.Generator().manual_seed(0)
    s1, t1, s2, t2 = (torch.randn(6, 5, generator=g) for _ in range(4))
    one, two = feature_loss(s1, t1), feature_loss(s2, t2)
    torch.testing.assert_close(feature_loss([s1, s2], [t1, t2]), (one + two) / 2)
    assert float(feature_loss(2 * t1, t1)) == pytest.approx(0.0, abs=1e-6)
    assert float(feature_loss(2 * t1, t1, "mse")) == pytest.approx(float(t1.pow(2).mean()), rel=1e-5)
    torch.testing.assert_close(feature_loss(s1, t1, "mse"), (s1 - t1).pow(2).mean())
    w = torch.tensor([1.0, 0, 0, 0, 0, 0])
    torch.testing.assert_close(feature_loss(s1, t1, "mse", w), (s1[0] - t1[0]).pow(2).mean())
    with pytest.raises(ValueError, match="one per mapped layer pair"):
        feature_loss([s1, s2], [t1])


# -- the stages ---------------------------------------------------------------------------

def test_plan_has_the_three_stages_and_their_objectives():
    d = cfg(**{"distill.temperature_start": 6.0, "distill.temperature_end": 1.5, "distill.hard_weight": 0.2}).distill
    features, logits, finetune = plan(d)
    assert (features.kl, features.ce, features.feature, features.select) == (0.0, 0.0, 1.0, False)
    assert (logits.kl, logits.ce, logits.feature, logits.temperature) == (0.8, 0.2, 0.0, (6.0, 1.5))
    assert (finetune.kl, finetune.ce, finetune.feature, finetune.lr) == (0.0, 1.0, 0.0, d.stage3_lr)
    assert logit_stages(d) == [logits, finetune]
    d.stage2_beta = 0.2  # stage 2 may keep matching features
    assert plan(d)[1].feature == 0.2 and plan(d)[2].feature == 0.0
    joint = plan(cfg(**{"distill.schedule": "joint", "distill.epochs": 30}).distill)
    assert [(s.name, s.kl, s.ce, s.feature) for s in joint] == [("joint", 0.7, pytest.approx(0.3), 0.1)]
    assert [s.name for s in plan(cfg(**{"distill.stage1_epochs": 0}).distill)] == ["logits", "finetune"]


def test_annealed_temperature_runs_from_start_to_the_end_value():
    ts = [annealed_temperature(8.0, 1.0, e, 8) for e in range(1, 9)]
    assert ts[0] == 8.0 and ts[-1] == 1.0 and all(a > b for a, b in zip(ts, ts[1:]))
    assert annealed_temperature(8.0, 1.0, 1, 1) == 1.0


def test_stage_1_trains_only_the_encoder_and_projections_on_the_feature_loss(toy):
    ds, knowledge = toy
    tr = prepare(ds, knowledge, cfg(**{"distill.stage1_epochs": 4, "distill.batch_size": 16}), progress=False)
    head, proj, lstm = _params(tr.model.head), _params(tr.proj), _params(tr.model.lstm)
    tr.run(plan(tr.d)[0])
    assert [r["stage"] for r in tr.history] == ["features"] * 4
    feat = [r["loss_feature"] for r in tr.history]
    assert all(a > b for a, b in zip(feat, feat[1:])) and feat[-1] < 0.9 * feat[0]
    assert all(r["loss_total"] == pytest.approx(r["loss_feature"] + r["loss_cell"], rel=1e-4) for r in tr.history)
    for k, v in _params(tr.model.head).items():
        assert torch.equal(v, head[k]), f"stage 1 changed head {k}"
    assert all(not torch.equal(v, proj[k]) for k, v in _params(tr.proj).items())
    assert not torch.equal(_params(tr.model.lstm)["weight_ih_l0"], lstm["weight_ih_l0"])
    assert tr.best_state is None  # a stage without a classifier never competes for the best epoch


def test_stage_2_anneals_the_temperature_to_the_end_value(toy):
    ds, knowledge = toy
    c = cfg(**{"distill.stage1_epochs": 0, "distill.stage2_epochs": 5, "distill.stage3_epochs": 0,
               "distill.temperature_start": 5.0, "distill.temperature_end": 1.0})
    tr = prepare(ds, knowledge, c, progress=False)
    proj = _params(tr.proj)
    tr.run(plan(c.distill)[0])
    ts = [r["temperature"] for r in tr.history]
    assert ts == [5.0, 4.0, 3.0, 2.0, 1.0]
    assert all(r["loss_feature"] == 0.0 for r in tr.history)
    assert all(torch.equal(v, proj[k]) for k, v in _params(tr.proj).items())
    assert tr.history[-1]["loss_ce"] < tr.history[0]["loss_ce"] and tr.best_state is not None


def test_stage_3_learns_from_the_hard_labels_only(toy):
    ds, knowledge = toy
    c = cfg(**{"distill.stage1_epochs": 0, "distill.stage2_epochs": 0, "distill.stage3_epochs": 2})
    finetune, = plan(c.distill)
    states = []
    for garble in (False, True):
        tr = prepare(ds, knowledge, c, progress=False)
        if garble:  # other teacher logits and features: stage 3 must not see them
            tr.t_logits = torch.randn(tr.t_logits.shape, generator=torch.Generator().manual_seed(3)) * 10
            tr.t_feats = {t: -f for t, f in tr.t_feats.items()}
        tr.run(finetune)
        states.append(_params(tr.model))
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    # ... but the hard labels do matter.
    tr = prepare(ds, knowledge, c, progress=False)
    tr.run(finetune, labels=(tr.y + 1) % 3)
    assert not torch.equal(_params(tr.model)["head.weight"], states[0]["head.weight"])


# -- feedback -----------------------------------------------------------------------------

def test_feedback_reweights_or_relabels_exactly_the_disagreeing_samples():
    rng = np.random.default_rng(0)
    teacher = rng.normal(0, 1, (50, 4)).astype(np.float32)
    student = teacher.copy()
    flip = np.array([3, 7, 8, 20, 49])
    student[flip] = np.roll(student[flip], 1, axis=1)
    disagree_ref = student.argmax(1) != teacher.argmax(1)
    assert disagree_ref.sum() >= 3
    labels, weights = rng.integers(0, 4, 50), np.ones(50, np.float32)
    weights[3] = 2.0
    new_labels, new_weights, disagree = feedback_targets(labels, weights, teacher, student, "reweight", 3.0)
    assert np.array_equal(disagree, disagree_ref) and np.array_equal(new_labels, labels)
    assert np.array_equal(new_weights, np.where(disagree_ref, weights * 3.0, weights))
    assert weights[3] == 2.0  # the inputs are not modified
    new_labels, new_weights, _ = feedback_targets(labels, weights, teacher, student, "relabel", 3.0)
    assert np.array_equal(new_labels, np.where(disagree_ref, teacher.argmax(1), labels))
    assert np.array_equal(new_weights, weights)


@pytest.mark.slow
def test_progressive_run_with_feedback_end_to_end(toy, tmp_path):
    ds, knowledge = toy
    c = cfg(**{"distill.feedback_rounds": 1, "distill.feedback_weight": 4.0, "distill.batch_size": 16,
               "distill.stage1_epochs": 2, "distill.stage2_epochs": 6, "distill.lr": 3e-2, "distill.stage3_lr": 3e-3})
    out = distill(ds, knowledge, c, tmp_path, word_dropout=0.0, progress=False)
    hist = json.loads((out / "history.json").read_text())
    stages = [(r["round"], r["stage"]) for r in hist["epochs"]]
    assert stages == [(0, "features")] * 2 + [(0, "logits")] * 6 + [(0, "finetune")] * 2 \
        + [(1, "logits")] * 6 + [(1, "finetune")] * 2
    assert hist["schedule"] == "progressive" and hist["layer_map"] == [[1, 0], [3, 0]] and hist["teacher_layer"] == 3
    assert hist["best_stage"] != "features"
    accs = [r.get("val_accuracy") for r in hist["epochs"]]
    assert hist["best_val_accuracy"] == max(a for a, (_, s) in zip(accs, stages) if s != "features")
    model, spec = load_student(out)
    assert evaluate(model, spec, ds.val) == pytest.approx(hist["best_val_accuracy"])
    assert evaluate(model, spec, ds.test) >= 0.85

    # The feedback round counted the round-0 model's disagreements with the teacher: that model
    # is what the same run without feedback returns.
    first = train_student(ds, knowledge, load(overrides={**_flat(c), "distill.feedback_rounds": 0}),
                          word_dropout=0.0, progress=False)
    student = predict_inputs(first.model, *split_inputs(ds.train, first.spec)).numpy()
    with safe_open(str(knowledge), "np") as f:
        teacher = f.get_tensor("train.logits")
    (fb,) = hist["feedback"]
    assert fb["disagree"] == int((student.argmax(1) != teacher.argmax(1)).sum()) >= 10
    assert hist["epochs"][:10] == first.summary["epochs"]


def _flat(c) -> dict:
    return {f"{section}.{k}": v for section in ("student", "distill") for k, v in getattr(c, section).__dict__.items()}
