"""The students for bigger devices: training by distillation from the knowledge cache, ONNX
export and the onnxruntime check (`tinyseek edge`, docs/students.md).

Both students learn from the cached teacher logits (KL at distill.temperature, weight
distill.alpha) and the hard labels (1 - alpha), with `distill_loss` of losses.py. TinyBert can
also learn the teacher's attention (edge.attention_weight): the cache holds head-averaged
maps over the teacher's tokens, TinyBert attends over the hash tokenizer's tokens, so the
teacher's maps are carried over by character spans (`align`, `map_attention`): a student
query row is the mean of the teacher query rows whose tokens overlap it, weighted by the
characters they share, and each teacher key's weight is split over the student tokens it
overlaps in the same way; tokens without characters (bos, spaces) drop out and rows are
renormalized. The loss is KL(teacher row || student row) over the student's real query
rows, student layer round(l * S / L) learning teacher layer l of L.

Export: torch.onnx.export's TorchScript exporter (opset 18, dynamic batch and sequence
axes). The torch.export-based exporter gives the same graph but takes ~16x the CPU time
here (8 s against 0.5 s for the truncated teacher) and needs onnxscript; both models have no
data-dependent control flow, and the check runs every test sample through onnxruntime at
shapes other than the traced ones.

Output: `<run>/edge/<student>/` with model.onnx, student.json (architecture, labels,
tokenizer) and metrics.json; both keep their torch weights (student.safetensors), the
truncated teacher also its tokenizer files.
"""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..student.tinybert import TinyBert, TinyBertSpec, encode, save_tinybert, token_spans
from ..student.truncated import TruncatedTeacher, param_count, save_truncated
from . import train
from .losses import distill_loss
from .schedule import DistillError

STUDENTS = ("tinybert", "truncated")
ONNX_FILE, SPEC_FILE, METRICS_FILE = "model.onnx", "student.json", "metrics.json"
OPSET = 18
ONNX_ATOL = 1e-4  # largest |logit difference| between onnxruntime and torch accepted
EVAL_BATCH = 256


class EdgeError(ValueError):
    """The run, the knowledge cache or the exported model does not fit an edge student."""


# -- knowledge cache ----------------------------------------------------------------------

def read_cache(path: str | Path, split: str, attention: bool = False) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(logits [N, C], {teacher layer: head-averaged attention float32 [N, T, T]}) of a split;
    the attention dict is empty unless asked for."""
    try:
        logits, _, maps = train.read_cache(path, split, attention=attention)
    except DistillError as e:
        raise EdgeError(str(e)) from e
    if attention and not maps:
        raise EdgeError(f"{path} holds no attention maps: set teacher.attentions = true and re-run `tinyseek teacher`, "
                        "or turn attention transfer off with edge.attention_weight = 0")
    return logits, maps


# -- attention transfer -------------------------------------------------------------------

def align(teacher_offsets: list[tuple[int, int]], student_spans: list[tuple[int, int]]) -> np.ndarray:
    """Characters shared by student token i and teacher token j, float32 [S, T]."""
    out = np.zeros((len(student_spans), len(teacher_offsets)), np.float32)
    for i, (a, b) in enumerate(student_spans):
        for j, (c, d) in enumerate(teacher_offsets):
            out[i, j] = max(0, min(b, d) - max(a, c))
    return out


def map_attention(teacher_map: np.ndarray, overlap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A teacher attention map [T, T] carried over to the student's tokens by `overlap` [S, T]:
    (map [S, S] with rows summing to 1, valid [S]: rows that overlap the teacher at all)."""
    queries = overlap / np.maximum(overlap.sum(1, keepdims=True), 1e-12)  # mean of the overlapping teacher rows
    keys = overlap / np.maximum(overlap.sum(0, keepdims=True), 1e-12)  # each teacher key split over student tokens
    out = queries @ teacher_map @ keys.T
    total = out.sum(1, keepdims=True)
    valid = (overlap.sum(1) > 0) & (total[:, 0] > 0)
    return np.where(valid[:, None], out / np.maximum(total, 1e-12), 0.0).astype(np.float32), valid


