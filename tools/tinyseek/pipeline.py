"""Stage order, input hashing and skipping.

Each stage reads and writes files in the run folder. Before a stage runs, the hash of
everything it depends on (its config sections, the hashes of its input files, the tool
version) is compared with the one stored in `stamps.json`; when they match and the outputs
exist, the stage is skipped. So `tinyseek build` after an edit re-runs only what changed.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import tomli_w

from . import __version__
from .config import Config, TeacherConfig

STAGES = ("teacher", "distill", "quantize", "codegen", "wakeword", "verify", "report")
# Teacher settings only the extraction reads (teacher/extract.py).
EXTRACTION_ONLY = ("layers", "attentions", "shard_size")
# Where the extraction runs: the same knowledge whatever they are (the shard stamps hold the
# dtype and device that make a difference), so they are no input of the teacher stage.
ENGINE_ONLY = ("engine", "ray_address", "workers")
# Settings of a pretrained transfer-set writer: inputs of the teacher stage only when a writer is
# set (so keys from before them stay), never of the adaptation.
TRANSFER_ONLY = ("transfer_writer", "transfer_prompt")
# In-context examples of few-shot labels: inputs only when asked for (teacher.shots > 0), so keys
# from before them stay.
FEW_SHOT_ONLY = ("shots", "example")


def _teacher_settings(teacher) -> dict:
    """The teacher settings that are stage inputs, but the engine's."""
    out = {k: v for k, v in asdict(teacher).items() if k not in ENGINE_ONLY}
    for k in FEW_SHOT_ONLY if not teacher.shots else ():
        out.pop(k)
    for k in TRANSFER_ONLY if not teacher.transfer_writer else ():
        out.pop(k)
    return out


REPO_ROOT = Path(__file__).resolve().parents[2]


def hash_files(*paths: Path) -> str:
    """sha256 over the names and bytes of files (folders: every file inside, sorted). Files are
    read in 1 MiB chunks: a 7B teacher's weights are one 14 GB file."""
    h = hashlib.sha256()
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(f.name.encode())
            if not f.exists():
                h.update(b"<missing>")
                continue
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


def hash_safetensors(path: Path, metadata: bool = True) -> str:
    """sha256 of a safetensors file's content: sorted metadata (unless `metadata` is False) and
    tensors. The file's bytes are no good here: its header stores the metadata in no fixed order."""
    from safetensors import safe_open
    if not path.is_file():
        return "<missing>"
    h = hashlib.sha256()
    with safe_open(str(path), "np") as f:
        if metadata:
            h.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
        for key in sorted(f.keys()):
            t = f.get_tensor(key)
            h.update(f"{key}:{t.dtype.str}:{t.shape}".encode())
            h.update(t.tobytes())
    return h.hexdigest()


