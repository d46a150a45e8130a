"""teacher.engine = "ray": the knowledge extraction on a local Ray cluster (2 CPUs, 2 single-
thread workers) gives the local path's file byte for byte, also when workers are killed
mid-run or the driver is interrupted and run again. A tiny teacher and 31 samples in 5 shards
keep it to a few Ray start-ups (seconds each)."""
import importlib
import json
import os
import re
import shutil
import signal
from dataclasses import replace

import numpy as np
import pytest
import ray
from safetensors import safe_open

from tinyseek.config import ConfigError, TeacherConfig
from tinyseek.config import load as load_config
from tinyseek.data import Dataset, Split
from tinyseek.pipeline import Run
from tinyseek.teacher import adapt, extract
from tinyseek.teacher.extract import EXTRACTION_FILE, KNOWLEDGE_FILE, PARTS_DIR, sort_metadata

ray_engine = importlib.import_module("tinyseek.teacher.ray_engine")
SUBMIT = ray_engine._submit

# threads = 1 on both engines: float sums depend on the thread count (docs/teachers.md).
TINY = TeacherConfig(hidden_size=32, num_layers=2, num_heads=2, pretrain_epochs=0, finetune_epochs=2,
                     batch_size=16, lr=3e-3, dtype="float32", device="cpu", layers=[0, 1, 2], attentions=True,
                     noise_copies=0, threads=1, shard_size=8)
RAY = replace(TINY, engine="ray", workers=2)
BATCH = 4
PHRASES = ["turn on the lights", "lights off please", "what time is it", "set a timer for ten minutes",
           "play some music in the kitchen", "stop"]
ALL_SHARDS = {("train", 0), ("train", 1), ("train", 2), ("val", 0), ("val", 1)}  # 22 and 9 samples by 8


def _split(n, seed):
    rng = np.random.default_rng(seed)
    texts = [PHRASES[rng.integers(len(PHRASES))] + ["", " now", " thanks"][i % 3] for i in range(n)]
    return Split(y=rng.integers(0, 3, n).astype(np.int64), texts=texts, x=None)


@pytest.fixture(scope="module")
def task():
    return Dataset(name="tiny", kind="text", labels=["a", "b", "c"],
                   train=_split(22, 0), val=_split(9, 1), test=_split(0, 2))


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module: the extraction uses the session it finds."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(task, tmp_path_factory):
    """An adapted teacher and the local path's knowledge file (bytes) from it."""
    run = tmp_path_factory.mktemp("run")
    adapt(task, TINY, run)
    extract(task, TINY, run, batch_size=BATCH)
    return run, (run / KNOWLEDGE_FILE).read_bytes()


def _fresh(run, tmp_path):
    shutil.copytree(run / "teacher", tmp_path / "teacher")  # makes tmp_path too
    return tmp_path


class Logged(list):
    def __call__(self, line):
        self.append(line)


def _record(run):
    return json.loads((run / EXTRACTION_FILE).read_text())


def test_ray_cache_is_byte_identical_to_the_local_one(cluster, task, local_run, tmp_path):
    run, local = local_run
    run2, log, seen = _fresh(run, tmp_path), Logged(), []
    extract(task, RAY, run2, batch_size=BATCH, on_shard=lambda s, k, p: seen.append((s, k)), log=log)
    assert (run2 / KNOWLEDGE_FILE).read_bytes() == local
    assert sorted(seen) == sorted(ALL_SHARDS) and not (run2 / PARTS_DIR).exists()
    record = _record(run2)
    assert record["engine"] == "ray" and record["workers"] == 2 and record["threads_per_worker"] == 1
    assert len(record["devices"]) == 2 and all(d.startswith("cpu on ") for d in record["devices"])
    assert record["shards"] == 5 and record["samples_computed"] == 31 and record["shards_redone"] == []
    assert any("5/5 shards" in line and "samples/s on 2 workers" in line for line in log)  # the job's one line
    assert _record(run)["engine"] == "local" and _record(run)["workers"] == 1


def _kill_on_handout(monkeypatch, which: int, how: str, killed: list):
    """Kill the actor the `which`-th shard is handed to, right after it is handed: through Ray
    (ray.kill, the actor restartable) or its process (SIGKILL). Only that worker goes down, so
    the other one carries on and the run never waits for Ray's restart (seconds here)."""
    real, handed = SUBMIT, []

    def submit(actor, shard):
        try:
            pid = ray.get(actor.ping.remote())  # answers once the shards queued before it are done
        except ray.exceptions.RayActorError:
            pid = None  # killed at an earlier handout: this one fails too, and the shard is redone
        ref = real(actor, shard)
        handed.append(f"{shard.split}-{shard.index:05d}")
        if len(handed) == which:
            ray.kill(actor, no_restart=False) if how == "ray" else os.kill(pid, signal.SIGKILL)
            killed.append(handed[-1])
        return ref
    monkeypatch.setattr(ray_engine, "_submit", submit)


class Interrupted(Exception):
    pass


