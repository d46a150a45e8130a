import pytest

from tinyseek.config import ConfigError, load


def test_defaults_are_the_intents_task():
    cfg = load()
    assert cfg.task.kind == "intents"
    assert cfg.model_name == "intents"
    assert cfg.run_dir.name == "intents"


def test_toml_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('run = "mine"\n[student]\nhidden = 48\n[distill]\nalpha = 0.5\n')
    cfg = load(f, {"distill.epochs": 3})
    assert (cfg.run, cfg.student.hidden, cfg.distill.alpha, cfg.distill.epochs) == ("mine", 48, 0.5, 3)


@pytest.mark.parametrize("text, words", [
    ("[student]\nhiden = 3\n", "unknown setting 'student.hiden'"),
    ("[student]\nhidden = 'big'\n", "'student.hidden' must be int"),
    ("student = 3\n", "must be a table"),
    ("[task]\nkind = 'csv'\n", "task.kind must be"),
    ("[task]\nkind = 'jsonl'\n", "needs task.train"),
    ("[student]\nlayers = 3\n", "student.layers must be 1 or 2"),
    ("run = 'default'\n", "not a keyword"),
    ("run = '9lives'\n", "C identifier"),
    ("[distill]\nalpha = 1.5\n", "distill.alpha"),
    ("[task]\nkind = 'audio'\nframes_per_step = 0\n", "task.frames_per_step must be in"),
    ("[task]\nkind = 'audio'\n[teacher]\ntransfer_samples = 10\n", "teacher.transfer_samples is for text tasks"),
    ("this is not toml", "not valid TOML"),
])
def test_bad_configs_name_the_problem(tmp_path, text, words):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load(f)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")
