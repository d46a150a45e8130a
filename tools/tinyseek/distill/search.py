"""Budget-aware student search (`tinyseek search`, docs/distillation.md): the smallest TinyLSTM
whose int8 model reaches a share of the teacher's accuracy within a board's flash, RAM and
latency budget.

The cost model prices a student shape on a board without training it:
- flash: the model's arrays exactly as codegen stores them (the `<NAME>_WEIGHT_BYTES` macro of
  the generated header) plus the measured code and small data of the model library;
- RAM: state and scratch (`<NAME>_STATE_BYTES` + `<NAME>_SCRATCH_BYTES`) plus a stack allowance,
  the firmware's measured stack peak;
- latency: instructions per inference = a * MACs + b * units * steps + c * steps + d at the
  tokenizer's max_len steps (the worst case), with a, b, c, d fitted per board from runs of the
  generated kernels on the emulator (bench/kernel_cost.py writes them to KERNEL_COST_FILE),
  in ms at the board profile's clock.

The search distills each candidate from the run's knowledge cache, quantizes it and scores the
int8 model with the integer oracle on the validation split. Candidates are tried cheapest
first with galloping steps (1st, 2nd, 4th, 8th, ... of the shapes left) until one passes, then
by bisection below it; a shape no larger on any axis than a failed one is not trained (taken
to fail too) and nothing larger than a passing one is. So the answer is the smallest passing
shape of the grid if accuracy does not fall when a student grows on every axis at once.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..harness.boards import PROFILE_DIR, BoardProfile, load_profile, profiles

KERNEL_COST_FILE = PROFILE_DIR / "kernel_cost.json"
KERNELS_DIR = Path(__file__).resolve().parents[3] / "templates" / "kernels"
REFIT = "python bench/kernel_cost.py"
KB = 1024

# Bytes of the generated arrays (templates/lib/model_data.c.j2 via codegen/context.py).
TABLE_BYTES = 2 * 257 * 2  # sigmoid and tanh, int16[257] each
GATE_ROW_BYTES = 4 + 1 + 4 + 1 + 4  # per gate row: mx int32, nx uint8, mh int32, nh uint8, bias int32
HEAD_ROW_BYTES = 4 + 4 + 1  # per class: bias int32, m int32, n uint8
PER_BYTE = {"int8": 1, "int4": 2, "binary": 8}  # weights per stored byte


class SearchError(ValueError):
    """A budget no student fits, a board without kernel cost coefficients, or a bad search setting."""


class StaleCostWarning(UserWarning):
    """The kernel cost coefficients were fitted on other kernel templates than the current ones."""


# -- shapes and the cost model -----------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Shape:
    """One student architecture: what `student.*` sets. vocab_size is None for sequence tasks."""
    hidden: int
    layers: int
    embed_dim: int
    vocab_size: int | None

    @property
    def label(self) -> str:
        v = f"-v{self.vocab_size}" if self.vocab_size is not None else ""
        return f"h{self.hidden}-l{self.layers}-e{self.embed_dim}{v}"

    def covers(self, other: "Shape") -> bool:
        """At least as large as `other` on every axis."""
        return (self.hidden >= other.hidden and self.layers >= other.layers and self.embed_dim >= other.embed_dim
                and (self.vocab_size or 0) >= (other.vocab_size or 0))


@dataclass(frozen=True)
class Task:
    """What the cost of a shape depends on besides the shape itself."""
    kind: str  # "text" | "sequence"
    num_classes: int
    max_len: int  # steps of the worst-case inference
    num_features: int | None = None  # sequence tasks: the input projection folds into layer 0
    weights: str = "int8"  # quant.weights: the LSTM gate matrices' width (a binary model's head too)
    embedding: str = "int8"  # the stored embedding's width (text)

    def input_size(self, shape: Shape) -> int:
        return shape.embed_dim if self.kind == "text" else int(self.num_features)


def row_bytes(columns: int, width: str) -> int:
    """Bytes of one stored row of `columns` weights (docs/numerics.md, "Low-bit weights")."""
    return -(-columns // PER_BYTE[width])


def memory_bytes(shape: Shape, task: Task) -> dict[str, int]:
    """The generated header's WEIGHT_BYTES, STATE_BYTES and SCRATCH_BYTES of this shape."""
    H, C, w = shape.hidden, task.num_classes, task.weights
    weights = TABLE_BYTES + C * (row_bytes(H, "binary" if w == "binary" else "int8") + HEAD_ROW_BYTES)
    if task.kind == "text":  # a low-bit embedding keeps a gain byte per row
        weights += shape.vocab_size * (row_bytes(shape.embed_dim, task.embedding) + (task.embedding != "int8"))
    inp = task.input_size(shape)
    for _ in range(shape.layers):
        weights += 4 * H * (row_bytes(inp, w) + row_bytes(H, w)) + 4 * H * GATE_ROW_BYTES
        inp = H
    units = shape.layers * H  # <name>_state: int16 c + int8 h per unit, padded to 2 bytes
    return {"weight_bytes": weights, "state_bytes": 3 * units + units % 2, "scratch_bytes": H}


