"""The knowledge extraction on Ray (teacher.engine = "ray"): the same shard plan as the local
path (extract.py), computed by Ray actors, one teacher replica each, loaded once.

Each actor (`ShardWorker`) loads the adapted teacher in teacher.dtype on teacher.device (a GPU
of its own where the cluster has GPUs), runs teacher.threads torch threads (0: one) and
computes the shards it is handed with extract.py's own `_run_shard`, writing each to its file
with extract.py's `_write_shard`: the same stamp, the same checksum, the same atomic rename.
The driver keeps two shards with each actor (the one it computes and the next), reads every
finished shard back (stamp
and checksum checked) and merges them as the local path does. The run folder must be at the
same path on every node (a shared file system): the actors read the teacher there and write
the shards there.

Faults: an actor whose process dies (killed, out of memory, its node lost) is restarted by Ray
(max_restarts) and reloads the teacher; the shard it held is handed out again and the log says
so; a shard whose worker dies MAX_ATTEMPTS times in a row is an error. A shard is only ever
under its final name whole (rename), so a death mid-write leaves at most a `.tmp` file that the
next write of that shard replaces. The driver interrupted (Ctrl-C, a crash): its actors go with
it, and the rerun keeps every whole shard on disk and computes the rest, as the local path does.

The generated transfer set (transfer.py) runs here too: `GenerateWorker` actors write its
batches of prompts, each with its own seed, so the texts are those of the local path.
"""
from __future__ import annotations

import os
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ..progress import Progress
from .classifier import split_inputs
from .extract import (PARTS_DIR, _read_shard, _run_shard, _write_shard, check_task, device_name, hash_folder,
                      kept_shards, load_for_extraction, merge_shards, plan_shards, select_layers, shard_settings,
                      write_record)
from .load import TeacherError, use_threads

MAX_ATTEMPTS = 5  # a shard whose worker died this many times running it is an error, not bad luck
LOG_EVERY_S = 30.0  # at most one progress line this often (and one at the end)
IN_FLIGHT = 2  # shards handed to a worker at a time: the one it computes and the next
PING_EVERY_S = 0.5  # how often a worker that died is asked whether Ray has restarted it
RESTART_TIMEOUT_S = 600.0  # a worker not back after this long is an error


def _ray():
    try:
        import ray
    except ImportError as e:
        raise TeacherError("teacher.engine = \"ray\" needs Ray: pip install 'tinyseek[ray]' (`make setup` installs "
                           "it), or set teacher.engine = \"local\"") from e
    return ray


class _NoBar:
    def update(self, n: int) -> None:
        pass


class ShardWorker:
    """One teacher replica on a Ray worker: loads the adapted teacher once, then computes and
    writes the shards it is given."""

    def __init__(self, teacher_dir: str, dtype: str, device: str, threads: int, layers: list[int], attentions: bool,
                 batch_size: int):
        self.threads = use_threads(threads)
        self.model, self.tokenizer, self.meta = load_for_extraction(Path(teacher_dir), dtype, device)
        config = self.model.backbone.config
        self.layers = select_layers(layers, config.num_hidden_layers)
        self.attn_layers = [l for l in self.layers if l > 0] if attentions else []
        self.batch_size = batch_size
        self.zero_shot = None
        if self.model.head is None:
            from .verbalize import zero_shot_from_meta
            self.zero_shot = lambda texts: zero_shot_from_meta(self.model, self.tokenizer, texts, self.meta,  # noqa: E731
                                                               batch_size)

    def describe(self) -> dict:
        """What the driver plans with: the teacher's shape, dtype and device, and where this is."""
        import ray
        backbone = self.model.backbone
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "device": device_name(backbone.device),
                "device_type": backbone.device.type, "dtype": str(backbone.dtype), "threads": self.threads,
                "hidden": backbone.config.hidden_size, "layers": self.layers, "attn_layers": self.attn_layers,
                "meta": self.meta}

    def inputs(self, split, kind: str):
        """A split's (inputs, mask) as this teacher reads them (its tokenizer)."""
        return split_inputs(self.tokenizer, split, kind, self.meta["max_tokens"])

    def ping(self) -> int:
        return os.getpid()

    def run(self, shard) -> int:
        """Compute `shard` and write its file; returns this process's id."""
        tensors = _run_shard(self.model, shard, self.layers, self.attn_layers, self.batch_size, _NoBar(),
                             self.zero_shot)
        _write_shard(shard.path, tensors, shard.stamp)
        return os.getpid()


