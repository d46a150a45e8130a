"""Scale-out: the knowledge extraction on a local Ray cluster (teacher.engine = "ray") against
the local path, on the built-in task, and a fault run with random worker kills.

    .venv/bin/python bench/scale_out.py --teacher models/intents/teacher   # about 5 minutes on 2 cores

The teacher is an adapted built-in teacher folder (`models/<run>/teacher/` after `tinyseek
teacher --set teacher.threads=1`); the data the built-in intents task (train, validation and
test: every text the extraction reads). Every extraction runs the real `tinyseek.teacher.
extract` on 1 torch thread per worker, batches of 64, in this process (Ray's workers are
its children).

- local: teacher.engine = "local", shards of 256.
- ray: a local Ray cluster (2 CPUs) started once (its start timed apart), 2 single-thread
  workers, shards of 256. Its knowledge.safetensors must equal the local one byte for byte.
  Whole-job and steady-state figures: the steady rate counts the samples of every shard but the
  first, over the time from the first shard's end to the last's (model load, worker start and
  warm-up left out). Overhead = the cores' time per sample against the local path's, measured
  as CPU time (user + system, from the kernel: the local run's own process; for Ray the driver
  and every process of the local cluster, daemons and workers), whole job and steady (between
  the first shard's end and the last's); beside it the same from walls and rates, which also
  count the time a process waits for a core: workers x wall / local wall - 1 (whole job) and
  local rate x workers / Ray rate - 1 (steady).
  --repeats alternates local and ray runs and keeps each one's best.
- faults: the same Ray extraction with shards of 64 (the same batches of 64, so the same
  knowledge), while workers are SIGKILLed at random moments: at a random third of the shard
  handouts a timer kills that worker's process 0-0.25 s later (mostly mid-shard), until
  --kills kills; runs are repeated until that many kills happened. Checked: every shard
  reported written exactly once, none missing, and the merged file byte-identical to the
  local one.

Writes bench/results/scale_out.json and its section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import shutil
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from results_md import replace_section

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "scale_out.json"
SECTION = "## Scale-out: the extraction on Ray (`python bench/scale_out.py`)"
BATCH = 64


def _fresh_run(base: Path, name: str, teacher: Path) -> Path:
    run = base / name
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(teacher, run / "teacher")
    return run


class _Cpu:
    """CPU seconds (user + system) used since this was made by this process and, with `tree`,
    by every process under it (the local Ray cluster's daemons and workers are its children).
    Each call reads every process and keeps a process's last reading after it ends (the
    kernel does not add a Ray worker's time to its parent's): the calls come at every
    shard's end, so at most what a process did after the last shard is missed. The readings'
    own CPU time (about 2 ms each with a Ray cluster) is not counted."""

    def __init__(self, tree: bool):
        import psutil
        self.me, self.tree, self.psutil, self.seen, self.own = psutil.Process(), tree, psutil, {}, 0.0
        self.start = self._read()

    def _read(self) -> dict:
        for p in [self.me] + (self.me.children(recursive=True) if self.tree else []):
            try:
                self.seen[(p.pid, p.create_time())] = sum(p.cpu_times()[:2])
            except self.psutil.NoSuchProcess:  # ended meanwhile: its last reading stands
                pass
        return dict(self.seen)

    def __call__(self) -> float:
        t = time.process_time()
        self._read()
        self.own += time.process_time() - t
        return sum(v - self.start.get(k, 0.0) for k, v in self.seen.items()) - self.own


def _extract(dataset, cfg, run: Path) -> dict:
    """One extraction, timed: wall, the end of each shard, the knowledge file's bytes, and the
    CPU seconds spent: the local path's by this process alone (the idle Ray cluster started
    for the other runs is left out), Ray's by this process and the whole cluster (its
    daemons, workers and their start)."""
    from tinyseek.teacher import extract
    tree = cfg.engine == "ray"
    ends, lines = [], []
    sizes = {}
    t0, cpu_s = time.monotonic(), _Cpu(tree)

    def on_shard(split, k, path):
        ends.append((time.monotonic() - t0, split, k, cpu_s()))

    path = extract(dataset, cfg, run, batch_size=BATCH, on_shard=on_shard, log=lines.append)
    wall, cpu = time.monotonic() - t0, cpu_s()
    n = {"train": len(dataset.train.y), "val": len(dataset.val.y), "test": len(dataset.test.y)}
    for _, split, k, _ in ends:
        sizes[(split, k)] = min(cfg.shard_size, n[split] - k * cfg.shard_size)
    later = sum(sizes[(s, k)] for _, s, k, _ in ends[1:])
    steady = later / max(ends[-1][0] - ends[0][0], 1e-9)
    return {"wall_s": wall, "first_shard_s": ends[0][0], "steady_samples_per_s": steady, "shards": len(ends),
            "cpu_s": cpu, "cpu_ms_per_sample": 1000 * cpu / sum(sizes.values()),
            "steady_cpu_ms_per_sample": 1000 * (ends[-1][3] - ends[0][3]) / max(later, 1),
            "seen": [(s, k) for _, s, k, _ in ends], "bytes": path.read_bytes(), "log": lines,
            "record": json.loads((run / "extraction.json").read_text())}


def _fault_run(dataset, cfg, run: Path, kills_left: int, seed: int) -> dict:
    """A Ray extraction during which random workers are SIGKILLed mid-shard; returns what
    happened. At a random third of the handouts (ray_engine._submit) a timer kills the worker
    that just got the shard 0-0.25 s later, while it computes it (a shard of 64 takes about
    0.1-0.3 s here), or just after, while it starts the next one."""
    import ray
    from ray.exceptions import RayActorError

    from tinyseek.teacher import extract, ray_engine
    rng, kills, timers, real = random.Random(seed), [], [], ray_engine._submit

    def kill(pid):
        try:  # still that worker (not a process that took its id after it died)
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ShardWorker"):
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
        except (ProcessLookupError, FileNotFoundError):  # it died and Ray restarted it meanwhile
            pass

    def submit(actor, shard):
        try:
            pid = ray.get(actor.ping.remote())  # answers once the shards queued before it are done
        except RayActorError:
            pid = None  # killed since it answered the engine's ping: the handout below fails, as it should
        ref = real(actor, shard)
        if pid is not None and len(timers) < kills_left and rng.random() < 1 / 3:
            timers.append(threading.Timer(rng.uniform(0.0, 0.25), kill, args=(pid,)))
            timers[-1].start()
        return ref

    seen, lines, t0 = [], [], time.monotonic()
    ray_engine._submit = submit
    try:
        path = extract(dataset, cfg, run, batch_size=BATCH, on_shard=lambda s, k, p: seen.append((s, k)),
                       log=lines.append)
    finally:
        ray_engine._submit = real
        for t in timers:
            t.cancel()
    counts = collections.Counter(seen)
    record = json.loads((run / "extraction.json").read_text())
    expected = record["shards"]
    return {"kills": len(kills), "wall_s": time.monotonic() - t0, "shards": expected,
            "shards_reported": len(seen), "duplicated": sum(1 for c in counts.values() if c > 1),
            "lost": expected - len(counts), "redone": record["shards_redone"], "bytes": path.read_bytes(),
            "log": [line for line in lines if "died" in line or "computed again" in line]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", type=Path, default=ROOT / "models" / "intents" / "teacher",
                    help="an adapted built-in teacher folder (models/<run>/teacher after `tinyseek teacher`)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--no-md", action="store_true", help="leave bench/RESULTS.md alone")
    ap.add_argument("--md-only", action="store_true", help="only rewrite the RESULTS.md section from the JSON")
    args = ap.parse_args()
    if args.md_only:
        return md_only()
    if not (args.teacher / "teacher.json").is_file():
        raise SystemExit(f"{args.teacher} is no adapted teacher folder; run `tinyseek teacher --set teacher.threads=1` "
                         f"first (models/intents/teacher), or give --teacher")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    import torch
    from tinyseek.config import TaskConfig, TeacherConfig
    from tinyseek.data import load_task

    dataset = load_task(TaskConfig())
    local_cfg = TeacherConfig(threads=1, dtype="float32", device="cpu", shard_size=256)
    ray_cfg = replace(local_cfg, engine="ray", workers=args.workers)
    load = [os.getloadavg()[0]]
    base = Path(tempfile.mkdtemp(prefix="scale_out-"))
    t = time.monotonic()
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, logging_level="WARNING")
    ray_start = time.monotonic() - t
    torch.set_num_threads(1)
    locals_, rays, ray1s = [], [], []
    for r in range(args.repeats):
        locals_.append(_extract(dataset, local_cfg, _fresh_run(base, f"local{r}", args.teacher)))
        rays.append(_extract(dataset, ray_cfg, _fresh_run(base, f"ray{r}", args.teacher)))
        ray1s.append(_extract(dataset, replace(ray_cfg, workers=1), _fresh_run(base, f"ray1-{r}", args.teacher)))
        print(f"repeat {r + 1}: local {locals_[-1]['wall_s']:.1f} s, ray {rays[-1]['wall_s']:.1f} s, "
              f"ray 1 worker {ray1s[-1]['wall_s']:.1f} s", flush=True)
    reference = locals_[0]["bytes"]
    identical = all(x["bytes"] == reference for x in locals_ + rays + ray1s)
    best_local = min(locals_, key=lambda x: x["wall_s"])
    best_ray = min(rays, key=lambda x: x["wall_s"])
    best_ray1 = min(ray1s, key=lambda x: x["wall_s"])
    groups = {"local": locals_, "ray": rays, "ray_1_worker": ray1s}
    cpu = {name: min(x["steady_cpu_ms_per_sample"] for x in runs) for name, runs in groups.items()}
    cpu_job = {name: min(x["cpu_ms_per_sample"] for x in runs) for name, runs in groups.items()}
    local_rate = max(x["steady_samples_per_s"] for x in locals_)
    ray_rate = max(x["steady_samples_per_s"] for x in rays)
    ray1_rate = max(x["steady_samples_per_s"] for x in ray1s)
    load.append(os.getloadavg()[0])

    fault_cfg = replace(ray_cfg, shard_size=BATCH)
    faults, total = [], 0
    while total < args.kills:
        f = _fault_run(dataset, fault_cfg, _fresh_run(base, f"fault{len(faults)}", args.teacher),
                       args.kills - total, seed=len(faults))
        f["identical"] = f.pop("bytes") == reference
        faults.append(f)
        total += f["kills"]
        print(f"fault run {len(faults)}: {f['kills']} kills, {len(f['redone'])} shards computed again, "
              f"lost {f['lost']}, duplicated {f['duplicated']}, identical {f['identical']}", flush=True)
        if len(faults) >= 10:
            break
    load.append(os.getloadavg()[0])
    ray.shutdown()
    shutil.rmtree(base, ignore_errors=True)

    samples = len(dataset.train.y) + len(dataset.val.y) + len(dataset.test.y)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "ray": ray.__version__, "load_average": load},
        "task": {"name": dataset.name, "samples": samples},
        "teacher": str(args.teacher), "batch_size": BATCH, "workers": args.workers, "threads_per_worker": 1,
        "ray_cluster_start_s": ray_start,
        "local": {k: v for k, v in best_local.items() if k not in ("bytes", "seen", "log", "record")},
        "ray": {k: v for k, v in best_ray.items() if k not in ("bytes", "seen", "log", "record")},
        "ray_1_worker": {k: v for k, v in best_ray1.items() if k not in ("bytes", "seen", "log", "record")},
        "local_walls_s": [x["wall_s"] for x in locals_], "ray_walls_s": [x["wall_s"] for x in rays],
        "ray_1_worker_walls_s": [x["wall_s"] for x in ray1s],
        "local_steady_samples_per_s": local_rate, "ray_steady_samples_per_s": ray_rate,
        "ray_1_worker_steady_samples_per_s": ray1_rate,
        "steady_runs": {name: [x["steady_samples_per_s"] for x in runs] for name, runs in groups.items()},
        "identical": identical,
        "steady_cpu_ms_per_sample": cpu, "cpu_ms_per_sample": cpu_job,
        "cpu_runs": {name: [(x["steady_cpu_ms_per_sample"], x["cpu_ms_per_sample"]) for x in runs]
                     for name, runs in groups.items()},
        "overhead_cpu_steady": cpu["ray"] / cpu["local"] - 1,
        "overhead_cpu_steady_1_worker": cpu["ray_1_worker"] / cpu["local"] - 1,
        "overhead_cpu_whole_job": cpu_job["ray"] / cpu_job["local"] - 1,
        "overhead_whole_job": args.workers * best_ray["wall_s"] / best_local["wall_s"] - 1,
        "overhead_whole_job_with_cluster_start": args.workers * (best_ray["wall_s"] + ray_start) / best_local["wall_s"] - 1,
        "overhead_steady": local_rate * args.workers / ray_rate - 1,
        "overhead_steady_1_worker": local_rate / ray1_rate - 1,
        "speedup_steady": ray_rate / local_rate,
        "faults": {"runs": faults, "kills": total, "shards": sum(f["shards"] for f in faults),
                   "redone": sum(len(f["redone"]) for f in faults), "lost": sum(f["lost"] for f in faults),
                   "duplicated": sum(f["duplicated"] for f in faults),
                   "identical": all(f["identical"] for f in faults)},
        "gpu": "not measured: no GPU machine was available to this run",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "faults"}, indent=2))
    if not args.no_md:
        replace_section(SECTION, _markdown(result))


def md_only() -> None:
    """The section of bench/RESULTS.md written again from bench/results/scale_out.json."""
    replace_section(SECTION, _markdown(json.loads(OUT.read_text())))


def _markdown(r: dict) -> str:
    loc, ray, r1, f = r["local"], r["ray"], r["ray_1_worker"], r["faults"]
    cpu, job = r["steady_cpu_ms_per_sample"], r["cpu_ms_per_sample"]
    med = {name: float(statistics.median(a for a, _ in runs)) for name, runs in r["cpu_runs"].items()}
    w = r["workers"]
    pct = lambda x: f"{100 * x:+.0f} %"  # noqa: E731
    return "\n".join([
        SECTION, "",
        f"Measured on this machine ({r['machine']['cpus']} cores; load average "
        f"{', '.join(f'{x:.1f}' for x in r['machine']['load_average'])} at the start, after the timing runs and at "
        f"the end), Ray {r['machine']['ray']}, torch {r['machine']['torch']}. The built-in task's "
        f"{r['task']['samples']:,} texts (train, validation, test) through the adapted built-in teacher "
        f"(0.5 M parameters, float32, CPU), batches of {r['batch_size']}, shards of 256, 1 torch thread per worker; "
        f"best of {len(r['local_walls_s'])} alternating runs each. The Ray cluster is a local one started once "
        f"({r['ray_cluster_start_s']:.1f} s, not in the walls below).", "",
        "| | wall s | first shard s | steady samples/s | CPU ms / sample, steady | CPU ms / sample, whole job | "
        "knowledge.safetensors |",
        "|---|---|---|---|---|---|---|",
        f"| local (1 process, 1 thread) | {loc['wall_s']:.1f} | {loc['first_shard_s']:.1f} | "
        f"{r['local_steady_samples_per_s']:,.0f} | {cpu['local']:.3f} | {job['local']:.3f} | reference |",
        f"| Ray, {w} single-thread workers | {ray['wall_s']:.1f} | {ray['first_shard_s']:.1f} | "
        f"{r['ray_steady_samples_per_s']:,.0f} | {cpu['ray']:.3f} | {job['ray']:.3f} | "
        f"{'byte-identical' if r['identical'] else '**differs**'} |",
        f"| Ray, 1 single-thread worker | {r1['wall_s']:.1f} | {r1['first_shard_s']:.1f} | "
        f"{r['ray_1_worker_steady_samples_per_s']:,.0f} | {cpu['ray_1_worker']:.3f} | {job['ray_1_worker']:.3f} | "
        f"{'byte-identical' if r['identical'] else '**differs**'} |",
        "",
        "CPU time is user + system time of every process involved, read from the kernel (psutil): the local path's "
        "own process; for Ray the driver and the whole local cluster (its daemons, the workers, their start and "
        "whatever they did meanwhile). Steady: from the first shard's end to the last's, per sample in between; "
        "whole job: from the call to its return, per sample. Every figure is the best of the runs; each run's "
        "(steady, whole job): " + "; ".join(
            f"{name} {', '.join(f'({a:.3f}, {b:.3f})' for a, b in runs)}" for name, runs in r["cpu_runs"].items())
        + ". Unlike the walls and rates, CPU time does not count the time a process waits for a core, so other "
        "jobs on the machine change it little.", "",
        "Steady samples/s of every run (the table shows the best): " + "; ".join(
            f"{name} {', '.join(f'{x:,.0f}' for x in runs)}" for name, runs in r["steady_runs"].items())
        + ": walls and rates depend on what else ran on the 2 cores.", "",
        f"Overhead, goal <= 15 %: the cores' time per sample against the local path's. **In steady state "
        f"{pct(r['overhead_cpu_steady'])} with {w} workers, {pct(r['overhead_cpu_steady_1_worker'])} with 1** "
        f"(best run against best run; median against median {pct(med['ray'] / med['local'] - 1)} and "
        f"{pct(med['ray_1_worker'] / med['local'] - 1)}; "
        f"that is CPU time; from the rates, which count waiting too: {pct(r['overhead_steady'])} and "
        f"{pct(r['overhead_steady_1_worker'])}, the {w} workers at {r['speedup_steady']:.2f}x the local "
        f"samples/s). Whole job: {pct(r['overhead_cpu_whole_job'])} in CPU time with {w} workers "
        f"({pct(r['overhead_whole_job'])} in cores x wall, {pct(r['overhead_whole_job_with_cluster_start'])} with "
        f"the cluster's start): each worker is a new process that imports torch and transformers and loads the "
        f"teacher (the first-shard column), a fixed cost per job that a task of seconds cannot hide and a large "
        f"corpus does. The 15 % goal: {'met' if r['overhead_cpu_steady'] <= 0.15 else 'not met'} in steady state "
        f"by the best runs with {w} workers, "
        f"{'met' if med['ray'] / med['local'] - 1 <= 0.15 else 'not met'} by the medians, "
        f"{'met' if r['overhead_cpu_whole_job'] <= 0.15 else 'not met'} by the whole job on this small task.", "",
        f"Faults: {f['kills']} random worker kills (SIGKILL of the worker's process 0-0.25 s after a random "
        f"third of the shard handouts) over {len(f['runs'])} run(s) of {f['runs'][0]['shards']} shards of 64: "
        f"{f['redone']} shards were held by a killed worker (the one it computed and the one queued behind it) "
        f"and were computed again"
        + f"; **{f['lost']} lost, {f['duplicated']} duplicated**, merged knowledge "
        f"{'byte-identical to the local one' if f['identical'] else '**differs from the local one**'} in every "
        f"run. Wall time per run: {', '.join('%.0f s' % x['wall_s'] for x in f['runs'])} (each kill costs a restart: "
        f"a new process, torch, the teacher).", "",
        "GPU: **not measured**. No GPU machine was lent to this run, so the throughput with 1, 2 and 4 GPU "
        "workers and the projection for a 7B teacher over 1M utterances on a node of 8 GPUs are not given. "
        "Run the same script there with `teacher.device = \"auto\"` (one GPU per worker where Ray sees GPUs).",
    ]) + "\n"


if __name__ == "__main__":
    main()
