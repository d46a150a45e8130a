"""The generated transfer set on the built-in task: the int8 student on phrasings it never saw,
with and without the utterances a pretrained writer adds (teacher.transfer_writer), for each
teacher asked for; written to bench/results/transfer_set.json and the "Generated transfer set"
section of bench/RESULTS.md.

    .venv/bin/python bench/transfer_set.py --writer PATH/gemma-3-270m-q4_k_m.gguf \\
        --teacher scratch PATH/gemma-3-270m-q4_k_m.gguf --samples 600 --seeds 0 1 2

Per teacher: one `tinyseek build` without a transfer set, one with (the same adapted teacher,
copied: adding a writer does not change the adaptation), each distilled with every seed
(distill.seed; the teacher, its knowledge and the transfer set are shared across seeds). A
pretrained teacher (a folder or .gguf) is used head-only (teacher.adapt = "none": a frozen
backbone, one pass over the data). Runs are named <teacher>_without_s<seed> and
<teacher>_with<samples>_s<seed>; an invocation with another --samples adds its rows to the
results file (a run measured again replaces its row). Validation (held out by template like
the test) chooses the variant per teacher; the test split is reported for the chosen one only.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from tinyseek.cli import parse_overrides
from tinyseek.config import load
from tinyseek.pipeline import Run
from tinyseek.teacher.transfer import RECOMBINE

from realdata import teacher_tag
from results_md import publish, replace_section

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Generated transfer set"
# What the seeds share: the adapted teacher, its knowledge and the transfer set.
SHARED = ("teacher", "knowledge.safetensors", "extraction.json", "stamps.json", "transfer.jsonl")


def share(source: Path, dest: Path) -> None:
    """Give `dest` the teacher stage's outputs of `source`, so its teacher stage is skipped (or
    only extracts, when a transfer set is added); a dequantized base/ is linked, not copied."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    if (source / "base").exists() and not (dest / "base").exists():
        (dest / "base").symlink_to((source / "base").resolve())


def build(name: str, overrides: dict, work: Path, from_run: Path | None) -> dict:
    # Every run has its own library folder, so one C name fits all (a run name need not be one).
    run = Run(load(overrides={"run": name, "models_dir": str(work / "models"), "codegen.name": "transfer_intents",
                              "codegen.out_dir": str(work / "lib" / name), **overrides}))
    if from_run is not None and not (run.dir / "stamps.json").exists():
        share(from_run, run.dir)
    t0 = time.monotonic()
    run.build()
    report = json.loads((run.dir / "report.json").read_text())
    v = report["validation"]
    transfer = run.dir / "transfer.jsonl"
    return {"run": name, "minutes": round((time.monotonic() - t0) / 60, 1),
            "transfer_samples": len(transfer.read_text().splitlines()) if overrides.get(
                "teacher.transfer_samples") and transfer.is_file() else 0,
            "val": {"teacher": v["teacher_accuracy"], "float": v["float_accuracy"], "int8": v["int8_accuracy"]},
            "test": {"teacher": report["teacher"]["accuracy"], "int8": report["student"]["int8_accuracy"]},
            "host_bitexact": report["host"]["bitexact"]}


def measure(teacher: str, args, settings: dict, work: Path) -> list[dict]:
    tag = teacher_tag(teacher)
    base = {"teacher.seed": 0, **settings}
    if teacher != "scratch":
        base.update({"teacher.source": teacher, "teacher.adapt": "none"})
    with_set = {**base, "teacher.transfer_samples": args.samples, "teacher.transfer_writer": args.writer}
    rows = []
    kind = "recombined" if args.writer == RECOMBINE else "with"
    for variant, overrides in (("without", base), (f"{kind}{args.samples}", with_set)):
        first = None
        for seed in args.seeds:
            name = f"{tag}_{variant}_s{seed}"
            source = work / "models" / (first or f"{tag}_without_s{args.seeds[0]}")
            row = build(name, {**overrides, "distill.seed": seed}, work,
                        None if name == f"{tag}_without_s{args.seeds[0]}" else source)
            first = first or name
            rows.append({"teacher": tag, "variant": variant, "seed": seed, **row})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def merge(old: dict, new: dict) -> dict:
    """The results of this invocation added to the earlier ones (a run measured again replaces
    its row), so invocations with other transfer set sizes build one table."""
    runs = {r["run"] for r in new["rows"]}
    rows = [r for r in old.get("rows", []) if r["run"] not in runs] + new["rows"]
    commands = list(dict.fromkeys(old.get("commands", []) + new["commands"]))
    return {**old, **new, "rows": rows, "commands": commands, "notes": old.get("notes", []),
            "summary": summary(rows)}


def _size(variant: str) -> tuple[int, str]:
    """Sort key of a variant: without, then by size (an LM's set before a recombined one)."""
    return (0, "") if variant == "without" else (int(variant.lstrip("abcdefghijklmnopqrstuvwxyz")), variant[::-1])


