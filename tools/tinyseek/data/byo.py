"""Bring your own data: JSONL (text classification) and NPZ (sequence classification).

Both read `task.train` and an optional `task.test`; without a test file a stratified, seeded
`task.test_fraction` of train is held out. Validation is seeded the same way from what is left.
JSONL lines may go without a label when the classes are listed in `task.labels`: the teacher
then labels the texts (teacher.labels = "zero-shot"); such samples have y = UNLABELED (-1).
Every problem raises DataError naming the file, the line or sample, and the fix. NPZ files are
read with allow_pickle=False: nothing in a data file can run code.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..config import TaskConfig
from .dataset import DataError, Dataset, Split, group_holdout, stratified_holdout, take

_JSONL_EXAMPLE = '{"text": "turn on the lights", "label": "lights_on"}'
UNLABELED = -1  # y of a sample without a label (JSONL with task.labels); its label comes from the teacher
_UNLABELED_HINT = ('or, to let the teacher label the texts, list the classes in task.labels: the teacher\'s '
                   'head learns from the labelled lines and labels the rest, or teacher.labels = "zero-shot" '
                   'labels them all (docs/datasets.md)')


def _existing(path: str, setting: str, what: str) -> Path:
    if not path:
        raise DataError(f"{setting} is empty; set it to {what}")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{setting}: {p} does not exist; set {setting} to {what}")
    return p


def _label_order(labels: set[str]) -> list[str]:
    # Sorted, with all-digit labels in numeric order ("2" before "10").
    return sorted(labels, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))


# -- JSONL --------------------------------------------------------------------------------
MAX_JSONL_LINE = 1 << 20  # bytes; a longer line is no sample of text


def _lines(path: Path):
    """(line number, bytes) of a file, read line by line: a huge or wrong file costs no more
    memory than one line, and no line may exceed MAX_JSONL_LINE."""
    with path.open("rb") as f:
        lineno = 0
        while raw := f.readline(MAX_JSONL_LINE + 1):
            lineno += 1
            if len(raw) > MAX_JSONL_LINE:
                raise DataError(f"{path} line {lineno}: longer than {MAX_JSONL_LINE:,} bytes; a JSONL file has one "
                                f"short JSON object per line, like {_JSONL_EXAMPLE}")
            yield lineno, raw.rstrip(b"\r\n")


def read_jsonl(path: Path, allow_unlabeled: bool = False) -> tuple[list[str], list[str | None]]:
    """(texts, labels) of a JSONL file; blank lines are skipped, integer labels become strings.
    With `allow_unlabeled`, a line without "label" (or with "label": null) gets None."""
    texts, labels = [], []
    for lineno, raw in _lines(path):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path} line {lineno}: not valid UTF-8 ({e.reason}); save the file as UTF-8") from e
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                            f"each line must be one object like {_JSONL_EXAMPLE}") from e
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}; "
                            f"write one object per line like {_JSONL_EXAMPLE}")
        unlabeled = allow_unlabeled and obj.get("label") is None
        missing = [k for k in ("text", "label") if k not in obj and not (k == "label" and unlabeled)]
        if missing:
            hint = f"; {_UNLABELED_HINT}" if missing == ["label"] else ""
            raise DataError(f"{path} line {lineno}: missing key {' and '.join(repr(k) for k in missing)}; "
                            f"each line needs both, like {_JSONL_EXAMPLE}{hint}")
        text, label = obj["text"], obj.get("label")
        if not isinstance(text, str):
            raise DataError(f"{path} line {lineno}: 'text' must be a string, got {type(text).__name__} "
                            f"{text!r:.40}; quote it")
        if not text.strip():
            raise DataError(f"{path} line {lineno}: 'text' is empty; remove the line or give it text")
        if unlabeled:
            texts.append(text)
            labels.append(None)
            continue
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(f"{path} line {lineno}: 'label' must be a string (or an integer), got "
                            f"{type(label).__name__} {label!r:.40}")
        label = str(label)
        if not label.strip():
            raise DataError(f"{path} line {lineno}: 'label' is empty; every sample needs a class name")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise DataError(f"{path} is empty (no JSON lines); write one object per line like {_JSONL_EXAMPLE}")
    return texts, labels


def load_jsonl(cfg: TaskConfig, labels: list[str] | None = None) -> Dataset:
    """The JSONL task. The classes are `labels`, else `cfg.labels`, else the training file's
    labels (sorted). With classes given, lines may lack a label (y = UNLABELED) and every label
    present must be one of them."""
    train_path = _existing(cfg.train, "task.train", f"a JSONL file with lines like {_JSONL_EXAMPLE}")
    fixed = [str(c) for c in (labels or cfg.labels)]
    texts, raw = read_jsonl(train_path, allow_unlabeled=bool(fixed))
    if fixed:
        _check_known(raw, fixed, train_path, None)
        labels = fixed
    else:
        labels = _label_order(set(raw))
    _need_two_classes(labels, train_path)
    index = {name: i for i, name in enumerate(labels)}
    full = Split(y=np.array([index.get(r, UNLABELED) for r in raw], dtype=np.int64), texts=texts, x=None,
                 groups=read_jsonl_groups(train_path, cfg.group) if cfg.group else None)
    def held_file(path: str, setting: str, fraction: str) -> Split | None:
        if not path:
            return None
        p = _existing(path, setting, f"a JSONL file (or leave {setting} empty to hold out {fraction} of train)")
        t_texts, t_raw = read_jsonl(p, allow_unlabeled=bool(fixed))
        _check_known(t_raw, labels, p, None if fixed else train_path)
        return Split(y=np.array([index.get(r, UNLABELED) for r in t_raw], dtype=np.int64), texts=t_texts, x=None)

    test = held_file(cfg.test, "task.test", "task.test_fraction")
    val = held_file(cfg.val, "task.val", "task.val_fraction")
    return _assemble(train_path.stem, "text", labels, full, test, cfg, val)


def read_jsonl_groups(path: Path, key: str) -> np.ndarray:
    """The group id of every sample line of a JSONL file (read_jsonl has checked the lines): its
    value under `key` (task.group), numbered in order of first appearance."""
    ids: dict[str, int] = {}
    out = []
    for lineno, raw in _lines(path):
        if not raw.strip():
            continue
        obj = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
        value = obj.get(key)
        if value is None or isinstance(value, (dict, list)) or str(value).strip() == "":
            raise DataError(f"{path} line {lineno}: no group under {key!r} (task.group); give every line a "
                            f"\"{key}\": \"...\" (speaker, session, source), or set task.group = \"\" to hold "
                            "out random samples")
        out.append(ids.setdefault(str(value), len(ids)))
    return np.array(out, dtype=np.int64)


def _check_known(raw: list[str | None], labels: list[str], path: Path, train_path: Path | None) -> None:
    """Every label in `raw` is one of `labels`: those of task.labels (`train_path` None) or of
    the training file `train_path`."""
    unknown = _label_order({r for r in raw if r is not None} - set(labels))
    if not unknown:
        return
    names = ", ".join(map(repr, unknown))
    if train_path is None:
        raise DataError(f"{path}: labels {names} are not in task.labels ({', '.join(labels)}); add them to "
                        "task.labels or fix those lines")
    raise DataError(f"{path}: labels {names} do not occur in the training file {train_path} (its labels: "
                    f"{', '.join(labels)}); add training samples of them or remove them from the test file")


# -- NPZ ----------------------------------------------------------------------------------
def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; write it with np.savez(path, x=x, y=y)")
    with path.open("rb") as f:
        magic = f.read(6)
    if not magic.startswith(b"PK\x03\x04") or not zipfile.is_zipfile(path):
        kind = "a single .npy array" if magic == b"\x93NUMPY" else "not a .npz (zip) archive"
        raise DataError(f"{path} is {kind}; write x and y together with np.savez(path, x=x, y=y)")
    arrays = {}
    try:
        _check_npz_headers(path)
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                try:
                    arrays[name] = z[name]
                except ValueError as e:  # object arrays need pickle, which is refused
                    hint = ("pad every sequence to the same length T and save x as one float array [N, T, F]"
                            if name == "x" else
                            "save labels as a unicode array, np.array(labels, dtype=str)" if name == "labels" else
                            "save it as a plain numeric or unicode array")
                    raise DataError(f"{path}: array {name!r} is stored as Python objects (ragged or mixed "
                                    f"data), which is never unpickled; {hint}") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path} is a damaged .npz archive ({e}); write it again with np.savez(path, x=x, y=y)") from e
    return arrays


def _check_npz_headers(path: Path) -> None:
    """Each array's header against the bytes the archive holds for it, before anything is
    allocated: a header that declares an absurd shape is an error, not a memory exhaustion."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                except ValueError as e:
                    raise DataError(f"{path}: member {info.filename!r} is not a .npy array ({e}); write the file "
                                    "with np.savez(path, x=x, y=y)") from e
                data = info.file_size - f.tell()
            if dtype.hasobject:
                continue  # refused with its own message when read (never unpickled)
            need = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if need != data:
                raise DataError(f"{path}: array {info.filename.removesuffix('.npy')!r} declares shape {shape} of "
                                f"{dtype} ({need:,} bytes) but the archive holds {data:,} bytes for it; the file is "
                                "damaged or was not written by np.savez")


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """(x float32 [N, T, F], y int64 [N], label names or None) of an NPZ file, validated."""
    arrays = _load_npz(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array {' and '.join(map(repr, missing))} (has: "
                        f"{', '.join(arrays) or 'nothing'}); save it with np.savez(path, x=x, y=y)")
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 3:
        raise DataError(f"{path}: x must have 3 dimensions [N, T, F] (samples, steps, features), got shape "
                        f"{x.shape}; for one feature per step use x[..., None]")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{path}: x must be a float (or integer) array, got dtype {x.dtype}")
    if y.ndim != 1:
        raise DataError(f"{path}: y must be a 1-D array of class indices [N], got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must hold integer class indices, got dtype {y.dtype}; "
                        "use y.astype(np.int64) (and a 'labels' array for the names)")
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)}; they must match one to one")
    if len(y) == 0:
        raise DataError(f"{path} holds no samples (N = 0)")
    if 0 in x.shape[1:]:
        raise DataError(f"{path}: x has shape {x.shape}; every sample needs at least one step and one feature")
    if y.min() < 0:
        raise DataError(f"{path}: y[{int(np.argmin(y))}] = {int(y.min())}; class indices must be >= 0")
    with np.errstate(over="ignore"):  # checked after the cast, so values too large for float32 count as inf
        x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        n, t, f = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"{path}: sample {n} has a non-finite feature ({x[n, t, f]} at step {t}, feature {f}; "
                        f"samples affected: {int(bad.any(axis=(1, 2)).sum())}); replace NaN/inf before training")
    names = None
    if "labels" in arrays:
        lab = arrays["labels"]
        if lab.dtype.kind != "U" or lab.ndim != 1:
            raise DataError(f"{path}: 'labels' must be a 1-D unicode array, got dtype {lab.dtype} shape "
                            f"{lab.shape}; save np.array(names, dtype=str)")
        names = [str(s) for s in lab]
        if len(set(names)) != len(names):
            raise DataError(f"{path}: 'labels' repeats a name ({names}); every class needs its own name")
        if y.max() >= len(names):
            raise DataError(f"{path}: y[{int(np.argmax(y))}] = {int(y.max())} but 'labels' names only "
                            f"{len(names)} classes (0..{len(names) - 1}); add the missing names")
    return x, y.astype(np.int64), names


