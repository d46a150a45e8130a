"""Real user utterances: a public intent benchmark read from a path you give, through the whole
pipeline, with full data and few labelled examples per class, written to
bench/results/realdata.json (rows per dataset) and the "Real utterances" section of bench/RESULTS.md.

    # CLINC150 (github.com/clinc/oos-eval, data/data_full.json; the project ships no third-party data)
    .venv/bin/python bench/realdata.py --dataset PATH/data_full.json --domain home
    # HWU64 (github.com/xliuhw/NLU-Evaluation-Data): the folder of fold 1 of its 10-fold split,
    # CrossValidation/autoGeneFromRealAnno/autoGene_2018_03_22-13_01_25_169/CrossValidation/KFold_1
    .venv/bin/python bench/realdata.py --dataset PATH/KFold_1 --domain iot --shots 0 30
    .venv/bin/python bench/realdata.py --dataset PATH/data_full.json --shots 10 30 0   # all 150 intents
    # SNIPS in Goo et al.'s split (github.com/MiuLab/SlotGated-SLU, the folder data/snips)
    .venv/bin/python bench/realdata.py --dataset PATH/snips --shots 0
    .venv/bin/python bench/realdata.py --dataset PATH/data_full.json --domain home --shots 30 \
        --teacher PATH/gemma-3-270m-q4_k_m.gguf --set teacher.pretrain_epochs=0   # a pretrained LM
    # ... with the rest of the training split unlabeled, for the teacher to label ("_unlabeled")
    .venv/bin/python bench/realdata.py --dataset PATH/data_full.json --domain home --shots 30 --unlabeled \
        --teacher PATH/gemma-3-270m-q4_k_m.gguf --set teacher.pretrain_epochs=0
    # ... with a generated transfer set (a row of its own, "_transfer450")
    .venv/bin/python bench/realdata.py --dataset PATH/data_full.json --domain home --shots 30 \
        --teacher PATH/gemma-3-270m-q4_k_m.gguf --set teacher.pretrain_epochs=0 \
        --set teacher.transfer_samples=450 --set teacher.transfer_writer=PATH/gemma-3-270m-q4_k_m.gguf

Each setting is one `tinyseek build` on JSONL files written under --work: the benchmark's own
train split (all of it, or `shots` seeded examples per class), its own validation split (for
few-shot settings at most shots/2 per class: a user with 10 examples does not have 20 more to
validate on) and its test split (read once, for the report). Teachers: the built-in tiny
DeepSeek-V3 trained from scratch on the task ("scratch"), or a pretrained LM (--teacher PATH: a
Hugging Face folder or .gguf file, adapted with LoRA). Every run also trains the same student on
the hard labels alone (distill.hard_label_baseline), so the table shows what the teacher adds.
Out-of-scope utterances are left out: the figures are in-scope accuracy, as the published ones.
HWU64's fold has a train and a test set only: a seeded tenth of every intent's train set (at
least one example) is held out as the validation split; labels are scenario_intent (iot_coffee),
texts the annotators' normalised text (answer_from_anno) and --domain is a scenario (iot).
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

from tinyseek.cli import parse_overrides
from tinyseek.config import load
from tinyseek.pipeline import Run

from results_md import replace_section

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Real utterances"
# In-scope accuracy on CLINC150 "Full", all 150 intents (Larson et al., 2019, "An Evaluation
# Dataset for Intent Classification and Out-of-Scope Prediction", EMNLP, table 2, oos-train: those
# models also learned an out-of-scope class; "Small", 50 per intent: BERT 96.4, MLP 91.5).
PUBLISHED = {"clinc150": [("BERT", 0.969), ("MLP", 0.935), ("DialogFlow", 0.917), ("SVM", 0.910),
                          ("FastText", 0.890)],
             # SNIPS, Goo et al. (2018)'s split, intent accuracy of joint intent + slot models: Stack-
             # Propagation with BERT and without (Qin et al., 2019, EMNLP), Joint BERT (Chen et al.,
             # 2019, arXiv:1902.10909), Slot-Gated full attention (Goo et al., 2018, NAACL).
             "snips": [("Stack-Propagation + BERT", 0.990), ("Joint BERT", 0.986), ("Stack-Propagation", 0.980),
                       ("Slot-Gated", 0.970)]}
HWU64_VAL_FRACTION = 0.1
# HWU64, all 64 intents: Liu et al. (2019) report F1 per commercial service over the 10 folds and
# Casanueva et al. (2020) accuracy on another split (DialoGLUE's); neither figure is quoted yet.
PUBLISHED_HWU64 = ("published figures are F1 per service over all 10 folds (Liu et al., 2019) or accuracy "
                   "on another split (Casanueva et al., 2020); none is quoted here")


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


def read_hwu64(folder: Path, domain: str | None, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """HWU64's fold folder (trainset/*.csv, testset/csv/*.csv: ';'-separated, one file per intent)
    as train / val / test (text, scenario_intent) pairs; val is a seeded tenth of each intent's
    train rows. With `domain`, only that scenario's intents."""
    def rows(sub: Path) -> list[tuple[str, str, str]]:
        files = sorted(sub.glob("*.csv"))
        if not files:
            sys.exit(f"{sub}: no .csv files; give HWU64's CrossValidation/.../KFold_N folder "
                     "(with trainset/ and testset/csv/)")
        out = []
        for f in files:
            with f.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh, delimiter=";")
                need = {"scenario", "intent", "answer_from_anno"} - set(reader.fieldnames or [])
                if need:
                    sys.exit(f"{f}: no column {', '.join(sorted(need))}; not an HWU64 csv file")
                out += [(r["answer_from_anno"].strip(), f"{r['scenario']}_{r['intent']}", r["scenario"])
                        for r in reader if r["answer_from_anno"].strip()]
        return out
    train_all, test = rows(folder / "trainset"), rows(folder / "testset" / "csv")
    scenarios = sorted({s for _, _, s in train_all})
    if domain and domain not in scenarios:
        sys.exit(f"unknown domain {domain!r}; HWU64's scenarios: {', '.join(scenarios)}")
    pick = lambda rs: [(t, y) for t, y, s in rs if not domain or s == domain]  # noqa: E731
    train_all = pick(train_all)
    by: dict[str, list[int]] = defaultdict(list)
    for i, (_, y) in enumerate(train_all):
        by[y].append(i)
    rng = random.Random(f"hwu64-val:{seed}")
    held = {i for idx in by.values() for i in rng.sample(idx, max(1, round(HWU64_VAL_FRACTION * len(idx))))}
    return {"train": [r for i, r in enumerate(train_all) if i not in held],
            "val": [r for i, r in enumerate(train_all) if i in held], "test": pick(test)}


