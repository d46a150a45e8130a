"""The whole default pipeline in a small configuration: teacher -> student -> int8 -> C ->
host check -> report, then the stage skipping."""
import json

import numpy as np
import pytest

from tinyseek.cli import main
from tinyseek.config import load
from tinyseek.pipeline import Run

SMALL = {
    "task.samples_per_intent": 24,
    "teacher.hidden_size": 32, "teacher.num_layers": 2, "teacher.num_heads": 2,
    "teacher.pretrain_epochs": 1, "teacher.finetune_epochs": 2,
    "student.hidden": 12, "student.embed_dim": 8, "student.vocab_size": 256,
    "distill.epochs": 2,
    "quant.calibration_samples": 64,
}


def _args(tmp_path, extra=()):
    sets = {**SMALL, "models_dir": str(tmp_path / "models"), "codegen.out_dir": str(tmp_path / "lib"), **dict(extra)}
    out = []
    for k, v in sets.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    return out


@pytest.mark.slow
def test_build_end_to_end_then_skip_unchanged_stages(tmp_path, capsys):
    assert main(["build", *_args(tmp_path)]) == 0
    run_dir = tmp_path / "models" / "intents"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["host"]["bitexact"] is True
    assert report["host"]["samples"] == report["task"]["test_samples"] > 0
    for key in ("float_accuracy", "int8_accuracy"):
        assert 0.0 <= report["student"][key] <= 1.0
    assert 0.0 < report["teacher"]["accuracy"] <= 1.0
    assert report["retention"] == pytest.approx(report["student"]["int8_accuracy"] / report["teacher"]["accuracy"])
    assert report["student"]["params"] > 0 and report["student"]["weight_bytes"] > 0
    assert (run_dir / "confusion.png").stat().st_size > 0
    assert "bit-exact" in (run_dir / "report.md").read_text()
    assert (tmp_path / "lib" / "intents_model.h").is_file()
    # Validation, held out by template like the test, is shown beside it.
    assert report["task"]["split_by"] == "templates" and report["validation"]["samples"] > 0
    assert 0.0 <= report["validation"]["int8_accuracy"] <= 1.0
    assert "held out by templates" in (run_dir / "report.md").read_text()

    capsys.readouterr()
    assert main(["build", *_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    for stage in ("teacher", "distill", "quantize", "codegen", "verify", "report"):
        assert f"[{stage}] inputs unchanged, skipped" in out

    # A student setting changes: the teacher stays, everything from distill on runs again.
    assert main(["build", *_args(tmp_path, {"distill.lr": 1e-2})]) == 0
    out = capsys.readouterr().out
    assert "[teacher] inputs unchanged, skipped" in out
    assert "[distill] running" in out and "[quantize] running" in out

    # An extraction-only teacher setting: the saved teacher is extracted again, not re-adapted.
    weights = (run_dir / "teacher" / "model.safetensors").read_bytes()
    assert main(["build", *_args(tmp_path, {"teacher.layers": [1], "teacher.attentions": True})]) == 0
    out = capsys.readouterr().out
    assert "[teacher] running" in out and "adaptation unchanged" in out
    assert (run_dir / "teacher" / "model.safetensors").read_bytes() == weights
    from safetensors import safe_open
    with safe_open(str(run_dir / "knowledge.safetensors"), "np") as f:
        assert {"train.hidden.1", "train.attn.1"} <= set(f.keys()) and "train.hidden.2" not in f.keys()
    # An adaptation setting: the teacher is adapted again.
    assert main(["build", *_args(tmp_path, {"teacher.finetune_epochs": 1})]) == 0
    assert "adaptation unchanged" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_started_from_another_reuses_its_student_and_leaves_it_alone(tmp_path, capsys):
    """`make demo`: build --from intents into a run of its own; the teacher is rebuilt, the student
    reused when the knowledge comes out the same, the source run untouched."""
    small = {**SMALL, "teacher.noise_copies": 0, "distill.noise_copies": 0}
    assert main(["build", *_args(tmp_path, small)]) == 0
    source = tmp_path / "models" / "intents"
    before = {p: p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file() and "teacher" not in p.parts
              and "knowledge" not in p.name}
    capsys.readouterr()
    args = _args(tmp_path, {**small, "run": "demo", "codegen.out_dir": str(tmp_path / "demo_lib")})
    assert main(["build", "--from", "intents", *args]) == 0
    out = capsys.readouterr().out
    assert "starting from" in out and "[teacher] running" in out and "[distill] inputs unchanged, skipped" in out
    demo = tmp_path / "models" / "demo"
    assert (demo / "student" / "student.safetensors").read_bytes() == (source / "student" / "student.safetensors").read_bytes()
    assert json.loads((demo / "report.json").read_text())["model"]["name"] == "demo"
    assert {p: p.read_bytes() for p in before} == before
    assert main(["build", "--from", "nothing", *args]) == 0  # the run exists now: --from changes nothing
    assert main(["build", "--from", "nothing", *_args(tmp_path, {**small, "run": "other"})]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_a_stage_without_its_inputs_says_what_to_run(tmp_path, capsys):
    assert main(["quantize", *_args(tmp_path)]) == 2
    assert "tinyseek" in capsys.readouterr().err


def test_input_keys_follow_the_config(tmp_path):
    a = Run(load(overrides={"models_dir": str(tmp_path)}))
    b = Run(load(overrides={"models_dir": str(tmp_path), "teacher.hidden_size": 48}))
    assert a.input_key("teacher") != b.input_key("teacher")
    assert a.input_key("teacher") == Run(load(overrides={"models_dir": str(tmp_path)})).input_key("teacher")


def _write_jsonl(path):
    rng = np.random.default_rng(0)
    phrases = {"on": ["turn on the fan", "fan on", "start the fan"], "off": ["turn off the fan", "fan off", "stop the fan"],
               "time": ["what time is it", "tell me the time", "current time"]}
    with path.open("w") as f:
        for _ in range(40):
            for label, ps in phrases.items():
                f.write(json.dumps({"text": ps[rng.integers(3)] + rng.choice(["", " please", " now"]), "label": label}) + "\n")


def _write_npz(path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    x = rng.normal(0, 0.5, (150, 10, 4)).astype(np.float32)
    x[np.arange(150), :, y] += 1.5  # the class shows in one channel
    np.savez(path, x=x, y=y)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonl", "npz"])
def test_your_own_data_runs_through_the_whole_pipeline(tmp_path, kind):
    data = tmp_path / f"data.{kind}"
    (_write_jsonl if kind == "jsonl" else _write_npz)(data)
    extra = {"task.kind": kind, "task.train": str(data), "run": f"byo_{kind}", "distill.epochs": 15,
             "codegen.out_dir": str(tmp_path / "lib" / f"byo_{kind}")}
    assert main(["build", *_args(tmp_path, extra)]) == 0
    report = json.loads((tmp_path / "models" / f"byo_{kind}" / "report.json").read_text())
    assert report["task"]["kind"] == ("text" if kind == "jsonl" else "sequence")
    assert report["host"]["bitexact"] is True and report["host"]["samples"] == report["task"]["test_samples"]
    assert report["student"]["int8_accuracy"] > 0.6  # three well-separated classes; chance is 1/3


@pytest.mark.slow
def test_a_few_labels_and_many_unlabeled_texts_run_through_the_whole_pipeline(tmp_path):
    """Semi-supervised: the teacher's head learns from the labelled lines, labels the others,
    and the student distills on all of them; the hard-label student has the labelled ones only."""
    data = tmp_path / "all.jsonl"
    _write_jsonl(data)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    train = [r if i % 4 == 0 else {"text": r["text"]} for i, r in enumerate(rows[:90])]
    files = {}
    for name, part in (("train", train), ("val", rows[90:105]), ("test", rows[105:])):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in part))
    extra = {"task.kind": "jsonl", "task.labels": ["off", "on", "time"], "run": "few", "distill.epochs": 15,
             "distill.hard_label_baseline": True, **{f"task.{k}": str(v) for k, v in files.items()},
             "codegen.out_dir": str(tmp_path / "lib" / "few")}
    assert main(["build", *_args(tmp_path, extra)]) == 0
    run_dir = tmp_path / "models" / "few"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["task"]["train_unlabeled"] == 67 and report["task"]["train_samples"] == 90
    assert json.loads((run_dir / "teacher" / "teacher.json").read_text())["unlabeled_samples"] == 67
    assert report["host"]["bitexact"] is True and report["student"]["int8_accuracy"] > 0.6
    assert report["baseline"]["test_accuracy"] is not None
    assert "67 training samples have no label: the teacher labelled them" in (run_dir / "report.md").read_text()


def test_safetensors_hash_ignores_metadata_order(tmp_path):
    from safetensors.numpy import save_file

    from tinyseek.pipeline import hash_safetensors
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_file(t, str(tmp_path / "1.safetensors"), metadata={"x": "1", "y": "2"})
    save_file(t, str(tmp_path / "2.safetensors"), metadata={"y": "2", "x": "1"})
    save_file({"a": t["a"] + 1}, str(tmp_path / "3.safetensors"), metadata={"x": "1", "y": "2"})
    assert hash_safetensors(tmp_path / "1.safetensors") == hash_safetensors(tmp_path / "2.safetensors")
    assert hash_safetensors(tmp_path / "1.safetensors") != hash_safetensors(tmp_path / "3.safetensors")
    # The student's key reads the knowledge's numbers only: another teacher folder hash (a run
    # name, a thread setting) with the same tensors reuses the student.
    save_file(t, str(tmp_path / "4.safetensors"), metadata={"x": "1", "y": "other teacher hash"})
    assert hash_safetensors(tmp_path / "4.safetensors") != hash_safetensors(tmp_path / "1.safetensors")
    assert hash_safetensors(tmp_path / "4.safetensors", metadata=False) == \
        hash_safetensors(tmp_path / "1.safetensors", metadata=False)
    runs = [Run(load(overrides={"models_dir": str(tmp_path / n)})) for n in ("a", "b")]
    for run, name in zip(runs, ("1", "4")):
        run.dir.mkdir(parents=True)
        (run.dir / "knowledge.safetensors").write_bytes((tmp_path / f"{name}.safetensors").read_bytes())
    assert runs[0].input_key("distill") == runs[1].input_key("distill")


def test_the_transfer_set_joins_the_training_split_only(tmp_path):
    cfg = load(overrides={"models_dir": str(tmp_path), "task.samples_per_intent": 8, "teacher.transfer_samples": 2})
    run = Run(cfg)
    base = run.task_dataset
    run.dir.mkdir(parents=True)
    (run.dir / "transfer.jsonl").write_text('{"text": "lamp on now", "label": "lights_on", "confidence": 0.9}\n'
                                            '{"text": "what hour", "label": "ask_time", "confidence": 0.8}\n')
    ds = run.dataset
    assert len(ds.train) == len(base.train) + 2 and ds.train.texts[-2:] == ["lamp on now", "what hour"]
    assert [ds.labels[y] for y in ds.train.y[-2:]] == ["lights_on", "ask_time"] and list(ds.train.groups[-2:]) == [-1, -1]
    assert ds.val.texts == base.val.texts and ds.test.texts == base.test.texts
    off = Run(load(overrides={"models_dir": str(tmp_path), "task.samples_per_intent": 8}))
    assert len(off.dataset.train) == len(base.train)  # a stale file is ignored when none is asked for


def test_the_student_key_counts_subwords_only_when_on(tmp_path):
    """student.subwords = 0 (the default) leaves the distill key as it was before the setting
    existed, so committed runs are not re-distilled; turning it on re-runs the stage."""
    from dataclasses import asdict

    from safetensors.numpy import save_file

    from tinyseek import __version__
    from tinyseek.pipeline import hash_obj, hash_safetensors

    runs = [Run(load(overrides={"models_dir": str(tmp_path / n), **o}))
            for n, o in (("a", {}), ("b", {"student.subwords": 4}))]
    for run in runs:
        run.dir.mkdir(parents=True)
        save_file({"a": np.zeros(3, np.float32)}, str(run.knowledge))
    c = runs[0].cfg
    old_student = {k: v for k, v in asdict(c.student).items() if k != "subwords"}
    old_distill = {k: v for k, v in asdict(c.distill).items() if not k.startswith("spec_")}
    before = hash_obj([__version__, runs[0]._task_key(), old_student, old_distill,
                       hash_safetensors(runs[0].knowledge, metadata=False)])
    assert runs[0].input_key("distill") == before
    assert runs[1].input_key("distill") != before


def test_the_distill_key_counts_spec_augment_only_for_audio(tmp_path):
    """distill.spec_* change audio students only: other tasks keep the distill key they had
    before the settings existed, so committed text runs are not re-distilled."""
    from safetensors.numpy import save_file

    def key(name, **o):
        run = Run(load(overrides={"models_dir": str(tmp_path / name), **o}))
        run.dir.mkdir(parents=True)
        save_file({"a": np.zeros(3, np.float32)}, str(run.knowledge))
        return run.input_key("distill")

    assert key("a") == key("b", **{"distill.spec_shift_frames": 0, "distill.spec_time_masks": 3})
    assert key("c", **{"task.kind": "audio"}) != key("d", **{"task.kind": "audio", "distill.spec_shift_frames": 0})


def test_the_task_key_counts_frames_per_step_only_for_audio(tmp_path):
    """task.frames_per_step is an audio setting: other tasks keep the keys they had before it."""
    from dataclasses import asdict

    run = Run(load(overrides={"models_dir": str(tmp_path)}))
    before = {k: v for k, v in asdict(run.cfg.task).items() if k != "frames_per_step"}
    assert run._task_key()[0] == before
    assert Run(load(overrides={"models_dir": str(tmp_path), "task.frames_per_step": 2})).input_key("teacher") == \
        run.input_key("teacher")
    audio = [Run(load(overrides={"models_dir": str(tmp_path), "task.kind": "audio", "task.frames_per_step": k}))
             for k in (2, 4)]
    assert audio[0].input_key("teacher") != audio[1].input_key("teacher")


def test_a_transfer_set_writer_keeps_the_adaptation_and_old_keys(tmp_path):
    """A pretrained writer (teacher.transfer_writer) writes the transfer set, so the teacher is
    adapted as without one and is reused; the writer's settings (and the in-context examples'
    of teacher.shots) are keys of the teacher stage only when used, so runs from before them
    keep theirs."""
    from dataclasses import asdict

    from tinyseek import __version__
    from tinyseek.pipeline import ENGINE_ONLY, FEW_SHOT_ONLY, TRANSFER_ONLY, hash_obj

    def run(**o):
        return Run(load(overrides={"models_dir": str(tmp_path), **o}))
    plain, writer = run(), run(**{"teacher.transfer_samples": 600, "teacher.transfer_writer": "/m.gguf"})
    assert writer.adaptation_key() == plain.adaptation_key()
    assert run(**{"teacher.transfer_samples": 600}).adaptation_key() != plain.adaptation_key()  # the teacher writes
    assert writer.input_key("teacher") != plain.input_key("teacher")
    assert run(**{"teacher.transfer_samples": 600, "teacher.transfer_writer": "/m.gguf",
                  "teacher.transfer_prompt": "Say it again:\n"}).input_key("teacher") != writer.input_key("teacher")
    old = {k: v for k, v in asdict(plain.cfg.teacher).items() if k not in ENGINE_ONLY + TRANSFER_ONLY + FEW_SHOT_ONLY}
    assert plain.input_key("teacher") == hash_obj([__version__, plain._task_key(), old])
    few = run(**{"teacher.shots": 2})  # in-context examples change the prompt: a new adaptation
    assert few.adaptation_key() != plain.adaptation_key() and few.input_key("teacher") != plain.input_key("teacher")


def test_the_hard_label_baseline_leaves_the_transfer_set_out(tmp_path):
    """The baseline is what the task's own labels give: the transfer set's labels are the
    teacher's, so it trains on the task's rows only, the first ones of a cache that also holds
    the transfer set."""
    from safetensors.numpy import save_file

    from tinyseek.distill.train import DistillError, hard_label_baseline
    cfg = load(overrides={"models_dir": str(tmp_path), "task.samples_per_intent": 8, "distill.epochs": 1,
                          "distill.noise_copies": 0})
    ds = Run(cfg).task_dataset
    n, extra = len(ds.train), 5
    cache = tmp_path / "knowledge.safetensors"
    save_file({f"{s}.logits": np.zeros((m, len(ds.labels)), np.float32)
               for s, m in (("train", n + extra), ("val", len(ds.val)), ("test", len(ds.test)))}, str(cache))
    result = hard_label_baseline(ds, cache, cfg, cached_rows=n + extra)
    assert 0.0 <= result["val_accuracy"] <= 1.0 and result["epochs"] == 1
    with pytest.raises(DistillError, match="train.logits"):
        hard_label_baseline(ds, cache, cfg)  # without saying so, a longer cache is another task's


def test_the_hard_label_baseline_leaves_unlabeled_samples_out(tmp_path, monkeypatch):
    """Samples without a label get the teacher's in distillation; the baseline trains on the
    labelled ones only, with their own rows of the cache, and refuses a task without labels."""
    from dataclasses import replace

    from safetensors.numpy import save_file

    import tinyseek.distill.train as train
    cfg = load(overrides={"models_dir": str(tmp_path), "task.samples_per_intent": 8, "distill.epochs": 1,
                          "distill.noise_copies": 0})
    ds = Run(cfg).task_dataset
    n = len(ds.train)
    y = np.asarray(ds.train.y).copy()
    y[::2] = -1
    ds = replace(ds, train=replace(ds.train, y=y))
    cache = tmp_path / "knowledge.safetensors"
    logits = np.zeros((n, len(ds.labels)), np.float32)
    logits[np.arange(n), np.asarray(Run(cfg).task_dataset.train.y)] = 5.0
    save_file({"train.logits": logits, "val.logits": np.zeros((len(ds.val), len(ds.labels)), np.float32),
               "test.logits": np.zeros((len(ds.test), len(ds.labels)), np.float32)}, str(cache))
    seen = {}
    real = train.train_student

    def spy(dataset, knowledge_path, cfg, **kw):
        seen.update(y=np.asarray(dataset.train.y), texts=list(dataset.train.texts), rows=kw.get("rows"))
        return real(dataset, knowledge_path, cfg, **kw)
    monkeypatch.setattr(train, "train_student", spy)
    result = train.hard_label_baseline(ds, cache, cfg)
    assert result["epochs"] == 1 and (seen["y"] >= 0).all() and len(seen["y"]) == n // 2
    assert seen["rows"].tolist() == list(range(1, n, 2))
    assert seen["texts"] == [ds.train.texts[i] for i in range(1, n, 2)]
    with pytest.raises(train.DistillError, match="no training sample has a label"):
        train.hard_label_baseline(replace(ds, train=replace(ds.train, y=np.full(n, -1))), cache, cfg)
