"""int8 / int4 / binary weights (LSTM gate matrices, the embedding, a binary model's head) on the built-in task,
post-training and quantization-aware: accuracy (validation, test), weight bytes, flash and
instructions per inference on the emulated boards. Starts from the committed default's float student and its
knowledge cache (no teacher rebuild). Writes bench/results/low_bit.json and low_bit.md.

    .venv/bin/python bench/low_bit.py                        # qat 6 epochs, qemu_m4 and qemu_m55
    .venv/bin/python bench/low_bit.py --qat-epochs 4 --envs qemu_m4 --samples 50
    .venv/bin/python bench/low_bit.py --instructions binary --envs qemu_m55   # no training: instructions only
    .venv/bin/python bench/low_bit.py --boards   # no training: the boards' tables of the results again

Instructions are what QEMU executed (-icount), not CPU cycles: QEMU has no pipeline model.
Every board run is also a bit-exactness check against the integer reference.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from tinyseek.codegen.render import render
from tinyseek.config import load
from tinyseek.harness.bench import run_device_bench
from tinyseek.harness.aarch64 import low_bit_model
from tinyseek.harness.evaluate import labeled_accuracy, oracle_logits
from tinyseek.pipeline import Run
from tinyseek.quant.float_model import FloatStudent
from tinyseek.quant.model import QuantModel
from tinyseek.quant.quantize import quantize_run
from tinyseek.quant.reference import infer_tokens
from tinyseek.student.tokenizer import HashTokenizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "intents"
PORTABLE = ["-DTINYSEEK_KERNEL_PORTABLE"]
DEFAULT_OUT = ROOT / "bench" / "results" / "low_bit.json"
HEADING = "## Low-bit weights (int4 and binary)"
# The plan this project follows: 4-bit ~8x smaller than float at 3-5 % loss, binary 32x at 8-10 %;
# the goals of tinyseek's issue on it: weight matrices <= 55 % / <= 15 % of int8's, accuracy within
# 1 / 8 points of int8.
PLAN = {"int4": {"smaller_than_float": 8, "loss_percent": "3-5", "goal_vs_int8": 0.55, "goal_points": 1},
        "binary": {"smaller_than_float": 32, "loss_percent": "8-10", "goal_vs_int8": 0.15, "goal_points": 8}}


def gate_bytes(model: QuantModel) -> int:
    """Bytes of the LSTM gate matrices as stored (packed for int4 and binary)."""
    arrays = model.arrays()
    return int(sum(arrays[f"lstm{i}.{k}"].nbytes for i in range(len(model.layers)) for k in ("w_x", "w_h")))


def embedding_bytes(model: QuantModel) -> int:
    """Bytes of the stored embedding: int8 rows, or codes and a gain per row."""
    arrays = model.arrays()
    return int(arrays["embedding"].nbytes + (arrays["embedding.gain"].nbytes if "embedding.gain" in arrays else 0))


def sizes(model: QuantModel) -> dict:
    """The weight matrices (embedding, gate matrices, head) and everything in flash besides code."""
    gates, emb, head = gate_bytes(model), embedding_bytes(model), int(model.arrays()["head.w"].nbytes)
    return {"gate_bytes": gates, "embedding_bytes": emb, "head_bytes": head,
            "matrix_bytes": gates + emb + head, "weight_bytes": model.weight_bytes()}


def accuracies(model: QuantModel, ds) -> dict:
    return {"val_accuracy": labeled_accuracy(oracle_logits(model, ds.val).argmax(axis=1), ds.val.y),
            "test_accuracy": labeled_accuracy(oracle_logits(model, ds.test).argmax(axis=1), ds.test.y)}


def board(env: str, model: QuantModel, ids: list, work: Path, flags: list[str]) -> dict:
    lib = work / "lib" / model.name  # PlatformIO finds a library by its folder name
    render(model, lib, overwrite=True)
    out = run_device_bench(env, lib, ids, build_dir=work / "build", extra_flags=flags)
    if out["logits"] != infer_tokens(model, ids).tolist():
        raise AssertionError(f"{env}: {model.weights} model is not bit-exact against the integer reference")
    per = np.array(out["latency"]["per_input"])
    elf = out["memory"]["elf"]
    return {"kernel": out["model"]["kernel"], "instructions_median": float(np.median(per)),
            "flash_model": elf["flash"]["model"], "flash_runtime": elf["flash"]["runtime"],
            "ram_model": elf["ram"]["model"], "bitexact": True, "samples": len(ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qat-epochs", type=int, default=6)
    ap.add_argument("--qat-lr", type=float, default=None, help="default: quant.qat_lr (0: the width's own, config.QAT_LR)")
    ap.add_argument("--envs", default="qemu_m4,qemu_m55")
    ap.add_argument("--samples", type=int, default=100, help="test texts sent to each board")
    ap.add_argument("--knowledge", type=Path, default=DEFAULT / "knowledge.safetensors")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the default also updates bench/RESULTS.md")
    ap.add_argument("--wide-hidden", type=int, default=0,
                    help="instead: distill an int4 student of this hidden size (the same gate-matrix flash as the "
                         "int8 default at 96) and add it to the results in --out")
    ap.add_argument("--embedding", choices=["", "int8", "int4", "binary"], default="",
                    help="quant.embedding of every row (default: the same width as the gate matrices)")
    ap.add_argument("--add-qat", choices=["int8"], default=None,
                    help="instead: add the QAT row of this width to the results in --out (int8: the control, the "
                         "same extra epochs with next to no quantization)")
    ap.add_argument("--instructions", default="",
                    help="instead: only the boards' instructions per inference of the post-training models of these "
                         "widths (comma-separated; nothing trained, no knowledge cache), printed; writes nothing")
    ap.add_argument("--boards", action="store_true",
                    help="instead: measure the boards' tables again (--envs) with the post-training models of the "
                         "committed float student, whose instruction counts are the QAT models' (the kernels' "
                         "counts follow shapes and tokens, not weight values), and write them into --out")
    ap.add_argument("--cflags", default="", help="with --instructions: more compiler flags for the boards "
                                                 "(space-separated, e.g. -U__ARM_FEATURE_MVE)")
    ap.add_argument("--sweep-lr", default="",
                    help="instead: QAT at each of these peak learning rates (comma-separated) for int4 and binary, "
                         "validation accuracy only (how config.QAT_LR was chosen), added to the results in --out")
    args = ap.parse_args()
    if args.instructions:
        return instructions(args)
    if args.boards:
        return boards(args)
    knowledge = _shown(args.knowledge)
    command = (f"python bench/low_bit.py --qat-epochs {args.qat_epochs} --envs {args.envs} --samples {args.samples}"
               + (f" --qat-lr {args.qat_lr}" if args.qat_lr is not None else "")
               + (f" --embedding {args.embedding}" if args.embedding else "")
               + _knowledge_flag(args))
    if not args.knowledge.is_file():
        raise SystemExit(f"{args.knowledge} is missing: it is the default run's knowledge cache, written by "
                         "`tinyseek teacher`; pass --knowledge PATH to another copy of the same task's (`make demo` "
                         "writes models/demo/knowledge.safetensors)")
    cfg = load(DEFAULT / "config.toml")
    ds = Run(cfg).dataset
    work = Path(args.work or tempfile.mkdtemp(prefix="low_bit-"))
    if args.wide_hidden:
        return wide(args, cfg, ds, work)
    if args.add_qat:
        return add_qat(args, cfg, ds, work)
    if args.sweep_lr:
        return sweep_lr(args, cfg, ds, work)
    fs = FloatStudent.from_folder(DEFAULT / "student")
    float_bytes = 4 * sum(L.w_x.size + L.w_h.size for L in fs.quant_layers())
    result = {"task": ds.name, "float": {"val_accuracy": labeled_accuracy(fs.predict(ds.val).argmax(axis=1), ds.val.y),
                                         "test_accuracy": labeled_accuracy(fs.predict(ds.test).argmax(axis=1), ds.test.y),
                                         "gate_bytes": float_bytes},
              "qat_epochs": args.qat_epochs, "command": command, "knowledge": knowledge, "plan": PLAN, "variants": {}, "boards": {}}
    if args.out.is_file():  # the learning-rate sweep stands apart from these rows: kept
        result.update({k: v for k, v in json.loads(args.out.read_text()).items() if k == "lr_sweep"})
    models = {}
    for width in ("int8", "int4", "binary"):
        run_dir = work / width
        shutil.copytree(DEFAULT / "student", run_dir / "student", dirs_exist_ok=True)
        qat = args.qat_epochs if width != "int8" else 0
        quant = dataclasses.replace(cfg.quant, weights=width, qat_epochs=qat, embedding=args.embedding,
                                    qat_lr=args.qat_lr if args.qat_lr is not None else cfg.quant.qat_lr)
        t0 = time.time()
        final = quantize_run(dataclasses.replace(cfg, quant=quant), run_dir, ds, args.knowledge if qat else None)
        seconds = time.time() - t0
        pairs = [(f"{width} PTQ", QuantModel.load(run_dir / "int8_ptq") if qat else final)]
        if qat:
            pairs.append((f"{width} QAT", final))
        for label, model in pairs:
            models[label] = model
            row = {"weights": width, "embedding": model.embedding_width, **accuracies(model, ds), **sizes(model)}
            row["gate_smaller_than_float"] = float_bytes / row["gate_bytes"]
            row["loss_vs_float_test_points"] = 100 * (result["float"]["test_accuracy"] - row["test_accuracy"])
            if label.endswith("QAT"):
                row["qat_best_epoch"] = model.meta["qat"]["best_epoch"]
                row["qat_lr"] = model.meta["qat"]["lr"]
                row["qat_seconds"] = seconds
            result["variants"][label] = row
            print(label, json.dumps(row), flush=True)
    int8 = result["variants"]["int8 PTQ"]
    for row in result["variants"].values():
        _vs_int8(row, int8)

    ids = test_ids(cfg, ds, args.samples)
    kind = "QAT" if args.qat_epochs else "PTQ"
    for env in [e for e in args.envs.split(",") if e]:
        result["boards"][env] = board_table(env, models["int8 PTQ"], models[f"int4 {kind}"],
                                            models[f"binary {kind}"], ids, work)
        print(env, json.dumps(result["boards"][env]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _write(args, result)
    print(markdown(result))


def test_ids(cfg, ds, samples: int) -> list:
    """The token ids of the first `samples` non-empty test texts: what the boards are sent."""
    tok = HashTokenizer(cfg.student.vocab_size, cfg.student.max_len)
    return [t for t in (tok.encode(x) for x in ds.test.texts) if t][:samples]


def ptq_model(cfg, ds, width: str, embedding: str) -> QuantModel:
    """The committed float student quantized post-training at `width` (nothing trained)."""
    return low_bit_model(DEFAULT, cfg, width, embedding, ds)


def board_table(env: str, int8: QuantModel, int4: QuantModel, binary: QuantModel, ids: list, work: Path) -> dict:
    """One board's table of the results: each width on its kernel, int8 and int4 on the portable C too."""
    return {"int8": board(env, int8, ids, work / env / "int8", []),
            "int8 portable C": board(env, int8, ids, work / env / "int8c", PORTABLE),
            "int4": board(env, int4, ids, work / env / "int4", []),
            "binary": board(env, binary, ids, work / env / "binary", []),
            "int4 portable C": board(env, int4, ids, work / env / "int4c", PORTABLE)}


