"""Teacher scale: peak memory and throughput of the knowledge extraction for DeepSeek-V3
teachers of growing size, and what they project for a 7B teacher on this 24 GB, 2-core machine.

    .venv/bin/python bench/teacher_scale.py                  # every size below, about 7 minutes
    .venv/bin/python bench/teacher_scale.py --sizes 3M,130M  # a subset (RESULTS.md is left alone)

Each teacher is built here with random weights (`tiny_deepseek_config`: MLA attention, a dense
first layer, then 4 routed experts top-2 + 1 shared), saved as an adapted teacher folder, and
extracted by the real `tinyseek.teacher.extract` in a fresh process, so that process's peak
RSS is the extraction's own: load (teacher.dtype "auto" unless the size names one), teacher
hash, N texts of the built-in intents task (English and Chinese) in batches of 16, shards of
16, merge. Measured: peak RSS (the kernel's high-water mark, which counts pages of the
memory-mapped weight file too), peak anonymous RSS (sampled every 10 ms: what must fit in RAM),
load time, throughput after the first shard, on one torch thread (--threads; the dense 1B
again on 2). FLOPs per token are 2 x the parameters one token
passes through (embeddings and unused experts left out; attention scores, T <= 48, too).
Writes bench/teacher_scale.json and its section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from results_md import replace_section

ROOT = Path(__file__).resolve().parents[1]
SIZES = [  # name, hidden, layers, heads, dtype, mixture of experts (else every layer dense)
    ("0.5M", 96, 4, 4, "auto", True),  # the built-in teacher's size
    ("3M", 256, 4, 4, "auto", True),
    ("25M", 512, 8, 8, "auto", True),
    ("130M", 1024, 12, 16, "float32", True),
    ("130M", 1024, 12, 16, "auto", True),
    ("400M", 1536, 16, 16, "auto", True),
    ("1B", 2048, 22, 16, "auto", True),
    # The projection's base: deepseek-llm-7b is dense, so its memory and speed are projected
    # from a dense teacher (DeepSeek-V3 layers with dense MLPs).
    ("1B-dense", 2048, 26, 16, "auto", False),
]
N_TEXTS, BATCH, SHARD = 64, 16, 16
# deepseek-ai/deepseek-llm-7b-base (its config.json: a llama architecture, untied LM head).
DEEPSEEK_7B = dict(vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                   num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                   tie_word_embeddings=False)
SECTION = "## Teacher scale (`python bench/teacher_scale.py`)"


def _texts(n: int) -> list[str]:
    import numpy as np
    from tinyseek.config import TaskConfig
    from tinyseek.data import load_task
    texts = load_task(TaskConfig()).train.texts
    return [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:n]]


def _task_texts() -> int:
    from tinyseek.config import TaskConfig
    from tinyseek.data import load_task
    task = load_task(TaskConfig())
    return sum(len(getattr(task, s).y) for s in ("train", "val", "test"))


def _dataset(n: int):
    import numpy as np
    from tinyseek.data import Dataset, Split
    empty = Split(y=np.zeros(0, np.int64), texts=[], x=None)
    train = Split(y=np.arange(n, dtype=np.int64) % 3, texts=_texts(n), x=None)
    return Dataset(name="bench", kind="text", labels=["a", "b", "c"], train=train, val=empty, test=empty)


def _flops_per_token(config) -> tuple[int, int]:
    """(parameters, 2 x parameters a token passes through) of `config`, counted on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    active = sum(p.numel() for p in model.base_model.layers.parameters())
    experts = getattr(config, "n_routed_experts", None)
    if experts:
        routed = sum(p.numel() for n, m in model.named_modules() if type(m).__name__.endswith("Experts")
                     for p in m.parameters())
        active -= routed * (experts - config.num_experts_per_tok) // experts
    return total, 2 * active