def read_snips(folder: Path, domain: str | None) -> dict[str, list[tuple[str, str]]]:
    """SNIPS in the split of Goo et al. (2018): train/, valid/ and test/, each with seq.in (one
    utterance a line, lowercased and tokenised) and label (its intent, line for line)."""
    if domain:
        sys.exit("SNIPS has 7 intents and no domains; leave --domain out")
    out = {}
    for name, sub in (("train", "train"), ("val", "valid"), ("test", "test")):
        texts_file, labels_file = folder / sub / "seq.in", folder / sub / "label"
        if not texts_file.is_file() or not labels_file.is_file():
            sys.exit(f"{folder / sub}: no seq.in and label; give the snips folder of Goo et al.'s split "
                     "(github.com/MiuLab/SlotGated-SLU, data/snips)")
        texts = texts_file.read_text(encoding="utf-8").splitlines()
        labels = labels_file.read_text(encoding="utf-8").splitlines()
        if len(texts) != len(labels):
            sys.exit(f"{folder / sub}: {len(texts)} utterances in seq.in but {len(labels)} lines in label")
        out[name] = [(t.strip(), y.strip()) for t, y in zip(texts, labels) if t.strip()]
    return out


def read_dataset(path: Path, fmt: str, domain: str | None) -> tuple[str, dict]:
    """(format, splits): a .json file is CLINC150, a folder with train/seq.in SNIPS, another
    folder HWU64 (or as --format says)."""
    if not path.exists():
        sys.exit(f"{path}: no such file or folder; give CLINC150's data_full.json, HWU64's KFold_N folder "
                 "or SNIPS's folder")
    if fmt == "auto":
        fmt = ("snips" if (path / "train" / "seq.in").is_file() else "hwu64") if path.is_dir() else "clinc150"
    readers = {"hwu64": lambda: read_hwu64(path, domain), "snips": lambda: read_snips(path, domain),
               "clinc150": lambda: read_clinc(path, domain)}
    return fmt, readers[fmt]()