@contextmanager
def ray_cluster(address: str, cpus: int, log: Callable[[str], None]):
    """Ray, initialised: the session this process already has, else the cluster at `address`,
    else (address "") a local one with at least `cpus` CPUs, shut down on the way out."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage reports: the tool works offline
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    import logging
    common = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **common)
        log(f"[teacher extract] joined the Ray cluster at {address}")
    else:
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, cpus), **common)
    try:
        yield ray
    finally:
        ray.shutdown()


def start_workers(ray, cls, cfg, *args) -> list:
    """cfg.workers actors of `cls(*args)` (0: one per GPU of the cluster, else one per
    teacher.threads CPUs), each with teacher.threads CPUs and, where the cluster has GPUs and
    teacher.device allows them, a GPU (a share of one with more workers than GPUs); Ray restarts
    an actor whose process dies."""
    threads = cfg.threads or 1
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0) if cfg.device != "cpu" else 0.0
    workers = cfg.workers or (int(gpus) or max(1, int(resources.get("CPU", 1) // threads)))
    if resources.get("CPU", 0) < workers * threads:
        raise TeacherError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs, fewer than teacher.workers "
                           f"({workers}) x teacher.threads ({threads}): lower either, or add nodes")
    actor = ray.remote(cls).options(num_cpus=threads, num_gpus=min(1.0, gpus / workers) if gpus else 0.0,
                                    max_restarts=-1, max_task_retries=0)
    return [actor.remote(*args) for _ in range(workers)]


def extract_on_ray(dataset, cfg, run_dir: str | Path, batch_size: int,
                   on_shard: Callable[[str, int, Path], None] | None, log: Callable[[str], None]) -> Path:
    """extract.extract with cfg.engine = "ray" (see the module docstring)."""
    t0 = time.monotonic()
    run_dir = Path(run_dir).resolve()
    teacher_dir = run_dir / "teacher"
    threads = cfg.threads or 1
    with ray_cluster(cfg.ray_address, cfg.workers * threads, log) as ray:
        actors = start_workers(ray, ShardWorker, cfg, str(teacher_dir), cfg.dtype, cfg.device, threads,
                               list(cfg.layers), cfg.attentions, batch_size)
        try:
            return _extract(ray, actors, dataset, cfg, run_dir, batch_size, on_shard, log, t0)
        finally:
            for a in actors:  # an interrupted run's actors stop with it, whoever owns the cluster
                ray.kill(a, no_restart=True)


def _extract(ray, actors, dataset, cfg, run_dir: Path, batch_size: int, on_shard, log, t0: float) -> Path:
    teacher_dir = run_dir / "teacher"
    described = [_ask(ray, a, "describe") for a in actors]
    first = described[0]
    kinds = {(d["dtype"], d["device_type"]) for d in described}
    if len(kinds) > 1:  # the stamps hold dtype and device: every shard must come from the same kind
        raise TeacherError(f"the Ray workers run the teacher in different dtypes or devices ({sorted(kinds)}); set "
                           f"teacher.dtype and teacher.device (e.g. \"cuda\" on a cluster of GPU nodes)")
    meta, layers, attn_layers = first["meta"], first["layers"], first["attn_layers"]
    check_task(meta, dataset, teacher_dir)
    hidden, num_classes = first["hidden"], len(meta["labels"])
    teacher_hash = hash_folder(teacher_dir)
    settings = shard_settings(teacher_hash, layers, attn_layers, first["dtype"], first["device_type"], batch_size,
                              cfg.shard_size)
    plan = plan_shards(dataset, lambda split: _ask(ray, actors[0], "inputs", split, dataset.kind), settings,
                       run_dir / PARTS_DIR, cfg.shard_size, layers, attn_layers, hidden, num_classes)
    kept = kept_shards(plan)
    todo = [i for i in range(len(plan)) if i not in kept]
    samples = sum(len(plan[i].mask) for i in todo)
    devices = [f"{d['device']} on {d['node']}" for d in described]
    log(f"[teacher extract] Ray: {len(actors)} workers ({', '.join(devices)}), {len(todo)} of {len(plan)} shards to "
        f"compute" + (f", {len(kept)} kept from an earlier run" if kept else ""))
    redone = _run_plan(ray, actors, plan, todo, samples, batch_size, on_shard, log)
    done = {}
    for i, shard in enumerate(plan):
        tensors = kept.pop(i, None) or _read_shard(shard.path, shard.stamp, shard.shapes)
        if tensors is None:
            raise TeacherError(f"shard {shard.path} was reported written but is missing or corrupt; run the "
                               f"extraction again (it keeps the whole shards)")
        done[i] = tensors
    write_record(run_dir, plan, computed=samples, engine="ray", workers=len(actors), threads=first["threads"],
                 devices=devices, redone=redone, seconds=time.monotonic() - t0,
                 cluster=cfg.ray_address or "local")
    return merge_shards(plan, done, run_dir, layers, attn_layers, hidden, num_classes, teacher_hash)


def _ask(ray, actor, method: str, *args):
    """actor.method(*args), asked again while Ray restarts the actor (it died loading the
    teacher, say); an actor whose constructor raised is an error at once."""
    from ray.exceptions import RayActorError
    since = time.monotonic()
    while True:
        try:
            return ray.get(getattr(actor, method).remote(*args))
        except RayActorError as e:
            _check_restartable(e, since)
            time.sleep(PING_EVERY_S)


def _check_restartable(e, since: float) -> None:
    """Raise unless the actor behind `e` died in a way Ray restarts from, less than
    RESTART_TIMEOUT_S after `since`."""
    if e.actor_init_failed:
        raise TeacherError(f"a Ray worker could not load the teacher: {e}") from e
    if time.monotonic() - since > RESTART_TIMEOUT_S:
        raise TeacherError(f"a Ray worker has not come back {RESTART_TIMEOUT_S:.0f} s after it died (a lost node "
                           f"whose resources no other node has?); the shards written so far are kept") from e


def _submit(actor, shard):
    """The reference of `shard` computed on `actor` (the fault tests kill the actor here)."""
    return actor.run.remote(shard)


def _run_plan(ray, actors, plan, todo: list[int], samples: int, batch_size: int, on_shard, log) -> list[str]:
    """Hand the `todo` shards out to the actors, IN_FLIGHT at a time each, until all are
    written; returns the names of the shards computed again after their worker died (the one
    it ran and the one waiting in its queue). A worker that died gets work again once it
    answers a ping (Ray refuses calls while it restarts)."""
    from ray.exceptions import RayActorError
    queue, pending, attempts, redone = deque(todo), {}, {}, []
    down: dict[int, float] = {}  # worker -> when it went down (it is pinged until it answers)
    next_ping: dict[int, float] = {}
    progress = Progress("teacher extract", samples, log=log, probe=min(samples, 4 * batch_size), units="samples")
    finished, last_line = 0, time.monotonic()

    def fill(w: int) -> None:  # the worker's next shard waits in its queue: no idle gap between shards
        while queue and sum(1 for v, i in pending.values() if v == w and i is not None) < IN_FLIGHT:
            i = queue.popleft()
            pending[_submit(actors[w], plan[i])] = (w, i)

    for w in range(len(actors)):
        fill(w)
    while finished < len(todo):
        now = time.monotonic()
        for w in [w for w in down if next_ping[w] <= now and not any(p[0] == w for p in pending.values())]:
            pending[actors[w].ping.remote()] = (w, None)
        if not pending:
            time.sleep(PING_EVERY_S)
            continue
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=PING_EVERY_S)
        if not ready:
            continue
        w, i = pending.pop(ready[0])
        try:
            ray.get(ready[0])
        except RayActorError as e:
            _check_restartable(e, down.setdefault(w, time.monotonic()))
            next_ping[w] = time.monotonic() + PING_EVERY_S
            if i is None:  # a ping: still restarting
                continue
            shard = plan[i]
            name = f"{shard.split}-{shard.index:05d}"
            attempts[i] = attempts.get(i, 0) + 1
            if attempts[i] >= MAX_ATTEMPTS:
                raise TeacherError(f"shard {name}: its Ray worker died {attempts[i]} times running it (last: "
                                   f"{type(e).__name__}); the shard may need more memory than a worker has") from e
            log(f"[teacher extract] worker {w} died holding shard {name} ({type(e).__name__}); Ray restarts it, "
                f"the shard is computed again")
            redone.append(name)
            queue.appendleft(i)
            for v in range(len(actors)):  # a live worker with room takes it at once
                if v not in down:
                    fill(v)
            continue
        down.pop(w, None)
        if i is not None:
            shard = plan[i]
            finished += 1
            progress.step(len(shard.mask))
            if on_shard is not None:
                on_shard(shard.split, shard.index, shard.path)
            now = time.monotonic()
            if finished == len(todo) or now - last_line >= LOG_EVERY_S:
                rate = progress.done / max(now - progress.start, 1e-9)
                progress.epoch(f"{finished}/{len(todo)} shards", f"{rate:,.1f} samples/s on {len(actors)} workers")
                last_line = now
        fill(w)
    if redone:
        log(f"[teacher extract] computed again after a worker died: {', '.join(redone)}")
    return redone


# -- the generated transfer set (transfer.py) ---------------------------------------------------

class GenerateWorker:
    """One teacher language model on a Ray worker, loaded as transfer.py loads it (float32 on
    the CPU), writing the texts of batches of prompts."""

    def __init__(self, teacher_dir: str, threads: int):
        from .classifier import load_adapted
        use_threads(threads)
        model, self.tokenizer, _ = load_adapted(Path(teacher_dir), "float32", "cpu")
        self.lm = model.backbone

    def ping(self) -> int:
        return os.getpid()

    def generate(self, prompts, cfg, seed: int) -> list[str]:
        import torch

        from .transfer import generate_batch
        with torch.no_grad():
            return generate_batch(self.lm, self.tokenizer, prompts, cfg, seed)


@contextmanager
def ray_generators(cfg, run_dir: Path, log: Callable[[str], None]):
    """transfer.py's batch writer on Ray: a function from [(prompts, seed), ...] to each
    batch's texts, in order, the batches spread over the workers. A batch whose worker died is
    written again by another (its seed makes it the same texts)."""
    from dataclasses import replace
    threads = cfg.threads or 1
    with ray_cluster(cfg.ray_address, cfg.workers * threads, log) as ray:
        # transfer.py writes on the CPU: no GPUs are reserved for it
        actors = start_workers(ray, GenerateWorker, replace(cfg, device="cpu"), str(run_dir.resolve() / "teacher"),
                               threads)
        try:
            yield lambda batches: _generate(ray, actors, batches, cfg, log)
        finally:
            for a in actors:
                ray.kill(a, no_restart=True)


def _generate(ray, actors, batches, cfg, log) -> list[list[str]]:
    from ray.exceptions import RayActorError
    refs = [actors[b % len(actors)].generate.remote(prompts, cfg, seed) for b, (prompts, seed) in enumerate(batches)]
    texts = []
    for b, ref in enumerate(refs):
        try:
            texts.append(ray.get(ref))
        except RayActorError as e:
            log(f"[teacher] transfer set: the worker writing batch {b} died ({type(e).__name__}); it is written again")
            prompts, seed = batches[b]
            texts.append(_ask(ray, actors[(b + 1) % len(actors)], "generate", prompts, cfg, seed))
    return texts
