"""teacher.engine = "ray" when a whole node is lost: a Ray cluster of a head (no CPUs) and two
worker nodes of one CPU each, all on this machine (ray.cluster_utils.Cluster: separate raylets,
as separate machines would have). The node that holds the worker of the second shard handed
out is removed mid-run; its actor cannot restart anywhere (the other node's CPU is taken), so
the surviving worker computes the lost shards and the file is the local one, byte for byte."""
import os

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from test_extract_ray import BATCH, RAY, TINY, Logged, _fresh, _record, ray_engine
from test_extract_ray import task  # noqa: F401  (the fixture)
from tinyseek.teacher import adapt, extract
from tinyseek.teacher.extract import KNOWLEDGE_FILE

SUBMIT = ray_engine._submit


@pytest.fixture(scope="module")
def nodes():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def _node_of(workers, pid: int):
    """The cluster node whose raylet started the worker process `pid`."""
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in workers}
    for parent in psutil.Process(pid).parents():
        if parent.pid in raylets:
            return raylets[parent.pid]
    raise AssertionError(f"no raylet among the parents of worker process {pid}")


def test_a_lost_node_leaves_every_shard_once(nodes, task, tmp_path, monkeypatch):
    cluster, workers = nodes
    run = tmp_path / "local"
    adapt(task, TINY, run)
    extract(task, TINY, run, batch_size=BATCH)
    local = (run / KNOWLEDGE_FILE).read_bytes()

    handed, lost = [], []

    def submit(actor, shard):
        if len(handed) == 1:  # the node goes down as the shard is handed to its worker
            node = _node_of(workers, ray.get(actor.ping.remote()))
            processes = psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True)
            cluster.remove_node(node, allow_graceful=False)  # its raylet and object store
            for p in processes:  # and every worker it started: a machine gone takes its processes along
                p.kill()
            lost.append(node)
        handed.append(shard)
        return SUBMIT(actor, shard)
    monkeypatch.setattr(ray_engine, "_submit", submit)

    run2, log = _fresh(run, tmp_path / "ray"), Logged()
    extract(task, RAY, run2, batch_size=BATCH, log=log)
    record = _record(run2)
    redone = record["shards_redone"]  # the shard handed to the lost worker, and the one queued before it
    died = [line for line in log if "died holding shard" in line]
    assert len(lost) == 1 and 1 <= len(redone) <= 2 and len(set(redone)) == len(redone) == len(died)
    assert len({line.split(" died")[0] for line in died}) == 1  # one worker: the lost node's
    assert log[-1] == f"[teacher extract] computed again after a worker died: {', '.join(redone)}"
    assert record["shards"] == 5 and record["samples_computed"] == 31
    assert (run2 / KNOWLEDGE_FILE).read_bytes() == local