def work(shape: Shape, task: Task, steps: float) -> dict[str, float]:
    """The terms of the latency model for one inference of `steps` inputs."""
    H = shape.hidden
    per_step = sum(4 * H * ((task.input_size(shape) if k == 0 else H) + H) for k in range(shape.layers))
    return {"macs": steps * per_step + task.num_classes * H, "unit_steps": steps * shape.layers * H, "steps": steps}


def stack_width(shape: Shape, task: Task) -> int:
    """The widest layer's input + hidden: the kernels keep both vectors, unpacked, on the stack."""
    return shape.hidden + (max(task.input_size(shape), shape.hidden) if shape.layers > 1 else task.input_size(shape))


@dataclass(frozen=True)
class KernelCost:
    """A board's fitted latency model and measured overheads (one entry of KERNEL_COST_FILE)."""
    board: str  # the board the search runs for
    measured_on: str  # the emulated board whose runs gave the numbers
    unit: str  # instructions (QEMU -icount) or cycles
    kernel: str  # the kernel variant measured (dsp, mve, rv32, c)
    mac: float
    unit_step: float
    step: float
    fixed: float
    # Flash of the model library besides its arrays (code, labels, strings): fixed + per layer.
    code_fixed: float
    code_per_layer: float
    # The firmware's stack peak, the allowance added to RAM: fixed + per byte of stack_width.
    stack_fixed: float
    stack_per_width: float
    kernels_hash: str  # of templates/kernels/ when measured

    def instructions(self, w: dict[str, float]) -> float:
        return self.mac * w["macs"] + self.unit_step * w["unit_steps"] + self.step * w["steps"] + self.fixed

    def code_bytes(self, shape: Shape) -> int:
        return math.ceil(self.code_fixed + self.code_per_layer * shape.layers)

    def stack_bytes(self, shape: Shape, task: Task) -> int:
        return math.ceil(self.stack_fixed + self.stack_per_width * stack_width(shape, task))