def load_npz(cfg: TaskConfig) -> Dataset:
    train_path = _existing(cfg.train, "task.train", "an .npz file with arrays x [N, T, F] and y [N]")
    x, y, names = read_npz(train_path)
    labels = names if names is not None else [str(i) for i in range(int(y.max()) + 1)]
    _need_two_classes(labels, train_path)
    absent = [labels[c] for c in range(len(labels)) if not np.any(y == c)]
    if absent:
        raise DataError(f"{train_path}: class{'es' if len(absent) > 1 else ''} {', '.join(map(repr, absent))} "
                        f"{'have' if len(absent) > 1 else 'has'} no training sample; add samples or remove the "
                        "class (from 'labels', or renumber y to 0..K-1)")
    def held_file(path: str, setting: str, fraction: str) -> Split | None:
        if not path:
            return None
        p = _existing(path, setting, f"an .npz file (or leave {setting} empty to hold out {fraction} of train)")
        tx, ty, tnames = read_npz(p)
        if tx.shape[2] != x.shape[2]:
            raise DataError(f"{p}: x has {tx.shape[2]} features per step but the training file has "
                            f"{x.shape[2]}; both must have the same F")
        if tnames is not None:  # map the file's names onto training indices
            unknown = [n for n in dict.fromkeys(tnames[c] for c in np.unique(ty)) if n not in labels]
            if unknown:
                raise DataError(f"{p}: labels {', '.join(map(repr, unknown))} do not occur in the training "
                                f"file {train_path} (its labels: {', '.join(labels)}); add training samples of "
                                "them or remove them from this file")
            ty = np.array([labels.index(tnames[c]) for c in ty], dtype=np.int64)
        elif ty.max() >= len(labels):
            unknown = sorted(int(c) for c in np.unique(ty[ty >= len(labels)]))
            raise DataError(f"{p}: class indices {', '.join(map(str, unknown))} do not occur in the "
                            f"training file {train_path} (classes 0..{len(labels) - 1}); fix y or add training "
                            "samples of them")
        return Split(y=ty, texts=None, x=tx)

    test = held_file(cfg.test, "task.test", "task.test_fraction")
    val = held_file(cfg.val, "task.val", "task.val_fraction")
    groups = _npz_groups(train_path, cfg.group, len(y)) if cfg.group else None
    return _assemble(train_path.stem, "sequence", labels, Split(y=y, texts=None, x=x, groups=groups), test, cfg, val)


