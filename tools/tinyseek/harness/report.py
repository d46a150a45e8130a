"""report.json, report.md and a confusion-matrix plot from a run's measured files.

The report only collects: every number in it was measured by an earlier stage
(metrics.json from the accuracy evaluation, verify.json from the host check, device.json
from a device run) and is copied, never recomputed or rounded in the JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def build_report(run_dir: Path) -> dict:
    metrics = _read(run_dir / "metrics.json")
    verify = _read(run_dir / "verify.json")
    device = _read(run_dir / "device.json")
    if not metrics:
        raise FileNotFoundError(f"{run_dir}/metrics.json is missing: run `tinyseek verify` first")
    report = {
        "model": metrics["model"],
        "task": metrics["task"],
        "teacher": metrics["teacher"],
        "student": metrics["student"],
        "validation": metrics.get("validation", {}),
        "baseline": metrics.get("baseline"),
        "warnings": metrics.get("warnings", []),
        "retention": metrics["retention"],
        "agreement_int8_float": metrics["agreement_int8_float"],
        "agreement_int8_teacher": metrics.get("agreement_int8_teacher"),
    }
    if metrics.get("quantization"):  # low-bit weights or quantization-aware training
        report["quantization"] = metrics["quantization"]
    if verify:
        report["host"] = verify
    if device:
        report["device"] = device
    wake = _read(run_dir / "wakeword" / "wakeword.json")  # the wakeword stage (wake.keyword)
    if wake:
        report["wake"] = wake
    tflite = _read(run_dir / "tflite" / "metrics.json")  # `tinyseek export --format tflite`
    if tflite and tflite.get("model_hash") != metrics["model"]["hash"]:
        # An export of an earlier model (or from before the export recorded the hash): not this model's row.
        report["warnings"] = [*report["warnings"], f"{run_dir / 'tflite'} was exported from another int8 model "
                              f"(hash {tflite.get('model_hash', 'not recorded')}, this one is {metrics['model']['hash']}): "
                              "its TFLite Micro row is left out; run `tinyseek export --format tflite` again"]
    elif tflite:
        q = tflite["int8"]
        report["tflm"] = {"accuracy": q["tflm"]["accuracy"], "agreement_tinyseek_int8": q["tflm"]["agreement_tinyseek_int8"],
                          "arena_bytes": q["tflm_arena_bytes"], "tflite_bytes": q["bytes"],
                          "embedding_table_bytes": tflite["embedding_table_bytes"], "samples": tflite["samples"]}
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _exactness(samples: int, mismatches: int) -> str:
    """A check over no samples is no pass: "bit-exact" needs N >= 1 compared samples."""
    if not samples:
        return "**not measured** (0 samples compared)"
    if mismatches:
        return f"**NOT bit-exact** ({mismatches} of {samples:,} samples differ)"
    return f"**bit-exact** (every logit of all {samples:,} samples matched)"


def _extraction_line(e: dict) -> str:
    """Where the teacher's knowledge was extracted (teacher/extract.py's extraction.json)."""
    engine = "this process" if e["engine"] == "local" else f"Ray ({e.get('cluster', 'local')} cluster)"
    redone = f"; computed again after a worker died: {', '.join(e['shards_redone'])}" if e["shards_redone"] else ""
    return (f"- teacher knowledge extracted on {engine}: {e['workers']} worker(s) x {e['threads_per_worker']} "
            f"thread(s) ({', '.join(e['devices'])}), {e['samples']:,} samples in {e['shards']} shards, "
            f"{e['samples_computed']:,} computed in {e['seconds']:.1f} s{redone}")


def _accuracy_table(report: dict) -> list[str]:
    """Test accuracy, and validation beside it: the tool chose everything on validation, so the
    distance between the columns says how far its choices can be trusted."""
    t, s, v = report["teacher"], report["student"], report.get("validation") or {}
    split_by = report["task"].get("split_by")
    q = report.get("quantization") or {}
    width = q.get("weights", "int8")
    rows = [(f"teacher ({t.get('source', 'teacher')})", t["accuracy"], v.get("teacher_accuracy")),
            ("student, float", s["float_accuracy"], v.get("float_accuracy"))]
    if "post_training" in q:  # quantization-aware training: post-training, then the deployed model
        rows += [(f"student, {width} post-training (integer reference)", q["post_training"]["accuracy"],
                  q["post_training"]["val_accuracy"]),
                 (f"student, {width} quantization-aware, {q['qat_epochs']} epochs (integer reference)",
                  s["int8_accuracy"], v.get("int8_accuracy"))]
    else:
        rows.append((f"student, {width} (integer reference)", s["int8_accuracy"], v.get("int8_accuracy")))
    if "tflm" in report:  # `tinyseek export --format tflite` ran on the test split only
        rows.append((f"student, int8 .tflite in TFLite Micro ({report['tflm']['samples']} samples)",
                     report["tflm"]["accuracy"], None))
    if report.get("baseline"):
        b = report["baseline"]
        rows.append(("same student on the hard labels alone, float (no teacher)", b.get("test_accuracy"),
                     b.get("val_accuracy")))
    if not v.get("samples"):
        return ["| | test accuracy |", "|---|---|", *[f"| {name} | {_pct(test)} |" for name, test, _ in rows]]
    return [f"| | test accuracy | validation ({v['samples']:,} samples, held out by {split_by or 'samples'}) |",
            "|---|---|---|", *[f"| {name} | {_pct(test)} | {_pct(val)} |" for name, test, val in rows]]


def _widths_note(q: dict) -> str:
    """Which arrays the width names, where the model mixes widths."""
    widths = {"LSTM gate matrices": q.get("weights", "int8"), "embedding": q.get("embedding", ""),
              "head": q.get("head", "int8")}
    if set(w for w in widths.values() if w) <= {"int8"}:
        return ""
    return " (" + ", ".join(f"{k} {w}" for k, w in widths.items() if w) + ")"


def _audio_rows(a: dict | None) -> list[str]:
    """An audio model's device rows: it heard the clips' samples (front end on the device)."""
    if not a:
        return []
    mhz = a["clock_hz"] / 1e6
    return [f"| audio in: samples per `stream` chunk | {a['chunk_samples']} |",
            f"| per second of audio (front end + LSTM), share of {mhz:g} MHz | "
            f"{a['per_second_of_audio']:,.0f} {a['unit']}, {100 * a['share_of_clock']:.1f} % |",
            f"| last sample to decision, median (at {mhz:g} MHz) | {a['after_last_sample']['value']:,.0f} {a['unit']} "
            f"({a['after_last_sample']['ms_at_clock']:.2f} ms) |",
            f"| slowest chunk of {a['worst_chunk']['chunk_ms']:g} ms of audio (at {mhz:g} MHz) | "
            f"{a['worst_chunk']['value']:,.0f} {a['unit']} ({a['worst_chunk']['ms_at_clock']:.2f} ms) |"]


def _wake_lines(w: dict) -> list[str]:
    """The wake word beside the command model: detections on the held-out streams."""
    def row(split: str) -> str:
        r = w[split]
        span = f"{r['hours']:.2f} h" if r["hours"] >= 1 else f"{60 * r['hours']:.1f} min"
        return (f"| {split} | {r['detected']} / {r['keywords']} ({_pct(r['detection_rate'])}) | {r['false_accepts']} in "
                f"{span} of other audio ({r['false_accepts_per_hour']:.1f} per hour) |")
    return ["", f"## Wake word \"{w['keyword']}\"", "",
            f"Library `{w['library']}`; a check of the last {w['window']} frames every {w['stride']} frames, "
            f"a wake at {w.get('confirm', 1)} check{'s' if w.get('confirm', 1) > 1 else ''} in a row over threshold "
            f"{w['threshold']} (the lowest that keeps the validation stream to "
            f"{w['false_accepts_per_hour_allowed']:g} false accepts per hour), {w['rest']} frames of rest after a wake. "
            "Streams: the split's clips one after another with keywords of its voices between them; a wake from a "
            "keyword's start to 0.5 s after its end finds it, one up to 1 s after its end is no false accept "
            "(MLPerf Tiny's streaming wake word scoring).", "",
            "| stream | keywords detected | false accepts |", "|---|---|---|", row("val"), row("test"), "",
            f"Host C check of the wake-word library on {w['host_check']['clips']} keyword clips: bit-exact.",
            *([f"Your recordings of the keyword (wake.recordings): {rec['train']} in training, {rec['val']} and "
               f"{rec['test']} among the validation and test keywords."] if any((rec := w.get("recordings") or {}).values())
              else [])]


def _listen_rows(li: dict | None, clock: float) -> list[str]:
    """The wake word and the command model on the device at once (the listener)."""
    if not li:
        return []
    resp = li["response"]
    exact = ("**not measured** (no events)" if not li["events"] else f"**NOT bit-exact** ({li['mismatches']} of "
             f"{li['events']} events differ)" if li["mismatches"] else f"**bit-exact** (all {li['events']} events)")
    return [f"| listener: {li['seconds']:.0f} s of test clips with {li['keywords']} keywords, events vs the reference | "
            f"{exact} |",
            f"| listener: keywords woken on / false wakes / commands then right | {li['keywords_detected']} of "
            f"{li['keywords']} / {li['false_wakes']} / {li['commands_right']} |",
            f"| listener: per second of audio, share of {clock / 1e6:g} MHz | {li['per_second_of_audio']:,.0f} "
            f"{li['unit']}, {100 * li['share_of_clock']:.1f} % |",
            *([f"| listener: response after a command's last sample, slowest | {resp['max']:,.0f} {li['unit']} "
               f"({resp['ms_at_clock']:.2f} ms) |"] if resp else []),
            f"| listener: flash (image, of it the wake model) / static RAM / stack | {li['flash_total']:,} "
            f"({li['flash_wake_model']:,}) / {li['ram_static']:,} / {li['stack_peak']:,} B |"]


def render_markdown(report: dict) -> str:
    s = report["student"]
    width = (report.get("quantization") or {}).get("weights", "int8")
    lines = [
        f"# tinyseek report: {report['model']['name']}",
        "",
        f"Task `{report['task']['name']}` ({report['task']['kind']}), {report['task']['test_samples']} held-out test "
        f"samples, {len(report['task']['labels'])} classes. Model hash `{report['model']['hash']}`.",
        "",
        *_accuracy_table(report),
        "",
        *[f"**WARNING: {w}.**\n" for w in report.get("warnings", [])],
        f"- retention ({width} accuracy / teacher accuracy): {_pct(report['retention'])}",
        f"- {width} and float student agree on {_pct(report['agreement_int8_float'])} of the test samples",
        *([f"- {report['task']['test_samples'] - report['task']['test_labeled']:,} test samples have no label: "
           f"the accuracies count the {report['task']['test_labeled']:,} labeled ones; the int8 student agrees with the "
           f"teacher on {_pct(report['agreement_int8_teacher'])} of all"]
          if report["task"].get("test_labeled", report["task"]["test_samples"]) < report["task"]["test_samples"] else []),
        *([f"- {report['task']['train_unlabeled']:,} training samples have no label: the teacher labelled them "
           "for the student, and the hard-label student leaves them out"] if report["task"].get("train_unlabeled")
          else []),
        f"- student: {s['params']:,} parameters, {s['weight_bytes']:,} bytes of {width} weights and tables"
        + _widths_note(report.get("quantization") or {}),
        *([_extraction_line(report["teacher"]["extraction"])] if "extraction" in report["teacher"] else []),
    ]
    if "tflm" in report:
        m = report["tflm"]
        lines += [f"- TFLite Micro (`tinyseek export --format tflite`, docs/tflite.md): agrees with the int8 student on "
                  f"{_pct(m['agreement_tinyseek_int8'])}; tensor arena {m['arena_bytes']:,} B; int8 .tflite "
                  f"{m['tflite_bytes']:,} B" + (f" plus a {m['embedding_table_bytes']:,} B embedding table"
                                                 if m["embedding_table_bytes"] else "")]
    if "host" in report:
        h = report["host"]
        lines += ["", "## Host C check", "",
                  f"Generated C (`{h['compiler']}`) vs the numpy integer reference on {h['samples']} samples: "
                  + _exactness(h["samples"], h["mismatches"])]
        if "audio" in h:
            a = h["audio"]
            lines += ["", "The same clips as samples through the library's front end (`feed_audio` in chunks of 1 to "
                      "2,048 samples, and `infer_audio`): " + _exactness(a["samples"], a["mismatches"])]
    if "wake" in report:
        lines += _wake_lines(report["wake"])
    if "device" in report:
        d = report["device"]
        lat, mem = d["latency"], d["memory"]
        emu = " (emulated: instructions, not cycles)" if d.get("emulated") else ""
        lines += ["", f"## Device: {d['target']} ({d['board']}, {d['cpu']}){emu}", "",
                  "| | |", "|---|---|",
                  f"| samples | {d['samples']} |",
                  f"| bit-exact vs the integer reference | {_exactness(d['samples'], d['mismatches'])} |",
                  f"| accuracy on the device | {_pct(d['accuracy'])} |",
                  f"| latency per inference, median / p99 | {lat['value']:,.0f} / {lat['p99']:,.0f} {lat['unit']} ({lat['timer']}) |",
                  f"| the median at {lat['clock_hz'] / 1e6:g} MHz, one {lat['unit'][:-1]} a cycle | {lat['ms_at_clock']:.2f} ms |",
                  f"| flash: model / runtime | {mem['flash_model']:,} / {mem['flash_runtime']:,} B |",
                  *([f"| flash: model data / all code (runtime, kernels, API, tokenizer) | "
                     f"{mem['flash_model_data']:,} / {mem['flash_code']:,} B |"] if "flash_code" in mem else []),
                  f"| static RAM / stack peak | {mem['ram_static']:,} / {mem['stack_peak']:,} B |",
                  f"| energy per inference (estimate from a datasheet power figure) | {d['energy_uj_estimate']:.0f} µJ |",
                  *_audio_rows(d.get("audio")),
                  *_listen_rows(d.get("listen"), lat["clock_hz"]),
                  "", f"Kernel variant: `{d['kernel']}`. {lat['note']}."]
    lines += ["", "![confusion matrix](confusion.png)", ""]
    return "\n".join(lines)


def plot_confusion(report: dict, confusion: list[list[int]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = report["task"]["labels"]
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * len(labels), 0.8 + 0.45 * len(labels)), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted (int8 student)")
    ax.set_ylabel("true")
    ax.set_title(f"{report['model']['name']}: int8 accuracy {_pct(report['student']['int8_accuracy'])}")
    fig.tight_layout()
    # A fixed software tag and no timestamp keep the PNG byte-identical run to run.
    fig.savefig(path, metadata={"Software": "tinyseek"})
    plt.close(fig)


def write_report(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    report = build_report(run_dir)
    out_json, out_md, out_png = run_dir / "report.json", run_dir / "report.md", run_dir / "confusion.png"
    out_json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    out_md.write_text(render_markdown(report))
    plot_confusion(report, _read(run_dir / "metrics.json")["confusion"], out_png)
    return [out_json, out_md, out_png]