def teacher_tag(teacher: str) -> str:
    """A teacher's name in settings and run names: scratch, or the model file's stem."""
    return "scratch" if teacher == "scratch" else re.sub(r"[^\w.-]", "_", Path(teacher).stem)


def per_class(rows: list[tuple[str, str]], k: int, seed: int) -> list[tuple[str, str]]:
    """k seeded examples of every class (all when k is 0), in the file's order."""
    return [rows[i] for i in per_class_index(rows, k, seed)]


def per_class_index(rows: list[tuple[str, str]], k: int, seed: int) -> list[int]:
    """The indices of per_class's choice, sorted."""
    if not k:
        return list(range(len(rows)))
    by: dict[str, list[int]] = defaultdict(list)
    for i, (_, y) in enumerate(rows):
        by[y].append(i)
    rng = random.Random(f"realdata:{seed}")
    return sorted(i for idx in by.values() for i in rng.sample(idx, min(k, len(idx))))


def write_jsonl(path: Path, rows: list[tuple[str, str | None]]) -> str:
    """One line per (text, label); a label of None is written without one (an unlabeled line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t} if y is None else {"text": t, "label": y}, ensure_ascii=False)
                            + "\n" for t, y in rows))
    return str(path)


def few_shot_train(rows: list[tuple[str, str]], shots: int, seed: int, unlabeled: bool) -> list[tuple[str, str | None]]:
    """The training lines: `shots` labelled examples per class (all with 0); with `unlabeled`,
    the rest of the benchmark's training split follows without its labels, for the teacher to
    label (a user with a few labels and a log of unlabeled utterances)."""
    chosen = per_class_index(rows, shots, seed)
    train: list[tuple[str, str | None]] = [rows[i] for i in chosen]
    if unlabeled:
        keep = set(chosen)
        train += [(t, None) for i, (t, _) in enumerate(rows) if i not in keep]
    return train


def run_setting(name: str, splits: dict, shots: int, teacher: str, work: Path, seed: int, settings: dict,
                unlabeled: bool = False) -> dict:
    folder = work / name
    train = few_shot_train(splits["train"], shots, seed, unlabeled)
    val = per_class(splits["val"], max(1, shots // 2) if shots else 0, seed + 1)
    overrides = {
        # Every setting has its own library folder, so one C name fits all (a run name may be longer).
        "run": name, "models_dir": str(work / "models"), "codegen.out_dir": str(work / "lib" / name),
        "codegen.name": name.split("_")[0] + "_intents",
        "task.kind": "jsonl", "task.train": write_jsonl(folder / "train.jsonl", train),
        "task.val": write_jsonl(folder / "val.jsonl", val),
        "task.test": write_jsonl(folder / "test.jsonl", splits["test"]),
        "distill.hard_label_baseline": True, "teacher.seed": seed, "distill.seed": seed,
    }
    if unlabeled:  # lines without a label need the classes named (docs/datasets.md)
        overrides["task.labels"] = sorted({y for _, y in splits["train"]})
    if teacher != "scratch":
        overrides.update({"teacher.source": teacher, "teacher.adapt": "lora"})
    overrides.update(settings)
    run = Run(load(overrides=overrides))
    t0 = time.monotonic()
    run.build()
    report = json.loads((run.dir / "report.json").read_text())
    v, b = report["validation"], report["baseline"]
    return {"setting": name, "shots": shots, "teacher": teacher, "train_samples": sum(y is not None for _, y in train),
            **({"unlabeled_samples": sum(y is None for _, y in train)} if unlabeled else {}),
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
        unlabeled = f" + {r['unlabeled_samples']:,} unlabeled" if r.get("unlabeled_samples") else ""
        lines.append(f"| {r['setting']} | {r['train_samples']:,}{unlabeled} / {r['val_samples']:,} / {r['test_samples']:,} | "
                     f"{t['teacher']:.2%} | {t['int8']:.2%} | {t['hard_labels']:.2%} | "
                     f"{100 * (t['int8'] - t['hard_labels']):+.1f} pp | {v['teacher']:.2%} / {v['int8']:.2%} / "
                     f"{v['hard_labels']:.2%} | {r['minutes']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="CLINC150's data_full.json, HWU64's KFold_N folder or SNIPS's folder")
    ap.add_argument("--format", choices=["auto", "clinc150", "hwu64", "snips"], default="auto",
                    help="auto: a file is CLINC150, a folder with train/seq.in SNIPS, another folder HWU64")
    ap.add_argument("--domain", help="one domain only: a CLINC150 domain (home: smart home, music, lists) "
                    "or an HWU64 scenario (iot: lights, plugs, coffee, cleaning)")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 30, 10],
                    help="labelled examples per class (0: the whole train split)")
    ap.add_argument("--teacher", default="scratch", help="scratch (the built-in teacher) or a folder / .gguf file")
    ap.add_argument("--unlabeled", action="store_true",
                    help="few-shot settings: the rest of the training split joins without its labels, which the "
                    "teacher gives (a row of its own, \"_unlabeled\"); the hard-label student leaves it out")
    ap.add_argument("--variant", default="", help="a name appended to every setting's, so a run with other "
                    "--set values gets rows of its own (e.g. --variant joint --set distill.schedule=joint)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for every run, as in `tinyseek build --set` (e.g. teacher.pretrain_epochs=0)")
    ap.add_argument("--work", default=str(ROOT / "build" / "realdata"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "realdata.json"))
    ap.add_argument("--no-md", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument("--md-only", action="store_true", help="rewrite the RESULTS.md section from --out")
    args = ap.parse_args()
    if args.md_only:
        replace_section(HEADING, section(load_results(Path(args.out))))
        return
    if not args.dataset:
        ap.error("--dataset is required (CLINC150's data_full.json, HWU64's KFold_N folder or SNIPS's folder)")
    settings = parse_overrides(args.settings)
    fmt, splits = read_dataset(Path(args.dataset), args.format, args.domain)
    tag = f"{fmt}{'_' + args.domain if args.domain else ''}"
    command = shown_command(sys.argv[1:])
    out = Path(args.out)
    # A generated transfer set (teacher.transfer_samples) is its own setting, beside the row without.
    transfer = int(settings.get("teacher.transfer_samples", 0) or 0)
    for k in args.shots:
        name = (f"{tag}_{'full' if not k else f'{k}shot'}_{teacher_tag(args.teacher)}"
                + (f"_transfer{transfer}" if transfer else "") + ("_unlabeled" if args.unlabeled and k else "")
                + (f"_{args.variant}" if args.variant else ""))
        row = run_setting(name, splits, k, args.teacher, Path(args.work), args.seed, settings, args.unlabeled and k > 0)
        row["command"] = command
        print(json.dumps(row), flush=True)
        # Saved after every setting, so a long invocation cut short keeps what it measured.
        results = save_row(out, tag, fmt, row)
    print(table(results[tag]["rows"]))
    if not args.no_md:
        replace_section(HEADING, section(results))


def shown_command(argv: list[str]) -> str:
    """The invocation as the results show it: where the results went left out (--out, --work,
    --no-md) and a path on this machine as PATH/<its name>, so a reader can run it on theirs."""
    shown, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--out", "--work"):
            skip = True
            continue
        if a == "--no-md" or a.startswith(("--out=", "--work=")):
            continue
        key, eq, value = a.rpartition("=") if "=" in a and not a.startswith("-") else ("", "", a)
        if "/" in value and Path(value).is_absolute():
            value = f"PATH/{Path(value).name}"
        shown.append(key + eq + value)
    return "python bench/realdata.py " + " ".join(shown)


def load_results(out: Path) -> dict:
    """{dataset tag: {"format", "rows"}}; the older one-dataset file ({"dataset", "rows"}) is read too."""
    old = json.loads(out.read_text()) if out.is_file() else {}
    if "dataset" in old:
        return {old["dataset"]: {"format": old["dataset"].split("_")[0], "rows": old["rows"]}}
    return old.get("datasets", {})


def save_row(out: Path, tag: str, fmt: str, row: dict) -> dict:
    """Put `row` among the dataset's rows (replacing the same setting measured earlier); settings
    and datasets not measured again stay, each row with its command."""
    results = load_results(out)
    entry = results.setdefault(tag, {"format": fmt, "rows": []})
    entry["rows"] = [r for r in entry["rows"] if r["setting"] != row["setting"]] + [row]
    entry["rows"].sort(key=lambda r: (r["teacher"], -(r["shots"] or 10**9)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"datasets": dict(sorted(results.items()))}, indent=2) + "\n")
    return results


def dataset_text(tag: str, fmt: str, rows: list[dict]) -> str:
    domain = tag[len(fmt) + 1:] or None
    classes = rows[0]["classes"]
    if fmt == "hwu64":
        what = ("HWU64's crowd-sourced home-assistant commands (Liu et al., 2019, github.com/xliuhw/"
                "NLU-Evaluation-Data), fold 1 of the authors' 10-fold split (CrossValidation/"
                "autoGeneFromRealAnno/.../KFold_1: trainset/*.csv, testset/csv/*.csv; validation: a seeded "
                "tenth of each intent's train set), annotators' normalised text, accuracy")
        scope = (f"the {domain!r} scenario's {classes} intents (no published figures for one scenario)" if domain
                 else f"all {classes} intents ({PUBLISHED_HWU64})")
    elif fmt == "snips":
        what = ("SNIPS's crowd-sourced voice-assistant queries (Coucke et al., 2018) in the split of Goo et al. "
                "(2018) (github.com/MiuLab/SlotGated-SLU, data/snips: 13,084 / 700 / 700), intent accuracy")
        published = "; ".join(f"{n} {a:.1%}" for n, a in PUBLISHED["snips"])
        scope = f"all {classes} intents; published on the same split: {published}"
    else:
        what = "CLINC150's crowd-sourced commands, official train / validation / test split, in-scope accuracy"
        published = "; ".join(f"{n} {a:.1%}" for n, a in PUBLISHED["clinc150"])
        scope = (f"the {domain!r} domain's {classes} intents (no published figures for one domain)" if domain
                 else f"all {classes} intents; published in-scope accuracy on the same split "
                 f"(Larson et al., 2019): {published}")
    teachers = ", ".join(dict.fromkeys(
        "the built-in one trained from scratch (rows ending in scratch)" if r["teacher"] == "scratch"
        else f"{Path(r['teacher']).name} adapted with LoRA" for r in rows))
    commands = " and ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in rows))
    n = rows[0]["test_samples"]
    notes = "".join(f"\n- {r['setting']}: {r['note']}" for r in rows if r.get("note"))
    return (f"### {tag} ({commands})\n\n{what}, {scope}. Teacher: {teachers}. {n:,} test examples: one "
            f"is {100 / n:.2f} points.\n\n{table(rows)}\n{notes and notes[1:] + chr(10)}")


def section(results: dict) -> str:
    parts = [dataset_text(tag, e["format"], e["rows"]) for tag, e in sorted(results.items())]
    return (f"{HEADING}\n\nPublic intent benchmarks of real user utterances through the whole pipeline "
            "(bench/realdata.py; rows per dataset in bench/results/realdata.json). Accuracy on each "
            "benchmark's test split; settings were chosen on validation, the test is read once. The "
            "student is the default TinyLSTM (int8, bit-exact on the host in every row). Wall time on "
            "this machine (2 cores, shared).\n\n" + "\n".join(parts))


if __name__ == "__main__":
    main()