def test_killed_workers_and_an_interrupted_driver_leave_every_shard_once(cluster, task, local_run, tmp_path,
                                                                         monkeypatch):
    """First run: the first shard's worker is killed through Ray (restartable), and the driver
    is interrupted as it logs the death (a Ctrl-C then): its workers go with it. The rerun keeps
    the whole shards and computes the rest; the first shard it hands out, its worker's process
    is killed (SIGKILL) and that shard (and the one queued behind it) is computed again. Every
    shard lands exactly once and the file is the local one, byte for byte."""
    run, local = local_run
    run2, seen, killed = _fresh(run, tmp_path), [], []

    def interrupt_on_death(line):
        if "died holding shard" in line:
            raise Interrupted(line)
    _kill_on_handout(monkeypatch, 1, "ray", killed)
    with pytest.raises(Interrupted) as stopped:
        extract(task, RAY, run2, batch_size=BATCH, on_shard=lambda s, k, p: seen.append((s, k)),
                log=interrupt_on_death)
    written = sorted(p.name for p in (run2 / PARTS_DIR).glob("*.safetensors"))
    assert len(killed) == 1 and "worker 0 died holding shard" in str(stopped.value)  # this one or the next
    # seen: the shards the driver heard of before it stopped; a worker may have written one more.
    # The killed shard may be among them: a shard of 8 samples can be whole on disk before the
    # kill reaches its worker. Either way every file under a final name is whole (below).
    assert len(seen) <= len(written) <= 4
    assert not (run2 / KNOWLEDGE_FILE).exists()
    for p in (run2 / PARTS_DIR).glob("*.safetensors"):  # whole shards only under the final names
        with safe_open(str(p), "np") as f:
            assert len(f.metadata()["stamp"]) == 64

    log, again, killed2 = Logged(), [], []
    _kill_on_handout(monkeypatch, 1, "process", killed2)
    extract(task, RAY, run2, batch_size=BATCH, on_shard=lambda s, k, p: again.append((s, k)), log=log)
    # The first run's workers may land more whole shards after the listing above, as they go
    # down: the rerun keeps whatever is whole when it starts, and says how many.
    kept = [int(m.group(1)) for line in log
            if (m := re.search(r"of 5 shards to compute, (\d+) kept from an earlier run", line))]
    assert len(kept) == 1 and len(written) <= kept[0] < 5
    assert len(again) == len(set(again)) == 5 - kept[0]
    computed = {f"{s}-{k:05d}.safetensors" for s, k in again}
    assert not computed & set(written) and computed <= {f"{s}-{k:05d}.safetensors" for s, k in ALL_SHARDS}
    redone = _record(run2)["shards_redone"]  # the killed worker's shard, and the next one queued on it
    assert len(killed2) == 1 and killed2[0] in redone and len(set(redone)) == len(redone) <= 2
    assert [line.split("died holding shard ")[1].split()[0] for line in log if "died holding" in line] == redone
    assert log[-1] == f"[teacher extract] computed again after a worker died: {', '.join(redone)}"
    assert (run2 / KNOWLEDGE_FILE).read_bytes() == local


def test_the_transfer_set_is_the_same_on_ray(cluster, task, local_run, tmp_path):
    """The generated transfer set: each batch of prompts samples with its own seed, so Ray's
    workers (2 batches of prompts per call, one each) write the local set."""
    from tinyseek.teacher.transfer import write_transfer_set
    run, _ = local_run
    cfg = replace(TINY, transfer_samples=66, transfer_confidence=0.0, max_tokens=8)
    local = write_transfer_set(task, cfg, _fresh(run, tmp_path / "local"), log=lambda line: None)
    log = Logged()
    on_ray = write_transfer_set(task, replace(cfg, engine="ray", workers=2), _fresh(run, tmp_path / "ray"), log=log)
    assert on_ray.read_bytes() == local.read_bytes() and len(local.read_text().splitlines()) >= 20
    assert "generated utterances" in log[-1]


# -- without Ray ----------------------------------------------------------------------------

def test_the_same_knowledge_is_the_same_bytes(tmp_path):
    """safetensors writes metadata in hash-map order, which changes between processes: the
    merged file is rewritten with sorted keys, so equal knowledge gives equal bytes."""
    from safetensors.numpy import load_file, save_file
    tensors = {"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.float16)}
    meta = {f"key{i}": f"value {i}" for i in range(12)}
    files = []
    for i, order in enumerate((sorted(meta), sorted(meta, reverse=True))):
        p = tmp_path / f"{i}.safetensors"
        save_file(tensors, str(p), metadata={k: meta[k] for k in order})
        sort_metadata(p)
        files.append(p)
    assert files[0].read_bytes() == files[1].read_bytes()
    size = int.from_bytes(files[0].read_bytes()[:8], "little")
    header = json.loads(files[0].read_bytes()[8:8 + size])
    assert list(header["__metadata__"].items()) == sorted(meta.items())
    assert all(np.array_equal(load_file(str(files[0]))[k], tensors[k]) for k in tensors)


def test_a_handed_out_shard_carries_only_its_own_rows(tmp_path):
    """Ray pickles every shard it hands out: a shard's inputs must not be views of the whole
    split, whose pickle carries every row of it."""
    import pickle

    import torch
    from tinyseek.teacher.extract import plan_shards
    n, shard_size, t = 2000, 10, 16
    split = Split(y=np.zeros(n, np.int64), texts=np.array(["x"] * n), x=None)
    big = Dataset(name="big", kind="text", labels=["a"], train=split, val=split, test=split)
    inputs_of = lambda s: (torch.ones((n, t), dtype=torch.long), torch.ones((n, t), dtype=torch.bool))  # noqa: E731
    plan = plan_shards(big, inputs_of, {}, tmp_path, shard_size, [1], [], 8, 1)
    assert len(plan) == 3 * n // shard_size
    whole = len(pickle.dumps(inputs_of(split)))
    assert len(pickle.dumps(plan[0])) < whole / 20


def test_engine_settings_are_checked_and_are_no_input_of_the_teacher_stage():
    with pytest.raises(ConfigError, match="teacher.engine must be local or ray"):
        load_config(overrides={"teacher.engine": "spark"})
    local = load_config(overrides={"run": "x"})
    on_ray = load_config(overrides={"run": "x", "teacher.engine": "ray", "teacher.workers": 4,
                                    "teacher.ray_address": "auto"})
    assert Run(local).input_key("teacher") == Run(on_ray).input_key("teacher")
    assert Run(local).adaptation_key() == Run(on_ray).adaptation_key()