def hash_obj(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _distill_settings(c) -> dict:
    """The distillation settings of a stage key. The SpecAugment settings (distill.spec_*) change
    audio students only, so they count for audio tasks alone: other runs keep their key."""
    d = asdict(c.distill)
    if c.task.kind != "audio":
        d = {k: v for k, v in d.items() if not k.startswith("spec_")}
    return d


class Run:
    """One run folder and what the stages need to know about it."""

    def __init__(self, cfg: Config, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.dir = cfg.run_dir
        self.log = log
        self._dataset = self._task_dataset = self._transcripts = None
        self.current: str | None = None  # the stage running now (for the Ctrl-C message)
        self.overwrite = False  # codegen may replace files in the library folder that lack the stamp
        for what, path in (("run folder", self.dir), ("model library", self.lib_dir)):
            if not path.resolve().is_relative_to(REPO_ROOT):  # only an absolute path gets here (config.py)
                log(f"note: the {what} {path.resolve()} is outside the project")

    # -- paths ----------------------------------------------------------------------------
    @property
    def knowledge(self) -> Path:
        return self.dir / "knowledge.safetensors"

    @property
    def teacher_dir(self) -> Path:
        return self.dir / "teacher"

    @property
    def student_dir(self) -> Path:
        return self.dir / "student"

    @property
    def int8_dir(self) -> Path:
        return self.dir / "int8"

    @property
    def lib_dir(self) -> Path:
        out = self.cfg.codegen.out_dir
        return Path(out) if out else REPO_ROOT / "firmware" / "lib" / self.cfg.model_name

    @property
    def wake_dir(self) -> Path:
        return self.dir / "wakeword"

    @property
    def wake_lib_dir(self) -> Path:
        """The wake word's library, beside the command model's: <library>_wake."""
        return self.lib_dir.with_name(self.lib_dir.name + "_wake")

    def stages(self) -> tuple[str, ...]:
        """The stages a build runs: the wake word only where one is asked for (wake.keyword)."""
        return tuple(s for s in STAGES if s != "wakeword" or self.cfg.wake.keyword)

    @property
    def task_dataset(self):
        """The task's data as configured (what the teacher adapts on)."""
        if self._task_dataset is None:
            from .data import load_task_and_transcripts
            ds, self._transcripts = load_task_and_transcripts(self.cfg.task, cache_dir=self.dir)
            self._task_dataset = self._check_test_split(ds)
        return self._task_dataset

    @property
    def teacher_dataset(self):
        """What the teacher adapts on and reads: the task's data, or an audio task's transcripts
        where every clip has one (cross-modal distillation: the student learns from the audio
        what the teacher read in the text, clip for clip)."""
        task = self.task_dataset
        return task if self._transcripts is None else self._transcripts

    @property
    def dataset(self):
        """The task's data, with the teacher's generated transfer set (teacher.transfer_samples)
        added to the training split once the teacher stage wrote it."""
        if self._dataset is None:
            self._dataset = self.task_dataset
            transfer = self.dir / "transfer.jsonl"
            if self.cfg.teacher.transfer_samples and transfer.is_file():
                from dataclasses import replace

                from .data.dataset import Split
                from .teacher.transfer import read_transfer_set
                ds = self._dataset
                texts, y = read_transfer_set(transfer, ds.labels)
                t = ds.train
                groups = None if t.groups is None else np.concatenate([t.groups, np.full(len(y), -1, np.int64)])
                self._dataset = replace(ds, train=Split(y=np.concatenate([t.y, y]), texts=list(t.texts) + texts,
                                                        x=None, groups=groups))
        return self._dataset

    def _check_test_split(self, ds):
        """Every figure of the report is measured on the test split: an empty one is an error (a
        check over nothing must never read as a pass), a class without test samples a warning."""
        import numpy as np
        t = self.cfg.task
        if len(ds.test.y) == 0:
            raise ValueError(
                f"the test split of task {ds.name!r} is empty ({len(ds.train.y):,} training samples, "
                f"{len(ds.labels)} classes): nothing would be measured. Give each class more samples (the test "
                f"holds task.test_fraction = {t.test_fraction} of each class, rounded), or a test file (task.test)")
        labeled = np.asarray(ds.test.y)
        missing = [ds.labels[k] for k in range(len(ds.labels)) if not np.any(labeled == k)]
        if missing and np.any(labeled >= 0):
            self.log(f"WARNING: {len(missing)} of {len(ds.labels)} classes have no test sample, so their accuracy is not "
                     f"measured: {', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}")
        return ds

    # -- stamps ---------------------------------------------------------------------------
    def _stamps(self) -> dict:
        f = self.dir / "stamps.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    def _stamp(self, stage: str, key: str) -> None:
        stamps = self._stamps()
        stamps[stage] = key
        (self.dir / "stamps.json").write_text(json.dumps(stamps, indent=2, sort_keys=True) + "\n")

    def _task_key(self) -> list:
        c = self.cfg
        task = asdict(c.task)
        if c.task.kind != "audio":  # an audio-only setting: other tasks keep the keys they had before it
            del task["frames_per_step"]
        # Your own data counts by content, not only by path: an edited file re-runs the stages.
        return [task] + [hash_files(Path(f)) for f in (c.task.train, c.task.test, c.task.val)
                         if f and Path(f).exists()]

    def adaptation_key(self) -> str:
        """The teacher stage's inputs but the settings only the extraction reads: a change of
        those alone re-runs the extraction on the adapted teacher already saved."""
        adapt = {k: v for k, v in _teacher_settings(self.cfg.teacher).items()
                 if k not in EXTRACTION_ONLY + TRANSFER_ONLY}
        if adapt["transfer_samples"] and self.cfg.teacher.transfer_writer:
            # A writer writes the transfer set, so the teacher learns nothing for it (no end of
            # sequence): the adaptation is the one without a transfer set.
            defaults = TeacherConfig()
            adapt.update({k: getattr(defaults, k) for k in
                          ("transfer_samples", "transfer_confidence", "transfer_temperature")})
        return hash_obj([__version__, self._task_key(), adapt])

    def input_key(self, stage: str) -> str:
        c = self.cfg
        task = self._task_key()
        if stage == "teacher":
            return hash_obj([__version__, task, _teacher_settings(c.teacher)])
        if stage == "distill":
            # The knowledge's tensors, not its provenance metadata (the teacher folder's hash, which
            # a run name or a thread setting changes): the same numbers train the same student.
            # subwords = 0 (the default) is left out, so runs from before the setting keep their key.
            student = {k: v for k, v in asdict(c.student).items() if k != "subwords" or v}
            return hash_obj([__version__, task, student, _distill_settings(c),
                             hash_safetensors(self.knowledge, metadata=False)])
        if stage == "quantize":
            # The low-bit settings count only where used, so runs from before them keep their key;
            # quantization-aware training also reads the distillation settings and the knowledge.
            quant = {"calibration_samples": c.quant.calibration_samples}
            if c.quant.weights != "int8":
                quant["weights"] = c.quant.weights
            if (c.quant.embedding or c.quant.weights) != "int8":
                quant["embedding"] = c.quant.embedding or c.quant.weights
            if c.quant.qat_epochs:
                quant.update(qat_epochs=c.quant.qat_epochs, qat_lr=c.quant.qat_peak_lr, distill=_distill_settings(c),
                             knowledge=hash_safetensors(self.knowledge, metadata=False))
            return hash_obj([__version__, task, quant, c.model_name, hash_files(self.student_dir)])
        if stage == "codegen":
            return hash_obj([__version__, hash_files(self.int8_dir), hash_files(REPO_ROOT / "templates")])
        if stage == "wakeword":
            # Your recordings count by content, as the task's own data does.
            recordings = [hash_files(Path(c.wake.recordings))] if c.wake.recordings else []
            return hash_obj([__version__, task, asdict(c.wake), c.model_name, hash_files(REPO_ROOT / "templates"),
                             *recordings])
        if stage == "verify":
            return hash_obj([__version__, task, hash_files(self.int8_dir), hash_files(self.lib_dir)])
        if stage == "report":
            return hash_obj([__version__, hash_files(*self._report_inputs())])
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")

    def _report_inputs(self) -> list[Path]:
        names = ("metrics.json", "verify.json", "device.json", "tflite/metrics.json", "wakeword/wakeword.json")
        return [p for p in (self.dir / n for n in names) if p.exists()]

    def outputs(self, stage: str) -> list[Path]:
        return {
            "teacher": [self.teacher_dir / "teacher.json", self.knowledge],
            "distill": [self.student_dir / "student.safetensors", self.student_dir / "student.json"],
            "quantize": [self.int8_dir / "model.json", self.int8_dir / "params.safetensors"],
            "codegen": [self.lib_dir / "library.json"],
            "wakeword": [self.wake_dir / "wakeword.json", self.wake_dir / "int8" / "model.json",
                         self.wake_lib_dir / "library.json"],
            "verify": [self.dir / "verify.json", self.dir / "metrics.json"],
            "report": [self.dir / "report.json", self.dir / "report.md"],
        }[stage]

    # -- running --------------------------------------------------------------------------
    def stage(self, name: str, force: bool = False) -> bool:
        """Run one stage unless its inputs are unchanged; returns True if it ran."""
        self.dir.mkdir(parents=True, exist_ok=True)
        key = self.input_key(name)
        if not force and self._stamps().get(name) == key and all(p.exists() for p in self.outputs(name)):
            self.log(f"[{name}] inputs unchanged, skipped")
            return False
        self.log(f"[{name}] running")
        t0 = time.monotonic()
        self.current = name
        STAGE_FUNCS[name](self)
        self._stamp(name, key)
        self.current = None
        self.log(f"[{name}] done in {time.monotonic() - t0:.1f} s")
        return True

    def seed_from(self, source: Path) -> bool:
        """Start this run from another run's artifacts (its stamps, float student and int8
        model), so a stage whose inputs come out the same is skipped instead of redone; a run
        folder that already has stamps is left as it is. The other run is only read. Returns
        True if the artifacts were copied."""
        import shutil
        if source.resolve() == self.dir.resolve() or (self.dir / "stamps.json").exists():
            return False
        if not (source / "stamps.json").is_file():
            raise FileNotFoundError(f"{source} is no run folder (no stamps.json): --from names a run in "
                                    f"{self.cfg.models_dir}/, e.g. --from intents")
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("student", "int8"):
            if (source / name).is_dir():
                shutil.copytree(source / name, self.dir / name, dirs_exist_ok=True)
        shutil.copy2(source / "stamps.json", self.dir / "stamps.json")
        self.log(f"[build] starting from {source}'s artifacts; each stage whose inputs match them is skipped")
        return True

    def build(self, force: bool = False, until: str = "report") -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.toml").write_text(tomli_w.dumps(self.cfg.to_dict()))
        if not self.cfg.wake.keyword and (self.wake_dir / "wakeword.json").exists():
            # The report shows no wake word that the settings no longer ask for.
            (self.wake_dir / "wakeword.json").unlink()
        for name in STAGES[: STAGES.index(until) + 1]:
            if name in self.stages():
                self.stage(name, force=force)


# -- the stages -----------------------------------------------------------------------------

def _teacher(run: Run) -> None:
    from .teacher import adapt, extract
    meta_file, key = run.teacher_dir / "teacher.json", run.adaptation_key()
    cross_modal = run.teacher_dataset is not run.task_dataset  # an audio task's transcripts
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta.get("adaptation_key") == key:
        run.log("[teacher] adaptation unchanged (only extraction settings differ): extracting with the saved teacher")
    else:
        if cross_modal:
            run.log(f"[teacher] reads the {len(run.teacher_dataset.train.y):,} training clips' transcripts; the "
                    "student learns its knowledge from the audio")
        adapt(run.teacher_dataset, run.cfg.teacher, run.dir)
        meta = json.loads(meta_file.read_text())
        if meta.get("val_accuracy") is not None:
            run.log(f"[teacher] validation accuracy {meta['val_accuracy']:.4f} on {len(run.teacher_dataset.val.y):,} "
                    f"samples held out by {run.teacher_dataset.split_by} ({meta['finetune_epochs']} epochs)")
        meta["adaptation_key"] = key
        meta_file.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    if cross_modal:
        extract(run.teacher_dataset, run.cfg.teacher, run.dir, log=run.log)
        return
    from .teacher.transfer import write_transfer_set
    write_transfer_set(run.task_dataset, run.cfg.teacher, run.dir, run.log)
    run._dataset = None  # the training split now holds the transfer set, if one was asked for
    extract(run.dataset, run.cfg.teacher, run.dir, log=run.log)


def _distill(run: Run) -> None:
    from .distill import distill
    distill(run.dataset, run.knowledge, run.cfg, run.dir)
    baseline = run.student_dir / "baseline.json"
    if run.cfg.distill.hard_label_baseline:
        from .distill.train import hard_label_baseline
        # The task's own labelled data: a transfer set's labels are the teacher's.
        result = hard_label_baseline(run.task_dataset, run.knowledge, run.cfg, cached_rows=len(run.dataset.train))
        baseline.write_text(json.dumps(result, indent=2) + "\n")
        run.log(f"[distill] hard-label baseline (no teacher): validation accuracy {result['val_accuracy']:.4f}")
    elif baseline.exists():
        baseline.unlink()


def _quantize(run: Run) -> None:
    from .quant.quantize import quantize_run
    quantize_run(run.cfg, run.dir, run.dataset, run.knowledge if run.cfg.quant.qat_epochs else None)


def _codegen(run: Run) -> None:
    from .codegen.render import render
    from .quant.model import QuantModel
    files = render(QuantModel.load(run.int8_dir), run.lib_dir, overwrite=run.overwrite)
    run.log(f"[codegen] {len(files)} files in {run.lib_dir}")


def _wakeword(run: Run) -> None:
    if not run.cfg.wake.keyword:
        raise ValueError("no wake word to train: set wake.keyword (e.g. --set 'wake.keyword=hey tiny') "
                         "for an audio task (task.kind = \"audio\")")
    from .audio.wakeword import build_wakeword
    build_wakeword(run.cfg, run.task_dataset, run.wake_dir, run.wake_lib_dir, run.log)
    run.log(f"[wakeword] {run.wake_lib_dir}: build the firmware with it beside the command model: "
            f"TINYSEEK_WAKE_MODEL={run.wake_lib_dir.name} (docs/audio.md)")


def _verify(run: Run) -> None:
    from .harness.evaluate import evaluate_host
    evaluate_host(run)


def _report(run: Run) -> None:
    from .harness.report import write_report
    paths = write_report(run.dir)
    run.log("[report] " + ", ".join(str(p) for p in paths))


STAGE_FUNCS: dict[str, Callable[[Run], None]] = {
    "teacher": _teacher, "distill": _distill, "quantize": _quantize,
    "codegen": _codegen, "wakeword": _wakeword, "verify": _verify, "report": _report,
}