def attention_targets(texts: list[str], maps: dict[int, np.ndarray], teacher_tokenizer, max_tokens: int,
                      spec: TinyBertSpec) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Every given teacher layer's maps over the student's tokens:
    {layer: (targets [N, max_len, max_len], valid [N, max_len])}."""
    enc = teacher_tokenizer(list(texts), truncation=True, max_length=max_tokens, padding=True,
                            return_offsets_mapping=True)
    targets = {l: np.zeros((len(texts), spec.max_len, spec.max_len), np.float32) for l in maps}
    valid = {l: np.zeros((len(texts), spec.max_len), bool) for l in maps}
    for layer, attn in maps.items():
        if attn.shape[0] != len(texts):
            raise EdgeError(f"the cached attention of layer {layer} has {attn.shape[0]} rows for {len(texts)} texts; "
                            "the cache is from another task, re-run `tinyseek teacher --force`")
    for n, text in enumerate(texts):
        real = [j for j, m in enumerate(enc["attention_mask"][n]) if m]
        spans = token_spans(text, spec.max_len)
        if not real or not spans:
            continue
        overlap = align([tuple(enc["offset_mapping"][n][j]) for j in real], spans)
        s = len(spans)
        for layer, attn in maps.items():
            if real[-1] >= attn.shape[1]:
                raise EdgeError(f"the cached attention is {attn.shape[1]} teacher tokens wide but the teacher's "
                                f"tokenizer gives {real[-1] + 1} for text {n}; re-run `tinyseek teacher --force`")
            targets[layer][n, :s, :s], valid[layer][n, :s] = map_attention(attn[n][np.ix_(real, real)], overlap)
    return {l: (torch.from_numpy(targets[l]), torch.from_numpy(valid[l])) for l in maps}


def attention_transfer_loss(student: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid query rows of KL(target row || student row); maps [B, S, S], valid [B, S].

    mask [B, S] (the student's input mask, e.g. after token dropout) restricts the target to
    the keys the student saw, renormalized, and the rows to its real tokens. 0 when the maps
    are equal.
    """
    if mask is not None:
        m = mask.to(target.dtype)
        target = target * m[:, None, :]
        total = target.sum(-1, keepdim=True)
        valid = valid & mask.bool() & (total[..., 0] > 0)
        target = target / total.clamp(min=1e-12)
    log_s = student.clamp(min=1e-12).log()
    kl = torch.where(target > 0, target * (target.clamp(min=1e-12).log() - log_s), torch.zeros_like(target)).sum(-1)
    rows = valid.to(kl.dtype)
    return (kl * rows).sum() / rows.sum().clamp(min=1.0)


def layer_pairs(teacher_layers: list[int], teacher_depth: int, student_depth: int) -> list[tuple[int, int]]:
    """(student block index, teacher layer): teacher layer l of L is learned by student block
    round(l * S / L) (1-based; halves round up), each block by at most one teacher layer."""
    pairs = {}
    for l in sorted(teacher_layers):
        if l >= 1:
            pairs.setdefault(max(1, math.floor(l * student_depth / teacher_depth + 0.5)) - 1, l)
    return sorted(pairs.items())


# -- training helpers ---------------------------------------------------------------------

def drop_tokens(mask: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """The mask with each real token but the first hidden with probability p (token dropout:
    the student learns not to hang on one word); positions stay where they are."""
    keep = torch.rand(mask.shape, generator=gen) >= p
    keep[:, 0] = True
    return mask * keep.to(mask.dtype)


def _cosine(opt, total_steps: int, warmup: int):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))