def instructions(args) -> None:
    """The boards' cost of each width in seconds, without the QAT epochs: the committed float student
    quantized post-training (the same shapes as the QAT models) and run on --envs, bit-exact against
    the integer reference; the median instructions per inference printed, nothing written. The
    kernels' instruction counts follow the shapes and the token counts, not the weights' values:
    these are the QAT models' counts too."""
    cfg = load(DEFAULT / "config.toml")
    ds = Run(cfg).dataset
    work = Path(args.work or tempfile.mkdtemp(prefix="low_bit-"))
    ids = test_ids(cfg, ds, args.samples)
    flags = args.cflags.split()
    for width in args.instructions.split(","):
        model = ptq_model(cfg, ds, width, args.embedding)
        for env in [e for e in args.envs.split(",") if e]:
            r = board(env, model, ids, work / env / width, flags)
            print(f"{env} {width} PTQ{' ' + args.cflags if flags else ''}: kernel {r['kernel']}, "
                  f"{r['instructions_median']:,.0f} instructions per inference (median of {r['samples']} test texts; "
                  f"QEMU -icount: instructions, not cycles), flash model {r['flash_model']:,} B", flush=True)


def boards(args) -> None:
    """The boards' tables of --out measured again, as the main run measures them, on the
    post-training models of each width (the QAT models' shapes and token counts, so their
    instruction counts; flash counts bytes, not values): after a kernel changes, without the
    QAT epochs."""
    cfg = load(DEFAULT / "config.toml")
    ds = Run(cfg).dataset
    work = Path(args.work or tempfile.mkdtemp(prefix="low_bit-"))
    result = json.loads(args.out.read_text())
    models = {width: ptq_model(cfg, ds, width, args.embedding) for width in ("int8", "int4", "binary")}
    ids = test_ids(cfg, ds, args.samples)
    for env in [e for e in args.envs.split(",") if e]:
        result["boards"][env] = board_table(env, models["int8"], models["int4"], models["binary"], ids, work)
        print(env, json.dumps(result["boards"][env]), flush=True)
    result["boards_command"] = f"python bench/low_bit.py --boards --envs {args.envs} --samples {args.samples}"
    _write(args, result)