def build(run_dir: Path, hidden: int, layers: int, heads: int, moe: bool) -> None:
    """An adapted teacher folder in `run_dir/teacher`: random weights, saved in the dtype
    "auto" loads them in, a random 3-class head."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from tinyseek.teacher.build import tiny_deepseek_config, train_text_tokenizer
    from tinyseek.teacher.load import AUTO_BF16_PARAMS, count_parameters
    tokenizer = train_text_tokenizer(_texts(4000))
    config = tiny_deepseek_config(len(tokenizer), hidden, layers, heads, 64)
    if not moe:
        config.first_k_dense_replace = layers
    dtype = torch.bfloat16 if count_parameters(config) > AUTO_BF16_PARAMS else torch.float32
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    out = run_dir / "teacher"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    save_file({"head.weight": torch.randn(3, hidden) / hidden ** 0.5, "head.bias": torch.zeros(3)},
              str(out / "classifier.safetensors"))
    (out / "teacher.json").write_text(json.dumps({"labels": ["a", "b", "c"], "kind": "text", "max_tokens": 48,
                                                  "num_features": 0}))


def _status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile of this process in bytes (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def measure(run_dir: Path, dtype: str, threads: int) -> dict:
    """Extract N_TEXTS texts with the teacher in run_dir on `threads` torch threads; memory
    and timings."""
    import importlib

    import torch
    torch.set_num_threads(threads)  # extract() keeps a lower count than its cap of 2
    from tinyseek.config import TeacherConfig
    extract_mod = importlib.import_module("tinyseek.teacher.extract")
    dataset = _dataset(N_TEXTS)
    baseline = _status()["VmRSS"]
    peak = {"RssAnon": 0, "RssFile": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for key, value in _status().items():
                if key in peak:
                    peak[key] = max(peak[key], value)
            time.sleep(0.01)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    marks: dict = {"shards": []}
    real_load = extract_mod.load_for_extraction

    def timed_load(*args, **kwargs):
        t = time.perf_counter()
        out = real_load(*args, **kwargs)
        marks["load_s"] = time.perf_counter() - t
        marks["rss_after_load"] = _status()["VmRSS"]
        marks["dtype"] = str(out[0].backbone.dtype).removeprefix("torch.")
        marks["params"], marks["flops_per_token"] = _flops_per_token(out[0].backbone.config)
        marks["tokens"] = [sum(m) for m in out[1](dataset.train.texts, truncation=True, max_length=48)
                           ["attention_mask"]]
        return out
    extract_mod.load_for_extraction = timed_load
    cfg = TeacherConfig(dtype=dtype, device="cpu", shard_size=SHARD)
    t0 = time.perf_counter()
    extract_mod.extract(dataset, cfg, run_dir, batch_size=BATCH,
                        on_shard=lambda split, k, path: marks["shards"].append(time.perf_counter()))
    total = time.perf_counter() - t0
    stop.set()
    sampler.join()
    shards = marks["shards"]
    steady = N_TEXTS - SHARD  # the samples of every shard after the first
    tokens = sum(marks["tokens"][SHARD:])
    return {
        "dtype": marks["dtype"], "params": marks["params"], "flops_per_token": marks["flops_per_token"],
        "texts": N_TEXTS, "tokens": sum(marks["tokens"]),
        "baseline_rss_mb": baseline / 2**20, "rss_after_load_mb": marks["rss_after_load"] / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_anon_mb": peak["RssAnon"] / 2**20, "peak_file_mb": peak["RssFile"] / 2**20,
        "load_s": marks["load_s"], "first_shard_s": shards[0] - t0, "total_s": total,
        "samples_per_s": steady / (shards[-1] - shards[0]), "tokens_per_s": tokens / (shards[-1] - shards[0]),
    }


def _child(args: list[str]) -> dict | None:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"bench child {args} failed")
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else None


def _projection(rows: list[dict], task_texts: int) -> dict:
    from transformers import LlamaConfig
    params, flops = _flops_per_token(LlamaConfig(**DEEPSEEK_7B))
    bf16 = [r for r in rows if r["dtype"] == "bfloat16"]
    big = max(bf16, key=lambda r: (not r["moe"], r["params"], r["tokens_per_s"]))
    weights = params * 2 / 2**20
    # What is neither weights nor the runtime at the base size (activations, results, allocator
    # slack) grows with the hidden size.
    rest = max(big["peak_rss_mb"] - big["weight_mb"] - big["baseline_rss_mb"], 0.0)
    scale = DEEPSEEK_7B["hidden_size"] / big["hidden"]
    gflops = big["tokens_per_s"] * big["flops_per_token"] / 1e9
    return {
        "model": "deepseek-ai/deepseek-llm-7b-base (llama architecture)", "params": params,
        "flops_per_token": flops, "from_size": big["name"], "weight_mb": weights,
        "runtime_mb": big["baseline_rss_mb"], "rest_mb": rest * scale,
        "peak_rss_mb": weights + big["baseline_rss_mb"] + rest * scale,
        "threads": big["threads"], "gflops": gflops, "tokens_per_s": gflops * 1e9 / flops,
        "samples_per_s": gflops * 1e9 / flops / (big["tokens"] / big["texts"]), "task_texts": task_texts,
    }


def _markdown(rows: list[dict], proj: dict, load: tuple, threads: int) -> str:
    gb = lambda mb: f"{mb / 1024:.2f}"  # noqa: E731
    lines = [
        SECTION, "",
        f"Measured on this machine (2 cores, 24 GB) on {threads} torch thread{'s' if threads > 1 else ''} "
        f"(the last row: 2), while other jobs shared the cores (load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end): with the cores busy elsewhere, 2 threads wait on each other at every "
        f"operation, so one thread gives the steadier figure and a machine of one's own runs faster. GiB = 2^30 "
        f"bytes. Teachers are random-weight DeepSeek-V3 models "
        f"built by the script; {N_TEXTS} texts of the intents task (English and Chinese, "
        f"{rows[0]['tokens'] / rows[0]['texts']:.1f} teacher tokens each), batches of {BATCH}, shards of {SHARD}, "
        f"the default 3 cached layers, teacher.dtype \"auto\" unless the row says float32. Throughput excludes "
        f"the first shard (load, hash, warm-up). Peak RSS is the kernel's high-water mark; \"file\" is the part "
        f"that is pages of the memory-mapped weight file (bfloat16 weights read from a bfloat16 file stay "
        f"mapped: the kernel can drop and re-read them, they never need swap), \"anon\" the rest (both "
        f"sampled every 10 ms). MoE rows read the routed experts twice: transformers fuses the per-expert "
        f"tensors of the file into new ones.", "",
        "| teacher | params | dtype | threads | weights GiB | peak RSS GiB | file GiB | anon GiB | load s "
        "| samples/s | tokens/s | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kind = "MoE" if r["moe"] else "dense"
        lines.append(
            f"| {r['name']} ({kind}, h {r['hidden']}, {r['layers']} layers) | {r['params'] / 1e6:.1f} M "
            f"| {r['dtype']} | {r['threads']} | {gb(r['weight_mb'])} | {gb(r['peak_rss_mb'])} | {gb(r['peak_file_mb'])} "
            f"| {gb(r['peak_anon_mb'])} | {r['load_s']:.1f} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {r['tokens_per_s'] * r['flops_per_token'] / 1e9:.1f} |")
    lines += [
        "",
        f"**Projected, not measured**: {proj['model']}, {proj['params'] / 1e9:.2f} B parameters, in bfloat16 "
        f"(teacher.dtype \"auto\"), from the {proj['from_size']} teacher: weights {gb(proj['weight_mb'])} GiB "
        f"(2 bytes per parameter, the unused LM head included) + runtime {gb(proj['runtime_mb'])} GiB (the "
        f"measured baseline) + activations, results and slack {gb(proj['rest_mb'])} GiB (the "
        f"{proj['from_size']} teacher's peak minus its weights and runtime, times the ratio of hidden sizes) = "
        f"**{gb(proj['peak_rss_mb'])} GiB peak RSS**, within this machine's 24 GB. Throughput: "
        f"{proj['flops_per_token'] / 1e9:.1f} GFLOP per token at the {proj['from_size']} teacher's measured "
        f"{proj['gflops']:.1f} GFLOP/s gives **{proj['tokens_per_s']:.1f} tokens/s, "
        f"{proj['samples_per_s']:.2f} samples/s** on {proj['threads']} shared core{'s' if proj['threads'] > 1 else ''} ({3600 * proj['samples_per_s']:.0f} texts "
        f"an hour: the intents task's {proj['task_texts']:,} texts in about "
        f"{proj['task_texts'] / proj['samples_per_s'] / 3600:.1f} h, resumable shard by shard). A CUDA GPU "
        f"(teacher.device \"auto\") runs the same extraction unchanged.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="", help="comma-separated names from SIZES (default: all)")
    ap.add_argument("--build", nargs=5, metavar=("DIR", "HIDDEN", "LAYERS", "HEADS", "MOE"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine 2 threads wait on each other; see RESULTS.md)")
    ap.add_argument("--measure", nargs=2, metavar=("DIR", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build(Path(args.build[0]), *map(int, args.build[1:4]), args.build[4] == "moe")
        return
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1], args.threads)))
        return

    wanted = set(args.sizes.split(",")) if args.sizes else {s[0] for s in SIZES}
    load = [os.getloadavg()[0]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="teacher_scale_") as tmp:
        # The projection's base again on 2 threads: what the second (shared) core adds.
        runs = [(*size, args.threads) for size in SIZES] + [(*SIZES[-1], 2)]
        for name, hidden, layers, heads, dtype, moe, threads in runs:
            if name not in wanted:
                continue
            run_dir = Path(tmp) / name
            t = time.perf_counter()
            if not run_dir.exists():
                _child(["--build", str(run_dir), str(hidden), str(layers), str(heads), "moe" if moe else "dense"])
            built = time.perf_counter() - t
            row = _child(["--measure", str(run_dir), dtype, "--threads", str(threads)])
            row.update(name=name, hidden=hidden, layers=layers, heads=heads, moe=moe, threads=threads, build_s=built,
                       weight_mb=row["params"] * (4 if row["dtype"] == "float32" else 2) / 2**20)
            rows.append(row)
            print(f"{name} {row['dtype']} {threads} thread(s): peak RSS {row['peak_rss_mb']:.0f} MB, anon {row['peak_anon_mb']:.0f} MB, "
                  f"{row['samples_per_s']:.1f} samples/s, {row['tokens_per_s']:.0f} tokens/s", flush=True)
    load.append(os.getloadavg()[0])
    proj = _projection(rows, _task_texts()) if any(r["dtype"] == "bfloat16" for r in rows) else None
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average": load},
              "settings": {"texts": N_TEXTS, "batch_size": BATCH, "shard_size": SHARD, "threads": args.threads},
              "sizes": rows,
              "projection_7b": proj}
    (ROOT / "bench" / "teacher_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.sizes and proj:
        md = _markdown(rows, proj, tuple(load), args.threads)
        replace_section(SECTION, md)
        print(md)


if __name__ == "__main__":
    main()
