"""bench/realdata.py's dataset readers and results file, on tiny synthetic files in the
benchmarks' formats (the project ships no third-party data)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import realdata  # noqa: E402

HEADER = "answerid;scenario;intent;answer_annotation;answer_from_anno;answer_from_user\n"


def _csv(path: Path, scenario: str, intent: str, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f'{i};{scenario};{intent};"{t} [x : y]";"{t}";"Olly {t}"\n' for i, t in enumerate(texts)]
    path.write_text(HEADER + "".join(rows))


@pytest.fixture
def fold(tmp_path: Path) -> Path:
    """An HWU64 KFold_N folder: one csv per intent in trainset/ and testset/csv/."""
    f = tmp_path / "KFold_1"
    _csv(f / "trainset" / "iot_coffee.csv", "iot", "coffee", [f"make coffee {i}" for i in range(20)])
    _csv(f / "trainset" / "iot_wemo_on.csv", "iot", "wemo_on", [f"plug on {i}" for i in range(5)])
    _csv(f / "trainset" / "alarm_set.csv", "alarm", "set", [f"wake me at {i}" for i in range(10)])
    _csv(f / "testset" / "csv" / "iot_coffee.csv", "iot", "coffee", ["coffee please"])
    _csv(f / "testset" / "csv" / "alarm_set.csv", "alarm", "set", ["alarm at six", "set an alarm"])
    return f


def test_hwu64_reader_splits_labels_and_domain(fold: Path) -> None:
    fmt, s = realdata.read_dataset(fold, "auto", None)
    assert fmt == "hwu64"  # a folder is HWU64
    assert {y for _, y in s["train"] + s["val"]} == {"iot_coffee", "iot_wemo_on", "alarm_set"}
    assert ("alarm at six", "alarm_set") in s["test"] and len(s["test"]) == 3
    # Validation: a tenth of each intent (at least one), disjoint from train, nothing lost.
    counts = {y: sum(1 for _, z in s["val"] if z == y) for y in ("iot_coffee", "iot_wemo_on", "alarm_set")}
    assert counts == {"iot_coffee": 2, "iot_wemo_on": 1, "alarm_set": 1}
    assert not set(s["train"]) & set(s["val"]) and len(s["train"]) + len(s["val"]) == 35
    # The normalised text, not the annotation or the raw answer with the wake word.
    assert all("[" not in t and "Olly" not in t for t, _ in s["train"])
    # Seeded: the same split every time.
    assert realdata.read_dataset(fold, "hwu64", None)[1] == s

    _, iot = realdata.read_dataset(fold, "auto", "iot")
    assert {y for _, y in iot["train"] + iot["val"] + iot["test"]} == {"iot_coffee", "iot_wemo_on"}
    assert iot["test"] == [("coffee please", "iot_coffee")]


def test_hwu64_reader_bad_input(fold: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown domain 'home'.*alarm, iot"):
        realdata.read_dataset(fold, "auto", "home")
    with pytest.raises(SystemExit, match="no .csv files"):
        realdata.read_dataset(tmp_path / "KFold_1" / "trainset", "hwu64", None)
    (fold / "trainset" / "iot_coffee.csv").write_text("text;label\nhi;x\n")
    with pytest.raises(SystemExit, match="no column answer_from_anno, intent, scenario"):
        realdata.read_dataset(fold, "auto", None)
    with pytest.raises(SystemExit, match="no such file or folder"):
        realdata.read_dataset(tmp_path / "missing", "auto", None)


def test_results_file_keeps_rows_per_dataset(tmp_path: Path) -> None:
    out = tmp_path / "realdata.json"
    row = lambda name, shots: {"setting": name, "shots": shots, "teacher": "scratch", "v": 1}  # noqa: E731
    # The older one-dataset file is read as that dataset's rows.
    out.write_text(json.dumps({"dataset": "clinc150_home", "rows": [row("clinc150_home_full_scratch", 0)]}))
    realdata.save_row(out, "hwu64_iot", "hwu64", row("hwu64_iot_30shot_scratch", 30))
    new = {**row("hwu64_iot_30shot_scratch", 30), "v": 2}
    res = realdata.save_row(out, "hwu64_iot", "hwu64", new)
    assert json.loads(out.read_text())["datasets"] == res
    assert [r["setting"] for r in res["clinc150_home"]["rows"]] == ["clinc150_home_full_scratch"]
    assert res["clinc150_home"]["format"] == "clinc150"
    assert res["hwu64_iot"]["rows"] == [new]  # measured again: replaced, not repeated


def test_few_shot_training_lines_with_the_rest_unlabeled(tmp_path: Path) -> None:
    rows = [(f"text {i}", "a" if i % 3 else "b") for i in range(30)]
    labelled = realdata.few_shot_train(rows, 4, 0, unlabeled=False)
    assert labelled == realdata.per_class(rows, 4, 0) and len(labelled) == 8
    both = realdata.few_shot_train(rows, 4, 0, unlabeled=True)
    assert both[:8] == labelled  # the same labelled examples, then every other line without its label
    assert [t for t, y in both[8:]] == [t for t, _ in rows if (t, "a") not in labelled and (t, "b") not in labelled]
    assert all(y is None for _, y in both[8:]) and len(both) == 30
    lines = Path(realdata.write_jsonl(tmp_path / "train.jsonl", both)).read_text().splitlines()
    assert json.loads(lines[0]).keys() == {"text", "label"} and json.loads(lines[-1]) == {"text": both[-1][0]}
    row = {"setting": "s", "train_samples": 8, "unlabeled_samples": 22, "val_samples": 4, "test_samples": 9,
           "test": {"teacher": 0.9, "int8": 0.8, "hard_labels": 0.7}, "val": {"teacher": 0.9, "int8": 0.8,
                                                                             "hard_labels": 0.7}, "minutes": 1.0}
    assert "| s | 8 + 22 unlabeled / 4 / 9 |" in realdata.table([row])


def test_the_shown_command_leaves_this_machines_paths_out() -> None:
    argv = ["--dataset", "/data/clinc/data_full.json", "--domain", "home", "--teacher", "/m/g.gguf", "--set",
            "teacher.transfer_writer=/m/g.gguf", "--out", "/tmp/r.json", "--work", "/tmp/w", "--no-md", "--unlabeled"]
    assert realdata.shown_command(argv) == ("python bench/realdata.py --dataset PATH/data_full.json --domain home "
                                            "--teacher PATH/g.gguf --set teacher.transfer_writer=PATH/g.gguf "
                                            "--unlabeled")


def test_snips_reader_reads_goo_et_al_split(tmp_path: Path) -> None:
    folder = tmp_path / "snips"
    for sub, rows in (("train", [("play some jazz", "PlayMusic"), ("rain tomorrow", "GetWeather")]),
                      ("valid", [("weather in paris", "GetWeather")]), ("test", [("play abba", "PlayMusic")])):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "seq.in").write_text("".join(t + " \n" for t, _ in rows))
        (folder / sub / "label").write_text("".join(y + "\n" for _, y in rows))
    fmt, s = realdata.read_dataset(folder, "auto", None)
    assert fmt == "snips" and s["train"] == [("play some jazz", "PlayMusic"), ("rain tomorrow", "GetWeather")]
    assert s["val"] == [("weather in paris", "GetWeather")] and s["test"] == [("play abba", "PlayMusic")]
    with pytest.raises(SystemExit, match="no domains"):
        realdata.read_dataset(folder, "snips", "home")
    (folder / "test" / "label").write_text("PlayMusic\nGetWeather\n")
    with pytest.raises(SystemExit, match="1 utterances in seq.in but 2 lines in label"):
        realdata.read_dataset(folder, "auto", None)
    (folder / "valid" / "label").unlink()
    with pytest.raises(SystemExit, match="no seq.in and label"):
        realdata.read_dataset(folder, "snips", None)
