"""Real user utterances: a public intent benchmark read from a path you give, through the whole
pipeline, with full data and few labelled examples per class, written to
bench/results/realdata.json and the "Real utterances" section of bench/RESULTS.md.

    # CLINC150 (github.com/clinc/oos-eval, data/data_full.json; the project ships no third-party data)
    .venv/bin/python bench/realdata.py --dataset PATH/data_full.json --domain home
    .venv/bin/python bench/realdata.py --dataset PATH/data_full.json --shots 10 30 0   # all 150 intents

Each setting is one `tinyseek build` on JSONL files written under --work: the benchmark's own
train split (all of it, or `shots` seeded examples per class), its own validation split (for
few-shot settings at most shots/2 per class: a user with 10 examples does not have 20 more to
validate on) and its test split (read once, for the report). Teachers: the built-in tiny
DeepSeek-V3 trained from scratch on the task ("scratch"), or a pretrained LM (--teacher PATH: a
Hugging Face folder or .gguf file, adapted with LoRA). Every run also trains the same student on
the hard labels alone (distill.hard_label_baseline), so the table shows what the teacher adds.
Out-of-scope utterances are left out: the figures are in-scope accuracy, as the published ones.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

from tinyseek.config import load
from tinyseek.pipeline import Run

from results_md import replace_section

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Real utterances"
# In-scope accuracy on CLINC150 "Full", all 150 intents (Larson et al., 2019, "An Evaluation
# Dataset for Intent Classification and Out-of-Scope Prediction", EMNLP, table 2, oos-train: those
# models also learned an out-of-scope class; "Small", 50 per intent: BERT 96.4, MLP 91.5).
PUBLISHED = {"clinc150": [("BERT", 0.969), ("MLP", 0.935), ("DialogFlow", 0.917), ("SVM", 0.910),
                          ("FastText", 0.890)]}


def read_clinc(path: Path, domain: str | None) -> dict[str, list[tuple[str, str]]]:
    """CLINC150's in-scope train / val / test as (text, intent) pairs; with `domain`, only that
    domain's intents (domains.json beside the data file)."""
    data = json.loads(path.read_text())
    missing = [k for k in ("train", "val", "test") if k not in data]
    if missing:
        sys.exit(f"{path}: no {', '.join(missing)} split; give CLINC150's data_full.json")
    keep = None
    if domain:
        domains_file = path.with_name("domains.json")
        if not domains_file.is_file():
            sys.exit(f"--domain needs {domains_file} (data/domains.json of the same repository)")
        domains = json.loads(domains_file.read_text())
        if domain not in domains:
            sys.exit(f"unknown domain {domain!r}; CLINC150's domains: {', '.join(domains)}")
        keep = set(domains[domain])
    return {k: [(t, y) for t, y in data[k] if keep is None or y in keep] for k in ("train", "val", "test")}


def per_class(rows: list[tuple[str, str]], k: int, seed: int) -> list[tuple[str, str]]:
    """k seeded examples of every class (all when k is 0), in the file's order."""
    if not k:
        return list(rows)
    by: dict[str, list[int]] = defaultdict(list)
    for i, (_, y) in enumerate(rows):
        by[y].append(i)
    rng = random.Random(f"realdata:{seed}")
    chosen = sorted(i for idx in by.values() for i in rng.sample(idx, min(k, len(idx))))
    return [rows[i] for i in chosen]


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n" for t, y in rows))
    return str(path)


