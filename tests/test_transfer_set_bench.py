"""bench/transfer_set.py's bookkeeping: validation chooses with or without a transfer set, the
test is shown for the chosen variant only, and a run shares its teacher with the next."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import transfer_set  # noqa: E402


def _row(variant: str, seed: int, val: float, test: float) -> dict:
    return {"teacher": "scratch", "variant": variant, "seed": seed, "minutes": 1.0, "host_bitexact": True,
            "run": f"scratch_{variant}_s{seed}", "transfer_samples": 0 if variant == "without" else 600,
            "val": {"teacher": 0.8, "float": val, "int8": val}, "test": {"teacher": 0.79, "int8": test}}


def test_validation_chooses_and_only_the_chosen_test_is_shown() -> None:
    rows = [_row("with1800", 0, 0.75, 0.69), _row("without", 0, 0.76, 0.74), _row("without", 1, 0.74, 0.75),
            _row("with600", 0, 0.78, 0.70), _row("with600", 1, 0.77, 0.71)]
    summary = transfer_set.summary(rows)
    assert [g["variant"] for g in summary] == ["without", "with600", "with1800"]  # by size
    chosen = [g for g in summary if g["chosen"]]
    assert [g["variant"] for g in chosen] == ["with600"]  # highest mean validation, whatever the test says
    assert abs(chosen[0]["val_int8_mean"] - 0.775) < 1e-9
    text = transfer_set.section({"commands": ["c"], "writer": "w.gguf", "summary": summary})
    assert "**70.50%**" in text and "74.50%" not in text and text.count("not reported") == 2


def test_a_new_invocation_adds_its_rows_and_replaces_a_rerun() -> None:
    old = {"commands": ["a"], "writer": "w", "notes": ["- n"], "rows": [_row("without", 0, 0.7, 0.7),
                                                                     _row("with600", 0, 0.72, 0.7)]}
    new = {"commands": ["b"], "writer": "w", "rows": [_row("without", 0, 0.71, 0.7), _row("with1800", 0, 0.8, 0.7)]}
    merged = transfer_set.merge(old, new)
    assert merged["commands"] == ["a", "b"] and merged["notes"] == ["- n"]
    assert sorted((r["variant"], r["val"]["int8"]) for r in merged["rows"]) == [
        ("with1800", 0.8), ("with600", 0.72), ("without", 0.71)]
    assert [g["variant"] for g in merged["summary"] if g["chosen"]] == ["with1800"]


def test_a_run_shares_its_teacher_and_links_the_base(tmp_path: Path) -> None:
    src, dst = tmp_path / "a", tmp_path / "b"
    (src / "teacher").mkdir(parents=True)
    (src / "teacher" / "teacher.json").write_text("{}")
    (src / "knowledge.safetensors").write_bytes(b"k")
    (src / "base").mkdir()
    (src / "student").mkdir()  # the student is not shared: every seed distills its own
    transfer_set.share(src, dst)
    assert (dst / "teacher" / "teacher.json").is_file() and (dst / "knowledge.safetensors").read_bytes() == b"k"
    assert (dst / "base").is_symlink() and (dst / "base").resolve() == (src / "base").resolve()
    assert not (dst / "student").exists()
