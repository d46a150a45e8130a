"""`tinyseek federate`: federated averaging of the float student over non-IID clients, each
round's global model quantized to int8 and measured, against centralised training on the
same data with the same epochs.

Writes into the run folder (models/<run>/):
  federated/round-RR/{student,int8}/  the global model after round RR (00: the start), each a
                                      run folder's student and int8 model
  student/, int8/                     the last round's global model, for codegen/verify/bench
  centralised/{student,int8}/         the baseline
  federated.json, federated.md        the report
The last round's model is rendered as C (firmware/lib/<run>/) and checked bit-exactly against
the integer reference on the test split, as `tinyseek verify` does.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import Config, load
from ..pipeline import Run
from ..student.tinylstm import StudentSpec, TinyLSTM, load_student, save_student, split_inputs
from .local import LocalData, LocalSettings, local_train
from .shards import describe, non_iid_shards

PackageSize = Callable[[Path, Path], int]


def ota_package_size(prev_run: Path, new_run: Path) -> int:
    """Bytes of the signed delta package `tinyseek update make` writes (tools/tinyseek/update,
    the DSP kernel's slot image) that turns a device running the previous round's int8 model
    into one running this round's. Raises UpdateError when the two need different generated
    code (e.g. another cell-state precision): no package can carry that, only a new firmware."""
    from ..update.package import KEY_BYTES, make_package
    # The key and version change the tag's bytes, not the package's length.
    return len(make_package(prev_run, new_run, bytes(KEY_BYTES), version=2))


def int8_delta_zlib_size(prev_run: Path, new_run: Path) -> int:
    """Bytes of zlib level 9 over the byte-wise difference (mod 256) of every array in the two
    int8 models' params.safetensors, in key order: an estimate of what a delta package must
    carry, not the over-the-air package format (pass that format's size as `package_size`)."""
    from safetensors.numpy import load_file
    a, b = load_file(str(prev_run / "int8" / "params.safetensors")), load_file(str(new_run / "int8" / "params.safetensors"))
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape or a[k].dtype != b[k].dtype for k in a):
        raise ValueError(f"{prev_run} and {new_run} hold int8 models of different layouts: no delta between them")
    diff = b"".join((b[k].view(np.uint8) - a[k].view(np.uint8)).tobytes() for k in sorted(a))
    return len(zlib.compress(diff, 9))


@dataclass
class Federation:
    """The settings of one federated run (the CLI's flags; `flwr run`'s run config)."""
    cfg: Config
    clients: int = 8
    rounds: int = 20
    strategy: str = "fedavg"
    mu: float = 0.01  # FedProx only
    init: str = "scratch"  # or a run folder name whose float student starts the federation
    overlap: int = 2  # clients per (language, intent) cell
    local: LocalSettings = field(default_factory=LocalSettings)
    seed: int = 0

    @classmethod
    def from_run_config(cls, rc: dict) -> "Federation":
        """The settings from a Flower run config (keys as the CLI's flags: run, models-dir,
        config, clients, rounds, strategy, mu, init, overlap, local-epochs, lr, seed)."""
        sets = {k: rc[key] for k, key in (("run", "run"), ("models_dir", "models-dir")) if rc.get(key)}
        cfg = load(rc.get("config") or None, sets)
        local = LocalSettings(epochs=int(rc.get("local-epochs", 2)), lr=float(rc.get("lr", LocalSettings.lr)))
        keys = {f.name for f in fields(cls)} - {"cfg", "local"}
        return cls(cfg=cfg, local=local, **{k: type(getattr(cls, k))(rc[k]) for k in keys if k in rc})

    def check(self, run: Run):
        """(shards, knowledge cache or None, (start model, spec)); a ValueError names any setting
        that does not fit."""
        from .apps import STRATEGIES
        if self.clients < 2 or self.rounds < 1 or self.local.epochs < 1:
            raise ValueError(f"federate needs at least 2 clients, 1 round and 1 local epoch (got --clients "
                             f"{self.clients}, --rounds {self.rounds}, --local-epochs {self.local.epochs})")
        if self.strategy not in STRATEGIES or self.mu < 0 or self.local.lr <= 0:
            raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)} (got {self.strategy!r}), --mu >= 0 "
                             f"(got {self.mu}) and --lr > 0 (got {self.local.lr})")
        if run.dataset.kind != "text":
            raise ValueError("federate splits the clients by language and intent: it takes text tasks (the built-in "
                             "intents or JSONL), not sequences")
        shards = non_iid_shards(run.dataset, self.clients, self.overlap, self.seed)
        return shards, _knowledge(run), _initial_model(self, run)

    def plan_json(self, spec: StudentSpec, knowledge: Path | None) -> str:
        """What every client needs, sent with each round's weights."""
        local = {k: v for k, v in asdict(self.local).items() if k != "mu"}
        return json.dumps({"task": asdict(self.cfg.task), "spec": spec.to_json(), "clients": self.clients,
                           "overlap": self.overlap, "seed": self.seed, "local": local,
                           "knowledge": str(knowledge.resolve()) if knowledge else ""}, sort_keys=True)


