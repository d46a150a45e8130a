"""Ablation of the distillation on the default task: what each ingredient adds to the int8
student's test accuracy, written to bench/distill_ablation.json and the table in
bench/RESULTS.md (docs/distillation.md).

    .venv/bin/python bench/distill_ablation.py                     # the teacher built under build/ablation
    .venv/bin/python bench/distill_ablation.py --knowledge models/intents/knowledge.safetensors

Variants (the default student, hidden 64 / embed 32 / vocab 1024 / 1 layer; every variant
names its distill settings, so the table does not move with the defaults):
  a   hard labels only            joint, alpha 0, beta 0
  b   logits KD                   joint, alpha 0.7, beta 0 (KL at T 4 + hard labels)
  b'  + features, one layer       joint, beta 0.1, teacher layer 4 -> student layer 0 (the former default)
  c   + feature matching          joint, beta 0.1, every cached layer mapped (layer_map default)
  d   progressive                 features -> annealed KL -> hard-label fine-tune
  e   + feedback round            d, then a round of stages 2-3 from d's best epoch
  f   joint + feedback round      c, then a second joint round from c's best epoch
  g, h                            f with the disagreeing samples weighted x3 / relabelled by the teacher
  i   joint, 60 epochs            c trained twice as long in one round (f's budget)
  n   the former default          c, 50 epochs, 6 noisy copies of each training sample
  p   the built-in default        d with n's 6 noisy copies (progressive)
  s   + subwords                  c with student.subwords 8 (hashed character n-grams, docs/numerics.md)
  s3  + 3 subwords                c with student.subwords 3 (fewer n-grams, less dilution of the word)
  s2  noise, whole words / + subwords   c with 2 noisy copies, student.subwords 0 / 8 (s2o / s2)
Every variant also reports int8 accuracy on the validation split with typos at the medium
level (tinyseek.data.noise, seed 0). For each: int8 accuracy on the validation split (held out
by template like the test; the variant to use is chosen on it), float and int8 accuracy on the test split (the quantizer and
the integer oracle of tinyseek.quant, read for the report only) and retention = int8 accuracy /
teacher accuracy, per seed and their mean.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from safetensors import safe_open

from tinyseek.config import load
from tinyseek.data import load_task
from tinyseek.data.noise import LEVELS, REFERENCE_LEVEL, corrupt_split
from tinyseek.distill import distill, evaluate
from tinyseek.harness.evaluate import oracle_logits
from tinyseek.pipeline import Run
from tinyseek.quant.quantize import quantize_run
from tinyseek.student import load_student

from results_md import replace_section

ROOT = Path(__file__).resolve().parents[1]
# Every variant names the settings it depends on, so the table does not move with the defaults.
JOINT = {"distill.schedule": "joint", "distill.alpha": 0.7, "distill.beta": 0.1, "distill.epochs": 30,
         "distill.layer_map": "", "distill.feedback_rounds": 0, "distill.feedback": "reweight",
         "distill.feedback_weight": 1.0, "distill.noise_copies": 0}
# distill.epochs 38 = the stage epochs' sum: the stages train as given.
PROGRESSIVE = {**JOINT, "distill.schedule": "progressive", "distill.epochs": 38, "distill.stage1_epochs": 8, "distill.stage2_epochs": 24,
               "distill.stage3_epochs": 6, "distill.temperature_start": 8.0, "distill.temperature_end": 1.0,
               "distill.hard_weight": 0.1, "distill.stage2_beta": 0.0, "distill.stage3_lr": 3e-4}
VARIANTS = {
    "a": ("hard labels only", {**JOINT, "distill.alpha": 0.0, "distill.beta": 0.0}),
    "b": ("logits KD (joint)", {**JOINT, "distill.beta": 0.0}),
    "b'": ("+ feature matching, last teacher layer only (the former default)", {**JOINT, "distill.layer_map": "4:0"}),
    "c": ("+ feature matching, layer mapping (every cached layer)", JOINT),
    "d": ("progressive", PROGRESSIVE),
    "e": ("progressive + feedback round", {**PROGRESSIVE, "distill.feedback_rounds": 1}),
    "f": ("joint (c) + feedback round", {**JOINT, "distill.feedback_rounds": 1}),
    "g": ("joint (c) + feedback round, disagreeing samples x3", {**JOINT, "distill.feedback_rounds": 1,
                                                                 "distill.feedback_weight": 3.0}),
    "h": ("joint (c) + feedback round, disagreeing samples relabelled", {**JOINT, "distill.feedback_rounds": 1,
                                                                        "distill.feedback": "relabel"}),
    "i": ("joint (c), 60 epochs", {**JOINT, "distill.epochs": 60}),
    "n": ("joint (c), 50 epochs, 6 noise copies (the former default)", {**JOINT, "distill.epochs": 50,
                                                                          "distill.noise_copies": 6}),
    "p": ("progressive (d), 6 noise copies (the built-in default)", {**PROGRESSIVE, "distill.noise_copies": 6}),
    "s": ("joint (c) + subwords 8", {**JOINT, "student.subwords": 8}),
    "s3": ("joint (c) + subwords 3", {**JOINT, "student.subwords": 3}),
    "s2o": ("joint (c), 2 noise copies", {**JOINT, "distill.noise_copies": 2, "student.subwords": 0}),
    "s2": ("joint (c), 2 noise copies + subwords 8", {**JOINT, "distill.noise_copies": 2, "student.subwords": 8}),
}
HEADING = "## Distillation ablation"


def teacher_cache(args) -> Path:
    """The knowledge cache to distill from: --knowledge, or the default teacher built into a
    scratch run folder (the committed models/intents is never touched)."""
    if args.knowledge:
        return Path(args.knowledge)
    run = Run(load(overrides={"models_dir": str(Path(args.work) / "models")}))
    run.stage("teacher")
    return run.knowledge


def measure(ds, knowledge: Path, overrides: dict, work: Path) -> dict:
    """Distill, quantize and evaluate one configuration: float and int8 test accuracy."""
    if ds is None:  # in a worker process
        ds = load_task(load().task)
    cfg = load(overrides={"models_dir": str(work), **overrides})
    t0 = time.monotonic()
    out = distill(ds, knowledge, cfg, cfg.run_dir, progress=False)
    seconds = time.monotonic() - t0
    model, spec = load_student(out)
    qm = quantize_run(cfg, cfg.run_dir, ds)
    int8 = float(np.mean(oracle_logits(qm, ds.test).argmax(axis=1) == ds.test.y))
    int8_val = float(np.mean(oracle_logits(qm, ds.val).argmax(axis=1) == ds.val.y))
    typo_val = corrupt_split(ds.val, "typo", LEVELS["typo"][REFERENCE_LEVEL], seed=0)
    int8_val_typo = float(np.mean(oracle_logits(qm, typo_val).argmax(axis=1) == ds.val.y))
    hist = json.loads((out / "history.json").read_text())
    return {"float_accuracy": evaluate(model, spec, ds.test), "int8_accuracy": int8, "int8_val_accuracy": int8_val,
            "int8_val_typo_accuracy": int8_val_typo, "best_epoch": hist["best_epoch"], "best_stage": hist["best_stage"],
            "disagree": [f["disagree"] for f in hist["feedback"]], "train_seconds": round(seconds, 1)}


def chosen(results: dict) -> str:
    """The variant validation picks: the best mean int8 validation accuracy."""
    return max(results, key=lambda k: results[k]["int8_val_accuracy"])


def table(results: dict, teacher: float, seeds: list[int]) -> str:
    pick = chosen(results)
    lines = [f"| variant | int8 val. acc. (chooses) | int8 val. acc., typos 2 % | float test acc. | int8 test acc. | "
             f"retention (int8 / teacher {teacher:.2%}) | int8 test per seed |", "|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        per = ", ".join(f"{v:.2%}" for v in r["int8_per_seed"])
        spread = f" (spread {r['int8_spread'] * 100:.2f} pp)" if len(seeds) > 1 else ""
        name = f"**({key}) {r['name']}**" if key == pick else f"({key}) {r['name']}"
        lines.append(f"| {name} | {r['int8_val_accuracy']:.2%} | {r['int8_val_typo_accuracy']:.2%} | {r['float_accuracy']:.2%} | {r['int8_accuracy']:.2%} | "
                     f"{r['retention']:.1%} | {per}{spread} |")
    best_test = max(results, key=lambda k: results[k]["int8_accuracy"])
    lines += ["", f"Chosen on validation: ({pick}), {results[pick]['int8_accuracy']:.2%} on the test split; the best "
              f"test figure, ({best_test}) {results[best_test]['int8_accuracy']:.2%}, is what choosing on the test "
              "would have reported."]
    return "\n".join(lines)


def write_results_md(md: str, command: str, seeds: list[int], minutes: float) -> None:
    section = (f"{HEADING} (`{command}`)\n\n"
               f"Variants are chosen on the validation split (1080 samples from templates held out like the "
               f"test's); the test split (1800 samples, phrasings never seen in training) is reported. The default "
               f"student (hidden 64, embed 32, vocab 1024, 1 layer), the teacher cache of the default run; each "
               f"variant names its distill settings in the script. Accuracies are means over seeds {seeds}. "
               f"int8 = the quantized model through the integer oracle (bit-exact with the C). "
               f"Wall time {minutes:.1f} min on this machine. "
               f"What each variant trains: docs/distillation.md.\n\n{md}\n")
    replace_section(HEADING, section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--knowledge", help="knowledge cache of the default task (default: build the teacher under --work)")
    ap.add_argument("--work", default=str(ROOT / "build" / "ablation"), help="scratch folder for the teacher")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="which variants (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "distill_ablation.json"))
    ap.add_argument("--jobs", type=int, default=2, help="distillations in parallel (each uses one thread)")
    ap.add_argument("--no-md", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args()
    t_start = time.monotonic()
    ds = load_task(load().task)
    knowledge = teacher_cache(args)
    with safe_open(str(knowledge), "np") as f:
        teacher = float(np.mean(f.get_tensor("test.logits").argmax(axis=1) == ds.test.y))
    results = {}
    tasks = [(key, seed) for key in args.variants for seed in args.seeds]
    # Training is single-threaded: one worker per core runs the seeds side by side.
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(
            max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {t: pool.submit(measure, None, knowledge, {**VARIANTS[t[0]][1], "distill.seed": t[1]},
                                  Path(tmp) / f"{t[0]}{t[1]}") for t in tasks}
        for key in args.variants:
            name, overrides = VARIANTS[key]
            runs = []
            for seed in args.seeds:
                r = futures[(key, seed)].result()
                print(f"({key}) seed {seed}: float {r['float_accuracy']:.4f} int8 {r['int8_accuracy']:.4f} "
                      f"[{r['train_seconds']} s]", flush=True)
                runs.append(r)
            int8 = [r["int8_accuracy"] for r in runs]
            results[key] = {"name": name, "overrides": overrides, "seeds": args.seeds, "runs": runs,
                            "float_accuracy": float(np.mean([r["float_accuracy"] for r in runs])),
                            "int8_val_accuracy": float(np.mean([r["int8_val_accuracy"] for r in runs])),
                            "int8_val_typo_accuracy": float(np.mean([r["int8_val_typo_accuracy"] for r in runs])),
                            "int8_accuracy": float(np.mean(int8)), "int8_per_seed": int8,
                            "int8_spread": max(int8) - min(int8), "retention": float(np.mean(int8)) / teacher}
    minutes = (time.monotonic() - t_start) / 60
    command = "python bench/distill_ablation.py " + " ".join(sys.argv[1:])
    report = {"command": command.strip(), "teacher_accuracy": teacher, "test_samples": len(ds.test.y),
              "val_samples": len(ds.val.y), "split_by": ds.split_by, "chosen_on_validation": chosen(results),
              "minutes": round(minutes, 1), "variants": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    md = table(results, teacher, args.seeds)
    print(md)
    if not args.no_md:
        write_results_md(md, command.strip(), args.seeds, minutes)


if __name__ == "__main__":
    main()
