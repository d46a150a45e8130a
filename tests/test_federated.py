"""Federated averaging (tinyseek.federated): the non-IID shards, Flower's FedAvg as the
sample-weighted mean of the clients' weights, FedProx with mu = 0 as FedAvg, and a two-round
simulation whose int8 run passes the bit-exact host check."""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from tinyseek.config import load
from tinyseek.data.intents import TEMPLATE_TABLE
from tinyseek.distill.train import make_spec
from tinyseek.pipeline import Run
from tinyseek.student.tinylstm import TinyLSTM

from tinyseek.federated.apps import client_data, make_strategy, train_client
from tinyseek.federated.local import LocalSettings
from tinyseek.federated.run import Federation, ota_package_size, simulate
from tinyseek.federated.shards import ShardError, non_iid_shards

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, Metadata, RecordDict  # after tinyseek's (telemetry off)

TINY = {"task.samples_per_intent": 12, "student.hidden": 8, "student.embed_dim": 8, "student.vocab_size": 64,
        "quant.calibration_samples": 64}


def tiny_cfg(tmp_path, run="fed"):
    return load(None, {**TINY, "run": run, "models_dir": str(tmp_path / "models"), "codegen.out_dir": str(tmp_path / "lib")})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny task's run, a seeded start model and the plan every client gets (3 clients)."""
    cfg = tiny_cfg(tmp_path_factory.mktemp("fed"))
    run = Run(cfg, log=lambda _: None)
    torch.manual_seed(0)
    spec = make_spec(run.dataset, cfg)
    fed = Federation(cfg=cfg, clients=3, rounds=2, local=LocalSettings(epochs=1, batch_size=16))
    return run, TinyLSTM(spec), spec, fed, fed.plan_json(spec, None)


def _round(plan: str, model: TinyLSTM, clients: int, server_round: int = 1, **config):
    conf = ConfigRecord({"plan": plan, "server-round": server_round, **config})
    return [train_client(ArrayRecord(model.state_dict()), conf, k) for k in range(clients)]


def _replies(results):
    """The clients' results as the reply messages the strategy gets from a grid."""
    return [Message(RecordDict({"arrays": arrays, "metrics": metrics}),
                    metadata=Metadata(run_id=1, message_id=f"r{k}", src_node_id=k + 1, dst_node_id=0,
                                      reply_to_message_id=f"q{k}", group_id="1", created_at=0.0, ttl=60.0,
                                      message_type=MessageType.TRAIN))
            for k, (arrays, metrics) in enumerate(results)]


def _weighted_mean(states: list[dict], counts: list[int]) -> dict:
    return {k: np.average(np.stack([s[k].astype(np.float64) for s in states]), axis=0, weights=counts)
            for k in states[0]}


def _numpy(arrays: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in arrays.to_torch_state_dict().items()}


def test_shards_are_disjoint_cover_the_data_and_are_non_iid(tiny):
    run = tiny[0]
    ds = run.dataset
    langs = np.array([TEMPLATE_TABLE[g][0] for g in ds.train.groups])
    for clients in (2, 3, 8):
        shards = non_iid_shards(ds, clients, overlap=2, seed=0)
        everything = np.concatenate(shards)
        assert len(everything) == len(set(everything.tolist())) == len(ds.train.y)  # disjoint
        assert set(everything.tolist()) == set(range(len(ds.train.y)))  # and cover
        for s in shards:
            assert len(set(langs[s])) == 1  # each client speaks one language
        if clients == 8:  # 4 clients per language, each (language, intent) cell on 2 of them
            assert all(len(np.unique(ds.train.y[s])) < len(ds.labels) for s in shards)
    with pytest.raises(ShardError, match="languages"):
        non_iid_shards(ds, 1)


def test_fedavg_is_the_sample_weighted_mean_of_the_clients(tiny):
    run, model, _, fed, plan = tiny
    results = _round(plan, model, 3)
    counts = [int(m["num-examples"]) for _, m in results]
    assert counts == [len(s) for s in non_iid_shards(run.dataset, 3, fed.overlap, fed.seed)]
    assert len(set(counts)) > 1  # unequal shards: the weighting matters
    states = [_numpy(a) for a, _ in results]
    arrays, _ = make_strategy("fedavg", 3, 0.0).aggregate_train(1, _replies(results))
    got = {k: v.numpy() for k, v in arrays.items()}
    want = _weighted_mean(states, counts)
    unweighted = _weighted_mean(states, [1, 1, 1])
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=2e-7, err_msg=k)
    assert any(not np.allclose(want[k], unweighted[k], rtol=1e-4, atol=1e-5) for k in want)


