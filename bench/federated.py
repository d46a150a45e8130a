"""Federated averaging on the default task (docs/federated.md): accuracy per round against
centralised training on the same data with the same epochs, and the package size per round;
written to bench/results/federated.json and the section in bench/RESULTS.md.

    OMP_NUM_THREADS=1 nice .venv/bin/python bench/federated.py --knowledge models/intents/knowledge.safetensors

Variants (8 clients, non-IID by language and intent, overlap 2; the default task and student;
every variant names its local settings, so the table does not move with the defaults):
  fedavg_lr3e-3_b64   FedAvg from a new student, 10 rounds x 2 local epochs, lr 0.003, batch 64
                      (distill's lr and batch: the first try)
  fedavg_lr2e-2_b16   20 rounds x 2 local epochs, lr 0.02, batch 16
  fedprox_lr2e-2_b16  fedavg_lr2e-2_b16 with FedProx, mu 0.01
  update              FedAvg from the committed default's float student (models/intents), 3 rounds
                      x 1 local epoch, lr 0.001, batch 16: what a round changes in the deployed
                      model, and its package size
The federated settings are chosen on validation (the last round's int8 accuracy); the goal is
within 2 points of centralised training (same start, loss, settings and total epochs).
Each variant runs in Flower's simulation engine (Ray, one CPU: the clients train one after
another on one thread); its run folder is build/federated/<variant>/. --knowledge gives the
clients the teacher's soft labels (the default run's knowledge cache, made by `tinyseek build`
or `make demo`); without it they train on hard labels.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from tinyseek.config import load
from tinyseek.federated.local import LocalSettings
from tinyseek.federated.run import Federation, simulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fedavg_lr3e-3_b64": dict(strategy="fedavg", rounds=10, init="scratch", local=LocalSettings(epochs=2, lr=3e-3, batch_size=64)),
    "fedavg_lr2e-2_b16": dict(strategy="fedavg", rounds=20, init="scratch", local=LocalSettings(epochs=2, lr=2e-2, batch_size=16)),
    "fedprox_lr2e-2_b16": dict(strategy="fedprox", mu=0.01, rounds=20, init="scratch",
                               local=LocalSettings(epochs=2, lr=2e-2, batch_size=16)),
    "update": dict(strategy="fedavg", rounds=3, init="intents", local=LocalSettings(epochs=1, lr=1e-3, batch_size=16)),
}


def run_variant(name: str, clients: int, knowledge: Path | None, models_dir: Path) -> dict:
    cfg = load(None, {"run": name, "models_dir": str(models_dir), "codegen.out_dir": str(models_dir / name / "lib"),
                      "codegen.name": "federated"})
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if knowledge:
        shutil.copyfile(knowledge, cfg.run_dir / "knowledge.safetensors")
    settings = dict(VARIANTS[name])
    if settings["init"] != "scratch":  # the start model is read from the committed run folder
        shutil.copytree(ROOT / "models" / settings["init"] / "student", models_dir / settings["init"] / "student",
                        dirs_exist_ok=True)
    t0 = time.monotonic()
    report = simulate(Federation(cfg=cfg, clients=clients, **settings))
    report["wall_seconds"] = round(time.monotonic() - t0, 1)
    return report


def _package(row: dict) -> str:
    """A round's package bytes: the over-the-air package where measured (zlib estimate in
    parentheses), 'firmware' where only a new firmware can carry the round."""
    zlib = "new firmware" if row["package_bytes"] is None else f"{row['package_bytes']:,}"
    if "ota_package_bytes" not in row:
        return zlib
    ota = row["ota_package_bytes"]
    return ("firmware" if ota is None else f"{ota:,}") + f" ({zlib})"


def section(results: dict) -> str:
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    clients = next(iter(results["variants"].values()))["shards"]
    langs = sorted({lang for c in clients for lang in c["languages"]})
    classes = sorted({len(c["classes"]) for c in clients})
    shards = (", ".join(f"{sum(lang in c['languages'] for c in clients)} {lang}" for lang in langs)
              + f"; {' or '.join(map(str, classes))} intents each, {min(c['samples'] for c in clients)}-"
              f"{max(c['samples'] for c in clients)} samples")
    out = ["## Federated averaging (" + " and ".join(f"`{c}`" for c in results["commands"]) + ")", "",
           f"{results['clients']} clients in Flower's simulation engine (flwr {results['flwr']}, Ray, one CPU), "
           f"non-IID: each client speaks one language ({shards}; each (language, intent) cell of the training "
           "split shared by 2 clients). Centralised: the same "
           "start, loss, optimizer and total epochs on the whole training split. Validation (1080 samples, "
           "templates held out) per round; the test split (1800) read once per variant, at the end. int8 = the "
           "quantized global model through the integer oracle; the last round's C is bit-exact on the host in "
           f"every row. Targets: {results['targets']}. Package bytes: {results['package_size_measure']} "
           + ("Where two figures stand, the first is the over-the-air delta package of `tinyseek update make` "
              "measured afterwards on the same round folders (`python bench/federated.py --repackage`), the "
              "zlib estimate in parentheses; 'firmware': the rounds need different generated code (another "
              "cell-state precision or requantization mode), so no package can carry the round. "
              if any("ota_package_bytes" in row for r in results["variants"].values() for row in r["rounds"]) else "")
           + results["machine"], "",
           "| variant | rounds x local epochs | validation float per round (0 = start) | centralised float at the same epochs | "
           "package bytes per round | final val. float / int8 | centralised val. float / int8 | test float / int8 | "
           "centralised test float / int8 | gap, test int8 (points) | minutes |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["variants"].items():
        s, f, c = r["settings"], r["final"], r["centralised"]
        curve = " / ".join(f"{100 * row['val_float']:.1f}" for row in r["rounds"])
        base = " / ".join(f"{100 * row['val_float']:.1f}" for row in c["curve"])
        pkg = " / ".join(_package(row) for row in r["rounds"][1:])
        out.append(f"| {name} ({s['strategy']}{', mu ' + str(s['mu']) if s['mu'] is not None else ''}, start: "
                   f"{s['init']}) | {s['rounds']} x {s['local']['epochs']} | {curve} | {base} | {pkg} | "
                   f"{pct(f['val_float'])} / {pct(f['val_int8'])} | {pct(c['val_float'])} / {pct(c['val_int8'])} | "
                   f"{pct(f['test_float'])} / {pct(f['test_int8'])} | {pct(c['test_float'])} / {pct(c['test_int8'])} | "
                   f"{r['gap_points']['test_int8']:.1f} | {r['wall_seconds'] / 60:.1f} |")
    scratch = {n: r for n, r in results["variants"].items() if r["settings"]["init"] == "scratch"}
    if scratch:
        pick = max(scratch, key=lambda n: scratch[n]["final"]["val_int8"])
        base = max(scratch, key=lambda n: scratch[n]["centralised"]["val_int8"])
        f, c = scratch[pick]["final"], scratch[base]["centralised"]
        out += ["", f"Chosen on validation: {pick} (validation int8 {pct(f['val_int8'])}), test int8 {pct(f['test_int8'])}; "
                f"the best centralised on validation ({base}'s settings, validation int8 {pct(c['val_int8'])}): test "
                f"int8 {pct(c['test_int8'])}. Gap {100 * (c['test_int8'] - f['test_int8']):.1f} points on the test "
                f"({100 * (c['val_int8'] - f['val_int8']):.1f} on validation); the goal is 2."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--knowledge", type=Path, help="the default run's knowledge cache (teacher soft labels)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--machine", default="", help="what else ran on the machine meanwhile (for the table's note)")
    ap.add_argument("--no-md", action="store_true", help="write the JSON only")
    ap.add_argument("--repackage", action="store_true",
                    help="add the over-the-air package size of every round (tinyseek update's delta package) to the "
                         "JSON from build/federated/, then write the section")
    ap.add_argument("--md-only", action="store_true", help="write the RESULTS.md section from the JSON, run nothing")
    args = ap.parse_args()
    if args.knowledge and not args.knowledge.is_file():
        sys.exit(f"{args.knowledge} does not exist: build the default run first (`tinyseek build`), or leave "
                 "--knowledge out to train on hard labels")
    import flwr
    out_file = ROOT / "bench" / "results" / "federated.json"
    results = json.loads(out_file.read_text()) if out_file.is_file() else {"variants": {}}
    if args.repackage:  # the rounds' over-the-air package sizes, from the round folders the runs left
        from tinyseek.federated.run import ota_package_size
        for name, r in results["variants"].items():
            rounds = ROOT / "build" / "federated" / name / "federated"
            for row in r["rounds"][1:]:
                try:
                    row["ota_package_bytes"] = ota_package_size(rounds / f"round-{row['round'] - 1:02d}",
                                                                rounds / f"round-{row['round']:02d}")
                except ValueError:  # the two rounds need different firmware
                    row["ota_package_bytes"] = None
        out_file.write_text(json.dumps(results, indent=2) + "\n")
        args.md_only = True
    if args.md_only:
        replace_section("## Federated averaging", section(results))
        return
    command = "OMP_NUM_THREADS=1 nice python bench/federated.py" + " ".join(
        [""] + (["--knowledge", str(args.knowledge)] if args.knowledge else []) + ["--variants", *args.variants])
    results["commands"] = [c for c in results.get("commands", []) if c != command] + [command]
    results.update(clients=args.clients, flwr=flwr.__version__, omp_threads=os.environ.get("OMP_NUM_THREADS"),
                   machine=args.machine or results.get("machine", ""))
    for name in args.variants:
        r = run_variant(name, args.clients, args.knowledge, ROOT / "build" / "federated")
        results["variants"][name] = r
        results.update(targets=r["settings"]["targets"], package_size_measure=r["package_size_measure"])
        out_file.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: test int8 {r['final']['test_int8']:.4f}, centralised {r['centralised']['test_int8']:.4f}, "
              f"gap {r['gap_points']['test_int8']:.1f} points, {r['wall_seconds'] / 60:.1f} min", flush=True)
    if not args.no_md:
        replace_section("## Federated averaging", section(results))


if __name__ == "__main__":
    main()