def _initial_model(fed: Federation, run: Run) -> tuple[TinyLSTM, StudentSpec]:
    from ..distill.train import make_spec
    if fed.init == "scratch":
        torch.manual_seed(fed.seed)
        spec = make_spec(run.dataset, fed.cfg)
        return TinyLSTM(spec), spec
    folder = Path(fed.cfg.models_dir) / fed.init / "student"
    if not folder.is_dir():
        raise FileNotFoundError(f"--init {fed.init}: {folder} holds no float student; name a run folder in "
                                f"{fed.cfg.models_dir}/ with a student (e.g. intents), or --init scratch")
    model, spec = load_student(folder)
    if spec.labels != list(run.dataset.labels):
        raise ValueError(f"--init {fed.init}: its student's classes {spec.labels} are not the task's {run.dataset.labels}")
    return model, spec


def _knowledge(run: Run) -> Path | None:
    """The run's knowledge cache if it has one whose train logits fit the training split."""
    if not run.knowledge.is_file():
        return None
    from ..distill.train import read_cache
    n = len(read_cache(run.knowledge, "train")[0])
    if n != len(run.dataset.train.y):
        raise ValueError(f"{run.knowledge} holds teacher logits for {n} training samples, the task has "
                         f"{len(run.dataset.train.y)}: re-run `tinyseek teacher` for this run")
    return run.knowledge


class RoundRecorder:
    """Flower's evaluate_fn: after every round, the global model is saved as a run folder's
    student, quantized to int8 and measured on validation; `rows` keeps the figures."""

    def __init__(self, run: Run, spec: StudentSpec, package_size: PackageSize):
        self.run, self.spec, self.package_size = run, spec, package_size
        self.rows: list[dict] = []

    def folder(self, server_round: int) -> Path:
        return self.run.dir / "federated" / f"round-{server_round:02d}"

    def __call__(self, server_round: int, arrays):
        from flwr.app import MetricRecord
        model = TinyLSTM(self.spec)
        model.load_state_dict(arrays.to_torch_state_dict())
        row = {"round": server_round, **measure(model, self.spec, self.run, self.folder(server_round))}
        package = ""
        if server_round:
            try:
                row["package_bytes"] = int(self.package_size(self.folder(server_round - 1), self.folder(server_round)))
                package = f", package {row['package_bytes']:,} B"
            except ValueError as e:  # the two rounds need different firmware: no delta package
                row["package_bytes"], row["package_error"] = None, str(e)
                package = ", no package (a new firmware is needed)"
        self.rows.append(row)
        self.run.log(f"[federate] round {server_round}: validation float {row['val_float']:.4f}, int8 "
                     f"{row['val_int8']:.4f}{package}")
        return MetricRecord({k: float(v) for k, v in row.items() if isinstance(v, (int, float))})


def measure(model: TinyLSTM, spec: StudentSpec, run: Run, folder: Path) -> dict:
    """Save `model` as folder/student, quantize it to folder/int8 (the run's model name), and
    return its float and int8 validation accuracy."""
    from ..distill.train import evaluate
    from ..harness.evaluate import labeled_accuracy, oracle_logits
    from ..quant.model import QuantModel
    from ..quant.quantize import quantize_run
    save_student(model, spec, folder / "student")
    quantize_run(run.cfg, folder, run.dataset)
    val = run.dataset.val
    return {"val_float": evaluate(model, spec, val),
            "val_int8": labeled_accuracy(oracle_logits(QuantModel.load(folder / "int8"), val).argmax(1), val.y)}


def test_accuracy(folder: Path, run: Run) -> dict:
    """Float and int8 accuracy on the test split of the model in folder/{student,int8}."""
    from ..harness.evaluate import labeled_accuracy, oracle_logits
    from ..quant.float_model import FloatStudent
    from ..quant.model import QuantModel
    test = run.dataset.test
    return {"test_float": labeled_accuracy(FloatStudent.from_folder(folder / "student").predict(test).argmax(1), test.y),
            "test_int8": labeled_accuracy(oracle_logits(QuantModel.load(folder / "int8"), test).argmax(1), test.y)}