def add_qat(args, cfg, ds, work: Path) -> None:
    """One more QAT row from the default's float student (int8: do the extra epochs themselves,
    with fake-quantization that changes next to nothing, explain the QAT rows' gains?)."""
    result = json.loads(args.out.read_text())
    run_dir = work / f"{args.add_qat}-qat"
    shutil.copytree(DEFAULT / "student", run_dir / "student", dirs_exist_ok=True)
    quant = dataclasses.replace(cfg.quant, weights=args.add_qat, qat_epochs=args.qat_epochs,
                                qat_lr=args.qat_lr if args.qat_lr is not None else cfg.quant.qat_lr)
    model = quantize_run(dataclasses.replace(cfg, quant=quant), run_dir, ds, args.knowledge)
    int8 = result["variants"][f"{args.add_qat} PTQ"]
    row = {"weights": args.add_qat, "embedding": model.embedding_width, **accuracies(model, ds), **sizes(model),
           "qat_best_epoch": model.meta["qat"]["best_epoch"],
           "command": f"python bench/low_bit.py --add-qat {args.add_qat} --qat-epochs {args.qat_epochs}"
                      + _knowledge_flag(args)}
    row["gate_smaller_than_float"] = result["float"]["gate_bytes"] / row["gate_bytes"]
    row["loss_vs_float_test_points"] = 100 * (result["float"]["test_accuracy"] - row["test_accuracy"])
    _vs_int8(row, int8)
    result["variants"][f"{args.add_qat} QAT"] = row
    print(json.dumps(row), flush=True)
    _write(args, result)


