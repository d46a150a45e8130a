"""The Flower apps: the ClientApp every client runs and the server's strategy.

The same `client_app` runs in Flower's simulation engine (one process, many virtual clients)
and on real machines under `flower-supernode`; `server_app` is the ServerApp `flwr run`
starts on a SuperLink (docs/federated.md has the commands). A client needs no files from the
server: each round's message carries the global weights and the plan (task, student, shard
rule, local settings) as JSON, and the client takes its shard of the task by its
`partition-id` (the supernode's --node-config; the simulation numbers its clients 0..N-1).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache

# Flower reports usage to its servers unless told not to; tinyseek runs offline.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg, FedProx  # noqa: E402

# torch and the student are imported where a client trains, not here: a SuperNode's ClientApp
# process loads this module before its first heartbeat, and its task token lapses after 30 s
# without one. With torch imported here, the ClientApps of two SuperNodes on a busy 2-core
# machine were refused ("Runtime task-token authentication failed") round after round.

STRATEGIES = ("fedavg", "fedprox")


class FederationError(ValueError):
    """A client failed or the federation's settings do not fit."""


# -- client -------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _dataset(task_json: str):
    from ..config import TaskConfig
    from ..data import load_task
    return load_task(TaskConfig(**json.loads(task_json)))


@lru_cache(maxsize=64)
def client_data(plan_json: str, partition: int):
    """Client `partition`'s shard of the plan's task as model inputs (local.LocalData), with the
    teacher's logits for it when the plan names a knowledge cache (cached: the same every round)."""
    import torch

    from ..student.tinylstm import StudentSpec, split_inputs
    from .local import LocalData
    from .shards import non_iid_shards
    plan = json.loads(plan_json)
    ds = _dataset(json.dumps(plan["task"], sort_keys=True))
    shards = non_iid_shards(ds, plan["clients"], plan["overlap"], plan["seed"])
    if not 0 <= partition < len(shards):
        raise FederationError(f"partition-id {partition} is outside 0..{len(shards) - 1} for {len(shards)} clients: "
                              "start each flower-supernode with --node-config \"partition-id=K num-partitions=N\"")
    idx = shards[partition]
    from ..data.dataset import take
    split = take(ds.train, idx)
    spec = StudentSpec.from_json(plan["spec"])
    x, lengths = split_inputs(split, spec)
    logits = None
    if plan["knowledge"]:
        from ..distill.train import read_cache
        logits = torch.from_numpy(read_cache(plan["knowledge"], "train")[0][idx])
    return LocalData(x, lengths, torch.as_tensor(np.asarray(split.y), dtype=torch.long), logits)


def train_client(arrays: ArrayRecord, config: ConfigRecord, partition: int) -> tuple[ArrayRecord, MetricRecord]:
    """One client's round: the global weights in, its locally trained weights and metrics out
    (num-examples is what FedAvg weighs the client's weights by)."""
    from ..student.tinylstm import StudentSpec, TinyLSTM
    from .local import LocalSettings, local_train, round_seed
    plan_json = str(config["plan"])
    plan = json.loads(plan_json)
    data = client_data(plan_json, partition)
    model = TinyLSTM(StudentSpec.from_json(plan["spec"]))
    model.load_state_dict(arrays.to_torch_state_dict())
    # FedProx puts its mu into the config as "proximal-mu"; FedAvg sends none.
    settings = LocalSettings(**plan["local"], mu=float(config.get("proximal-mu", 0.0)))
    losses = local_train(model, data, settings, round_seed(plan["seed"], int(config["server-round"]), partition))
    metrics = MetricRecord({"num-examples": len(data), "partition-id": partition, "train-loss": losses["total"]})
    return ArrayRecord(model.state_dict()), metrics


client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    arrays, metrics = train_client(msg.content["arrays"], msg.content["config"], int(context.node_config["partition-id"]))
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


# -- server -------------------------------------------------------------------------------

def _client_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """The round's training loss, weighted by the clients' samples (the clients' own metrics
    are kept per client by the strategy)."""
    n = [float(next(iter(r.metric_records.values()))[weighted_by_key]) for r in records]
    loss = [float(next(iter(r.metric_records.values()))["train-loss"]) for r in records]
    return MetricRecord({"train-loss": float(np.dot(n, loss) / sum(n))})


class _AllClients:
    """A round counts only when every client answered: a failed client is an error, not a
    silently smaller average. Keeps each round's per-client metrics in `clients`."""
    expected: int

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        failed = [m.error.reason for m in replies if m.has_error()]
        if failed or len(replies) != self.expected:
            raise FederationError(f"round {server_round}: {len(replies) - len(failed)} of {self.expected} clients "
                                  f"answered; errors: {'; '.join(failed) or 'none (timed out)'}")
        self.clients[server_round] = [dict(next(iter(m.content.metric_records.values()))) for m in replies]
        return super().aggregate_train(server_round, replies)


class CheckedFedAvg(_AllClients, FedAvg):
    pass


class CheckedFedProx(_AllClients, FedProx):
    pass


def make_strategy(name: str, clients: int, mu: float):
    """Flower's FedAvg or FedProx (weights averaged by the clients' sample counts), every
    client every round, no client-side evaluation (the server measures the global model)."""
    common = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                  min_available_nodes=clients, train_metrics_aggr_fn=_client_metrics)
    if name == "fedavg":
        strategy = CheckedFedAvg(**common)
    elif name == "fedprox":
        strategy = CheckedFedProx(proximal_mu=mu, **common)
    else:
        raise FederationError(f"strategy must be one of {', '.join(STRATEGIES)}, not {name!r}")
    strategy.expected, strategy.clients = clients, {}
    return strategy


server_app = ServerApp()


@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    """`flwr run` on a SuperLink: the federation's settings come from the app's run config
    (docs/federated.md); the rounds, the report and the run folder are written here."""
    from .run import Federation, serve
    serve(grid, Federation.from_run_config(dict(context.run_config)))
