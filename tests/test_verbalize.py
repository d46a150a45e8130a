"""Labels from the teacher (teacher.labels = "zero-shot"): verbaliser scoring after a prompt,
checked against hand-computed log-probabilities and on a tiny causal LM trained to answer
with the label words; unlabeled JSONL; the errors."""
import functools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from tinyseek.config import ConfigError, TaskConfig, TeacherConfig
from tinyseek.config import load as load_config
from tinyseek.data import DataError, Dataset, Split
from tinyseek.data.byo import UNLABELED, load_jsonl
from tinyseek.teacher import TeacherError, adapt, extract
from tinyseek.teacher.build import train_text_tokenizer
from tinyseek.teacher.classifier import load_adapted
from tinyseek.teacher.verbalize import (VerbalizerError, _cut, _encode_pairs, _join, default_verbalizer, resolve_verbalizers,
                                        zero_shot_from_meta, zero_shot_logits)

LABELS = ["lights_on", "lights_off", "ask_time"]
PHRASES = {0: ["turn on the lamp", "switch the light on", "make it bright"],
           1: ["turn off the lamp", "switch the light off", "make it dark"],
           2: ["what time is it", "tell me the hour", "is it late"]}
PROMPT = "text: {text}\nlabel:"


def _texts(seed, n_per_class=8):
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for label, phrases in PHRASES.items():
        for _ in range(n_per_class):
            texts.append(phrases[rng.integers(3)] + rng.choice(["", " now", " please", " thanks"]))
            y.append(label)
    return texts, np.array(y, dtype=np.int64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def answering_lm(tmp_path_factory):
    """A tiny qwen2 LM trained to continue PROMPT with its label's default verbaliser: two
    tokens each ("lights on", "lights off", "ask time"), two of them sharing the first."""
    texts, y = _texts(0)
    docs = [PROMPT.replace("{text}", t) + " " + default_verbalizer(LABELS[c]) for t, c in zip(texts, y)]
    tok = train_text_tokenizer(docs, 300)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True))
    enc = tok(docs, padding=True, return_tensors="pt")
    targets = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(100):
        loss = model(**enc, labels=targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("answering")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok, folder


# -- scoring ---------------------------------------------------------------------------------------

def test_the_trained_teacher_labels_its_texts_zero_shot(answering_lm):
    model, tok, _ = answering_lm
    texts, y = _texts(0)  # the texts it was trained on, now without their answers
    for score in ("mean", "sum"):
        logp = zero_shot_logits(model, tok, texts, LABELS, prompt=PROMPT, batch_size=7, score=score)
        assert logp.shape == (len(texts), 3) and logp.dtype == np.float32
        assert np.allclose(np.exp(logp).sum(1), 1.0, atol=1e-5)
        assert float(np.mean(logp.argmax(1) == y)) >= 0.9, score


def test_scores_equal_hand_computed_token_log_probs(answering_lm):
    """Sum or mean over a verbaliser's tokens, log-sum-exp over a label's verbalisers, softmax
    over labels; batching and padding change nothing."""
    model, tok, _ = answering_lm
    texts = ["turn on the lamp", "is it late now please", "make it dark"]
    verbs = {"lights_on": ["lights on", "bright"], "lights_off": "lights off", "ask_time": ["ask time"]}

    @functools.cache
    def word_log_prob(text, word):
        prefix = tok(PROMPT.replace("{text}", text))["input_ids"]
        full = tok(PROMPT.replace("{text}", text) + " " + word)["input_ids"]
        assert full[:len(prefix)] == prefix
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([full])).logits[0].log_softmax(-1)
        return [float(logp[p - 1, full[p]]) for p in range(len(prefix), len(full))]

    for score, reduce in (("sum", np.sum), ("mean", np.mean)):
        want = []
        for text in texts:
            labels = [np.logaddexp.reduce([reduce(word_log_prob(text, w)) for w in ([v] if isinstance(v, str) else v)])
                      for v in verbs.values()]
            want.append(np.array(labels) - np.logaddexp.reduce(labels))
        for batch_size in (1, 3):
            got = zero_shot_logits(model, tok, texts, LABELS, verbs, PROMPT, batch_size, score)
            assert np.allclose(got, np.array(want), atol=1e-4), (score, batch_size)
    _, conts = _encode_pairs(tok, [PROMPT.replace("{text}", texts[0])], ["lights on", "lights off", "bright"])
    assert [len(c) for c in conts[0][:2]] == [2, 2] and conts[0][0][0] == conts[0][1][0]  # "lights" shared
    assert len(conts[0][2]) > 1