def run_setting(name: str, splits: dict, shots: int, teacher: str, work: Path, seed: int) -> dict:
    folder = work / name
    train = per_class(splits["train"], shots, seed)
    val = per_class(splits["val"], max(1, shots // 2) if shots else 0, seed + 1)
    overrides = {
        # Every setting has its own library folder, so one C name fits all (a run name may be longer).
        "run": name, "models_dir": str(work / "models"), "codegen.out_dir": str(work / "lib" / name),
        "codegen.name": "clinc_intents",
        "task.kind": "jsonl", "task.train": write_jsonl(folder / "train.jsonl", train),
        "task.val": write_jsonl(folder / "val.jsonl", val),
        "task.test": write_jsonl(folder / "test.jsonl", splits["test"]),
        "distill.hard_label_baseline": True, "teacher.seed": seed, "distill.seed": seed,
    }
    if teacher != "scratch":
        overrides.update({"teacher.source": teacher, "teacher.adapt": "lora"})
    run = Run(load(overrides=overrides))
    t0 = time.monotonic()
    run.build()
    report = json.loads((run.dir / "report.json").read_text())
    v, b = report["validation"], report["baseline"]
    return {"setting": name, "shots": shots, "teacher": teacher, "train_samples": len(train),
            "val_samples": len(val), "test_samples": report["task"]["test_samples"],
            "classes": len(report["task"]["labels"]),
            "test": {"teacher": report["teacher"]["accuracy"], "float": report["student"]["float_accuracy"],
                     "int8": report["student"]["int8_accuracy"], "hard_labels": b["test_accuracy"]},
            "val": {"teacher": v["teacher_accuracy"], "int8": v["int8_accuracy"], "hard_labels": b["val_accuracy"]},
            "host_bitexact": report["host"]["bitexact"], "warnings": report.get("warnings", []),
            "minutes": round((time.monotonic() - t0) / 60, 1)}


def table(rows: list[dict]) -> str:
    lines = ["| setting | train / val / test | teacher | int8 student | hard labels only (same student, float) | "
             "teacher adds (int8 - hard labels) | validation: teacher / int8 / hard | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, v = r["test"], r["val"]
        lines.append(f"| {r['setting']} | {r['train_samples']:,} / {r['val_samples']:,} / {r['test_samples']:,} | "
                     f"{t['teacher']:.2%} | {t['int8']:.2%} | {t['hard_labels']:.2%} | "
                     f"{100 * (t['int8'] - t['hard_labels']):+.1f} pp | {v['teacher']:.2%} / {v['int8']:.2%} / "
                     f"{v['hard_labels']:.2%} | {r['minutes']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="CLINC150's data_full.json")
    ap.add_argument("--domain", help="one CLINC150 domain only (e.g. home: smart home, music, lists)")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 30, 10],
                    help="labelled examples per class (0: the whole train split)")
    ap.add_argument("--teacher", default="scratch", help="scratch (the built-in teacher) or a folder / .gguf file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "build" / "realdata"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "realdata.json"))
    ap.add_argument("--no-md", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args()
    splits = read_clinc(Path(args.dataset), args.domain)
    tag = f"clinc150{'_' + args.domain if args.domain else ''}"
    teacher_tag = "scratch" if args.teacher == "scratch" else re.sub(r"[^\w.-]", "_", Path(args.teacher).stem)
    rows = []
    for k in args.shots:
        name = f"{tag}_{'full' if not k else f'{k}shot'}_{teacher_tag}"
        rows.append(run_setting(name, splits, k, args.teacher, Path(args.work), args.seed))
        print(json.dumps(rows[-1]), flush=True)
    command = "python bench/realdata.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Settings measured earlier on the same data and not measured again stay (each row has its command).
    for row in rows:
        row["command"] = command
    old = json.loads(out.read_text()) if out.is_file() else {}
    if old.get("dataset") == tag:
        done = {r["setting"] for r in rows}
        rows = [r for r in old["rows"] if r["setting"] not in done] + rows
        rows.sort(key=lambda r: (r["teacher"], -(r["shots"] or 10**9)))
    out.write_text(json.dumps({"dataset": tag, "rows": rows}, indent=2) + "\n")
    md = table(rows)
    print(md)
    if not args.no_md:
        published = "; ".join(f"{n} {a:.1%}" for n, a in PUBLISHED["clinc150"])
        scope = (f"the {args.domain!r} domain's {rows[0]['classes']} intents (no published figures for one domain)"
                 if args.domain else f"all {rows[0]['classes']} intents; published in-scope accuracy on the same "
                 f"split (Larson et al., 2019): {published}")
        teachers = ", ".join(dict.fromkeys(
            "the built-in one trained from scratch (rows ending in scratch)" if r["teacher"] == "scratch"
            else f"{Path(r['teacher']).name} adapted with LoRA" for r in rows))
        commands = " and ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in rows))
        replace_section(HEADING, f"{HEADING} ({commands})\n\nCLINC150's crowd-sourced commands, official train / "
                        f"validation / test split, in-scope accuracy, {scope}. Settings were chosen on validation; "
                        f"the test is read once. Teacher: {teachers}; the student is the default TinyLSTM "
                        f"(int8, bit-exact on the host in every row). Wall time on this machine (2 cores, shared).\n\n"
                        f"{md}\n")


if __name__ == "__main__":
    main()