def summary(rows: list[dict]) -> list[dict]:
    """Per teacher and variant (no transfer set, then by size): the mean over seeds; per
    teacher, the variant validation chooses."""
    out = []
    for tag in dict.fromkeys(r["teacher"] for r in rows):
        group = []
        for variant in sorted({r["variant"] for r in rows if r["teacher"] == tag}, key=_size):
            rs = sorted((r for r in rows if r["teacher"] == tag and r["variant"] == variant), key=lambda r: r["seed"])
            group.append({"teacher": tag, "variant": variant, "seeds": [r["seed"] for r in rs],
                          "val_int8": [r["val"]["int8"] for r in rs], "val_teacher": rs[0]["val"]["teacher"],
                          "val_int8_mean": float(np.mean([r["val"]["int8"] for r in rs])),
                          "test_int8_mean": float(np.mean([r["test"]["int8"] for r in rs])),
                          "test_teacher": rs[0]["test"]["teacher"],
                          "transfer_samples": rs[0]["transfer_samples"],
                          "host_bitexact": all(r["host_bitexact"] for r in rs)})
        best = max(group, key=lambda g: g["val_int8_mean"])
        for g in group:
            g["chosen"] = g is best
        out += group
    return out


def section(result: dict) -> str:
    commands = " and ".join(f"`{c}`" for c in result["commands"])
    lines = [f"{HEADING} ({commands})", "",
             "The built-in task (phrasings held out by template) with and without a transfer set written by "
             f"{result['writer']} or recombined from the training texts (teacher.transfer_writer = "
             "\"recombine\", docs/teachers.md): `--samples` utterances asked "
             "for, kept where the teacher's head gives the class the writer was asked for. Int8 student (integer "
             "reference, bit-exact on the host in every run), mean over the seeds; validation (1,080 samples) chooses "
             "the variant per teacher, the test (1,800) is shown for the chosen one only.", "",
             "| teacher | transfer set | seeds | int8 validation (per seed) | teacher validation | "
             "int8 test (chosen only) | teacher test |",
             "|---|---|---|---|---|---|---|"]
    for g in result["summary"]:
        per_seed = " / ".join(f"{v:.2%}" for v in g["val_int8"])
        chosen = f"**{g['test_int8_mean']:.2%}**" if g["chosen"] else "not reported"
        kept = "none" if g["variant"] == "without" else f"{g['transfer_samples']} kept" + (
            ", recombined" if g["variant"].startswith("recombined") else f", written by {result['writer']}")
        lines.append(f"| {g['teacher']} | {kept} | {', '.join(map(str, g['seeds']))} | "
                     f"{g['val_int8_mean']:.2%} ({per_seed}) | {g['val_teacher']:.2%} | {chosen} | "
                     f"{g['test_teacher']:.2%} |")
    return "\n".join(lines + [""] + result.get("notes", [])) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writer", help="a pretrained LM (folder or .gguf) that writes the transfer set, or "
                    f"{RECOMBINE!r} for recombined training texts (required unless --md-only)")
    ap.add_argument("--teacher", nargs="+", default=["scratch"],
                    help="scratch (the built-in teacher) and/or pretrained LMs (folder or .gguf), head-only")
    ap.add_argument("--samples", type=int, default=600, help="teacher.transfer_samples")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="distill.seed of each student")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="more settings for every run, e.g. teacher.threads=1")
    ap.add_argument("--work", default=str(ROOT / "build" / "transfer_set"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "transfer_set.json"))
    ap.add_argument("--no-md", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument("--md-only", action="store_true", help="rewrite the section from --out's JSON (its \"notes\" "
                    "lines go under the table), measuring nothing")
    args = ap.parse_args()
    if args.md_only:
        replace_section(HEADING, section(json.loads(Path(args.out).read_text())))
        return
    if not args.writer:
        ap.error(f"--writer is required: the pretrained LM that writes the transfer set, or {RECOMBINE!r}")
    for path in [w for w in [args.writer] if w != RECOMBINE] + [t for t in args.teacher if t != "scratch"]:
        if not Path(path).exists():
            sys.exit(f"{path}: no such file or folder; give a local Hugging Face folder or .gguf file")
    settings = parse_overrides(args.settings)
    rows = [r for teacher in args.teacher for r in measure(teacher, args, settings, Path(args.work))]
    out = Path(args.out)
    new = {"commands": ["python bench/transfer_set.py " + " ".join(sys.argv[1:])], "rows": rows}
    if args.writer != RECOMBINE:
        new["writer"] = Path(args.writer).name
    result = merge(json.loads(out.read_text()) if out.is_file() else {}, new)
    publish(out, result, HEADING, section(result), markdown=not args.no_md)


if __name__ == "__main__":
    main()