def test_a_few_shot_prompt_is_read_once_for_all_texts(answering_lm, monkeypatch):
    """The prompt's lines before the text (here labelled examples) are read once; every pass
    starts from their cache and reads only the text's own tokens, with the same scores as
    reading each prompt whole (multi-token verbalisers, several batches)."""
    model, tok, _ = answering_lm
    texts, _ = _texts(1, 3)
    examples = "".join(f"text: {t}\nlabel: {default_verbalizer(LABELS[c])}\n" for t, c in zip(*_texts(2, 1)))
    prompt = "Label each text.\n" + examples + PROMPT
    verbs = {"ask_time": ["ask time", "time"]}
    whole = zero_shot_logits(model, tok, texts, LABELS, verbs, prompt, 4, share_prefix=False)
    widths = []
    forward = model.model.forward
    monkeypatch.setattr(model.model, "forward", functools.wraps(forward)(
        lambda *a, **k: widths.append(k["input_ids"].shape[1]) or forward(*a, **k)))
    shared = zero_shot_logits(model, tok, texts, LABELS, verbs, prompt, 4)
    assert np.allclose(shared, whole, atol=1e-5)
    assert (np.argmax(shared, 1) == np.argmax(whole, 1)).all()
    lines = len(tok("Label each text.\n" + examples)["input_ids"])
    longest = max(len(tok(prompt.replace("{text}", t))["input_ids"]) for t in texts)
    assert widths[0] == lines and 1 < len(widths) and max(widths[1:]) <= longest - lines + 1  # + a verbaliser token


def test_prompt_boundary_and_text_cut(answering_lm):
    _, tok, _ = answering_lm
    assert _join("label:", "on") == ("label:", " on")
    assert _join("label: ", "on") == ("label:", " on")  # the trailing space moves into the word
    assert _join("label:\n", "on") == ("label:\n", "on")
    assert _join("意图：", "开灯") == ("意图：", "开灯")
    assert _join("类别", "lights") == ("类别", "lights")
    long = "turn on the lamp " * 10
    cut = _cut(tok, [long, "is"], 3)
    assert cut[1] == "is" and long.startswith(cut[0]) and len(cut[0]) < len(long)
    assert len(tok(cut[0], add_special_tokens=False)["input_ids"]) == 3


# -- verbalisers and prompts -------------------------------------------------------------------------

def test_verbalizers_default_to_label_names_and_bad_ones_are_refused():
    assert resolve_verbalizers(LABELS) == {"lights_on": ["lights on"], "lights_off": ["lights off"],
                                           "ask_time": ["ask time"]}
    assert resolve_verbalizers(LABELS, {"ask_time": "time"})["ask_time"] == ["time"]
    with pytest.raises(VerbalizerError, match=r"labels \['lamp'\] that the task does not have"):
        resolve_verbalizers(LABELS, {"lamp": ["lamp"]})
    with pytest.raises(VerbalizerError, match="one or more non-empty words"):
        resolve_verbalizers(LABELS, {"ask_time": [" "]})
    with pytest.raises(VerbalizerError, match="given for both 'lights_on' and 'lights_off'"):
        resolve_verbalizers(LABELS, {"lights_on": "light", "lights_off": ["light"]})
    assert issubclass(VerbalizerError, TeacherError) and issubclass(VerbalizerError, ValueError)