@torch.no_grad()
def predict(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Logits float32 [N, C] in batches; each batch trimmed to its longest real row."""
    model.eval()
    out = []
    for i in range(0, len(ids), EVAL_BATCH):
        m = mask[i : i + EVAL_BATCH]
        t = max(1, int(m.sum(1).max()) if len(m) else 1)
        out.append(model(ids[i : i + EVAL_BATCH, :t], m[:, :t]).float())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _fit(model, params, ids, mask, y, teacher_logits, val, cfg, epochs: int, lr: float, word_dropout: float,
         extra_loss=None, progress: bool = True, desc: str = "edge") -> list[dict]:
    """The common loop: AdamW, warm-up then cosine decay, clipping, token dropout, KD + CE
    (+ extra_loss(model, idx, ids, mask) -> (loss, float)); keeps the epoch of best validation
    accuracy (ties: the later one is not taken). Returns the per-epoch history."""
    d, e = cfg.distill, cfg.edge
    n = len(y)
    gen = torch.Generator().manual_seed(e.seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    batches = math.ceil(n / e.batch_size)
    total = max(1, epochs * batches)
    sched = _cosine(opt, total, max(1, total // 20))
    history, best, best_acc = [], None, -1.0
    # A bar only on a terminal; in a log file one line per epoch instead.
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress or not sys.stderr.isatty(), leave=False)
    for epoch in range(1, epochs + 1):
        model.train()
        sums = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "attention": 0.0}
        for idx in torch.randperm(n, generator=gen).split(e.batch_size):
            m = drop_tokens(mask[idx], word_dropout, gen) if word_dropout else mask[idx]
            t = max(1, int(mask[idx].sum(1).max()))
            if extra_loss is None:
                logits, extra, extra_value = model(ids[idx, :t], m[:, :t]), 0.0, 0.0
            else:
                logits, extra, extra_value = extra_loss(model, idx, ids[idx, :t], m[:, :t])
            loss, parts = distill_loss(logits, teacher_logits[idx], y[idx], None, None,
                                       alpha=d.alpha, T=d.temperature, beta=0.0)
            loss = loss + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            w = len(idx) / n
            sums["loss"] += w * float(loss.detach())
            sums["kl"] += w * parts["kl"]
            sums["ce"] += w * parts["ce"]
            sums["attention"] += w * extra_value
            bar.update(1)
        row = {"epoch": epoch, **sums}
        if val is not None:
            logits = predict(model, val[0], val[1])
            row["val_accuracy"] = float(np.mean(logits.argmax(1) == val[2].numpy())) if len(val[2]) else 0.0
        history.append(row)
        acc = row.get("val_accuracy", float(epoch))
        if acc > best_acc:
            best_acc, best = acc, {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{sums['loss']:.3f}", val=f"{row.get('val_accuracy', float('nan')):.3f}")
        if progress and bar.disable:
            print(f"[{desc}] epoch {epoch}/{epochs}: loss {sums['loss']:.4f}, val accuracy "
                  f"{row.get('val_accuracy', float('nan')):.4f}", flush=True)
    bar.close()
    model.load_state_dict(best)
    model.eval()
    return history


class _Threads:
    """One thread and deterministic kernels while training: bit-identical reruns, and on a
    busy 2-core machine two threads' barriers make each step several times slower, not faster."""

    def __enter__(self):
        self.prev = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        torch.set_num_threads(self.prev[0])
        torch.use_deterministic_algorithms(self.prev[1])


def _labelled(dataset, knowledge_path, teacher_logits: np.ndarray):
    """The dataset, checked against the cache, with the teacher's labels where a sample has none."""
    from .train import teacher_labels_where_missing
    _check_dataset(dataset, teacher_logits)
    return teacher_labels_where_missing(dataset, knowledge_path)


def _check_dataset(dataset, teacher_logits: np.ndarray) -> None:
    if dataset.kind != "text":
        raise EdgeError(f"the edge students read text; task {dataset.name!r} is a {dataset.kind} task "
                        "(use the TinyLSTM student for sequences)")
    n, c = len(dataset.train.y), len(dataset.labels)
    if n == 0:
        raise EdgeError("the training split is empty")
    if teacher_logits.shape != (n, c):
        raise EdgeError(f"the cached train logits have shape {list(teacher_logits.shape)}, expected [{n}, {c}] for "
                        "this task; the cache is from another task, re-run `tinyseek teacher --force`")


def _teacher_meta(teacher_dir: Path) -> dict:
    f = Path(teacher_dir) / "teacher.json"
    if not f.is_file():
        raise EdgeError(f"{f} is missing: run `tinyseek teacher` first")
    return json.loads(f.read_text())


def tinybert_spec(dataset, cfg) -> TinyBertSpec:
    e = cfg.edge
    return TinyBertSpec(labels=list(dataset.labels), vocab_size=e.vocab_size, max_len=e.max_len, hidden=e.hidden,
                        bottleneck=e.bottleneck, layers=e.layers, heads=e.heads, ffn_stack=e.ffn_stack,
                        embed_dim=e.embed_dim, trigram=e.trigram)


def train_tinybert(dataset, knowledge_path: str | Path, cfg, teacher_dir: str | Path | None = None, *,
                   word_dropout: float = 0.1, progress: bool = True) -> tuple[TinyBert, list[dict]]:
    """Distill TinyBert from the cache: KD + hard labels, plus attention transfer with weight
    cfg.edge.attention_weight (> 0 needs the cached maps and the teacher's tokenizer in
    teacher_dir). Returns the model of best validation accuracy and the per-epoch history."""
    e = cfg.edge
    attention = e.attention_weight > 0
    t_logits, maps = read_cache(knowledge_path, "train", attention)
    dataset = _labelled(dataset, knowledge_path, t_logits)
    spec = tinybert_spec(dataset, cfg)
    texts = list(dataset.train.texts)
    ids, mask = encode(texts, spec)
    y = torch.as_tensor(np.asarray(dataset.train.y), dtype=torch.long)
    val = (*encode(list(dataset.val.texts), spec), torch.as_tensor(np.asarray(dataset.val.y))) if len(dataset.val.y) else None

    extra = None
    if attention:
        if teacher_dir is None:
            raise EdgeError("attention transfer needs the teacher's folder (its tokenizer maps the cached maps)")
        from transformers import AutoTokenizer
        meta = _teacher_meta(Path(teacher_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir), local_files_only=True)
        pairs = layer_pairs(list(maps), int(meta["num_layers"]), spec.layers)
        targets = attention_targets(texts, {l: maps[l] for _, l in pairs}, tokenizer, int(meta["max_tokens"]), spec)

        def extra(model, idx, xb, mb):
            logits, student_maps = model(xb, mb, attentions=True)
            t = xb.shape[1]
            loss = sum(attention_transfer_loss(student_maps[b], targets[l][0][idx, :t, :t], targets[l][1][idx, :t], mb)
                       for b, l in pairs) / len(pairs)
            return logits, e.attention_weight * loss, float(loss.detach())

    with _Threads():
        torch.manual_seed(e.seed)
        model = TinyBert(spec)
        history = _fit(model, list(model.parameters()), ids, mask, y, torch.from_numpy(t_logits), val, cfg,
                       e.epochs, e.lr, word_dropout, extra, progress, "edge tinybert")
    return model, history


def train_truncated(dataset, knowledge_path: str | Path, cfg, teacher_dir: str | Path, layers: int | None = None, *,
                    word_dropout: float = 0.1, progress: bool = True):
    """Fine-tune the first `layers` (None: cfg.edge.truncated_layers) decoder layers of the
    adapted teacher in teacher_dir with a classifier head, by KD + hard labels.
    Returns (TruncatedTeacher, tokenizer, teacher.json, per-epoch history)."""
    from ..teacher.classifier import load_adapted, tokenize

    e = cfg.edge
    t_logits, _ = read_cache(knowledge_path, "train")
    dataset = _labelled(dataset, knowledge_path, t_logits)
    teacher, tokenizer, meta = load_adapted(Path(teacher_dir))
    model = TruncatedTeacher(teacher, e.truncated_layers if layers is None else layers, len(dataset.labels))
    del teacher  # the layers beyond N and the LM head are freed once the model holds what it keeps
    ids, mask = tokenize(tokenizer, list(dataset.train.texts), meta["max_tokens"])
    y = torch.as_tensor(np.asarray(dataset.train.y), dtype=torch.long)
    val = None
    if len(dataset.val.y):
        val = (*tokenize(tokenizer, list(dataset.val.texts), meta["max_tokens"]), torch.as_tensor(np.asarray(dataset.val.y)))
    with _Threads():
        torch.manual_seed(e.seed)
        history = _fit(model, list(model.parameters()), ids, mask, y, torch.from_numpy(t_logits), val, cfg,
                       e.truncated_epochs, e.truncated_lr, word_dropout, None, progress, "edge truncated")
    return model, tokenizer, meta, history


# -- ONNX ---------------------------------------------------------------------------------

class _Logits(torch.nn.Module):
    """model(input_ids, attention_mask) -> logits alone: the traced signature of the export."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)


def export_onnx(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, path: str | Path) -> Path:
    """model(input_ids, attention_mask) -> logits as ONNX (opset 18), batch and sequence axes dynamic.
    ids/mask are example inputs (at least 2 rows and 2 columns, so no axis is taken as constant 1)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the torch.export one (see the module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_Logits(model), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}})
    # Short names (the exporter's, "/model/layers.0/attn/MatMul_output_0", are most of the
    # graph's bytes) and no repeated node; the quantized graphs get the same, so sizes compare
    # like with like.
    import onnx

    from ..export.edge_quant import compact_names, merge_duplicates
    model_proto = onnx.load(str(path), load_external_data=False)  # a large model's data files stay put
    merge_duplicates(model_proto)
    compact_names(model_proto)
    onnx.save(model_proto, str(path))
    return path