def test_fedprox_with_mu_zero_is_fedavg_and_mu_pulls_towards_the_global_model(tiny):
    _, model, _, _, plan = tiny
    avg = _round(plan, model, 3)
    prox0 = _round(plan, model, 3, **{"proximal-mu": 0.0})
    a = make_strategy("fedavg", 3, 0.0).aggregate_train(1, _replies(avg))[0]
    p = make_strategy("fedprox", 3, 0.0).aggregate_train(1, _replies(prox0))[0]
    for k in a:
        assert np.array_equal(a[k].numpy(), p[k].numpy()), k  # bit for bit
    start = {k: v.numpy() for k, v in model.state_dict().items()}
    strong = _round(plan, model, 1, **{"proximal-mu": 10.0})[0][0]
    dist = lambda arrays: sum(float(np.sum((v - start[k]) ** 2)) for k, v in _numpy(arrays).items())  # noqa: E731
    assert dist(strong) < dist(avg[0][0])


def test_clients_read_the_teachers_logits_of_their_shard(tiny, tmp_path):
    run, model, _, fed, _ = tiny
    logits = np.random.default_rng(0).normal(size=(len(run.dataset.train.y), len(run.dataset.labels))).astype(np.float32)
    cache = tmp_path / "knowledge.safetensors"
    save_file({"train.logits": logits}, str(cache))
    plan = json.loads(fed.plan_json(model.spec, cache))
    data = client_data(json.dumps(plan, sort_keys=True), 1)
    shard = non_iid_shards(run.dataset, 3, fed.overlap, fed.seed)[1]
    assert np.array_equal(data.teacher_logits.numpy(), logits[shard])
    soft = _round(json.dumps(plan, sort_keys=True), model, 2)[1][0]
    hard = _round(fed.plan_json(model.spec, None), model, 2)[1][0]
    assert any(not np.array_equal(v, _numpy(hard)[k]) for k, v in _numpy(soft).items())


def test_two_simulated_rounds_write_int8_runs_that_pass_the_bit_exact_check(tmp_path):
    cfg = tiny_cfg(tmp_path)
    calls = []

    def package_size(prev, new):
        """Recorded for the test, then the default measure (the over-the-air package)."""
        calls.append((prev.name, new.name))
        return ota_package_size(prev, new)

    fed = Federation(cfg=cfg, clients=3, rounds=2, local=LocalSettings(epochs=1))
    report = simulate(fed, package_size)
    run_dir = cfg.run_dir
    assert calls == [("round-00", "round-01"), ("round-01", "round-02")]
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    for row in report["rounds"][1:]:  # a package, or the reason only a new firmware can carry the round
        assert (row["package_bytes"] or 0) > 0 or "firmware" in row["package_error"]
    assert report["verify"]["bitexact"] and report["verify"]["samples"] == len(Run(cfg).dataset.test.y)
    assert json.loads((run_dir / "federated.json").read_text())["final"]["test_int8"] == report["final"]["test_int8"]
    assert "| 2 |" in (run_dir / "federated.md").read_text()
    assert [c["partition-id"] for c in sorted(report["rounds"][1]["clients"], key=lambda c: c["partition-id"])] == [0, 1, 2]
    # Round 1's global model is the weighted mean of the clients' training from round 0's,
    # recomputed here outside the simulation.
    start = load_file(str(run_dir / "federated" / "round-00" / "student" / "student.safetensors"))
    model = TinyLSTM(make_spec(Run(cfg).dataset, cfg))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in start.items()})
    results = _round(fed.plan_json(model.spec, None), model, 3)
    want = _weighted_mean([_numpy(a) for a, _ in results], [int(m["num-examples"]) for _, m in results])
    got = load_file(str(run_dir / "federated" / "round-01" / "student" / "student.safetensors"))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=2e-7, err_msg=k)
    # The last round is the run's model; the pipeline's verify stage accepts it.
    last = load_file(str(run_dir / "federated" / "round-02" / "int8" / "params.safetensors"))
    now = load_file(str(run_dir / "int8" / "params.safetensors"))
    assert all(np.array_equal(last[k], now[k]) for k in last)


def test_flower_run_config_gives_the_cli_settings(tmp_path):
    fed = Federation.from_run_config({"run": "fleet", "models-dir": str(tmp_path), "config": "", "clients": 4,
                                      "rounds": 3, "strategy": "fedprox", "mu": 0.1, "init": "scratch", "overlap": 1,
                                      "local-epochs": 1, "lr": 0.01, "seed": 2})
    assert fed.cfg.run_dir == tmp_path / "fleet"
    assert (fed.clients, fed.rounds, fed.strategy, fed.mu, fed.overlap, fed.seed) == (4, 3, "fedprox", 0.1, 1, 2)
    assert (fed.local.epochs, fed.local.lr) == (1, 0.01)
    with pytest.raises(ValueError, match="strategy"):
        Federation(cfg=fed.cfg, strategy="fedsgd").check(Run(fed.cfg, log=lambda _: None))