def _npz_groups(path: Path, key: str, n: int) -> np.ndarray:
    """The NPZ array `key` (task.group) as group ids [N]: one integer or string per sample."""
    arrays = _load_npz(path)
    if key not in arrays:
        raise DataError(f"{path}: no array {key!r} for task.group (has: {', '.join(arrays)}); save one group id "
                        f"per sample, np.savez(path, x=x, y=y, {key}=ids), or set task.group = \"\"")
    g = arrays[key]
    if g.ndim != 1 or len(g) != n or g.dtype.kind not in "iuU":
        raise DataError(f"{path}: array {key!r} (task.group) must be 1-D integers or strings, one per sample "
                        f"({n}); got dtype {g.dtype} shape {g.shape}")
    return np.unique(g, return_inverse=True)[1].astype(np.int64)


# -- shared -------------------------------------------------------------------------------
def _need_two_classes(labels: list[str], path: Path) -> None:
    if len(labels) < 2:
        raise DataError(f"{path}: only {len(labels)} class ({', '.join(labels)}); a classifier needs at least "
                        "2 classes in the training file")


def _assemble(name: str, kind: str, labels: list[str], full: Split, test: Split | None,
              cfg: TaskConfig, val: Split | None = None) -> Dataset:
    """Hold out test (when no test file was given), then validation (when no validation file
    was given), seeded: whole groups with task.group, else stratified samples."""
    def holdout(split: Split, fraction: float, stream: int):
        rng = np.random.default_rng([cfg.seed, stream])
        if split.groups is None:
            return stratified_holdout(split.y, fraction, rng)
        return group_holdout(split.groups, fraction, rng)

    present = set(full.y.tolist())
    if test is None:
        keep, held = holdout(full, cfg.test_fraction, 0)
        full, test = take(full, keep), take(full, held)
    if val is not None:  # a validation file, e.g. a benchmark's official split
        return Dataset(name=name, kind=kind, labels=labels, train=full, val=val, test=test, split_by="file")
    keep, held = holdout(full, cfg.val_fraction, 1)
    train = take(full, keep)
    if full.groups is not None:
        absent = [labels[c] for c in range(len(labels)) if c in present and not np.any(train.y == c)]
        if absent:
            raise DataError(f"task.group = {cfg.group!r}: every sample of class {', '.join(map(repr, absent))} fell into "
                            "held-out groups, so nothing teaches it; add groups of that class or lower "
                            "task.val_fraction / task.test_fraction")
    return Dataset(name=name, kind=kind, labels=labels, train=train, val=take(full, held), test=test,
                   split_by=f"group {cfg.group!r}" if cfg.group else "samples")
