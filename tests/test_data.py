import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from tinyseek.config import TaskConfig
from tinyseek.data import DataError, Dataset, Split, load_task
from tinyseek.data import intents
from tinyseek.student.tokenizer import HashTokenizer

CJK = re.compile("[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def default():
    return load_task(TaskConfig())


def _digest(ds: Dataset) -> str:
    h = hashlib.sha256()
    for split in (ds.train, ds.val, ds.test):
        h.update("\n".join(split.texts).encode())
        h.update(split.y.tobytes())
        h.update(split.groups.tobytes())
    return h.hexdigest()


# -- the built-in intents task ------------------------------------------------------------
def test_same_config_same_data(default):
    again = load_task(TaskConfig())
    for a, b in ((default.train, again.train), (default.val, again.val), (default.test, again.test)):
        assert a.texts == b.texts
        assert np.array_equal(a.y, b.y) and np.array_equal(a.groups, b.groups)
    assert _digest(load_task(TaskConfig(seed=1))) != _digest(default)


def test_same_data_in_another_process_with_another_hash_seed(default):
    code = ("import hashlib,sys; sys.path.insert(0, %r); from test_data import _digest; "
            "from tinyseek.config import TaskConfig; from tinyseek.data import load_task; "
            "print(_digest(load_task(TaskConfig())))") % os.path.dirname(__file__)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest(default)


def test_shape_and_labels(default):
    assert default.kind == "text" and default.name == "intents"
    assert default.labels == intents.INTENTS and "out_of_domain" in default.labels and len(default.labels) >= 13
    for split in (default.train, default.val, default.test):
        assert split.y.dtype == np.int64 and split.x is None
        assert len(split.texts) == len(split.y) == len(split.groups)
        assert all(isinstance(t, str) and t.strip() for t in split.texts)
        assert not any("{" in t or "}" in t for t in split.texts)


def test_every_split_is_class_balanced_with_the_configured_sizes(default):
    cfg = TaskConfig()
    per_lang_test = round(cfg.samples_per_intent * intents.TEST_TEMPLATE_FRACTION)
    per_lang_val = round(cfg.samples_per_intent * cfg.val_fraction)
    expected = {"train": cfg.samples_per_intent - per_lang_test - per_lang_val, "val": per_lang_val,
                "test": per_lang_test}
    C, L = len(default.labels), len(cfg.languages)
    for name, n in expected.items():
        counts = Counter(getattr(default, name).y.tolist())
        assert sorted(counts) == list(range(C))
        assert set(counts.values()) == {n * L}, name


def test_both_languages_in_every_split_and_class(default):
    for split in (default.train, default.val, default.test):
        zh = np.array([bool(CJK.search(t)) for t in split.texts])
        assert 0.45 < zh.mean() < 0.55
        for c in range(len(default.labels)):
            assert zh[split.y == c].any() and (~zh[split.y == c]).any()
        # A sample's language is the language of its template.
        langs = np.array([intents.TEMPLATE_TABLE[g][0] == "zh" for g in split.groups])
        assert np.array_equal(zh, langs)


def test_one_language_gives_the_same_samples_as_its_part_of_both(default):
    en = load_task(TaskConfig(languages=["en"]))
    assert not any(CJK.search(t) for t in en.train.texts + en.test.texts)
    both = {t for t in default.train.texts if not CJK.search(t)}
    assert set(en.train.texts) == both


def test_test_split_uses_only_held_out_templates(default):
    train_groups = set(default.train.groups) | set(default.val.groups)
    test_groups = set(default.test.groups)
    assert not train_groups & test_groups
    train_templates = {intents.TEMPLATE_TABLE[g] for g in train_groups}
    test_templates = {intents.TEMPLATE_TABLE[g] for g in test_groups}
    assert not {t for _, _, t in train_templates} & {t for _, _, t in test_templates}
    assert not set(default.test.texts) & (set(default.train.texts) | set(default.val.texts))
    for lang in ("en", "zh"):
        for intent in intents.INTENTS:
            n = len(intents.TEMPLATES[lang][intent])
            held = [t for l, i, t in test_templates if (l, i) == (lang, intent)]
            assert 0.15 <= len(held) / n <= 0.35
            assert len([t for l, i, t in train_templates if (l, i) == (lang, intent)]) == n - len(held)


def test_validation_is_held_out_by_template_like_the_test(default):
    assert default.split_by == "templates"
    groups = {name: set(getattr(default, name).groups.tolist()) for name in ("train", "val", "test")}
    assert not groups["train"] & groups["val"] and not groups["val"] & groups["test"]
    assert not groups["train"] & groups["test"]
    assert not set(default.val.texts) & set(default.train.texts)
    cfg = TaskConfig()
    within, total = 0, 0
    for lang in ("en", "zh"):
        for intent in intents.INTENTS:
            templates = intents.TEMPLATES[lang][intent]
            test = intents.held_out_templates(lang, intent, 0)
            val = intents.validation_templates(lang, intent, 0, cfg.val_fraction)
            assert len(val) == max(1, round(len(templates) * cfg.val_fraction)) and not set(val) & set(test)
            ids = {intents._TEMPLATE_ID[(lang, intent, templates[i])] for i in val}
            assert ids <= groups["val"]
            if intent == "out_of_domain":
                continue
            # Held out like the test: mostly known words, and the test's words stay as taught as
            # they were before validation took its templates.
            before = max(intents._novel_fraction(templates[i], [t for j, t in enumerate(templates) if j not in test],
                                                 lang) for i in test)
            train = [t for i, t in enumerate(templates) if i not in val + test]
            for i in val + test:  # where too few qualify, the least novel complete the set
                within += intents._novel_fraction(templates[i], train, lang) <= max(intents.MAX_NOVEL_FRACTION, before)
                total += 1
    assert within / total >= 0.9


def test_the_test_templates_do_not_depend_on_the_validation_share(default):
    other = load_task(TaskConfig(val_fraction=0.25))
    assert set(other.test.groups.tolist()) == set(default.test.groups.tolist())
    assert len(set(other.val.groups.tolist())) > len(set(default.val.groups.tolist()))
    none = load_task(TaskConfig(val_fraction=0.0))
    assert len(none.val) == 0 and set(none.test.groups.tolist()) == set(default.test.groups.tolist())


def test_held_out_templates_depend_on_the_seed():
    held = {seed: [intents.held_out_templates("en", i, seed) for i in intents.INTENTS] for seed in (0, 1)}
    assert held[0] != held[1]
    assert held[0] == [intents.held_out_templates("en", i, 0) for i in intents.INTENTS]


def test_held_out_templates_reuse_words_taught_in_training():
    for lang in ("en", "zh"):
        for intent in intents.INTENTS:
            if intent == "out_of_domain":  # anything else: novel words are its nature
                continue
            templates = intents.TEMPLATES[lang][intent]
            held = intents.held_out_templates(lang, intent, 0)
            val = intents.validation_templates(lang, intent, 0, TaskConfig().val_fraction)
            train = [t for i, t in enumerate(templates) if i not in held + val]
            for i in held:
                assert intents._novel_fraction(templates[i], train, lang) <= intents.MAX_NOVEL_FRACTION


def test_templates_are_unique_and_in_their_language():
    for lang in ("en", "zh"):
        all_templates = [t for i in intents.INTENTS for t in intents.TEMPLATES[lang][i]]
        assert len(set(all_templates)) == len(all_templates)
        for intent in intents.INTENTS:
            assert len(intents.TEMPLATES[lang][intent]) >= 10
        rng = random.Random(0)
        for t in all_templates:
            text = "".join(intents.render(t, lang, rng))
            assert "{" not in text
            assert bool(CJK.search(text)) == (lang == "zh")
            if lang == "zh":  # Chinese text: no Latin words (digits and % are fine)
                assert not re.search("[A-Za-z]", text), text


def test_noise_rates():
    rng = random.Random(0)
    sentence = ["please ", "set a timer for ", "ten minutes", " thanks"]
    en = [intents.noise_en(sentence, rng) for _ in range(3000)]
    changed = np.mean([s != "".join(sentence) for s in en])
    assert 0.35 < changed < 0.65
    assert any(" four " in s for s in en)  # homophone for -> four
    assert any("settimer" in s or "seta" in s or "timerfor" in s or "pleaseset" in s for s in en)  # joined words
    zh_pieces = ["请", "把", "客厅", "的", "灯", "打开"]
    zh = [intents.noise_zh(zh_pieces, rng) for _ in range(3000)]
    changed = np.mean([s != "".join(zh_pieces) for s in zh])
    assert 0.25 < changed < 0.5
    assert any(len(s) == len("请把客厅的灯打开") - 1 for s in zh)  # a dropped character
    assert any("嗯" in s or "呃" in s for s in zh)  # filler


def test_learnable_but_not_trivial(default):
    """A bag-of-tokens naive Bayes: good on seen phrasings (training), clearly worse on unseen ones,
    and validation (unseen templates too) predicts the test within a few points."""
    tok = HashTokenizer(vocab_size=1024, max_len=32)

    def counts(texts):
        m = np.zeros((len(texts), 1024))
        for i, t in enumerate(texts):
            np.add.at(m[i], tok.encode(t), 1)
        return m

    x = counts(default.train.texts)
    table = np.stack([x[default.train.y == c].sum(0) for c in range(len(default.labels))]) + 0.5
    logp = np.log(table / table.sum(1, keepdims=True))
    acc = {name: float(((counts(s.texts) @ logp.T).argmax(1) == s.y).mean())
           for name, s in (("train", default.train), ("val", default.val), ("test", default.test))}
    assert acc["train"] > 0.85
    assert 0.5 < acc["test"] < acc["train"] - 0.05
    assert abs(acc["val"] - acc["test"]) < 0.05


@pytest.mark.parametrize("kwargs, words", [
    ({"samples_per_intent": 2}, "samples_per_intent must be at least 3"),
    ({"languages": ["fr"]}, "languages must be chosen from en, zh"),
    ({"languages": []}, "languages must be chosen"),
])
def test_intents_settings_are_checked(kwargs, words):
    with pytest.raises(DataError, match=words):
        load_task(TaskConfig(**kwargs))


def test_small_configs_keep_every_class_in_every_split():
    ds = load_task(TaskConfig(samples_per_intent=4, languages=["zh"], val_fraction=0.3))
    for split in (ds.train, ds.val, ds.test):
        assert set(split.y.tolist()) == set(range(len(ds.labels)))


# -- JSONL ----------------------------------------------------------------------------------
def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ROWS = [{"text": f"sample {i} 开灯", "label": lab} for i, lab in enumerate(["b", "a", "10", "2"] * 25)]


def test_jsonl_round_trip_with_held_out_test(tmp_path):
    train = _write_jsonl(tmp_path / "mine.jsonl", ROWS)
    ds = load_task(TaskConfig(kind="jsonl", train=train, test_fraction=0.2, val_fraction=0.1, seed=3))
    assert (ds.name, ds.kind) == ("mine", "text")
    assert ds.labels == ["2", "10", "a", "b"]  # sorted, numbers in numeric order
    assert ds.train.x is None and ds.train.groups is None
    got = [(t, ds.labels[y]) for s in (ds.train, ds.val, ds.test) for t, y in zip(s.texts, s.y)]
    assert sorted(got) == sorted((r["text"], r["label"]) for r in ROWS)
    for split, n in ((ds.test, 5), (ds.val, 2), (ds.train, 18)):  # 25 per class: 5 test, 2 val, 18 train
        assert Counter(split.y.tolist()) == {c: n for c in range(4)}
    again = load_task(TaskConfig(kind="jsonl", train=train, test_fraction=0.2, val_fraction=0.1, seed=3))
    assert again.test.texts == ds.test.texts and again.val.texts == ds.val.texts
    other = load_task(TaskConfig(kind="jsonl", train=train, test_fraction=0.2, val_fraction=0.1, seed=4))
    assert other.test.texts != ds.test.texts


def test_jsonl_split_by_group_keeps_every_group_in_one_split(tmp_path):
    rows = [{"text": f"say {i} {lab}", "label": lab, "speaker": f"s{i % 20}"}
            for i, lab in enumerate(["a", "b", "c"] * 40)]
    train = _write_jsonl(tmp_path / "spk.jsonl", rows)
    ds = load_task(TaskConfig(kind="jsonl", train=train, group="speaker", test_fraction=0.25, val_fraction=0.2))
    assert ds.split_by == "group 'speaker'"
    speaker = {r["text"]: r["speaker"] for r in rows}
    sets = [{speaker[t] for t in s.texts} for s in (ds.train, ds.val, ds.test)]
    assert all(sets) and not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    assert abs(len(ds.test) - 30) <= 6 and abs(len(ds.val) - 18) <= 6
    assert load_task(TaskConfig(kind="jsonl", train=train)).split_by == "samples"
    rows[7].pop("speaker")
    _write_jsonl(tmp_path / "spk.jsonl", rows)
    with pytest.raises(DataError, match=r"line 8: no group under 'speaker'"):
        load_task(TaskConfig(kind="jsonl", train=train, group="speaker"))


def test_a_class_only_in_held_out_groups_is_an_error(tmp_path):
    rows = [{"text": f"t{i}", "label": "rare" if i < 3 else "x" if i % 2 else "y", "g": "solo" if i < 3 else f"g{i}"}
            for i in range(40)]
    train = _write_jsonl(tmp_path / "g.jsonl", rows)
    errors = 0
    for seed in range(12):  # some seeds hold the one group of "rare" out
        try:
            load_task(TaskConfig(kind="jsonl", train=train, group="g", seed=seed, test_fraction=0.3))
        except DataError as e:
            assert "'rare'" in str(e) and "held-out groups" in str(e)
            errors += 1
    assert errors


def test_npz_split_by_group(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5, 2)).astype(np.float32), np.arange(60) % 3
    session = np.array([f"day{i // 6}" for i in range(60)])
    np.savez(tmp_path / "s.npz", x=x, y=y, session=session)
    ds = load_task(TaskConfig(kind="npz", train=str(tmp_path / "s.npz"), group="session", val_fraction=0.2))
    parts = [set(s.groups.tolist()) for s in (ds.train, ds.val, ds.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    with pytest.raises(DataError, match="no array 'speaker'"):
        load_task(TaskConfig(kind="npz", train=str(tmp_path / "s.npz"), group="speaker"))


def test_stratified_first_spreads_a_limit_over_the_classes():
    from tinyseek.data.dataset import stratified_first
    y = np.array([0] * 10 + [1] * 2 + [2] * 10)
    idx = stratified_first(y, 9)
    assert Counter(y[idx].tolist()) == {0: 4, 1: 2, 2: 3} or Counter(y[idx].tolist()) == {0: 3, 1: 2, 2: 4}
    assert list(idx) == sorted(idx) and len(set(idx.tolist())) == 9
    assert list(stratified_first(y, 50)) == list(range(len(y)))


def test_jsonl_with_test_and_validation_files(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", ROWS)
    val = _write_jsonl(tmp_path / "val.jsonl", [{"text": "v1", "label": "a"}, {"text": "v2", "label": "10"}])
    test = _write_jsonl(tmp_path / "test.jsonl", [{"text": "t1", "label": "b"}])
    ds = load_task(TaskConfig(kind="jsonl", train=train, test=test, val=val))
    assert ds.val.texts == ["v1", "v2"] and [ds.labels[y] for y in ds.val.y] == ["a", "10"]
    assert len(ds.train) == len(ROWS) and ds.split_by == "file"
    _write_jsonl(tmp_path / "val.jsonl", [{"text": "v1", "label": "zzz"}])
    with pytest.raises(DataError, match="'zzz' do not occur in the training file"):
        load_task(TaskConfig(kind="jsonl", train=train, test=test, val=val))
    with pytest.raises(DataError, match="task.val: .* does not exist"):
        load_task(TaskConfig(kind="jsonl", train=train, val=str(tmp_path / "none.jsonl")))


def test_jsonl_with_a_test_file(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", ROWS)
    test_rows = [{"text": "lights please", "label": "a"}, {"text": "x", "label": 2}, {"text": "y", "label": "b"}]
    test = _write_jsonl(tmp_path / "test.jsonl", test_rows)
    ds = load_task(TaskConfig(kind="jsonl", train=train, test=test, val_fraction=0.0))
    assert ds.test.texts == ["lights please", "x", "y"]
    assert [ds.labels[y] for y in ds.test.y] == ["a", "2", "b"]
    assert len(ds.train) == len(ROWS) and len(ds.val) == 0


def _jsonl_case(tmp_path, content: bytes | None, test: bytes | None = None):
    kw = {"kind": "jsonl", "train": str(tmp_path / "train.jsonl")}
    if content is not None:
        (tmp_path / "train.jsonl").write_bytes(content)
    if test is not None:
        (tmp_path / "test.jsonl").write_bytes(test)
        kw["test"] = str(tmp_path / "test.jsonl")
    return TaskConfig(**kw)


GOOD = b'{"text": "turn it on", "label": "on"}\n{"text": "turn it off", "label": "off"}\n'


@pytest.mark.parametrize("content, test, words", [
    (None, None, r"task.train: .*train.jsonl does not exist; set task.train to a JSONL file"),
    (b"\n  \n", None, r"train.jsonl is empty .*one object per line"),
    (GOOD + b'{"text": "hi", label: "x"}\n', None, r"train.jsonl line 3: malformed JSON .*column"),
    (b'{"label": "on"}\n', None, r"line 1: missing key 'text'"),
    (GOOD + b'{"text": "hi"}\n', None, r"line 3: missing key 'label'"),
    (b'{"txt": "a", "lbl": "b"}\n', None, r"line 1: missing key 'text' and 'label'"),
    (b'{"text": 5, "label": "on"}\n', None, r"line 1: 'text' must be a string, got int"),
    (b'{"text": "  ", "label": "on"}\n', None, r"line 1: 'text' is empty"),
    (b'{"text": "a", "label": [1]}\n', None, r"line 1: 'label' must be a string"),
    (b'["turn it on", "on"]\n', None, r"line 1: expected a JSON object, got list"),
    (b'{"text": "caf\xe9", "label": "on"}\n', None, r"line 1: not valid UTF-8"),
    (b'{"text": "a", "label": "on"}\n{"text": "b", "label": "on"}\n', None, r"only 1 class \(on\).*at least 2"),
    (GOOD, b'{"text": "x", "label": "up"}\n{"text": "y", "label": "down"}\n{"text": "z", "label": "on"}\n',
     r"test.jsonl: labels 'down', 'up' do not occur in the training file .*train.jsonl \(its labels: off, on\)"),
    (GOOD, b"", r"test.jsonl is empty"),
])
def test_jsonl_errors_name_the_problem(tmp_path, content, test, words):
    with pytest.raises(DataError, match=words):
        load_task(_jsonl_case(tmp_path, content, test))


def test_empty_train_setting_is_an_error():
    with pytest.raises(DataError, match="task.train is empty"):
        load_task(TaskConfig(kind="jsonl"))


# -- NPZ ------------------------------------------------------------------------------------
def _xy(n=40, t=6, f=3, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, t, f)), np.arange(n) % k


def test_npz_round_trip_with_label_names(tmp_path):
    x, y = _xy()
    names = np.array(["idle", "walk", "run", "fall"])
    np.savez(tmp_path / "motion.npz", x=x, y=y, labels=names)
    ds = load_task(TaskConfig(kind="npz", train=str(tmp_path / "motion.npz"), test_fraction=0.25, val_fraction=0.1))
    assert (ds.name, ds.kind, ds.labels) == ("motion", "sequence", list(names))
    assert ds.train.texts is None and ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64
    xs = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    ys = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    assert xs.shape == x.shape
    # every sample arrives once, with its own label
    order = np.lexsort(xs.reshape(len(xs), -1).T)
    ref = np.lexsort(x.astype(np.float32).reshape(len(x), -1).T)
    assert np.array_equal(xs[order], x.astype(np.float32)[ref]) and np.array_equal(ys[order], y[ref])
    assert Counter(ds.test.y.tolist()) == {c: 3 for c in range(4)}  # 10 per class: 2.5 rounds to 3


def test_npz_with_test_file_maps_label_names(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "train.npz", x=x, y=y, labels=np.array(["a", "b", "c", "d"]))
    tx, ty = _xy(n=6, t=9, seed=1)  # a different T is fine, F must match
    np.savez(tmp_path / "test.npz", x=tx, y=np.array([0, 1, 0, 1, 0, 1]), labels=np.array(["d", "b"]))
    ds = load_task(TaskConfig(kind="npz", train=str(tmp_path / "train.npz"), test=str(tmp_path / "test.npz")))
    assert [ds.labels[c] for c in ds.test.y] == ["d", "b"] * 3
    assert ds.test.x.shape == (6, 9, 3) and len(ds.train) + len(ds.val) == 40


def test_npz_without_names_numbers_its_classes(tmp_path):
    x, y = _xy(k=3)
    np.savez(tmp_path / "d.npz", x=x.astype(np.float16), y=y.astype(np.int32))
    ds = load_task(TaskConfig(kind="npz", train=str(tmp_path / "d.npz")))
    assert ds.labels == ["0", "1", "2"] and ds.train.x.dtype == np.float32


def _npz_case(tmp_path, test=None, raw=None, **arrays):
    path = tmp_path / "train.npz"
    if raw is not None:
        path.write_bytes(raw)
    elif arrays:
        np.savez(path, **arrays)
    kw = {"kind": "npz", "train": str(path)}
    if test is not None:
        np.savez(tmp_path / "test.npz", **test)
        kw["test"] = str(tmp_path / "test.npz")
    return TaskConfig(**kw)


X, Y = _xy()
X_NAN = X.copy()
X_NAN[7, 2, 1] = np.nan
X_INF = X.copy()
X_INF[5, 0, 2] = 1e300  # finite in float64, inf in float32


@pytest.mark.parametrize("case, words", [
    ({}, r"task.train: .*train.npz does not exist"),
    ({"raw": b""}, r"train.npz is empty"),
    ({"raw": b"not an archive"}, r"train.npz is not a .npz \(zip\) archive; write x and y together"),
    ({"raw": b"\x93NUMPY\x01\x00rest"}, r"train.npz is a single .npy array"),
    ({"x": X}, r"missing array 'y' \(has: x\)"),
    ({"x": X[:, :, 0], "y": Y}, r"x must have 3 dimensions \[N, T, F\].*got shape \(40, 6\).*x\[..., None\]"),
    ({"x": np.array([np.zeros((3, 2)), np.zeros((5, 2))], dtype=object), "y": np.array([0, 1])},
     r"array 'x' is stored as Python objects.*pad every sequence"),
    ({"x": X, "y": Y, "labels": np.array(["a", "b", "c", "d"], dtype=object)},
     r"'labels' is stored as Python objects.*np.array\(labels, dtype=str\)"),
    ({"x": X, "y": Y[:-1]}, r"x has 40 samples but y has 39"),
    ({"x": X_NAN, "y": Y}, r"sample 7 has a non-finite feature \(nan at step 2, feature 1"),
    ({"x": X_INF, "y": Y}, r"sample 5 has a non-finite feature \(inf at step 0, feature 2"),
    ({"x": X, "y": Y.astype(float)}, r"y must hold integer class indices.*astype"),
    ({"x": X, "y": Y, "labels": np.array(["a", "b", "c", "d", "e"])}, r"class 'e' has no training sample"),
    ({"x": X, "y": np.where(Y == 1, 3, Y)}, r"class '1' has no training sample"),
    ({"x": X, "y": np.zeros(40, dtype=int)}, r"only 1 class.*at least 2"),
    ({"x": X, "y": Y, "labels": np.array(["a", "b"])}, r"y\[3\] = 3 but 'labels' names only 2 classes"),
    ({"x": X, "y": Y - 1}, r"y\[0\] = -1; class indices must be >= 0"),
    ({"x": X[:0], "y": Y[:0]}, r"holds no samples"),
    ({"x": X, "y": Y, "test": {"x": X[:, :, :2], "y": Y}}, r"test.npz: x has 2 features per step but the training"),
    ({"x": X, "y": Y, "test": {"x": X[:3], "y": np.array([0, 6, 9])}},
     r"test.npz: class indices 6, 9 do not occur in the training file"),
    ({"x": X, "y": Y, "labels": np.array(list("abcd")),
      "test": {"x": X[:3], "y": np.array([0, 1, 1]), "labels": np.array(["a", "zz"])}},
     r"test.npz: labels 'zz' do not occur in the training file .*\(its labels: a, b, c, d\)"),
])
def test_npz_errors_name_the_problem(tmp_path, case, words):
    with pytest.raises(DataError, match=words):
        load_task(_npz_case(tmp_path, **case))


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
    assert Split(y=np.zeros(2, np.int64), texts=["a", "b"], x=None).groups is None