def test_scoring_errors_name_the_setting(answering_lm):
    model, tok, _ = answering_lm
    with pytest.raises(VerbalizerError, match=r"no \{text\} placeholder"):
        zero_shot_logits(model, tok, ["x"], LABELS, prompt="label:")
    with pytest.raises(VerbalizerError, match="verbalizer_score 'max'"):
        zero_shot_logits(model, tok, ["x"], LABELS, prompt=PROMPT, score="max")
    with pytest.raises(VerbalizerError, match="at least 2 labels"):
        zero_shot_logits(model, tok, ["x"], ["only"], prompt=PROMPT)
    assert zero_shot_logits(model, tok, [], LABELS, prompt=PROMPT).shape == (0, 3)


@pytest.mark.parametrize("overrides, message", [
    ({"teacher.labels": "few-shot"}, "teacher.labels must be head or zero-shot"),
    ({"teacher.labels": "zero-shot", "teacher.prompt": "label:"}, r"\{text\} placeholder"),
    ({"teacher.labels": "zero-shot", "task.kind": "npz", "task.train": "x.npz"}, "needs a text task"),
    ({"teacher.verbalizers": {"a": 3}}, "teacher.verbalizers must be a table"),
    ({"teacher.verbalizer_score": "max"}, "verbalizer_score mean or sum"),
    ({"task.kind": "jsonl", "task.train": "t.jsonl", "task.labels": ["a", "a"]}, "name each class once"),
    ({"task.labels": ["a", "b"]}, "jsonl tasks only"),
])
def test_bad_zero_shot_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


# -- unlabeled JSONL -----------------------------------------------------------------------------------

def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unlabeled_jsonl_is_accepted_with_task_labels(tmp_path):
    texts, y = _texts(1, 6)
    rows = [{"text": t} for t in texts[:-2]] + [{"text": texts[-2], "label": None},
                                              {"text": texts[-1], "label": "ask_time"}]
    train = _write(tmp_path / "train.jsonl", rows)
    test = _write(tmp_path / "test.jsonl", [{"text": "turn on the lamp", "label": "lights_on"}, {"text": "x"}])
    ds = load_jsonl(TaskConfig(kind="jsonl", train=str(train), test=str(test), labels=LABELS))
    assert ds.labels == LABELS
    y_all = np.concatenate([ds.train.y, ds.val.y])
    assert len(y_all) == len(rows) and (y_all == UNLABELED).sum() == len(rows) - 1 and (y_all == 2).sum() == 1
    assert sorted(ds.train.texts + ds.val.texts) == sorted(texts)
    assert ds.test.y.tolist() == [0, UNLABELED]


def test_unlabeled_jsonl_errors_say_how_to_label_it(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"text": "turn on the lamp", "label": "lights_on"},
                                              {"text": "what time is it"}])
    with pytest.raises(DataError, match=r"line 2: missing key 'label'.*task.labels.*zero-shot"):
        load_jsonl(TaskConfig(kind="jsonl", train=str(train)))
    with pytest.raises(DataError, match=r"labels 'lights_on' are not in task.labels \(on, off\)"):
        load_jsonl(TaskConfig(kind="jsonl", train=str(train), labels=["on", "off"]))
    _write(train, [{"label": "on"}])
    with pytest.raises(DataError, match="missing key 'text'"):
        load_jsonl(TaskConfig(kind="jsonl", train=str(train), labels=["on", "off"]))


