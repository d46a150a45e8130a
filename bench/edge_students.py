"""The students for bigger devices on the default intents task, next to TinyLSTM: test accuracy,
parameters, ONNX file size and onnxruntime latency per sample on this CPU.

    python bench/edge_students.py --seed-from intents

The run (--run, default scratch_edge) needs a knowledge cache with attention maps, a TinyLSTM
and metrics.json: either build it (`tinyseek build --set run=scratch_edge --set
teacher.attentions=true --set codegen.out_dir=models/scratch_edge/lib`), or, with
--seed-from RUN, copy RUN's adapted teacher, TinyLSTM and metrics.json (RUN is only read) and
extract the cache again with attention maps, which compares with exactly that run's TinyLSTM
and skips adapting the teacher again.

The script trains TinyBert and the truncated teacher at each --layers (the last one stays in
models/<run>/edge/truncated/), exports TinyLSTM's float model to ONNX too so the latencies
compare like for like (one sample at a time, unpadded, one thread), and writes
bench/edge_students.json and the "Edge students" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from tinyseek.config import load  # noqa: E402
from tinyseek.distill.edge import build_edge, check_onnx, export_onnx, onnx_latency  # noqa: E402
from tinyseek.pipeline import Run  # noqa: E402
from tinyseek.student import load_student  # noqa: E402
from tinyseek.student.tinylstm import encode_texts  # noqa: E402

from results_md import replace_section  # noqa: E402

HEADING = "## Edge students (`python bench/edge_students.py`)"


class _LstmLogits(torch.nn.Module):
    """TinyLSTM as (input_ids, attention_mask) -> logits for ONNX: the LSTM runs over the whole
    (right-padded) input and the head reads the output at each row's last real step, which is
    exact because an LSTM step never sees later steps."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out, _ = self.model.lstm(self.model.embed(input_ids))
        last = (attention_mask.sum(1) - 1).clamp(min=0)
        return self.model.head(out[torch.arange(input_ids.shape[0]), last])


def tinylstm_row(run: Run, out_dir: Path) -> dict:
    model, spec = load_student(run.student_dir)
    texts = list(run.dataset.test.texts)
    ids, lengths = encode_texts(texts, spec)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    keep = lengths > 0  # an empty text has no last step to read in this wrapper
    ids, mask, y = ids[keep], mask[keep], np.asarray(run.dataset.test.y)[keep.numpy()]
    wrapper = _LstmLogits(model).eval()
    path = export_onnx(wrapper, ids[:2, :4], mask[:2, :4], out_dir / "tinylstm.onnx")
    check = check_onnx(wrapper, path, ids, mask, y)
    metrics = json.loads((run.dir / "metrics.json").read_text())
    return {"student": "tinylstm", "accuracy": metrics["student"]["float_accuracy"],
            "int8_accuracy": metrics["student"]["int8_accuracy"], "params": metrics["student"]["params"],
            "int8_weight_bytes": metrics["student"]["weight_bytes"], "onnx_bytes": path.stat().st_size,
            "onnx_check": check, "latency": onnx_latency(path, ids, mask),
            "teacher_accuracy": metrics["teacher"]["accuracy"]}


def seed(source: Path, run: Run) -> None:
    """The run folder from `source`'s adapted teacher, TinyLSTM and metrics.json (copied, the
    source is not written), and a knowledge cache extracted anew with attention maps."""
    from tinyseek.teacher import extract
    for name in ("teacher", "student", "metrics.json"):
        if not (source / name).exists():
            raise SystemExit(f"{source / name} is missing: build {source} first")
    run.dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "teacher", run.teacher_dir, dirs_exist_ok=True)
    shutil.copytree(source / "student", run.student_dir, dirs_exist_ok=True)
    shutil.copy2(source / "metrics.json", run.dir / "metrics.json")
    extract(run.dataset, run.cfg.teacher, run.dir)