def session_options(threads: int = 1):
    """onnxruntime's options for the edge graphs: `threads` intra-op threads, and the weight-only
    DequantizeLinear nodes (the 4-bit graph's LSTM weights) folded into float constants when
    the session loads rather than run on every call (0.036 against 0.079 ms per sample for
    TinyLSTM). onnxruntime keeps DequantizeLinear for its QDQ fusions unless they are off; the
    edge graphs hold no QDQ pairs."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise EdgeError("onnxruntime is not installed: pip install 'tinyseek[edge]'") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return opts


def _session(path: str | Path, threads: int = 1):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def onnx_logits(path: str | Path, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """onnxruntime's logits [N, C], in the same trimmed batches as `predict`."""
    sess = _session(path)
    out = []
    for i in range(0, len(ids), EVAL_BATCH):
        m = mask[i : i + EVAL_BATCH]
        t = max(1, int(m.sum(1).max()))
        out.append(sess.run(["logits"], {"input_ids": ids[i : i + EVAL_BATCH, :t].numpy(),
                                         "attention_mask": m[:, :t].numpy()})[0])
    return np.concatenate(out)


def check_onnx(model: torch.nn.Module, path: str | Path, ids: torch.Tensor, mask: torch.Tensor, y) -> dict:
    """Torch and onnxruntime on the same inputs: the largest logit difference, the share of
    equal predictions and both accuracies. Raises EdgeError beyond ONNX_ATOL or on any
    differing prediction."""
    ref, got = predict(model, ids, mask), onnx_logits(path, ids, mask)
    y = np.asarray(y)
    result = {"samples": len(y), "max_abs_diff": float(np.abs(ref - got).max()) if len(y) else 0.0,
              "agreement": float(np.mean(ref.argmax(1) == got.argmax(1))) if len(y) else 1.0,
              "accuracy_torch": float(np.mean(ref.argmax(1) == y)) if len(y) else 0.0,
              "accuracy_onnx": float(np.mean(got.argmax(1) == y)) if len(y) else 0.0}
    if result["max_abs_diff"] > ONNX_ATOL or result["agreement"] < 1.0:
        raise EdgeError(f"{path}: onnxruntime differs from torch (largest logit difference {result['max_abs_diff']:.3g}, "
                        f"tolerance {ONNX_ATOL}; predictions equal on {result['agreement']:.2%}); the export is wrong")
    return result