def test_scores_count_labeled_test_samples_only():
    from tinyseek.harness.evaluate import confusion, labeled_accuracy
    from tinyseek.harness.report import render_markdown

    y, pred = np.array([0, UNLABELED, 2, UNLABELED, 1]), np.array([0, 2, 1, 1, 1])
    assert labeled_accuracy(pred, y) == pytest.approx(2 / 3)
    assert labeled_accuracy(pred, np.full(5, UNLABELED)) is None
    assert confusion(pred, y, 3) == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]  # the unlabeled rows are left out
    report = {"model": {"name": "m", "hash": "h"}, "task": {"name": "t", "kind": "text", "labels": LABELS,
                                                            "test_samples": 5, "test_labeled": 0},
              "teacher": {"accuracy": None}, "student": {"float_accuracy": None, "int8_accuracy": None,
                                                         "params": 1, "weight_bytes": 1},
              "retention": None, "agreement_int8_float": 1.0, "agreement_int8_teacher": 0.8}
    text = render_markdown(report)
    assert "| student, int8 (integer reference) | n/a |" in text
    assert "5 test samples have no label: the accuracies count the 0 labeled ones" in text and "80.00 %" in text


# -- the teacher stage ------------------------------------------------------------------------------------

def _unlabeled_task():
    texts, y = _texts(0)
    split = lambda idx: Split(y=np.full(len(idx), UNLABELED, np.int64), texts=[texts[i] for i in idx], x=None)  # noqa: E731
    labelled_val = Split(y=y[::3], texts=texts[::3], x=None)  # a few labels, to measure the teacher by
    return Dataset(name="unlabeled", kind="text", labels=LABELS, train=split(range(len(texts))), val=labelled_val,
                   test=split(range(0, len(texts), 4))), y


