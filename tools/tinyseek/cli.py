"""`tinyseek`: one entry point, one subcommand per stage, `build` for all of them."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, load
from .pipeline import STAGES, Run

_STAGE_HELP = {
    "teacher": "adapt the teacher to the task and extract its knowledge to the cache",
    "distill": "train the TinyLSTM student from the knowledge cache",
    "quantize": "quantize the float student to the int8 model",
    "codegen": "render the int8 model as C into firmware/lib/<name>/",
    "wakeword": "audio tasks with wake.keyword: train the wake word, choose its threshold, render it into "
                "firmware/lib/<name>_wake/",
    "verify": "measure accuracy and check the generated C bit-exactly against the integer reference",
    "report": "write report.json, report.md and the confusion-matrix plot",
}


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. student.hidden=48), got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value.strip())
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="TOML config file (default: the built-in intents task)")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set distill.epochs=10 (repeatable)")
    p.add_argument("--force", action="store_true", help="run even if the inputs did not change")


def _overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace files in the library folder that lack the generated stamp (your own files)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyseek", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tinyseek {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="run every stage, skipping those whose inputs did not change")
    _common(p)
    p.add_argument("--from", dest="from_run", metavar="RUN",
                   help="start a new run from RUN's artifacts (e.g. the committed default, intents): stages whose "
                        "inputs come out the same reuse them, and RUN itself is left untouched")
    _overwrite(p)
    for name in STAGES:
        p = sub.add_parser(name, help=_STAGE_HELP[name])
        _common(p)
        if name == "codegen":
            _overwrite(p)
        if name == "verify":
            p.add_argument("--target", default="host", choices=["host"],
                           help="where the generated C runs (host: gcc on this machine)")
    p = sub.add_parser("bench", help="run the test split on a board (QEMU or a serial port), bit-exact check, device report")
    _common(p)
    p.add_argument("--env", default="qemu_m4", help="platformio.ini environment (default qemu_m4: emulated Cortex-M4)")
    p.add_argument("--port", help="serial port of a real board, e.g. /dev/ttyUSB0 or socket://HOST:PORT")
    p.add_argument("--limit", type=int, default=0, help="send only the first N test samples (0: all)")
    p = sub.add_parser("arduino", help="the run's int8 model as an Arduino IDE library (library.properties, src/, "
                                       "examples/classify) -> OUT/<name>/")
    _common(p)
    p.add_argument("--out", default="build/arduino", help="folder to write the library folder into (default build/arduino)")
    p = sub.add_parser("flash", help="build the firmware with the run's model and flash a real board (pio run -t upload)")
    _common(p)
    p.add_argument("--env", required=True, help="platformio.ini environment of the board, e.g. nucleo_f446re, esp32dev")
    p.add_argument("--port", help="upload port (default: PlatformIO's auto-detection)")
    p = sub.add_parser("edge", help="distill a student for bigger devices, export it to ONNX and check it in "
                                    "onnxruntime -> models/<run>/edge/<student>/")
    _common(p)  # --force is accepted; the student is always trained anew
    p.add_argument("--student", required=True, choices=["tinybert", "truncated", "tinylstm"],
                   help="tinybert: MobileBERT-style transformer (edge boxes); truncated: the teacher's first "
                        "layers (high-end phones); tinylstm: the run's float TinyLSTM (with --runtime/--quantize)")
    p.add_argument("--layers", type=int, help="truncated: decoder layers kept (default: edge.truncated_layers)")
    p.add_argument("--runtime", action="append", choices=["onnxruntime", "mnn", "tvm", "coreml", "all"],
                   help="convert the trained student for this on-device framework and run the test split in it "
                        "(repeatable; default with --quantize: all) -> models/<run>/edge/<student>/frameworks/; "
                        "reuses the trained student unless --force")
    p.add_argument("--quantize", action="append", choices=["float", "int8", "int4", "all"],
                   help="float, int8 (dynamic) and/or int4 (4-bit weights, GPTQ or RTN chosen on validation) "
                        "(repeatable; default with --runtime: all)")
    p = sub.add_parser("export", help="export the TinyLSTM student for another runtime and check it in that runtime's "
                                      "interpreters -> models/<run>/<format>/")
    _common(p)  # --force is accepted but changes nothing: the export always runs anew
    p.add_argument("--format", required=True, choices=["tflite", "onnx"],
                   help="tflite: float32 and int8 .tflite, checked in TFLite and TFLite Micro, plus the int8 model as "
                        "a C array for TFLM firmware; onnx: float32 and QDQ int8 ONNX, checked in onnxruntime")
    p.add_argument("--out", help="output folder (default: models/<run>/<format>)")
    p = sub.add_parser("robustness", help="accuracy of teacher, float and int8 student on noisy copies of the test "
                                          "split -> robustness.json/.md")
    _common(p)  # --force is accepted but changes nothing: robustness always measures anew
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="the split to corrupt: test (the report) or val (to choose settings on; "
                        "-> robustness_val.json/.md)")
    p = sub.add_parser("search", help="the smallest student within a board's flash, RAM and latency budget that keeps "
                                      "a share of the teacher's accuracy -> models/<run>/search/")
    _common(p)  # --force retrains candidates already scored
    p.add_argument("--board", help="board profile whose clock, flash and RAM apply (default: search.board)")
    p.add_argument("--latency-ms", type=float, help="worst-case latency budget, ms (default: search.latency_ms)")
    p.add_argument("--flash-kb", type=float, help="the model's flash budget, KB (default: search.flash_kb)")
    p.add_argument("--ram-kb", type=float, help="the model's RAM budget, KB (default: search.ram_kb)")
    p.add_argument("--target", type=float, help="int8 / teacher validation accuracy to reach (default: search.target)")
    p = sub.add_parser("update", help="model updates over the air: device keys, signed delta packages, pushing them "
                                      "to a board (docs/updates.md)")
    act = p.add_subparsers(dest="action", required=True)
    q = act.add_parser("key", help="a new random 32-byte device key")
    q.add_argument("--out", required=True, help="key file to write (it is not overwritten)")
    q = act.add_parser("make", help="the signed package that turns a device running RUN_A into one running RUN_B")
    q.add_argument("--from", dest="from_run", required=True, metavar="RUN_A", help="run name (models/RUN_A) or folder")
    q.add_argument("--to", dest="to_run", required=True, metavar="RUN_B", help="run name (models/RUN_B) or folder")
    q.add_argument("--out", required=True, help="package file to write")
    q.add_argument("--key", help="device key file (default build/update/device.key, made when missing)")
    q.add_argument("--version", type=int, help="anti-rollback version, above the device's (default: Unix time)")
    which = q.add_mutually_exclusive_group()
    which.add_argument("--kernel", choices=["dsp", "c", "mve", "v6m", "rv32"],
                       help="the firmware's kernel variant (default dsp; qemu_m55_ota runs mve, qemu_rv32_ota rv32, "
                            "qemu_m0_ota v6m)")
    which.add_argument("--env", help="the update-enabled environment the package is for: its kernel variant")
    q.add_argument("--full", action="store_true", help="the whole image instead of a delta")
    q = act.add_parser("push", help="send a package to a board, then run the test split there, bit-exact check")
    _common(q)
    q.add_argument("--env", default="qemu_m4_ota", help="platformio.ini environment (default qemu_m4_ota)")
    q.add_argument("--port", help="serial port of a real board")
    q.add_argument("--package", required=True, help="package file (tinyseek update make)")
    q.add_argument("--to", dest="to_run", required=True, metavar="RUN_B", help="the run the package carries")
    q.add_argument("--from", dest="from_run", default="intents", metavar="RUN_A",
                   help="emulated boards: the model the firmware is built with (default intents)")
    q.add_argument("--key", help="emulated boards: key a new region file is provisioned with")
    q.add_argument("--limit", type=int, default=0, help="send only the first N test samples (0: all)")
    p = sub.add_parser("federate", help="federated averaging of the student over non-IID clients (Flower simulation): "
                                        "accuracy per round against centralised training, package size per round "
                                        "-> models/<run>/federated.json/.md")
    _common(p)  # --force is accepted but changes nothing: the federation always runs anew
    p.add_argument("--clients", type=int, default=8, help="number of clients (default 8)")
    p.add_argument("--rounds", type=int, default=20, help="federated rounds (default 20)")
    p.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox"],
                   help="server strategy; fedprox adds a proximal term to the clients' loss (default fedavg)")
    p.add_argument("--mu", type=float, default=0.01, help="FedProx's proximal weight (default 0.01)")
    p.add_argument("--local-epochs", type=int, default=2, help="epochs each client trains per round (default 2)")
    p.add_argument("--lr", type=float, default=2e-2, help="the clients' learning rate (default 0.02)")
    p.add_argument("--init", default="scratch",
                   help="scratch (a new student) or a run folder whose float student starts the federation, e.g. "
                        "intents (default scratch)")
    p.add_argument("--overlap", type=int, default=2,
                   help="clients that share each (language, intent) cell of the training data (default 2)")
    return parser


def _update(args) -> int:
    from .update import commands
    if args.action == "key":
        print(f"device key written to {commands.make_key(args.out)}")
    elif args.action == "make":
        r = commands.make(args.from_run, args.to_run, args.out, key=args.key, version=args.version,
                          kernel=commands.kernel_of(args.env) if args.env else args.kernel or "dsp", full=args.full)
        print(f"{r['package']}: {r['bytes']:,} bytes, {'full' if r['full'] else 'delta'} {r['from']} -> {r['to']}, "
              f"version {r['version']}, kernel {r['kernel']}")
    else:
        cfg = load(args.config, {**parse_overrides(args.set), "run": args.to_run})
        r = commands.push(args.env, args.package, Run(cfg), key=args.key, from_run=args.from_run, port=args.port,
                          limit=args.limit)
        print(f"{args.env}: {r['before']['hash']} (slot {r['before']['slot']}) -> {r['after']['hash']} (slot "
              f"{r['after']['slot']}, version {r['after']['version']}); test split on the device: {r['samples']} "
              f"samples, bit-exact {r['bitexact']} ({r['mismatches']} mismatches), accuracy {r['accuracy']:.4f}")
        return 0 if r["bitexact"] else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    run = None
    try:
        if args.command == "update":
            return _update(args)
        cfg = load(args.config, parse_overrides(args.set))
        run = Run(cfg)
        run.overwrite = getattr(args, "overwrite", False)
        if args.command == "bench":
            from .harness.device import run_on_device
            run_on_device(run, args.env, args.port, args.limit)
            run.stage("report", force=True)
            print((run.dir / "report.md").read_text())
        elif args.command == "arduino":
            from .codegen.arduino import render_arduino
            from .quant.model import QuantModel
            if not (run.int8_dir / "model.json").is_file():
                raise FileNotFoundError(f"no int8 model in {run.int8_dir}: run `tinyseek quantize` (or `tinyseek build`) first")
            model = QuantModel.load(run.int8_dir)
            files = render_arduino(model, args.out)
            print(f"{len(files)} files in {Path(args.out) / model.name}: copy it into your Arduino libraries folder")
        elif args.command == "flash":
            from .harness.bench import build_firmware
            from .harness.boards import load_profile
            if load_profile(args.env).emulated:
                raise ValueError(f"{args.env} is an emulated board: `tinyseek bench --env {args.env}` builds it and "
                                 f"starts QEMU (or `pio run -e {args.env} -t upload` to start it by hand)")
            elf = build_firmware(args.env, run.lib_dir, upload_port=args.port or "auto")
            print(f"flashed {elf} to {args.env}")
        elif args.command == "robustness":
            from .harness.robustness import evaluate_robustness
            r = run.cfg.robustness
            evaluate_robustness(run, r.kinds, r.seed, r.max_drop_points, split=args.split)
            print((run.dir / ("robustness.md" if args.split == "test" else "robustness_val.md")).read_text())
        elif args.command == "search":
            from .distill.search import search_run
            flags = {"board": args.board, "latency_ms": args.latency_ms, "flash_kb": args.flash_kb,
                     "ram_kb": args.ram_kb, "target": args.target}
            sets = {**parse_overrides(args.set), **{f"search.{k}": v for k, v in flags.items() if v is not None}}
            result = search_run(Run(load(args.config, sets)), force=args.force)
            print((result.folder / "search.md").read_text())
            if result.chosen is None:
                return 1
        elif args.command == "edge" and (args.runtime or args.quantize):
            _edge_frameworks(run, args)
        elif args.command == "edge":
            from .distill.edge import build_edge
            if args.student == "tinylstm":
                raise ValueError("TinyLSTM is trained by `tinyseek build` (or `tinyseek distill`); "
                                 "`tinyseek edge --student tinylstm` takes --runtime and/or --quantize")
            run.stage("teacher")
            out = build_edge(run, args.student, args.layers)
            m = json.loads((out / "metrics.json").read_text())
            print(f"{args.student}: accuracy {m['accuracy']:.4f} (teacher {m['teacher_accuracy']:.4f}), "
                  f"{m['params']:,} parameters, {m['onnx_bytes']:,} bytes ONNX, onnxruntime "
                  f"{m['latency']['median_ms']:.3f} ms per sample -> {out}")
        elif args.command == "export":
            from .export import export_run
            out = export_run(run, args.format, args.out)
            m = json.loads((out / "metrics.json").read_text())
            q = m["int8"]
            engine, what = ("tflm", f"TFLite Micro (arena {q['tflm_arena_bytes']:,} B)") if args.format == "tflite" \
                else ("onnxruntime", "onnxruntime")
            print(f"{out}: int8 {args.format} {q['bytes']:,} B; in {what}: accuracy {q[engine]['accuracy']:.4f} "
                  f"(tinyseek int8 {m['tinyseek_int8_accuracy']:.4f}), agreement with tinyseek int8 "
                  f"{q[engine]['agreement_tinyseek_int8']:.4f}")
        elif args.command == "federate":
            from .federated.local import LocalSettings
            from .federated.run import Federation, simulate
            fed = Federation(cfg=cfg, clients=args.clients, rounds=args.rounds, strategy=args.strategy, mu=args.mu,
                             init=args.init, overlap=args.overlap,
                             local=LocalSettings(epochs=args.local_epochs, lr=args.lr))
            simulate(fed)
            print((run.dir / "federated.md").read_text())
        elif args.command == "build":
            if args.from_run:
                run.seed_from(Path(cfg.models_dir) / args.from_run)
            run.build(force=args.force)
            print((run.dir / "report.md").read_text())
        else:
            run.stage(args.command, force=args.force)
            if args.command == "report":
                print((run.dir / "report.md").read_text())
    except (ValueError, FileNotFoundError) as e:  # every stage's own errors subclass ValueError
        print(f"tinyseek {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args.command, run), file=sys.stderr)
        return 130
    return 0


def _edge_frameworks(run: Run, args) -> None:
    """`tinyseek edge --runtime/--quantize`: the trained student (trained first when missing or
    with --force) on each framework; one line per runtime and quantization."""
    from .distill.edge import build_edge
    from .distill.edge_frameworks import QUANTS, RUNTIMES, evaluate
    runtimes = RUNTIMES if not args.runtime or "all" in args.runtime else tuple(dict.fromkeys(args.runtime))
    quants = QUANTS if not args.quantize or "all" in args.quantize else tuple(dict.fromkeys(args.quantize))
    if args.student == "tinylstm":
        for name in ("teacher", "distill"):
            run.stage(name)
    elif args.force or not (run.dir / "edge" / args.student / "student.safetensors").is_file():
        run.stage("teacher")
        build_edge(run, args.student, args.layers)
    elif args.layers is not None:
        raise ValueError("--layers retrains the truncated student: add --force")
    result = json.loads(evaluate(run, args.student, runtimes, quants, progress=False,
                                 tolerance=run.cfg.edge.quant_tolerance).read_text())
    print(f"{args.student} on the test split ({result['test_samples']} samples, inputs padded to "
          f"{result['length']} tokens), against onnxruntime float:")
    for c in result["cells"]:
        head = f"  {c['runtime']:<12} {c['quant']:<6}"
        if "error" in c:
            print(f"{head} error: {c['error']}")
        elif "accuracy" in c:
            print(f"{head} accuracy {c['accuracy']:.4f}, agreement {c['agreement']:.2%}, max logit diff "
                  f"{c['max_abs_diff']:.2g}, {c['bytes']:,} bytes, {c['latency']['median_ms']:.3f} ms per sample")
        else:
            print(f"{head} {c['bytes']:,} bytes, {c['run']}")
    print(f"-> {run.dir / 'edge' / args.student / 'frameworks'}")


def _interrupted(command: str, run: Run | None) -> str:
    """One line: what was interrupted, what is kept, how to resume."""
    if run is None:
        return f"tinyseek {command}: interrupted before it started; nothing was written"
    where = f" in the {run.current} stage" if run.current else ""
    return (f"tinyseek {command}: interrupted{where}; kept: every finished stage's files in {run.dir}"
            + (" and the teacher cache's whole shards" if run.current == "teacher" else "")
            + f"; run the same command again to resume (finished stages are skipped)")


if __name__ == "__main__":
    sys.exit(main())
