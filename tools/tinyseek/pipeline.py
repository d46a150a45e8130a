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

import tomli_w

from . import __version__
from .config import Config

STAGES = ("teacher", "distill", "quantize", "codegen", "verify", "report")
# Teacher settings only the extraction reads (teacher/extract.py).
EXTRACTION_ONLY = ("layers", "attentions", "shard_size")
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


def hash_safetensors(path: Path) -> str:
    """sha256 of a safetensors file's content: sorted metadata and tensors. The file's bytes
    are no good here: its header stores the metadata in no fixed order."""
    from safetensors import safe_open
    if not path.is_file():
        return "<missing>"
    h = hashlib.sha256()
    with safe_open(str(path), "np") as f:
        h.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
        for key in sorted(f.keys()):
            t = f.get_tensor(key)
            h.update(f"{key}:{t.dtype.str}:{t.shape}".encode())
            h.update(t.tobytes())
    return h.hexdigest()


def hash_obj(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Run:
    """One run folder and what the stages need to know about it."""

    def __init__(self, cfg: Config, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.dir = cfg.run_dir
        self.log = log
        self._dataset = None

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
    def dataset(self):
        if self._dataset is None:
            from .data import load_task
            self._dataset = load_task(self.cfg.task)
        return self._dataset

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
        # Your own data counts by content, not only by path: an edited file re-runs the stages.
        return [asdict(c.task)] + [hash_files(Path(f)) for f in (c.task.train, c.task.test) if f and Path(f).exists()]

    def adaptation_key(self) -> str:
        """The teacher stage's inputs but the settings only the extraction reads: a change of
        those alone re-runs the extraction on the adapted teacher already saved."""
        adapt = {k: v for k, v in asdict(self.cfg.teacher).items() if k not in EXTRACTION_ONLY}
        return hash_obj([__version__, self._task_key(), adapt])

    def input_key(self, stage: str) -> str:
        c = self.cfg
        task = self._task_key()
        if stage == "teacher":
            return hash_obj([__version__, task, asdict(c.teacher)])
        if stage == "distill":
            return hash_obj([__version__, task, asdict(c.student), asdict(c.distill), hash_safetensors(self.knowledge)])
        if stage == "quantize":
            return hash_obj([__version__, task, asdict(c.quant), c.model_name, hash_files(self.student_dir)])
        if stage == "codegen":
            return hash_obj([__version__, hash_files(self.int8_dir), hash_files(REPO_ROOT / "templates")])
        if stage == "verify":
            return hash_obj([__version__, task, hash_files(self.int8_dir), hash_files(self.lib_dir)])
        if stage == "report":
            return hash_obj([__version__, hash_files(*self._report_inputs())])
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")

    def _report_inputs(self) -> list[Path]:
        names = ("metrics.json", "verify.json", "device.json", "tflite/metrics.json")
        return [p for p in (self.dir / n for n in names) if p.exists()]

    def outputs(self, stage: str) -> list[Path]:
        return {
            "teacher": [self.teacher_dir / "teacher.json", self.knowledge],
            "distill": [self.student_dir / "student.safetensors", self.student_dir / "student.json"],
            "quantize": [self.int8_dir / "model.json", self.int8_dir / "params.safetensors"],
            "codegen": [self.lib_dir / "library.json"],
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
        STAGE_FUNCS[name](self)
        self._stamp(name, key)
        self.log(f"[{name}] done in {time.monotonic() - t0:.1f} s")
        return True

    def build(self, force: bool = False, until: str = "report") -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.toml").write_text(tomli_w.dumps(self.cfg.to_dict()))
        for name in STAGES[: STAGES.index(until) + 1]:
            self.stage(name, force=force)


# -- the stages -----------------------------------------------------------------------------

def _teacher(run: Run) -> None:
    from .teacher import adapt, extract
    meta_file, key = run.teacher_dir / "teacher.json", run.adaptation_key()
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta.get("adaptation_key") == key:
        run.log("[teacher] adaptation unchanged (only extraction settings differ): extracting with the saved teacher")
    else:
        adapt(run.dataset, run.cfg.teacher, run.dir)
        meta = json.loads(meta_file.read_text())
        meta["adaptation_key"] = key
        meta_file.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    extract(run.dataset, run.cfg.teacher, run.dir)


def _distill(run: Run) -> None:
    from .distill import distill
    distill(run.dataset, run.knowledge, run.cfg, run.dir)


def _quantize(run: Run) -> None:
    from .quant.quantize import quantize_run
    quantize_run(run.cfg, run.dir, run.dataset)


def _codegen(run: Run) -> None:
    from .codegen.render import render
    from .quant.model import QuantModel
    files = render(QuantModel.load(run.int8_dir), run.lib_dir)
    run.log(f"[codegen] {len(files)} files in {run.lib_dir}")


def _verify(run: Run) -> None:
    from .harness.evaluate import evaluate_host
    evaluate_host(run)


def _report(run: Run) -> None:
    from .harness.report import write_report
    paths = write_report(run.dir)
    run.log("[report] " + ", ".join(str(p) for p in paths))


STAGE_FUNCS: dict[str, Callable[[Run], None]] = {
    "teacher": _teacher, "distill": _distill, "quantize": _quantize,
    "codegen": _codegen, "verify": _verify, "report": _report,
}