def onnx_latency(path: str | Path, ids: torch.Tensor, mask: torch.Tensor, samples: int = 300,
                 threads: int = 1, repeats: int = 3) -> dict:
    """onnxruntime latency per sample on this CPU: `samples` samples spread evenly over the
    inputs, one at a time, unpadded (as a device runs it), `threads` intra-op threads, after 20
    warm-up runs; each sample's time is its fastest of `repeats` runs, which filters out the
    other processes of a shared machine. Milliseconds."""
    sess = _session(path, threads)
    n = min(samples, len(ids))
    feeds = []
    for i in np.linspace(0, len(ids) - 1, n).round().astype(int):
        t = max(1, int(mask[i].sum()))
        feeds.append({"input_ids": ids[i : i + 1, :t].numpy(), "attention_mask": mask[i : i + 1, :t].numpy()})
    for f in feeds[:20]:
        sess.run(["logits"], f)
    times = []
    for f in feeds:
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(["logits"], f)
            best = min(best, time.perf_counter() - t0)
        times.append(best * 1e3)
    return {"samples": n, "threads": threads, "repeats": repeats, "median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "mean_ms": float(np.mean(times))}


# -- the `tinyseek edge` command ----------------------------------------------------------

def build_edge(run, student: str, layers: int | None = None, progress: bool = True) -> Path:
    """Train one edge student on the run's cache, export it, check it in onnxruntime, measure
    its latency and write `<run>/edge/<student>/` (model.onnx, student.json, metrics.json)."""
    if student not in STUDENTS:
        raise EdgeError(f"unknown edge student {student!r}; choose {' or '.join(STUDENTS)}")
    if layers is not None and student != "truncated":
        raise EdgeError("--layers applies to the truncated student only (TinyBert's depth is edge.layers)")
    cfg, dataset = run.cfg, run.dataset
    out = run.dir / "edge" / student
    t0 = time.monotonic()
    if student == "tinybert":
        model, history = train_tinybert(dataset, run.knowledge, cfg, run.teacher_dir, progress=progress)
        ids, mask = encode(list(dataset.test.texts), model.spec)
        save_tinybert(model, out)  # student.safetensors and student.json
        spec = json.loads((out / SPEC_FILE).read_text())
    else:
        from ..teacher.classifier import tokenize
        model, tokenizer, meta, history = train_truncated(dataset, run.knowledge, cfg, run.teacher_dir, layers,
                                                          progress=progress)
        ids, mask = tokenize(tokenizer, list(dataset.test.texts), meta["max_tokens"])
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out))
        save_truncated(model, out)  # student.safetensors: Core ML converts from the torch model
        spec = model.spec(dataset.labels, meta["max_tokens"])
        (out / SPEC_FILE).write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
    train_seconds = time.monotonic() - t0
    if len(ids) < 2:
        raise EdgeError("the test split needs at least 2 samples to export and check the model")
    t = max(2, int(mask[:2].sum(1).max()))
    onnx_path = export_onnx(model, ids[:2, :t], mask[:2, :t], out / ONNX_FILE)
    check = check_onnx(model, onnx_path, ids, mask, dataset.test.y)
    teacher_logits, _ = read_cache(run.knowledge, "test")
    metrics = {
        "student": student,
        "accuracy": check["accuracy_onnx"],
        "teacher_accuracy": float(np.mean(teacher_logits.argmax(1) == np.asarray(dataset.test.y))),
        "params": param_count(model),
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_check": check,
        "latency": onnx_latency(onnx_path, ids, mask),
        "train_seconds": round(train_seconds, 1),
        "best_val_accuracy": max((h.get("val_accuracy", 0.0) for h in history), default=None),
        "history": history,
        "spec": spec,
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return out