def test_zero_shot_teacher_needs_no_labels_and_no_head(answering_lm, tmp_path):
    _, _, folder = answering_lm
    task, y = _unlabeled_task()
    cfg = TeacherConfig(source=str(folder), adapt="none", labels="zero-shot", prompt=PROMPT,
                        verbalizers={"ask_time": ["ask time"]}, dtype="float32", device="cpu")
    out = adapt(task, cfg, tmp_path / "run")
    meta = json.loads((out / "teacher.json").read_text())
    assert meta["labels_from"] == "zero-shot" and meta["finetune_epochs"] == 0
    assert meta["zero_shot"] == {"prompt": PROMPT, "score": "mean", "verbalizers": {
        "lights_on": ["lights on"], "lights_off": ["lights off"], "ask_time": ["ask time"]}}
    assert not (out / "classifier.safetensors").exists() and not (out / "model.safetensors").exists()
    model, tok, meta = load_adapted(out)
    assert model.head is None
    with pytest.raises(TeacherError, match="no classification head"):
        model(torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
    logp = zero_shot_from_meta(model, tok, task.train.texts, meta)
    assert float(np.mean(logp.argmax(1) == y)) >= 0.9
    # The knowledge cache holds that distribution as the logits (log-probabilities).
    cache = load_file(str(extract(task, replace(cfg, shard_size=10), tmp_path / "run")))
    assert np.allclose(cache["train.logits"], logp, atol=1e-5)
    assert np.allclose(np.exp(cache["test.logits"]).sum(1), 1.0, atol=1e-5)


def test_a_head_needs_labels_and_zero_shot_needs_text(answering_lm, tmp_path):
    _, _, folder = answering_lm
    task, _ = _unlabeled_task()
    cfg = TeacherConfig(source=str(folder), adapt="none", prompt=PROMPT, dtype="float32", device="cpu")
    with pytest.raises(TeacherError, match=r"none of the 24 training samples has a label.*teacher.labels = \"zero-shot\""):
        adapt(task, cfg, tmp_path)
    # A head labels unlabeled training samples, but validation and test measure against labels.
    ty = np.asarray(task.train.y).copy()
    ty[:6] = [0, 1, 2, 0, 1, 2]
    with pytest.raises(TeacherError, match=r"6 test samples have no label.*training split only.*labelled task.val"):
        adapt(replace(task, train=replace(task.train, y=ty)), cfg, tmp_path)
    seq = Split(y=np.zeros(4, np.int64), texts=None, x=np.zeros((4, 3, 2), np.float32))
    with pytest.raises(TeacherError, match="is a sequence task"):
        adapt(Dataset("s", "sequence", ["a", "b"], seq, seq, seq), replace(cfg, labels="zero-shot"), tmp_path)
    with pytest.raises(VerbalizerError, match="does not have"):
        adapt(task, replace(cfg, labels="zero-shot", verbalizers={"lamp": ["lamp"]}), tmp_path)
    assert not (tmp_path / "teacher").exists()


def test_a_head_learns_from_the_labelled_samples_and_labels_the_rest(answering_lm, tmp_path):
    """Semi-supervised: training samples without a label are left out of the head's training
    and get the head's logits in the cache; teacher.json counts them."""
    _, _, folder = answering_lm
    texts, y = _texts(0)
    ty = y.copy()
    ty[1::2] = UNLABELED
    labelled_test = Split(y=y[::4], texts=texts[::4], x=None)
    task = Dataset(name="few", kind="text", labels=LABELS, train=Split(y=ty, texts=texts, x=None),
                   val=Split(y=y[::3], texts=texts[::3], x=None), test=labelled_test)
    cfg = TeacherConfig(source=str(folder), adapt="none", dtype="float32", device="cpu", head_epochs=40)
    meta = json.loads((adapt(task, cfg, tmp_path / "run") / "teacher.json").read_text())
    assert meta["unlabeled_samples"] == len(texts) // 2
    cache = load_file(str(extract(task, cfg, tmp_path / "run")))
    assert cache["train.logits"].shape == (len(texts), len(LABELS))
    # The samples it never saw a label of get mostly their true class (chance is 1/3).
    assert float(np.mean(cache["train.logits"][1::2].argmax(1) == y[1::2])) >= 0.75


def test_few_shot_labels_put_labelled_examples_into_the_prompt(answering_lm, tmp_path):
    """teacher.shots: k labelled training examples per class, as teacher.example, go into the
    prompt (at {examples}, or before it), seeded, the classes interleaved; teacher.json records
    the prompt with them, so the extraction scores the same; unlabelled rows are never examples."""
    _, _, folder = answering_lm
    task, y = _unlabeled_task()
    ty = np.asarray(task.train.y).copy()
    ty[[0, 1, 8, 9, 16, 17]] = [0, 0, 1, 1, 2, 2]  # two labelled examples per class, the rest unlabelled
    task = replace(task, train=replace(task.train, y=ty))
    cfg = TeacherConfig(source=str(folder), adapt="none", labels="zero-shot", prompt=PROMPT, shots=2,
                        example="text: {text}\nlabel: {label}\n", verbalizers={"ask_time": ["ask time"]},
                        dtype="float32", device="cpu")
    meta = json.loads((adapt(task, cfg, tmp_path / "run") / "teacher.json").read_text())
    prompt = meta["zero_shot"]["prompt"]
    assert meta["zero_shot"]["shots"] == 2 and prompt.endswith(PROMPT) and prompt.count("label:") == 7
    words = {"lights on": 0, "lights off": 1, "ask time": 2}
    lines = prompt.split("\n")
    pairs = [(t, words[w[len("label: "):]]) for t, w in zip(lines[0:12:2], lines[1:12:2])]
    assert all(t.startswith("text: ") for t, _ in pairs)
    assert sorted((task.train.texts.index(t[6:]), c) for t, c in pairs) == [(0, 0), (1, 0), (8, 1), (9, 1),
                                                                             (16, 2), (17, 2)]
    assert {c for _, c in pairs[:3]} == {c for _, c in pairs[3:]} == {0, 1, 2}  # interleaved, not by class
    # {examples} in the prompt places them there; more shots than labelled examples is an error.
    placed = adapt(task, replace(cfg, prompt="Examples:\n{examples}" + PROMPT), tmp_path / "run2")
    assert json.loads((placed / "teacher.json").read_text())["zero_shot"]["prompt"].startswith("Examples:\ntext: ")
    with pytest.raises(TeacherError, match=r"teacher.shots = 3.*2 labelled example\(s\) of 'lights_on'"):
        adapt(task, replace(cfg, shots=3), tmp_path / "run3")