def centralised(fed: Federation, run: Run, model: TinyLSTM, spec: StudentSpec, knowledge: Path | None) -> dict:
    """The baseline: the same start, training and epochs (rounds x local epochs) on the whole
    training split at once; validation measured at every round's worth of epochs."""
    from ..distill.train import evaluate, read_cache
    train = run.dataset.train
    x, lengths = split_inputs(train, spec)
    logits = torch.from_numpy(read_cache(knowledge, "train")[0]) if knowledge else None
    data = LocalData(x, lengths, torch.as_tensor(np.asarray(train.y), dtype=torch.long), logits)
    curve = []

    def on_epoch(epoch: int) -> None:
        if epoch % fed.local.epochs == 0:
            curve.append({"round": epoch // fed.local.epochs, "val_float": evaluate(model, spec, run.dataset.val)})
    local_train(model, data, replace(fed.local, epochs=fed.rounds * fed.local.epochs), fed.seed, on_epoch=on_epoch)
    final = measure(model, spec, run, run.dir / "centralised")
    return {"epochs": fed.rounds * fed.local.epochs, "curve": curve, **final}


def serve(grid, fed: Federation, package_size: PackageSize = ota_package_size) -> dict:
    """The server's whole job on a Flower grid (simulated or real): the rounds, the baseline,
    the test split once, the C check of the last round, the report. Returns the report."""
    from flwr.app import ArrayRecord, ConfigRecord

    from .apps import make_strategy
    t0 = time.monotonic()
    run = Run(fed.cfg)
    shards, knowledge, (model, spec) = fed.check(run)
    if (run.dir / "federated").is_dir():
        shutil.rmtree(run.dir / "federated")  # rounds of an earlier run must not mix with these
    recorder = RoundRecorder(run, spec, package_size)
    strategy = make_strategy(fed.strategy, fed.clients, fed.mu)
    plan = fed.plan_json(spec, knowledge)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=fed.rounds,
                   train_config=ConfigRecord({"plan": plan}), evaluate_fn=recorder)
    t_fed = time.monotonic() - t0
    last = recorder.folder(fed.rounds)
    for name in ("student", "int8"):
        shutil.rmtree(run.dir / name, ignore_errors=True)
        shutil.copytree(last / name, run.dir / name)
    t1 = time.monotonic()  # the federation trained copies: `model` is still the start
    base = centralised(fed, run, model, spec, knowledge)
    t_base = time.monotonic() - t1
    # The test split, once, for the two final models.
    fed_test, base_test = test_accuracy(run.dir, run), test_accuracy(run.dir / "centralised", run)
    base.update(base_test)
    for row in recorder.rows:
        row["clients"] = strategy.clients.get(row["round"], [])
    report = {
        "settings": {"clients": fed.clients, "rounds": fed.rounds, "strategy": fed.strategy,
                     "mu": fed.mu if fed.strategy == "fedprox" else None, "init": fed.init, "overlap": fed.overlap,
                     "seed": fed.seed, "local": asdict(fed.local),
                     "targets": f"teacher soft labels ({knowledge.name}, alpha {fed.local.alpha}, T {fed.local.temperature})"
                                if knowledge else "hard labels (the run has no knowledge cache)"},
        "package_size_measure": " ".join((package_size.__doc__ or package_size.__name__).split("\n\n")[0].split()),
        "shards": describe(run.dataset, shards),
        "rounds": recorder.rows,
        "final": {**recorder.rows[-1], **fed_test},
        "centralised": base,
        "gap_points": {"val_float": 100 * (base["val_float"] - recorder.rows[-1]["val_float"]),
                       "val_int8": 100 * (base["val_int8"] - recorder.rows[-1]["val_int8"]),
                       "test_float": 100 * (base["test_float"] - fed_test["test_float"]),
                       "test_int8": 100 * (base["test_int8"] - fed_test["test_int8"])},
        "verify": verify_c(run),
        "seconds": {"federated": round(t_fed, 1), "centralised": round(t_base, 1)},
    }
    (run.dir / "federated.json").write_text(json.dumps(report, indent=2) + "\n")
    (run.dir / "federated.md").write_text(markdown(report))
    run.log(f"[federate] {run.dir / 'federated.md'}")
    return report


def verify_c(run: Run) -> dict:
    """Render the run's int8 model as C and check it bit-exactly against the integer reference
    on the test split (the verify stage's host check)."""
    from ..codegen.render import render
    from ..codegen.verify import verify_host
    from ..harness.evaluate import int8_inputs
    from ..quant.model import QuantModel
    qm = QuantModel.load(run.int8_dir)
    render(qm, run.lib_dir, overwrite=run.overwrite)
    result = verify_host(qm, run.lib_dir, int8_inputs(qm, run.dataset.test))
    return {"target": "host", "compiler": result.compiler, "samples": result.samples,
            "bitexact": bool(result.bitexact) and result.samples > 0, "mismatches": int(result.mismatches),
            "lib_dir": str(run.lib_dir)}


def _package_cell(row: dict) -> str:
    if "package_bytes" not in row:
        return "-"
    return "new firmware" if row["package_bytes"] is None else f"{row['package_bytes']:,}"


def markdown(r: dict) -> str:
    s, c, f = r["settings"], r["centralised"], r["final"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    curve = {row["round"]: row["val_float"] for row in c["curve"]}
    lines = [
        f"# Federated training: {s['clients']} clients, {s['rounds']} rounds, {s['strategy']}"
        + (f" (mu {s['mu']})" if s["mu"] is not None else ""),
        "",
        f"Start: {s['init']}; {s['local']['epochs']} local epochs per round, lr {s['local']['lr']}; "
        f"targets: {s['targets']}. Clients: non-IID shards by language and intent "
        f"(each (language, intent) cell split between {s['overlap']} clients of that language).",
        "",
        "| round | validation float | validation int8 | centralised float (same epochs) | package bytes |",
        "|---|---|---|---|---|",
    ]
    for row in r["rounds"]:
        lines.append(f"| {row['round']} | {pct(row['val_float'])} | {pct(row['val_int8'])} | "
                     f"{pct(curve.get(row['round']))} | {_package_cell(row)} |")
    g = r["gap_points"]
    lines += [
        "",
        f"Package bytes: {r['package_size_measure']}",
        "",
        "| after the last round | federated | centralised | gap (points) |",
        "|---|---|---|---|",
        f"| validation float | {pct(f['val_float'])} | {pct(c['val_float'])} | {g['val_float']:.1f} |",
        f"| validation int8 | {pct(f['val_int8'])} | {pct(c['val_int8'])} | {g['val_int8']:.1f} |",
        f"| test float | {pct(f['test_float'])} | {pct(c['test_float'])} | {g['test_float']:.1f} |",
        f"| test int8 | {pct(f['test_int8'])} | {pct(c['test_int8'])} | {g['test_int8']:.1f} |",
        "",
        f"Generated C of the last round vs the integer reference ({r['verify']['compiler']}, "
        f"{r['verify']['samples']} test samples): {'bit-exact' if r['verify']['bitexact'] else 'MISMATCH'}.",
        f"Time: federated {r['seconds']['federated']} s, centralised {r['seconds']['centralised']} s.",
        "",
        "| client | samples | languages | classes |",
        "|---|---|---|---|",
    ]
    lines += [f"| {d['client']} | {d['samples']} | {', '.join(d['languages']) or '-'} | {len(d['classes'])} |"
              for d in r["shards"]]
    return "\n".join(lines) + "\n"


def _import_run_simulation():
    """flwr.simulation.run_simulation, imported with TensorFlow hidden: flwr.simulation imports
    TensorFlow when it is installed (make setup installs it for the tflite export), only for a
    GPU memory option tinyseek does not use, and that costs seconds and a screen of log."""
    hide = "tensorflow" not in sys.modules
    if hide:
        sys.modules["tensorflow"] = None  # `import tensorflow` raises ModuleNotFoundError
    try:
        from flwr.simulation import run_simulation
    finally:
        if hide:
            del sys.modules["tensorflow"]  # later imports of TensorFlow in this process work as usual
    return run_simulation


def simulate(fed: Federation, package_size: PackageSize = ota_package_size) -> dict:
    """Run the federation in Flower's simulation engine (Ray): `fed.clients` virtual clients
    on this machine, one at a time on one CPU; returns the report."""
    from flwr.serverapp import ServerApp

    from .apps import client_app
    run_simulation = _import_run_simulation()
    fed.check(Run(fed.cfg, log=lambda _: None))  # bad settings fail here, before Ray starts
    out: dict = {}
    app = ServerApp()

    @app.main()
    def _main(grid, context) -> None:
        out["report"] = serve(grid, fed, package_size)

    # One CPU for Ray: the virtual clients train one after another, each on one thread.
    run_simulation(server_app=app, client_app=client_app, num_supernodes=fed.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0},
                                   "init_args": {"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                                                 "logging_level": "error", "log_to_driver": True}})
    if "report" not in out:
        raise RuntimeError("the Flower simulation ended without a report; its log above says why")
    return out["report"]