def sweep_lr(args, cfg, ds, work: Path) -> None:
    """QAT of the default's float student at several peak learning rates; the validation split
    only (the test is not read): the choice of config.QAT_LR."""
    result = json.loads(args.out.read_text())
    rows = []
    for width in ("int4", "binary"):
        for lr in (float(v) for v in args.sweep_lr.split(",")):
            run_dir = work / f"sweep-{width}-{lr:g}"
            shutil.copytree(DEFAULT / "student", run_dir / "student", dirs_exist_ok=True)
            quant = dataclasses.replace(cfg.quant, weights=width, qat_epochs=args.qat_epochs, qat_lr=lr)
            model = quantize_run(dataclasses.replace(cfg, quant=quant), run_dir, ds, args.knowledge)
            rows.append({"weights": width, "qat_lr": lr, "best_epoch": model.meta["qat"]["best_epoch"],
                         "val_accuracy": labeled_accuracy(oracle_logits(model, ds.val).argmax(axis=1), ds.val.y)})
            print(json.dumps(rows[-1]), flush=True)
    result["lr_sweep"] = {"command": f"python bench/low_bit.py --sweep-lr {args.sweep_lr} --qat-epochs {args.qat_epochs}"
                                     + _knowledge_flag(args),
                          "rows": rows}
    _write(args, result)


def _knowledge_flag(args) -> str:
    shown = _shown(args.knowledge)
    return f" --knowledge {shown}" if shown != _shown(DEFAULT / "knowledge.safetensors") else ""


def _shown(path: Path) -> str:
    """A path as the command line would name it: relative to the checkout where it lies inside."""
    p = path.resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _vs_int8(row: dict, int8: dict) -> None:
    for k in ("gate_bytes", "matrix_bytes", "weight_bytes"):
        row[f"{k}_vs_int8"] = row[k] / int8[k]


def _write(args, result: dict) -> None:
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    if args.out == DEFAULT_OUT:
        from results_md import replace_section  # bench/results_md.py
        replace_section(HEADING, f"{HEADING}\n\n`{result['command']}`\n\n{markdown(result)}")


