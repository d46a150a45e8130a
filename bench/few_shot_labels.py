"""Labels from a pretrained LM's own instruction following (teacher.labels = "zero-shot", with
teacher.shots labelled examples per class in the prompt) on the built-in task: accuracy of the
labels on phrasings held out by template, and what reading the prompt's shared lines once
saves; written to bench/results/few_shot_labels.json and the "Few-shot labels" section of
bench/RESULTS.md.

    .venv/bin/python bench/few_shot_labels.py --teacher PATH/gemma-3-270m-q4_k_m.gguf --shots 0 1 2

For every --shots k: the prompt adapt() writes for teacher.shots = k (the default teacher.prompt,
teacher.example and verbalisers), scored by verbalize.zero_shot_logits on --per-class seeded
validation texts of every class. Validation chooses k; the test split (the same number per
class) is read once, with the chosen k. --compare texts are also scored with share_prefix=False
(each prompt read whole) for the time per text; the labels that agree are counted.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from tinyseek.config import load
from tinyseek.data import load_task
from tinyseek.teacher.adapt import prompt_with_examples
from tinyseek.teacher.load import gguf_to_folder, load_teacher, use_threads
from tinyseek.teacher.verbalize import resolve_verbalizers, zero_shot_logits

from results_md import publish

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Few-shot labels"


def stratified(split, per_class: int, seed: int) -> np.ndarray:
    """`per_class` seeded rows of every class, in the split's order."""
    rng = np.random.default_rng(seed)
    y = np.asarray(split.y)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                                   for c in np.unique(y)]))


def score(model, tok, split, rows, labels, verbs, prompt, cfg, share=True) -> tuple[float, np.ndarray, float]:
    """(accuracy, predictions, seconds per text) of the labels on `rows` of `split`."""
    texts = [split.texts[i] for i in rows]
    t0 = time.perf_counter()
    logp = zero_shot_logits(model, tok, texts, labels, verbs, prompt, 16, cfg.verbalizer_score, cfg.max_tokens,
                            share_prefix=share)
    per_text = (time.perf_counter() - t0) / len(texts)
    pred = logp.argmax(1)
    return float(np.mean(pred == np.asarray(split.y)[rows])), pred, per_text


def section(result: dict) -> str:
    rows = "\n".join(f"| {r['shots']} | {r['prompt_tokens']:,} | {r['val_accuracy']:.2%} | "
                     f"{r['ms_per_text']:,.0f} | {r['ms_per_text_whole']:,.0f} | "
                     f"{r['same_label_whole']} of {result['compare']} |"
                     + (f" {result['test_accuracy']:.2%} |" if r["shots"] == result["chosen_shots"] else " |")
                     for r in result["rows"])
    return (f"{HEADING} (`{result['command']}`)\n\n"
            f"{result['teacher']} ({result['dtype']}, {result['threads']} thread(s), this 2-core machine) labels the "
            f"built-in task's texts by scoring the label words after the default prompt (teacher.labels = "
            f"\"zero-shot\"), with teacher.shots labelled training examples per class in it: "
            f"{result['per_class']} seeded texts per class of validation (held out by template), which chooses "
            f"the shots; the test ({result['per_class']} per class) read once, with the chosen shots. Time per "
            f"text: the prompt's shared lines read once (the default) and each prompt read whole "
            f"(share_prefix=False, on the first {result['compare']} of them; in bfloat16 the two orders of "
            f"arithmetic may part on a near tie, so the labels that agree are counted).\n\n"
            "| shots per class | prompt tokens before the text | validation | ms / text | ms / text, prompt read "
            "whole | same label, prompt read whole | test |\n|---|---|---|---|---|---|---|\n" + rows + "\n\n" + "\n".join(result.get("notes", [])) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="a pretrained LM: a local Hugging Face folder or a .gguf file")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2], help="teacher.shots settings to measure")
    ap.add_argument("--per-class", type=int, default=15, help="texts per class of validation and of the test")
    ap.add_argument("--compare", type=int, default=16, help="texts also scored with each prompt read whole")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (teacher.threads)")
    ap.add_argument("--dtype", default="auto", help="teacher.dtype")
    ap.add_argument("--work", default=str(ROOT / "build" / "few_shot_labels"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "few_shot_labels.json"))
    ap.add_argument("--no-md", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args()
    source = Path(args.teacher)
    if not source.exists():
        sys.exit(f"{source}: no such file or folder; give a local Hugging Face folder or .gguf file")
    use_threads(args.threads)
    base = load(None)
    dataset = load_task(base.task)
    labels = list(dataset.labels)
    folder = gguf_to_folder(source, Path(args.work) / "base", None, args.dtype) if source.suffix == ".gguf" else source
    model, tok = load_teacher(folder, None, dtype=args.dtype, device="cpu")
    verbs = resolve_verbalizers(labels, base.teacher.verbalizers)
    val_rows = stratified(dataset.val, args.per_class, 0)
    rows = []
    for k in args.shots:
        cfg = replace(base.teacher, labels="zero-shot", shots=k)
        prompt = prompt_with_examples(dataset, cfg, verbs)
        acc, pred, per_text = score(model, tok, dataset.val, val_rows, labels, verbs, prompt, cfg)
        few = val_rows[:args.compare]
        _, whole_pred, whole = score(model, tok, dataset.val, few, labels, verbs, prompt, cfg, share=False)
        head = prompt.replace("{labels}", ", ".join(verbs[label][0] for label in labels)).split("{text}")[0]
        rows.append({"shots": k, "prompt_tokens": len(tok(head)["input_ids"]), "val_accuracy": acc,
                     "ms_per_text": per_text * 1e3, "ms_per_text_whole": whole * 1e3,
                     "same_label_whole": int((whole_pred == pred[:len(few)]).sum())})
        print(rows[-1], flush=True)
    chosen = max(rows, key=lambda r: r["val_accuracy"])["shots"]
    cfg = replace(base.teacher, labels="zero-shot", shots=chosen)
    test_acc, _, _ = score(model, tok, dataset.test, stratified(dataset.test, args.per_class, 0), labels, verbs,
                           prompt_with_examples(dataset, cfg, verbs), cfg)
    result = {"command": "python bench/few_shot_labels.py " + " ".join(sys.argv[1:]), "teacher": source.name,
              "dtype": str(model.dtype).replace("torch.", ""), "threads": args.threads, "per_class": args.per_class,
              "compare": args.compare, "rows": rows, "chosen_shots": chosen, "test_accuracy": test_acc}
    publish(Path(args.out), result, HEADING, section(result), markdown=not args.no_md)


if __name__ == "__main__":
    main()