def kernels_hash(folder: Path = KERNELS_DIR) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.j2")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def load_kernel_cost(board: str, path: str | Path = KERNEL_COST_FILE, weights: str = "int8") -> KernelCost:
    """The coefficients of `board` for models of gate width `weights`, or of the emulated board
    that stands for it (its profile's reference_board): then its instructions are taken as the
    real board's cycles, an estimate."""
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"{path} is missing: measure the kernels with `{REFIT}`")
    try:
        data = json.loads(path.read_text())["boards"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SearchError(f"{path} is not a kernel cost file ({e}); rewrite it with `{REFIT}`") from e
    env = board
    if env not in data:
        stand_ins = [p.env for p in profiles().values() if p.emulated and p.reference_board == board and p.env in data]
        if not stand_ins:
            raise SearchError(f"no kernel cost coefficients for board {board!r} in {path} (there are: "
                              f"{', '.join(sorted(data))}); measure it with `{REFIT} --envs {board}` "
                              "(emulated boards only) or pick a board an emulated one stands for")
        env = stand_ins[0]
    e = data[env]
    if weights != "int8":  # the low-bit kernels' own fit, beside the int8 entry
        e = e.get("widths", {}).get(weights)
        if e is None:
            raise SearchError(f"no kernel cost coefficients for {weights} weights on {env} in {path}; measure them "
                              f"with `{REFIT} --envs {env} --weights {weights}`")
    try:
        cost = KernelCost(board=board, measured_on=env, unit=e["unit"], kernel=e["kernel"],
                          **{k: float(e["coefficients"][k]) for k in ("mac", "unit_step", "step", "fixed")},
                          code_fixed=float(e["code_bytes"]["fixed"]),
                          code_per_layer=float(e["code_bytes"]["per_layer"]),
                          stack_fixed=float(e["stack_bytes"]["fixed"]),
                          stack_per_width=float(e["stack_bytes"]["per_width"]), kernels_hash=e["kernels_hash"])
    except (KeyError, TypeError, ValueError) as e2:
        raise SearchError(f"{path}: the entry of {env!r} lacks {e2}; rewrite it with `{REFIT}`") from e2
    if cost.kernels_hash != kernels_hash():
        warnings.warn(StaleCostWarning(
            f"the {weights} kernel cost coefficients of {env} were fitted on other kernel templates than "
            f"templates/kernels/ now; the latency estimates may be off until "
            f"`{REFIT} --envs {env}{'' if weights == 'int8' else ' --weights ' + weights}` refits them"), stacklevel=2)
    return cost


@dataclass(frozen=True)
class Cost:
    weight_bytes: int
    flash_bytes: int  # weights + code
    state_bytes: int
    scratch_bytes: int
    stack_bytes: int  # the allowance
    ram_bytes: int  # state + scratch + stack
    macs: int  # of the worst-case inference (max_len steps)
    instructions: float  # predicted, worst case
    latency_ms: float  # worst case at the board's clock
    typical_ms: float  # at the typical number of steps (the validation split's median)


def student_cost(shape: Shape, task: Task, board: BoardProfile, kc: KernelCost,
                 typical_steps: float | None = None) -> Cost:
    m = memory_bytes(shape, task)
    worst = work(shape, task, task.max_len)
    ins = kc.instructions(worst)
    typical = kc.instructions(work(shape, task, task.max_len if typical_steps is None else typical_steps))
    ms = 1000.0 / board.clock_hz
    stack = kc.stack_bytes(shape, task)
    return Cost(weight_bytes=m["weight_bytes"], flash_bytes=m["weight_bytes"] + kc.code_bytes(shape),
                state_bytes=m["state_bytes"], scratch_bytes=m["scratch_bytes"], stack_bytes=stack,
                ram_bytes=m["state_bytes"] + m["scratch_bytes"] + stack, macs=worst["macs"],
                instructions=ins, latency_ms=ins * ms, typical_ms=typical * ms)


@dataclass(frozen=True)
class Budget:
    flash_bytes: int
    ram_bytes: int
    latency_ms: float | None  # None: no limit

    def describe(self) -> str:
        lat = f", latency <= {self.latency_ms:g} ms" if self.latency_ms is not None else ""
        return f"flash <= {self.flash_bytes / KB:g} KB, RAM <= {self.ram_bytes / KB:g} KB{lat}"

    def fits(self, c: Cost) -> bool:
        return (c.flash_bytes <= self.flash_bytes and c.ram_bytes <= self.ram_bytes
                and (self.latency_ms is None or c.latency_ms <= self.latency_ms))


def make_budget(board: BoardProfile, flash_kb: float = 0.0, ram_kb: float = 0.0, latency_ms: float = 0.0) -> Budget:
    """KB are 1024 bytes; 0 leaves flash and RAM at the board's and the latency unlimited."""
    for name, v in (("flash_kb", flash_kb), ("ram_kb", ram_kb), ("latency_ms", latency_ms)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise SearchError(f"search.{name} must be a number >= 0 (0: no limit beyond the board's), not {v!r}")
    return Budget(flash_bytes=int(flash_kb * KB) if flash_kb else board.flash_bytes,
                  ram_bytes=int(ram_kb * KB) if ram_kb else board.ram_bytes,
                  latency_ms=float(latency_ms) if latency_ms else None)


def size_key(c: Cost) -> tuple:
    """What "smallest" means: flash first, then RAM, then latency."""
    return (c.flash_bytes, c.ram_bytes, c.latency_ms)


def grid(s, kind: str) -> list[Shape]:
    """Every shape of the search settings (vocab_size only for text tasks), deduplicated."""
    vocab = sorted(set(s.vocab_size)) if kind == "text" else [None]
    return sorted({Shape(h, L, e, v) for h, L, e, v in itertools.product(
        sorted(set(s.hidden)), sorted(set(s.layers)), sorted(set(s.embed_dim)), vocab)})


def fitting(shapes: Sequence[Shape], costs: dict[Shape, Cost], budget: Budget, board: str) -> list[Shape]:
    """The shapes within the budget, smallest first; SearchError naming the smallest possible
    flash, RAM and latency of the grid when none fits."""
    ok = sorted((s for s in shapes if budget.fits(costs[s])), key=lambda s: (size_key(costs[s]), s))
    if ok:
        return ok
    least = {what: min(shapes, key=lambda s: (key(costs[s]), s)) for what, key in (
        ("flash", lambda c: c.flash_bytes), ("RAM", lambda c: c.ram_bytes), ("latency", lambda c: c.latency_ms))}
    f, r, t = (costs[least[k]] for k in ("flash", "RAM", "latency"))
    raise SearchError(
        f"no student of the search grid fits the budget on {board} ({budget.describe()}): the smallest possible "
        f"needs flash {f.flash_bytes / KB:.1f} KB ({least['flash'].label}), RAM {r.ram_bytes / KB:.2f} KB "
        f"({least['RAM'].label}), latency {t.latency_ms:.3g} ms ({least['latency'].label}); raise the budget or add "
        "smaller sizes to search.hidden / search.embed_dim / search.vocab_size")


# -- the search over candidates ----------------------------------------------------------------

@dataclass
class Outcome:
    accuracy: float | None  # int8 validation accuracy (None: the candidate could not be quantized)
    error: str = ""
    details: dict = field(default_factory=dict)


CAP_REASON = "not trained: search.max_candidates reached"


def select(candidates: Sequence[Shape], evaluate: Callable[[Shape], Outcome], threshold: float,
           max_candidates: int, known: dict[Shape, Outcome] | None = None,
           ) -> tuple[Shape | None, dict[Shape, Outcome], dict[Shape, str]]:
    """(smallest passing shape or None, the outcomes of scored shapes, why the others were not
    trained). `candidates` come smallest first; a shape passes when its accuracy >= threshold.
    `known` outcomes (scored by an earlier search) count at once and use up no training."""
    order = {s: i for i, s in enumerate(candidates)}
    outcomes = {s: o for s, o in (known or {}).items() if s in order}
    skipped: dict[Shape, str] = {}
    jump, trained = 1, 0
    while True:
        passing = [s for s, o in outcomes.items() if o.accuracy is not None and o.accuracy >= threshold]
        best = min(passing, key=order.__getitem__, default=None)
        failed = [s for s in outcomes if s not in passing]
        pending = []
        for s in candidates:
            if s in outcomes:
                continue
            if best is not None and order[s] > order[best]:
                skipped[s] = f"larger than {best.label}, which passes"
            elif (f := next((f for f in failed if f.covers(s)), None)) is not None:
                skipped[s] = f"no larger than {f.label}, which fails"
            else:
                pending.append(s)
        if not pending or trained >= max_candidates:
            break
        # Galloping up while nothing passed (cheap shapes first), bisection below a pass.
        pick = pending[min(jump, len(pending)) - 1] if best is None else pending[(len(pending) - 1) // 2]
        jump *= 2
        outcomes[pick] = evaluate(pick)
        trained += 1
    for s in pending:
        skipped[s] = CAP_REASON
    return best, outcomes, skipped


def pareto(points: dict[Shape, tuple[float, ...]]) -> set[Shape]:
    """The shapes no other one beats: values are costs to minimise, the last one (accuracy) to maximise."""
    def better(a, b) -> bool:  # a dominates b
        ka, kb = (*a[:-1], -a[-1]), (*b[:-1], -b[-1])
        return all(x <= y for x, y in zip(ka, kb)) and ka != kb
    return {s for s, v in points.items() if not any(better(w, v) for t, w in points.items() if t != s)}


# -- training and scoring one candidate -----------------------------------------------------------

def random_student(shape: Shape, task: Task, *, name: str = "synth", seed: int = 0):
    """The quantized model (task.weights, task.embedding) of a randomly initialised TinyLSTM of
    this shape, through the real quantizer (realistic scales and requantization forms),
    calibrated on random inputs."""
    import torch

    from ..quant.quantize import quantize
    from ..student.tinylstm import StudentSpec, TinyLSTM, save_student

    labels = [f"class{k}" for k in range(task.num_classes)]
    rng = np.random.default_rng(seed)
    if task.kind == "text":
        spec = StudentSpec(kind="text", labels=labels, hidden=shape.hidden, layers=shape.layers,
                           embed_dim=shape.embed_dim, vocab_size=shape.vocab_size, max_len=task.max_len)
        calib = [[int(t) for t in rng.integers(1, shape.vocab_size, size=n)]
                 for n in rng.integers(1, task.max_len + 1, size=64)]
    else:
        spec = StudentSpec(kind="sequence", labels=labels, hidden=shape.hidden, layers=shape.layers,
                           embed_dim=shape.embed_dim, max_len=task.max_len, num_features=task.num_features)
        calib = rng.normal(0, 1, (64, task.max_len, task.num_features)).astype(np.float32)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        save_student(TinyLSTM(spec), spec, tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights saturate some gates; irrelevant for sizes and timing
            return quantize(tmp, calib, name=name, weights=task.weights, embedding=task.embedding)


def test_accuracies(dataset, knowledge_path: Path, folder: Path) -> dict:
    """The chosen candidate's int8 accuracy and the teacher's on the test split: read once, after
    the choice, for the report."""
    from ..harness.evaluate import labeled_accuracy, oracle_logits
    from ..quant.model import QuantModel
    from .train import load_knowledge
    y = np.asarray(dataset.test.y)
    if not len(y) or not (folder / "int8" / "model.json").is_file():
        return {}
    pred = oracle_logits(QuantModel.load(folder / "int8"), dataset.test).argmax(axis=1)
    teacher = load_knowledge(knowledge_path, "test", None)[0].argmax(axis=1)
    return {"samples": len(y), "int8_accuracy": labeled_accuracy(pred, y), "teacher_accuracy": labeled_accuracy(teacher, y)}


def teacher_accuracy(knowledge_path: str | Path, split) -> float:
    from .train import load_knowledge
    logits = load_knowledge(knowledge_path, "val", None)[0]
    y = np.asarray(split.y)
    if len(y) == 0:
        raise SearchError("the validation split is empty: the search scores candidates on it; "
                          "set task.val_fraction > 0")
    if logits.shape[0] != len(y):
        raise SearchError(f"{knowledge_path}: 'val.logits' has {logits.shape[0]} rows for {len(y)} validation "
                          "samples; the cache is from another task, re-run `tinyseek teacher`")
    return float(np.mean(logits.argmax(axis=1) == y))



def candidate_config(cfg, shape: Shape, epochs: int):
    """cfg with the student of `shape`, trained for `epochs` in all (0: as configured): the joint
    schedule's distill.epochs, or the progressive stages' epochs scaled to that total (a stage
    that trains keeps at least one)."""
    c = copy.deepcopy(cfg)
    c.student.hidden, c.student.layers, c.student.embed_dim = shape.hidden, shape.layers, shape.embed_dim
    if shape.vocab_size is not None:
        c.student.vocab_size = shape.vocab_size
    if epochs:
        c.distill.epochs = epochs  # progressive: shared out over the stages (config.progressive_stages)
    return c


RECORD = "candidate.json"


def scored(folder: Path, key: str) -> Outcome | None:
    """The outcome a candidate folder holds for the same inputs `key`, or None."""
    record = folder / RECORD
    if not record.is_file():
        return None
    old = json.loads(record.read_text())
    return Outcome(old["accuracy"], old.get("error", ""), old.get("details", {})) if old.get("key") == key else None


def train_and_score(dataset, knowledge_path: Path, cfg, folder: Path, key: str, expected: Cost) -> Outcome:
    """Distill, quantize and score one candidate in `folder` (student/, int8/, candidate.json,
    which records the outcome under the inputs `key`)."""
    from ..codegen.context import build_context
    from ..harness.evaluate import oracle_logits
    from ..quant.reference import QuantRangeError
    from ..quant.float_model import QuantError
    from ..quant.quantize import quantize_run
    from .train import distill

    folder.mkdir(parents=True, exist_ok=True)
    distill(dataset, knowledge_path, cfg, folder, progress=False)
    history = json.loads((folder / "student" / "history.json").read_text())
    details = {"float_val_accuracy": history.get("best_val_accuracy")}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            qm = quantize_run(cfg, folder, dataset, knowledge_path if cfg.quant.qat_epochs else None)
        details["warnings"] = [str(w.message) for w in caught]
    except (QuantRangeError, QuantError) as e:
        out = Outcome(None, f"quantization failed: {e}", details)
    else:
        ctx = build_context(qm, "search")
        ram = expected.state_bytes + expected.scratch_bytes
        if ctx["weight_bytes"] != expected.weight_bytes or ctx["ram_bytes"] != ram:
            raise SearchError(f"{folder.name}: the generated C stores {ctx['weight_bytes']} weight bytes and "
                              f"{ctx['ram_bytes']} RAM bytes, the cost model says {expected.weight_bytes} and "
                              f"{ram}: update memory_bytes() in "
                              "tools/tinyseek/distill/search.py to codegen's layout")
        pred = oracle_logits(qm, dataset.val).argmax(axis=1)
        out = Outcome(float(np.mean(pred == np.asarray(dataset.val.y))), "", details)
    (folder / RECORD).write_text(json.dumps({"key": key, "accuracy": out.accuracy, "error": out.error,
                                  "details": out.details}, indent=2) + "\n")
    return out


# -- the whole search ----------------------------------------------------------------------------

@dataclass
class SearchResult:
    board: str
    budget: Budget
    kernel_cost: KernelCost
    teacher_accuracy: float
    target: float
    chosen: Shape | None
    rows: list[dict]  # every shape of the grid with its cost and, if trained, its accuracy
    folder: Path
    untried: int = 0  # shapes that could have passed (or passed smaller) but were not trained: the cap
    files: list[Path] = field(default_factory=list)
    # The test split, read once after the choice (for the report, never for choosing): the chosen
    # student's int8 accuracy and the teacher's. None when not measured.
    test: dict = field(default_factory=dict)

    @property
    def message(self) -> str:
        if self.chosen is None:
            trained = [r for r in self.rows if r["int8_accuracy"] is not None]
            best = max(trained, key=lambda r: r["int8_accuracy"], default=None)
            tail = (f"; the best trained, {best['student']}, reaches {best['int8_accuracy']:.4f} "
                    f"({best['retention']:.1%} of the teacher)") if best else ""
            if self.untried:
                tail += f"; {self.untried} fitting shapes were not trained (search.max_candidates)"
            return (f"no student within the budget reached {self.target:.0%} of the teacher's validation accuracy "
                    f"({self.teacher_accuracy:.4f}){tail}: raise the budget, search.max_candidates or search.epochs")
        r = next(r for r in self.rows if r["student"] == self.chosen.label)
        caveat = (f"; {self.untried} smaller shapes were not trained (search.max_candidates), so a smaller one may "
                  "pass too: raise it to settle them") if self.untried else ""
        test = (f"; on the test split: int8 {self.test['int8_accuracy']:.4f}, teacher "
                f"{self.test['teacher_accuracy']:.4f}" if self.test.get("int8_accuracy") is not None else "")
        return (f"smallest student reaching {self.target:.0%} of the teacher: {self.chosen.label} "
                f"(int8 validation accuracy {r['int8_accuracy']:.4f}, {r['retention']:.1%} of the teacher's "
                f"{self.teacher_accuracy:.4f}{test}; flash {r['flash_bytes'] / KB:.1f} KB, RAM {r['ram_bytes']:,} B, "
                f"worst-case latency {r['latency_ms']:.3g} ms on {self.board}){caveat}")


@dataclass
class Plan:
    """Everything the search decides before training: the board, its costs and budget, and the
    shapes of the grid that fit, smallest first."""
    board: BoardProfile
    kernel_cost: KernelCost
    budget: Budget
    task: Task
    costs: dict[Shape, Cost]
    candidates: list[Shape]


def plan_search(dataset, cfg) -> Plan:
    """Price every grid shape of cfg.search on its board; SearchError when none fits."""
    s, w = cfg.search, cfg.quant.weights
    board = load_profile(s.board)
    kc = load_kernel_cost(s.board, weights=w)
    budget = make_budget(board, s.flash_kb, s.ram_kb, s.latency_ms)
    if dataset.kind == "text":
        from ..student.tokenizer import HashTokenizer
        task = Task("text", len(dataset.labels), cfg.student.max_len, weights=w, embedding=cfg.quant.embedding or w)
        tok = HashTokenizer(2, cfg.student.max_len)  # token counts do not depend on the vocabulary
        lengths = [len(tok.encode(t)) for t in dataset.val.texts]
    else:
        task = Task("sequence", len(dataset.labels), int(dataset.train.x.shape[1]), int(dataset.train.x.shape[2]),
                    weights=w)
        lengths = [task.max_len]
    typical = float(np.median(lengths)) if lengths else float(task.max_len)
    shapes = grid(s, dataset.kind)
    costs = {sh: student_cost(sh, task, board, kc, typical) for sh in shapes}
    return Plan(board, kc, budget, task, costs, fitting(shapes, costs, budget, s.board))


def run_search(dataset, knowledge_path: str | Path, cfg, out_dir: str | Path, *, force: bool = False,
               log: Callable[[str], None] = print, evaluate: Callable[[Shape], Outcome] | None = None,
               plan: Plan | None = None) -> SearchResult:
    """Search with the settings of cfg.search; write search.json, search.md and search.png to
    out_dir and each trained candidate to out_dir/candidates/<shape>/. `evaluate` replaces the
    distill-quantize-score step (tests)."""
    from .. import __version__
    from ..pipeline import hash_obj, hash_safetensors

    s = cfg.search
    out_dir = Path(out_dir)
    plan = plan or plan_search(dataset, cfg)
    budget, costs, candidates, shapes = plan.budget, plan.costs, plan.candidates, list(plan.costs)
    teacher = teacher_accuracy(knowledge_path, dataset.val)
    threshold = s.target * teacher
    log(f"[search] {len(candidates)} of {len(shapes)} shapes fit {budget.describe()} on {s.board}; teacher "
        f"validation accuracy {teacher:.4f}, target {threshold:.4f} ({s.target:.0%}); training at most "
        f"{s.max_candidates}")

    known: dict[Shape, Outcome] = {}
    if evaluate is None:
        knowledge = Path(knowledge_path)
        khash = hash_safetensors(knowledge)

        def where(shape: Shape):
            c = candidate_config(cfg, shape, s.epochs)
            key = hash_obj([__version__, asdict(c.task), asdict(c.student), asdict(c.distill), asdict(c.quant), khash])
            return c, out_dir / "candidates" / shape.label, key

        def evaluate(shape: Shape) -> Outcome:
            c, folder, key = where(shape)
            return train_and_score(dataset, knowledge, c, folder, key, costs[shape])

        if not force:  # candidates scored by an earlier search with the same inputs cost nothing
            known = {sh: o for sh in candidates if (o := scored(*where(sh)[1:])) is not None}
            if known:
                log(f"[search] {len(known)} candidates scored before: " + ", ".join(sh.label for sh in known))

    def logged(shape: Shape) -> Outcome:
        out = evaluate(shape)
        acc = "n/a" if out.accuracy is None else f"{out.accuracy:.4f}"
        verdict = "passes" if out.accuracy is not None and out.accuracy >= threshold else "fails"
        log(f"[search] {shape.label}: flash {costs[shape].flash_bytes / KB:.1f} KB, {cfg.quant.weights} accuracy {acc} "
            f"-> {verdict}"
            + (f" ({out.error})" if out.error else ""))
        return out

    chosen, outcomes, skipped = select(candidates, logged, threshold, s.max_candidates, known)
    rank = {sh: i for i, sh in enumerate(candidates)}
    untried = [sh for sh, why in skipped.items() if why == CAP_REASON and (chosen is None or rank[sh] < rank[chosen])]
    trained = {sh: o for sh, o in outcomes.items() if o.accuracy is not None}
    front = pareto({sh: (costs[sh].flash_bytes, costs[sh].ram_bytes, costs[sh].latency_ms, o.accuracy)
                    for sh, o in trained.items()})
    rows = []
    fit = set(candidates)
    for sh in sorted(shapes, key=lambda x: (size_key(costs[x]), x)):
        c, o = costs[sh], outcomes.get(sh)
        acc = o.accuracy if o else None
        status = ("chosen" if sh == chosen else "trained" if o else skipped.get(sh, "") if sh in fit
                  else "over budget")
        rows.append({"student": sh.label, **asdict(sh), **asdict(c), "fits": sh in fit,
                     "int8_accuracy": acc, "retention": acc / teacher if acc is not None and teacher else None,
                     "passes": acc is not None and acc >= threshold, "pareto": sh in front, "status": status,
                     "error": o.error if o else "", "details": o.details if o else {}})
    result = SearchResult(board=s.board, budget=budget, kernel_cost=plan.kernel_cost, teacher_accuracy=teacher,
                          target=s.target, chosen=chosen, rows=rows, folder=out_dir, untried=len(untried))
    if chosen is not None:
        result.test = test_accuracies(dataset, Path(knowledge_path), out_dir / "candidates" / chosen.label)
    result.files = write_report(result)
    log(f"[search] {result.message}")
    return result


def search_run(run, force: bool = False) -> SearchResult:
    """`tinyseek search`: the teacher stage (skipped when up to date), then the search into
    <run>/search/."""
    plan = plan_search(run.dataset, run.cfg)  # a budget nothing fits fails before any training
    run.stage("teacher")
    return run_search(run.dataset, run.knowledge, run.cfg, run.dir / "search", force=force, log=run.log, plan=plan)


# -- the report ----------------------------------------------------------------------------------

def markdown(result: SearchResult) -> str:
    kc, b = result.kernel_cost, result.budget
    unit = kc.unit if kc.measured_on == result.board else f"{kc.unit} of {kc.measured_on} taken as cycles"
    lines = [
        f"Board {result.board}, budget {b.describe()}; teacher validation accuracy {result.teacher_accuracy:.4f}, "
        f"target {result.target:.0%} of it ({result.target * result.teacher_accuracy:.4f}).",
        f"Latency: predicted {unit} ({kc.kernel} kernels) at the board's clock; worst case = max_len steps, "
        "typical = the validation split's median. Flash = the model's arrays + its code; RAM = state + scratch + "
        "stack allowance (the firmware's measured peak). Pareto-optimal among the trained students: **yes**.",
        "",
        result.message + ".",
        "",
        "| student | hidden | layers | embed | vocab | flash KB | RAM B | latency ms (worst / typical) | "
        "int8 val acc | of teacher | Pareto | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        if r["int8_accuracy"] is None and r["status"] != "chosen" and not r["error"]:
            continue
        acc = "n/a" if r["int8_accuracy"] is None else f"{r['int8_accuracy']:.4f}"
        ret = "" if r["retention"] is None else f"{r['retention']:.1%}"
        name = f"**{r['student']}**" if r["status"] == "chosen" else r["student"]
        lines.append(f"| {name} | {r['hidden']} | {r['layers']} | {r['embed_dim']} | {r['vocab_size'] or '-'} | "
                     f"{r['flash_bytes'] / KB:.1f} | {r['ram_bytes']:,} | {r['latency_ms']:.3g} / "
                     f"{r['typical_ms']:.3g} | {acc} | {ret} | {'**yes**' if r['pareto'] else ''} | "
                     f"{r['status']}{': ' + r['error'] if r['error'] else ''} |")
    fit = [r for r in result.rows if r["fits"]]
    untrained = [r for r in fit if r["int8_accuracy"] is None and not r["error"] and r["status"] != "chosen"]
    lines += ["", f"{len(fit)} of {len(result.rows)} grid shapes fit the budget; {len(fit) - len(untrained)} trained, "
              f"{len(untrained)} not trained (search.json gives each one's reason)."]
    return "\n".join(lines) + "\n"


def plot(result: SearchResult, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.rows if r["int8_accuracy"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, xkey, scale, label, limit in (
            (axes[0], "flash_bytes", 1 / KB, "flash, KB", result.budget.flash_bytes / KB),
            (axes[1], "latency_ms", 1.0, f"worst-case latency on {result.board}, ms", result.budget.latency_ms)):
        for r in rows:
            ax.scatter(r[xkey] * scale, r["int8_accuracy"], s=40, marker="o",
                       color="tab:green" if r["passes"] else "tab:red", edgecolors="k" if r["pareto"] else "none",
                       linewidths=1.5, zorder=3)
            if r["pareto"]:  # the others would crowd the labels that matter
                ax.annotate(r["student"], (r[xkey] * scale, r["int8_accuracy"]), textcoords="offset points",
                            xytext=(5, -9), fontsize=6, color="dimgray")
        ax.scatter([], [], s=40, facecolors="none", edgecolors="k", linewidths=1.5,
                   label="Pareto-optimal (flash, RAM, latency, accuracy)")
        for r in rows:
            if r["status"] == "chosen":
                ax.scatter(r[xkey] * scale, r["int8_accuracy"], s=220, marker="*", color="gold", edgecolors="k",
                           zorder=4, label=f"chosen: {r['student']}")
        ax.axhline(result.target * result.teacher_accuracy, color="tab:blue", ls="--", lw=0.8,
                   label=f"target ({result.target:.0%} of teacher)")
        if limit is not None and rows and limit < 4 * max(r[xkey] * scale for r in rows):
            ax.axvline(limit, color="gray", ls=":", lw=0.8, label="budget")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("int8 validation accuracy")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Student search: green passes, red fails, black edge = Pareto-optimal (labelled)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(result: SearchResult) -> list[Path]:
    result.folder.mkdir(parents=True, exist_ok=True)
    data = {"board": result.board, "budget": asdict(result.budget), "kernel_cost": asdict(result.kernel_cost),
            "teacher_accuracy": result.teacher_accuracy, "target": result.target,
            "chosen": result.chosen.label if result.chosen else None, "untried": result.untried,
            "message": result.message, "test": result.test, "rows": result.rows}
    js = result.folder / "search.json"
    js.write_text(json.dumps(data, indent=2) + "\n")
    md = result.folder / "search.md"
    md.write_text(markdown(result))
    return [js, md, plot(result, result.folder / "search.png")]