def markdown(rows: list[dict], command: str, env: dict) -> str:
    lines = [HEADING, "",
             f"`{command}` on the scratch run `{env['run']}` (the default intents task, teacher built with "
             f"`teacher.attentions = true`), {env['cpu']}, onnxruntime {env['onnxruntime']}, one thread, one "
             f"sample at a time without padding, each sample's fastest of {rows[0]['latency']['repeats']} runs, "
             f"median and 90th percentile over {rows[0]['latency']['samples']} test samples spread over the split "
             f"(load average {env['load']} on the shared 2-core machine while measuring). Accuracy on the "
             f"{rows[0]['onnx_check']['samples']}-sample test split, in onnxruntime; onnxruntime and torch agree "
             "on every prediction of every model. Each student keeps its epoch of best accuracy on the "
             "validation split (held out by template like the test); the test is read once.", "",
             "| student | validation accuracy (best epoch's) | test accuracy | parameters | ONNX bytes | onnxruntime ms / sample (median, p90) | max logit diff vs torch | trained in |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['accuracy']:.4f}"
        if "int8_accuracy" in r:
            acc += f" (int8 {r['int8_accuracy']:.4f})"
        trained = f"{r['train_seconds']:.0f} s" if "train_seconds" in r else "`tinyseek distill`"
        val = f"{r['best_val_accuracy']:.4f}" if "best_val_accuracy" in r else "(its own run's, report.md)"
        lines.append(f"| {r['name']} | {val} | {acc} | {r['params']:,} | {r['onnx_bytes']:,} | "
                     f"{r['latency']['median_ms']:.3f}, {r['latency']['p90_ms']:.3f} | "
                     f"{r['onnx_check']['max_abs_diff']:.1e} | {trained} |")
    lines += ["", f"Teacher (tiny DeepSeek-V3, 4 layers, adapted) test accuracy {rows[0]['teacher_accuracy']:.4f}. "
              "TinyLSTM's row is its float model exported the same way (the int8 C model runs on the "
              "microcontroller: README, Device table)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="scratch_edge")
    ap.add_argument("--seed-from", help="copy this run's teacher, TinyLSTM and metrics.json when --run has no cache")
    ap.add_argument("--layers", default="1,2", help="truncated teacher depths, comma-separated (the last one stays)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "edge_students.json"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args(argv)
    overrides = {"run": args.run, "teacher.attentions": True, "codegen.out_dir": f"models/{args.run}/lib"}
    cfg = load(overrides=overrides)
    run = Run(cfg)
    if args.seed_from and not run.knowledge.is_file():
        seed(Path(cfg.models_dir) / args.seed_from, run)
    if not run.knowledge.is_file() or not (run.dir / "metrics.json").is_file():
        raise SystemExit(f"{run.dir} is not built: run `tinyseek build --set run={args.run} --set "
                         f"teacher.attentions=true --set codegen.out_dir=models/{args.run}/lib` first")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        row = tinylstm_row(run, Path(tmp))
        rows.append({**row, "name": "TinyLSTM (microcontrollers)"})
    # Without attention transfer first, so the default TinyBert is the one left in edge/tinybert/.
    ablation = Run(load(overrides={**overrides, "edge.attention_weight": 0.0}))
    for r, what in ((ablation, ", no attention transfer"), (run, "")):
        out = build_edge(r, "tinybert")
        m = json.loads((out / "metrics.json").read_text())
        spec = m["spec"]
        rows.append({**m, "name": f"TinyBert {spec['layers']}x{spec['hidden']}/{spec['bottleneck']} (edge boxes){what}"})
    for n in [int(v) for v in args.layers.split(",")]:
        out = build_edge(run, "truncated", n)
        m = json.loads((out / "metrics.json").read_text())
        rows.append({**m, "name": f"truncated teacher, {n} of {m['spec']['teacher_layers']} layers (phones)"})
    import onnxruntime
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    env = {"run": args.run, "cpu": cpu, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
           "load": f"{os.getloadavg()[0]:.1f}"}
    command = "python bench/edge_students.py" + (f" --run {args.run}" if args.run != "scratch_edge" else "") + \
        (f" --seed-from {args.seed_from}" if args.seed_from else "") + \
        (f" --layers {args.layers}" if args.layers != "1,2" else "")
    Path(args.json).write_text(json.dumps({"env": env, "command": command,
                                           "rows": [{k: v for k, v in r.items() if k != "history"} for r in rows]},
                                          indent=2) + "\n")
    text = markdown(rows, command, env)
    replace_section(HEADING, text, Path(args.results))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