def wide(args, cfg, ds, work: Path) -> None:
    """At the same flash an int4 student can be wider: distill one (the default's schedule and
    knowledge, only student.hidden changed), quantize it to int4 post-training and with QAT, and
    add its accuracies to the results."""
    from tinyseek.distill import distill
    result = json.loads(args.out.read_text())
    H = args.wide_hidden
    wcfg = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, hidden=H))
    run_dir = work / f"int4-h{H}"
    t0 = time.time()
    distill(ds, args.knowledge, wcfg, run_dir)
    fs = FloatStudent.from_folder(run_dir / "student")
    quant = dataclasses.replace(cfg.quant, weights="int4", qat_epochs=args.qat_epochs,
                                qat_lr=args.qat_lr if args.qat_lr is not None else cfg.quant.qat_lr)
    qat = quantize_run(dataclasses.replace(wcfg, quant=quant), run_dir, ds, args.knowledge)
    ptq = QuantModel.load(run_dir / "int8_ptq")
    result["wide"] = {"hidden": H, "command": f"python bench/low_bit.py --wide-hidden {H} --qat-epochs {args.qat_epochs}" + _knowledge_flag(args),
                      "seconds": time.time() - t0,
                      "float": {"val_accuracy": labeled_accuracy(fs.predict(ds.val).argmax(axis=1), ds.val.y),
                                "test_accuracy": labeled_accuracy(fs.predict(ds.test).argmax(axis=1), ds.test.y)},
                      "int4 PTQ": {**accuracies(ptq, ds), **sizes(ptq)}, "int4 QAT": {**accuracies(qat, ds), **sizes(qat)}}
    print(json.dumps(result["wide"]), flush=True)
    _write(args, result)


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def markdown(r: dict) -> str:
    f = r["float"]
    lines = [f"Task `{r['task']}`, the committed default's float student (test {_pct(f['test_accuracy'])}, validation "
             f"{_pct(f['val_accuracy'])}; LSTM gate matrices {f['gate_bytes']:,} B as float32). QAT: "
             f"{r['qat_epochs']} epochs from the float student at the width's peak learning rate (`quant.qat_lr`, the "
             "sweep below), the epoch of best validation accuracy kept. Distillation targets of the QAT epochs: "
             f"`{r.get('knowledge', 'models/intents/knowledge.safetensors')}`.", "",
             "Weight matrices: the embedding (codes and a gain byte per row where it is low-bit), the LSTM "
             "gate matrices and the head; all arrays: those and every per-row multiplier, shift and bias and the "
             "two activation tables, everything in flash besides code.", "",
             "| weights | embedding | test | validation | loss vs float (test, points) | gate matrices | "
             "smaller than float | weight matrices | vs int8 | all arrays | vs int8 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, v in r["variants"].items():
        lines.append(f"| {label} | {v['embedding']} | {_pct(v['test_accuracy'])} | {_pct(v['val_accuracy'])} | "
                     f"{v['loss_vs_float_test_points']:.2f} | {v['gate_bytes']:,} B | {v['gate_smaller_than_float']:.1f}x | "
                     f"{v['matrix_bytes']:,} B | {_pct(v['matrix_bytes_vs_int8'])} | "
                     f"{v['weight_bytes']:,} B | {_pct(v['weight_bytes_vs_int8'])} |")
    int8 = r["variants"]["int8 PTQ"]
    if "int8 QAT" in r["variants"]:
        lines += ["", f"int8 QAT (`{r['variants']['int8 QAT']['command']}`) is the control: the same extra epochs from the "
                      "same float student, with a fake-quantization that changes next to nothing. What the int4 and "
                      "binary QAT rows gain beyond it is the quantization-aware training's; what it gains itself is "
                      "the extra training's."]
    for width, plan in r["plan"].items():
        label = f"{width} QAT" if f"{width} QAT" in r["variants"] else f"{width} PTQ"
        best = r["variants"][label]
        drop = 100 * (int8["test_accuracy"] - best["test_accuracy"])
        met = best["matrix_bytes_vs_int8"] <= plan["goal_vs_int8"] and drop <= plan["goal_points"]
        lines += ["", f"- {width} against the plan ({plan['smaller_than_float']}x smaller than float, "
                      f"{plan['loss_percent']} % loss): {label} gate matrices {best['gate_smaller_than_float']:.1f}x "
                      f"smaller than float32, {best['loss_vs_float_test_points']:.2f} points below the float student on "
                      f"the test. Against the goal (weight matrices <= {_pct(plan['goal_vs_int8'])} of int8's, at most "
                      f"{plan['goal_points']} point{'s' if plan['goal_points'] != 1 else ''} below int8): weight matrices {_pct(best['matrix_bytes_vs_int8'])} "
                      f"of int8's ({best['embedding']} embedding {best['embedding_bytes']:,} B), {drop:.2f} points below "
                      f"int8 on the test: **{'met' if met else 'not met'}**. All arrays {_pct(best['weight_bytes_vs_int8'])} "
                      "of int8's (the per-row multipliers, shifts and biases and the tables keep their size)."]
    if "lr_sweep" in r:
        sw = r["lr_sweep"]
        lrs = sorted({row["qat_lr"] for row in sw["rows"]})
        lines += ["", f"QAT peak learning rate, chosen on validation (`{sw['command']}`; the test split not read; "
                      "validation accuracy of the quantized model, best epoch in parentheses):", "",
                  "| weights | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
        for width in ("int4", "binary"):
            cells = {row["qat_lr"]: f"{_pct(row['val_accuracy'])} ({row['best_epoch']})" for row in sw["rows"]
                     if row["weights"] == width}
            lines.append(f"| {width} | " + " | ".join(cells.get(lr, "") for lr in lrs) + " |")
    if "wide" in r:
        w, i8 = r["wide"], r["variants"]["int8 PTQ"]
        lines += ["", f"Twice as wide at the same flash? An int4 student of hidden {w['hidden']} (`{w['command']}`: "
                      "the default's schedule and knowledge, only the width changed) stores its gate matrices in "
                      f"{w['int4 QAT']['gate_bytes']:,} B, the int8 default in {i8['gate_bytes']:,} B:", "",
                  "| student | test | validation | gate matrices | all arrays |", "|---|---|---|---|---|",
                  f"| hidden 64, int8 (the default) | {_pct(i8['test_accuracy'])} | {_pct(i8['val_accuracy'])} | "
                  f"{i8['gate_bytes']:,} B | {i8['weight_bytes']:,} B |",
                  *([f"| hidden 64, int4 QAT | {_pct(q4['test_accuracy'])} | {_pct(q4['val_accuracy'])} | "
                     f"{q4['gate_bytes']:,} B | {q4['weight_bytes']:,} B |"]
                    if (q4 := r["variants"].get("int4 QAT")) else []),
                  f"| hidden {w['hidden']}, float | {_pct(w['float']['test_accuracy'])} | {_pct(w['float']['val_accuracy'])} | | |"]
        for label in ("int4 PTQ", "int4 QAT"):
            v = w[label]
            lines.append(f"| hidden {w['hidden']}, {label} | {_pct(v['test_accuracy'])} | {_pct(v['val_accuracy'])} | "
                         f"{v['gate_bytes']:,} B | {v['weight_bytes']:,} B |")
        q = w["int4 QAT"]
        lines += ["", f"Reading: the wider int4 student (QAT) is {100 * (q['val_accuracy'] - i8['val_accuracy']):+.2f} points "
                      f"against the int8 default on validation and {100 * (q['test_accuracy'] - i8['test_accuracy']):+.2f} "
                      "on the test, from one seed each; its float student already lands "
                      f"{100 * (w['float']['test_accuracy'] - r['float']['test_accuracy']):+.2f} points from the default's "
                      "float on the test. The width does not buy accuracy measurably here. All its arrays take "
                      f"{abs(q['weight_bytes'] - i8['weight_bytes']):,} B "
                      f"{'less' if q['weight_bytes'] < i8['weight_bytes'] else 'more'} than the int8 default's "
                      "(its embedding and gate matrices at int4 against the wider model's per-row multipliers, "
                      "biases and head)."]
    if "boards_command" in r:
        lines += ["", f"The boards' tables: `{r['boards_command']}`, the post-training models of each width (the QAT "
                      "models' shapes and token counts, so their instruction counts; the flash they take is the same "
                      "bytes)."]
    for env, runs in r["boards"].items():
        lines += ["", f"{env} ({next(iter(runs.values()))['samples']} test texts, token ids sent; QEMU instructions, "
                      "not cycles; every run bit-exact against the integer reference):", "",
                  "| build | kernel | instructions per inference (median) | flash, model | flash, runtime |",
                  "|---|---|---|---|---|"]
        for label, b in runs.items():
            lines.append(f"| {label} | {b['kernel']} | {b['instructions_median']:,.0f} | {b['flash_model']:,} B | "
                         f"{b['flash_runtime']:,} B |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
