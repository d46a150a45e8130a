"""The edge students on the on-device frameworks, float and quantized (`tinyseek edge
--runtime ... --quantize ...`, docs/edge.md).

For one student (TinyBert, the truncated teacher, or the float TinyLSTM) this
1. reads the trained student (its torch weights and float ONNX graph; TinyLSTM's graph is
   exported here), and every split's inputs padded to one length L, the longest real input of
   any split, batch 1 (the static shape TVM and Core ML compile for; padding is masked, so the
   float graphs give the same logits at any L);
2. quantizes with onnxruntime's quantizers (export/edge_quant.py), the settings chosen on the
   validation split: int8 dynamic per-channel or per-tensor; 4-bit MatMul weights (the Gemm
   heads in MatMul form) by GPTQ (calibrated on `CALIBRATION` training samples) or RTN, block
   size 16, 32, 64 or 128 (the embeddings 4-bit and LSTM weights int8 either way);
3. converts to each runtime asked for and runs the whole test split there, one sample at a
   time: onnxruntime (the three ONNX graphs), MNN (its converter's own float / 8-bit / 4-bit
   weights: it does not read onnxruntime's quantized operators), TVM (the ONNX graphs compiled
   for x86-64 and run in its VM; the AArch64 build is compiled too), Core ML (from torch, with
   coremltools' own int8 / int4 weights; "converted, not run" off macOS);
4. scores each against onnxruntime's float logits on the same inputs (agreement of the
   predicted class, largest logit difference) and the labels (accuracy), measures the file
   size (onnxruntime's files also by what their bytes hold: edge_quant.size_breakdown) and the
   latency (median and 90th percentile ms per sample, one thread), and writes
   `<run>/edge/<student>/frameworks/frameworks.json` with every artifact beside it.

A runtime that is not installed or cannot convert a graph gives that cell an "error" naming the
framework and the operator; the other cells are still measured.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..export import edge_quant
from .edge import EdgeError, STUDENTS, export_onnx

RUNTIMES = ("onnxruntime", "mnn", "tvm", "coreml")
QUANTS = ("float", "int8", "int4")
FRAMEWORK_STUDENTS = (*STUDENTS, "tinylstm")
CALIBRATION = 256  # training samples GPTQ collects its Hessians from
BLOCKS = (16, 32, 64, 128)
# The 4-bit embedding tables' blocks, chosen apart from the MatMuls' (a table is most of a small
# model's weights and has no input activations for GPTQ): along each token's vector (axis 1) or
# along the vocabulary (axis 0, one scale per block of tokens and column). TinyLSTM's 32-wide
# vectors hold one block whatever its size, so one scale per token (1,024); along the
# vocabulary, blocks of 128 store 8 per column (256). The truncated teacher's 2,000 x 96 table
# keeps 12 KB of (float16) scales in blocks of 32 along its vectors, 3 KB in blocks of 128
# along the vocabulary.
TABLES = tuple((1, b) for b in BLOCKS) + tuple((0, b) for b in (*BLOCKS, 256))
OUT_DIR, RESULT_FILE = "frameworks", "frameworks.json"


@dataclass
class Student:
    """What the frameworks need of a trained student."""
    name: str
    wrapper: torch.nn.Module  # (input_ids, attention_mask) -> logits
    onnx: Path  # float graph, dynamic batch and sequence axes
    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # name -> (ids [N, L], mask [N, L], y [N])
    folder: Path


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


def _pad(ids: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[np.ndarray, np.ndarray]:
    out_ids = np.zeros((len(ids), length), np.int64)
    out_mask = np.zeros((len(ids), length), np.int64)
    t = min(length, ids.shape[1])
    out_ids[:, :t], out_mask[:, :t] = ids[:, :t].numpy(), mask[:, :t].numpy()
    return out_ids, out_mask


def load(run, name: str) -> Student:
    """The trained student `name` of the run, with its splits' inputs (see the module docstring)."""
    dataset = run.dataset
    if name == "tinybert":
        from ..student.tinybert import encode, load_tinybert
        folder = run.dir / "edge" / name
        model = load_tinybert(folder).eval()
        enc = {s: encode(list(getattr(dataset, s).texts), model.spec) for s in ("train", "val", "test")}
        wrapper, onnx_path = _Logits(model), folder / "model.onnx"
    elif name == "truncated":
        from ..student.truncated import load_truncated
        from ..teacher.classifier import tokenize
        folder = run.dir / "edge" / name
        model = load_truncated(folder, run.teacher_dir)
        meta = json.loads((folder / "student.json").read_text())
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        enc = {s: tokenize(tok, list(getattr(dataset, s).texts), meta["max_tokens"]) for s in ("train", "val", "test")}
        wrapper, onnx_path = _Logits(model), folder / "model.onnx"
    elif name == "tinylstm":
        from ..export.onnx import _wrapper
        from ..student.tinylstm import load_student, split_inputs
        model, spec = load_student(run.student_dir)
        if spec.kind != "text" or spec.subwords:
            raise EdgeError("the frameworks take a text TinyLSTM without subwords (its graph reads one id per step)")
        folder = run.dir / "edge" / name
        enc = {}
        for s in ("train", "val", "test"):
            ids, lengths = split_inputs(getattr(dataset, s), spec)
            enc[s] = ids, (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        wrapper = _wrapper(model)
        with warnings.catch_warnings():  # the exporter's LSTM batch-size advice: the graph is run at batch 1
            warnings.simplefilter("ignore", UserWarning)
            onnx_path = export_onnx(wrapper, enc["test"][0][:2, :4], enc["test"][1][:2, :4], folder / "model.onnx")
    else:
        raise EdgeError(f"unknown student {name!r} for the frameworks; choose {', '.join(FRAMEWORK_STUDENTS)}")
    if not onnx_path.is_file():
        raise EdgeError(f"{onnx_path} is missing: run `tinyseek edge --student {name}` first")
    length = max(2, max(int(m.sum(1).max()) for _, m in enc.values() if len(m)))
    splits = {s: (*_pad(ids, mask, length), np.asarray(getattr(dataset, s).y)) for s, (ids, mask) in enc.items()}
    return Student(name, wrapper.eval(), onnx_path, splits, folder)


# -- running ----------------------------------------------------------------------------------

def run_all(fn, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """fn(ids [1, L], mask [1, L]) -> logits [C] over every row."""
    return np.stack([fn(ids[n:n + 1], mask[n:n + 1]) for n in range(len(ids))]) if len(ids) else np.zeros((0, 0))


def latency(fn, ids: np.ndarray, mask: np.ndarray, samples: int, repeats: int = 3) -> dict:
    """ms per sample: `samples` test rows spread over the split, each its fastest of `repeats`
    runs (filters out the other processes of a shared machine), after 10 warm-up runs.
    A runner living in another process (MNN's) times itself there."""
    if hasattr(fn, "latency"):
        return fn.latency(ids, mask, samples, repeats)
    rows = np.linspace(0, len(ids) - 1, min(samples, len(ids))).round().astype(int)
    for n in rows[:10]:
        fn(ids[n:n + 1], mask[n:n + 1])
    times = []
    for n in rows:
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(ids[n:n + 1], mask[n:n + 1])
            best = min(best, time.perf_counter() - t0)
        times.append(best * 1e3)
    return {"samples": len(rows), "repeats": repeats, "threads": 1, "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90))}


def ort_runner(path: Path):
    from .edge import _session
    sess = _session(path)
    names = [i.name for i in sess.get_inputs()]
    return lambda ids, mask: sess.run(["logits"], dict(zip(names, (ids, mask))))[0][0]


def _accuracy(fn, split) -> float:
    ids, mask, y = split
    return float(np.mean(run_all(fn, ids, mask).argmax(1) == y)) if len(y) else 0.0


# -- choosing the quantizers' settings on validation -------------------------------------------

def pick(tried: list[dict], tolerance: float) -> dict:
    """The smallest file among the settings whose validation accuracy is within `tolerance`
    points of the best one's; ties: the more accurate, then the first tried."""
    top = max(t["val_accuracy"] for t in tried)
    near = [t for t in tried if t["val_accuracy"] >= top - tolerance / 100 - 1e-9]
    return min(near, key=lambda t: (t["bytes"], -t["val_accuracy"]))


def choose_int8(st: Student, out: Path, tolerance: float) -> tuple[Path, dict]:
    tried = []
    for per_channel in (False, True):
        path = edge_quant.quantize_int8(st.onnx, out / f"int8_{'channel' if per_channel else 'tensor'}.onnx", per_channel)
        tried.append({"per_channel": per_channel, "val_accuracy": _accuracy(ort_runner(path), st.splits["val"]),
                      "bytes": path.stat().st_size, "path": path})
    best = pick(tried, tolerance)
    return _keep(best["path"], out / "int8.onnx", tried), {k: v for k, v in best.items() if k != "path"} | \
        {"tried": [{k: v for k, v in t.items() if k != "path"} for t in tried]}


def choose_int4(st: Student, out: Path, tolerance: float) -> tuple[Path, dict]:
    ids, mask, _ = st.splits["train"]
    rows = np.random.default_rng(0).permutation(len(ids))[:CALIBRATION]
    calibration = []
    for n in rows:
        t = max(1, int(mask[n].sum()))  # unpadded: padding rows would enter GPTQ's Hessians
        calibration.append({"input_ids": ids[n:n + 1, :t], "attention_mask": mask[n:n + 1, :t]})
    tried = []
    for algorithm in ("gptq", "rtn"):
        for block in BLOCKS:
            setting = {"algorithm": algorithm, "block_size": block}
            try:  # the MatMuls once, then each table setting
                variants = edge_quant.int4_variants(st.onnx, algorithm, block,
                                                    calibration if algorithm == "gptq" else None, list(TABLES))
            except edge_quant.QuantizeError as e:  # one setting failing leaves the others
                tried.append(setting | {"error": str(e)})
                continue
            for (axis, table_block), (model, counts) in variants.items():
                path = out / f"int4_{algorithm}_{block}_{axis}_{table_block}.onnx"
                edge_quant.save(model, path)
                tried.append(setting | {"table_axis": axis, "table_block": table_block, "path": path,
                                        "bytes": path.stat().st_size, **counts,
                                        "val_accuracy": _accuracy(ort_runner(path), st.splits["val"])})
    done = [t for t in tried if "path" in t]
    if not done:
        raise edge_quant.QuantizeError("every 4-bit setting failed: " + "; ".join(t["error"] for t in tried))
    # A graph without weight MatMuls GPTQ can take has nothing for it: only RTN is kept there.
    written = done
    done = [t for t in done if t["algorithm"] == "rtn" or t["matmuls_gptq"]] or done
    best = pick(done, tolerance)  # ties: GPTQ, tried first
    return _keep(best["path"], out / "int4.onnx", written), {k: v for k, v in best.items() if k != "path"} | \
        {"calibration_samples": len(calibration), "tried": [{k: v for k, v in t.items() if k != "path"} for t in tried]}


def _keep(chosen: Path, final: Path, tried: list[dict]) -> Path:
    chosen.replace(final)
    for t in tried:
        if t["path"] != chosen and t["path"].exists():
            t["path"].unlink()
    return final


# -- the runtimes -----------------------------------------------------------------------------

def _aarch64_check(st: Student, module: Path, reference: np.ndarray, samples: int) -> dict:
    """The aarch64 module under qemu-aarch64 on `samples` test rows spread over the split."""
    from ..export import tvm
    from ..pipeline import REPO_ROOT
    ids, mask, y = st.splits["test"]
    rows = np.unique(np.linspace(0, len(ids) - 1, min(samples, len(ids))).round().astype(int))
    runtime = tvm.aarch64_runtime(REPO_ROOT / "build" / "tvm-aarch64")
    got = tvm.run_aarch64(module, runtime, ids[rows], mask[rows], reference.shape[1])
    return {"where": "qemu-aarch64 user mode, libtvm_runtime from the aarch64 apache-tvm wheel",
            **edge_quant.agreement(reference[rows], got, y[rows])}


def coreml_block(model, block: int) -> int:
    """The 4-bit block for Core ML: coremltools takes one block size for the whole model and
    leaves float any weight whose input dimension it does not divide (TinyBert's 64-wide
    weights at onnxruntime's 128: 1.66 MB instead of 0.59), so the largest power of two up to
    `block` that divides every matrix's input dimension; 0 (a scale per output channel) when
    that is below 8, where the scales would outweigh the weights."""
    dims = {int(p.shape[-1]) for p in model.parameters() if p.ndim == 2}
    while block > 1 and any(d % block for d in dims):
        block //= 2
    return block if block >= 8 else 0


def _artifact(st: Student, runtime: str, quant: str, graphs: dict, settings: dict, out: Path) -> tuple[object, Path, dict]:
    """(runner or None when it cannot run here, file, extra facts) for one cell."""
    names = ["input_ids", "attention_mask"]
    length = st.splits["test"][0].shape[1]
    block = settings.get("int4", {}).get("block_size", 32)
    if runtime == "onnxruntime":
        return ort_runner(graphs[quant]), graphs[quant], {"ops": edge_quant.op_counts(graphs[quant]),
                                                          "breakdown": edge_quant.size_breakdown(graphs[quant])}
    if runtime == "mnn":
        from ..export import mnn
        bits = {"float": 0, "int8": 8, "int4": 4}[quant]
        path = mnn.convert(st.onnx, out / f"{quant}.mnn", bits, block if bits == 4 else 0)
        return mnn.Runner(path, names), path, {"quantizer": "MNN converter --weightQuantBits" if bits else None}
    if runtime == "tvm":
        from ..export import tvm
        static = edge_quant.fixed_shape(graphs[quant], out / f"{quant}.static.onnx", length)
        try:
            executable = tvm.compile_x86(static)
            path = out / f"{quant}.tvm_x86_64.so"
            executable.export_library(str(path))
            extra = {}
            try:
                arm = tvm.compile_aarch64(static, out / f"{quant}.tvm_aarch64.so")
                extra["aarch64_bytes"] = arm.stat().st_size
            except tvm.TvmError as e:
                extra["aarch64_error"] = str(e)
        finally:
            static.unlink()
        return tvm.Runner(executable), path, extra
    if runtime == "coreml":
        from ..export import coreml
        from ..student.truncated import concatenated_keys
        ids, mask, _ = st.splits["test"]
        block = coreml_block(st.wrapper, block)
        with concatenated_keys(st.wrapper):  # DeepSeek's attention as coremltools converts it: the same values
            path = coreml.convert(st.wrapper, (ids[:1], mask[:1]), names, out / f"{quant}.mlpackage", quant, block)
        extra = {"spec": coreml.inspect(path), "block_size": block if quant == "int4" else None}
        return (coreml.Runner(path, names) if coreml.runnable() else None), path, extra
    raise EdgeError(f"unknown runtime {runtime!r}; choose {', '.join(RUNTIMES)}")


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def evaluate(run, name: str, runtimes=RUNTIMES, quants=QUANTS, latency_samples: int = 200,
             aarch64_samples: int = 0, progress: bool = True, tolerance: float = 1.0) -> Path:
    """Everything of the module docstring for one student; returns frameworks.json's path.
    `tolerance`: edge.quant_tolerance (`pick`).
    aarch64_samples > 0 also runs TVM's aarch64 build of each graph on that many test samples
    under qemu-aarch64 (about 0.4 s a TinyBert sample here: not the whole split)."""
    for r in runtimes:
        if r not in RUNTIMES:
            raise EdgeError(f"unknown runtime {r!r}; choose {', '.join(RUNTIMES)}")
    for q in quants:
        if q not in QUANTS:
            raise EdgeError(f"unknown quantization {q!r}; choose {', '.join(QUANTS)}")
    st = load(run, name)
    out = st.folder / OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)
    graphs, settings = {"float": st.onnx}, {}
    if "int8" in quants:
        graphs["int8"], settings["int8"] = choose_int8(st, out, tolerance)
        say(f"[{name}] int8 dynamic: per-channel {settings['int8']['per_channel']} (validation)", flush=True)
    if "int4" in quants:
        graphs["int4"], settings["int4"] = choose_int4(st, out, tolerance)
        say(f"[{name}] int4: {settings['int4']['algorithm']}, block {settings['int4']['block_size']}, tables in "
            f"blocks of {settings['int4']['table_block']} along "
            f"{'the vocabulary' if settings['int4']['table_axis'] == 0 else 'each vector'} (validation)",
            flush=True)
    ids, mask, y = st.splits["test"]
    reference = run_all(ort_runner(st.onnx), ids, mask)
    float_bytes = st.onnx.stat().st_size
    cells = []
    for runtime in runtimes:
        for quant in quants:
            cell = {"runtime": runtime, "quant": quant}
            try:
                runner, path, extra = _artifact(st, runtime, quant, graphs, settings, out)
                cell.update(file=path.name, bytes=_bytes(path), size_ratio=float_bytes / _bytes(path), **extra)
                if runner is None:
                    cell["run"] = "converted, not run (Core ML predicts on macOS only)"
                else:
                    cell.update(edge_quant.agreement(reference, run_all(runner, ids, mask), y))
                    cell["latency"] = latency(runner, ids, mask, latency_samples)
                if runtime == "tvm" and aarch64_samples and "aarch64_bytes" in cell:
                    try:
                        cell["aarch64"] = _aarch64_check(st, out / f"{quant}.tvm_aarch64.so", reference, aarch64_samples)
                    except ValueError as e:
                        cell["aarch64"] = {"error": str(e)}
            except (ValueError, ImportError, FileNotFoundError) as e:  # every runtime's error subclasses ValueError
                cell["error"] = str(e)
            say(f"[{name}] {runtime} {quant}: " + (f"error: {cell['error']}" if "error" in cell else
                f"{cell.get('accuracy', float('nan')):.4f} accuracy, {cell['bytes']:,} bytes"
                + (f", {cell['latency']['median_ms']:.3f} ms" if "latency" in cell else f", {cell.get('run', '')}")),
                flush=True)
            cells.append(cell)
    result = {"student": name, "length": int(ids.shape[1]), "test_samples": int(len(y)),
              "float_onnx_bytes": float_bytes, "settings": settings, "tolerance": tolerance, "cells": cells,
              "float_accuracy": float(np.mean(reference.argmax(1) == y)) if len(y) else 0.0}
    path = out / RESULT_FILE
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
