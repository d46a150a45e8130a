"""Load a teacher from local files only: a Hugging Face folder (safetensors) or a .gguf file.

Nothing here touches the network (`local_files_only=True`) or runs code shipped with a
checkpoint (`trust_remote_code=False`): the supported model types are implemented in
transformers itself. Pickle-based weights (`pytorch_model.bin`) are refused, because
unpickling a file can run arbitrary code.

Size: weights load in the dtype asked for (`resolve_dtype`: "auto" is float32 where it fits and
the CPU has no fast bfloat16, measured once per process; bfloat16 above AUTO_BF16_PARAMS
parameters on a GPU or a CPU whose bfloat16 matmuls are faster, or where float32 would not fit in
memory, so a 7B model takes ~14 GB instead of ~28 GB) straight onto the
device asked for (`resolve_device`: "auto" is CUDA when torch sees a GPU). A GGUF file is
dequantized once into a safetensors folder (`gguf_to_folder`) that later loads read. transformers 5
always builds the model on the meta device and fills it tensor by tensor from the
memory-mapped safetensors, so loading never holds a second full copy of the weights.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

if not sys.stderr.isatty():  # progress bars in a log file are noise: the stages log plain lines
    from functools import partial

    import transformers.modeling_gguf_pytorch_utils as _hf_gguf
    from transformers.utils import logging as _hf_logging
    _hf_logging.disable_progress_bar()
    _hf_gguf.tqdm = partial(_hf_gguf.tqdm, disable=True)  # its GGUF bar ignores the switch above

# Tested families; any other decoder-only model transformers loads goes through the same path.
SUPPORTED_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "qwen2", "llama", "gemma3_text")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Above this many parameters "auto" halves the weights' memory: float32 matters for the tiny
# built-in teacher (trained from scratch), not for a pretrained model of billions.
AUTO_BF16_PARAMS = 100_000_000
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class TeacherError(ValueError):
    """The teacher cannot be loaded, built or used as configured."""


def _check_model_type(model_type: str | None, where: str) -> None:
    """Any decoder-only language model transformers knows: its causal-LM class exists and it is
    not an encoder (BERT and its kind also have a causal-LM head, but read text both ways)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise TeacherError(
            f"{where}: model_type {model_type!r} is not a decoder-only language model transformers can load; "
            f"the teacher is one (tested families: {', '.join(SUPPORTED_MODEL_TYPES)})")


def resolve_device(device: str = "auto") -> torch.device:
    """"auto": CUDA when torch sees a GPU, else the CPU; "cpu"; "cuda" or "cuda:N"."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", device):
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise TeacherError(
                f"teacher.device = {device!r} but torch ({torch.__version__}, {build}) sees no CUDA GPU; set "
                f"teacher.device = \"auto\" or \"cpu\", or install a CUDA build of torch on a machine with a GPU")
        return torch.device(device)
    raise TeacherError(f"teacher.device {device!r} is unknown; choose auto, cpu, cuda or cuda:N")


_BF16_SPEEDUP: float | None = None


def cpu_bf16_speedup() -> float:
    """float32 time / bfloat16 time of the same matmul on this CPU, measured once per process
    (about 0.1 s). Below 1, bfloat16 is emulated: on CPUs without bfloat16 instructions it ran
    more than 4x slower than float32."""
    global _BF16_SPEEDUP
    if _BF16_SPEEDUP is None:
        import time
        a, b = torch.randn(64, 512), torch.randn(512, 512)

        def timed(dtype) -> float:
            x, y = a.to(dtype), b.to(dtype)
            x @ y  # warm-up
            t0 = time.perf_counter()
            for _ in range(10):
                x @ y
            return time.perf_counter() - t0
        _BF16_SPEEDUP = timed(torch.float32) / max(timed(torch.bfloat16), 1e-9)
    return _BF16_SPEEDUP


def _memory_bytes() -> int:
    try:
        import os
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def resolve_dtype(dtype: str, num_params: int, device: torch.device) -> torch.dtype:
    """The weights' dtype: `dtype` by name, or for "auto": float32 up to AUTO_BF16_PARAMS
    parameters; above that on a GPU bfloat16 (float16 without bfloat16); on a CPU float32 unless
    its bfloat16 matmuls are faster (cpu_bf16_speedup) or float32 weights would take more than
    half the memory."""
    if dtype in DTYPES:
        return DTYPES[dtype]
    if dtype != "auto":
        raise TeacherError(f"teacher.dtype {dtype!r} is unknown; choose auto, {', '.join(DTYPES)}")
    if num_params <= AUTO_BF16_PARAMS:
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if 4 * num_params > _memory_bytes() // 2:
        return torch.bfloat16
    return torch.bfloat16 if cpu_bf16_speedup() > 1.1 else torch.float32


def use_threads(threads: int) -> int:
    """torch's CPU threads for a teacher stage: `threads` (teacher.threads), or 0 for
    OMP_NUM_THREADS when set, else every core. Returns the number set."""
    import os
    n = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def cache_arg(model) -> str:
    """The keyword a model's forward takes its key/value cache by (transformers 5 renames
    `past_key_values` to `cache`, model by model)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output):
    """The key/value cache a forward pass returned, under either name."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def count_parameters(config) -> int:
    """Parameters of the model `config` describes (tied weights once), counted on the meta
    device: nothing is allocated, so this is instant even for billions of parameters."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _missing_source(source: str, path: Path) -> TeacherError:
    if _HUB_ID.fullmatch(source) and not source.startswith("."):
        return TeacherError(
            f"teacher source {source!r} is no local file or folder and looks like a Hugging Face Hub id, but "
            f"tinyseek works offline and loads only local paths. On a machine with network access download the files, e.g. "
            f"`huggingface-cli download {source} --local-dir {source.split('/')[-1]}` (`hf download` in newer "
            f"huggingface_hub; or fetch a .gguf file), copy that folder here and set teacher.source to its path "
            f"(docs/teachers.md)")
    return TeacherError(f"teacher source {path} does not exist; give a local Hugging Face folder, "
                        f"a .gguf file, or \"default\" for the built-in tiny teacher")


def _check_vocab(model, tokenizer, where: str) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise TeacherError(
            f"{where}: tokenizer mismatch: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"embedding has only {rows} rows; use the tokenizer that was released with these weights")


def _prepare_tokenizer(tokenizer):
    # Right padding keeps every real token at its true position; mean pooling masks the rest.
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise TeacherError("the tokenizer defines no pad, eos or unk token to pad batches with")
    return tokenizer


def _load_tokenizer(folder: Path, what: str):
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise TeacherError(
            f"{what}: no tokenizer in {folder} (expected one of {', '.join(_TOKENIZER_FILES)}); copy the "
            f"tokenizer files that came with the model into that folder or set teacher.tokenizer to a folder "
            f"holding them")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise TeacherError(f"{what}: the tokenizer in {folder} cannot be loaded: {e}") from e


def _load_folder(path: Path, tokenizer: str | None, dtype: str, device: torch.device):
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise TeacherError(f"{path} is not a Hugging Face model folder: it has no config.json")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise TeacherError(f"{cfg_file} is not valid JSON: {e}") from e
    _check_model_type(model_type, str(path))
    if not any(path.glob("model*.safetensors")):
        if any(path.glob("pytorch_model*.bin")):
            raise TeacherError(
                f"{path} holds only pickle weights (pytorch_model*.bin); tinyseek loads safetensors only, "
                f"because unpickling a file can run arbitrary code. Convert them on a trusted machine "
                f"(load the model and call model.save_pretrained(folder, safe_serialization=True)) or download "
                f"the .safetensors files")
        raise TeacherError(f"{path} has no model*.safetensors weight file")
    for f in sorted(path.glob("model*.safetensors")):
        check_safetensors(f)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation="eager", use_safetensors=True, local_files_only=True,
        trust_remote_code=False, dtype=resolve_dtype(dtype, count_parameters(config), device),
        device_map=_device_map(device))
    tok = _load_tokenizer(Path(tokenizer) if tokenizer else path, str(path))
    return model, tok


def check_safetensors(f: Path) -> None:
    """The header of a safetensors file against its size: a truncated download is named as such."""
    size = f.stat().st_size
    with f.open("rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            if not 2 <= n <= size - 8:
                raise ValueError(f"a header of {n} bytes")
            header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise TeacherError(f"{f} is not a readable safetensors file ({e}); download it again") from e
    if 8 + n + end > size:
        raise TeacherError(f"{f} is truncated: its header describes {8 + n + end:,} bytes, the file has {size:,}; "
                           "download it again (an interrupted copy?)")


_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # fixed-size value types
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_metadata_problem(data: memoryview) -> str | None:
    """Walk the GGUF header and metadata key/value pairs; the first thing that cannot be read,
    with its byte offset, or None."""
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise ValueError(f"{what} at offset {pos} needs {n:,} bytes, but the file ends at {len(data):,}")
        pos += n
        return bytes(data[pos - n:pos])

    def num(n: int, what: str) -> int:
        return int.from_bytes(take(n, what), "little")

    def value(kind: int, what: str) -> None:
        if kind == _GGUF_STRING:
            take(num(8, f"the length of {what}"), what)
        elif kind == _GGUF_ARRAY:
            start = pos
            elem, count = num(4, f"the element type of {what}"), num(8, f"the length of {what}")
            if elem not in _GGUF_SIZES and elem != _GGUF_STRING:
                raise ValueError(f"{what} at offset {start} has the unknown element type {elem}")
            if elem in _GGUF_SIZES:
                take(count * _GGUF_SIZES[elem], what)
            else:
                for i in range(count):
                    value(elem, f"element {i} of {what}")
        elif kind in _GGUF_SIZES:
            take(_GGUF_SIZES[kind], what)
        else:
            raise ValueError(f"{what} at offset {pos - 4} has the unknown value type {kind}")

    try:
        take(4, "the magic")
        version, _, keys = num(4, "the version"), num(8, "the tensor count"), num(8, "the metadata key count")
        if version not in (2, 3):
            return f"GGUF version {version} at offset 4 (tinyseek reads versions 2 and 3)"
        for k in range(keys):
            start = pos
            name = take(num(8, f"the length of key {k}"), f"key {k}")
            value(num(4, f"the value type of key {k}"), f"the value of key {k} ({name[:40]!r}, from offset {start})")
    except ValueError as e:
        return str(e)
    return None


def check_gguf(path: Path) -> None:
    """The GGUF header and metadata, read before transformers is asked: a damaged file is named
    with the offset where reading failed, not as a missing config."""
    import mmap
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise TeacherError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as view:
            problem = _gguf_metadata_problem(view)
    if problem:
        raise TeacherError(f"{path}: the GGUF metadata could not be read: {problem}; the file is damaged or "
                           "truncated, download it again")
    from gguf import GGUFReader
    try:
        GGUFReader(str(path))
    except Exception as e:  # the reader raises whatever the bytes provoke (ValueError, IndexError, ...)
        raise TeacherError(f"{path}: the GGUF tensor table after the metadata could not be read ({type(e).__name__}: "
                           f"{e}); the file is damaged or truncated, download it again") from e


def _load_gguf(path: Path, tokenizer: str | None, dtype: str, device: torch.device):
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise TeacherError(
            f"loading {path.name} needs the packages {' and '.join(missing)}: pip install 'tinyseek[gguf]' "
            f"(or pip install gguf accelerate)")
    folder, name = str(path.parent), path.name
    check_gguf(path)
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise TeacherError(f"{path}: transformers cannot read this GGUF file: {e}") from e
    _check_model_type(config.model_type, str(path))
    # Dequantized to plain modules of `dtype` (each tensor is cast right after dequantizing):
    # the backbone can then be trained, and saved as a safetensors folder after adaptation
    # (a GGUF-quantized model cannot be saved).
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, attn_implementation="eager", local_files_only=True,
        trust_remote_code=False, dtype=resolve_dtype(dtype, count_parameters(config), device),
        quantization_config=GgufConfig(dequantize=True), device_map=_device_map(device))
    if tokenizer:
        tok = _load_tokenizer(Path(tokenizer), str(path))
    else:
        try:
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise TeacherError(
                f"{path}: the tokenizer inside the GGUF file cannot be loaded ({e}); set teacher.tokenizer to a "
                f"folder with the model's tokenizer files") from e
    return model, tok


GGUF_STAMP = "gguf.json"


def gguf_to_folder(path: str | Path, folder: str | Path, tokenizer: str | Path | None = None, dtype: str = "auto",
                   log=print) -> Path:
    """Dequantize the .gguf file `path` once into `folder` (safetensors weights, config and
    tokenizer, a Hugging Face folder); later calls with the same file (name, size, modification
    time) and dtype return the folder at once. Dequantizing a 135M model takes minutes on two
    cores; loading the folder takes seconds."""
    import time
    path, folder = Path(path).expanduser().resolve(), Path(folder)
    st = path.stat()
    stamp = {"gguf": path.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "dtype": dtype,
             "tokenizer": str(tokenizer or "")}
    stamp_file = folder / GGUF_STAMP
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return folder
    log(f"[teacher] dequantizing {path.name} ({st.st_size / 2**20:.0f} MiB) once into {folder} (safetensors); "
        "later builds load that folder")
    t0 = time.monotonic()
    model, tok = load_teacher(path, tokenizer, dtype=dtype, device="cpu")
    if folder.exists():
        import shutil
        shutil.rmtree(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
    log(f"[teacher] dequantized in {time.monotonic() - t0:.0f} s: "
        f"{sum(f.stat().st_size for f in folder.glob('*.safetensors')) / 2**20:.0f} MiB of "
        f"{next(model.parameters()).dtype} weights")
    return folder


def _device_map(device: torch.device) -> str | None:
    # On a GPU the weights go straight to it; on the CPU they stay where they were loaded.
    return str(device) if device.type == "cuda" else None


def load_teacher(source: str | Path, tokenizer: str | Path | None = None, dtype: str = "float32",
                 device: str = "cpu"):
    """Load `(model, tokenizer)` from a local HF folder or a .gguf file.

    The model is an `AutoModelForCausalLM` with eager attention (so attention maps can be
    returned), in eval mode, its weights in `dtype` (auto, bfloat16, float16, float32; see
    `resolve_dtype`) on `device` (auto, cpu, cuda[:N]; see `resolve_device`). Memory is about
    the weights' size: 2 bytes per parameter in bfloat16/float16, 4 in float32; GGUF weights are
    dequantized to `dtype` on load. The defaults keep float32 on the CPU, as training needs;
    the teacher settings (teacher.dtype, teacher.device) default to "auto". `tokenizer` is an
    optional folder with tokenizer files that replaces the one found next to the weights. The
    tokenizer pads on the right; one without a pad token pads with its eos (or unk) token.
    Raises TeacherError.
    """
    source = str(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise _missing_source(source, path)
    target = resolve_device(device)
    resolve_dtype(dtype, 0, target)  # an unknown name fails before anything is read
    if path.is_dir():
        model, tok = _load_folder(path, str(tokenizer) if tokenizer else None, dtype, target)
    elif path.suffix.lower() == ".gguf":
        model, tok = _load_gguf(path, str(tokenizer) if tokenizer else None, dtype, target)
    else:
        raise TeacherError(f"teacher source {path} is a file but not a .gguf file; give a Hugging Face "
                           f"folder (config.json + *.safetensors + tokenizer) or a .gguf file")
    _check_vocab(model, tok, str(path))
    return model.eval(), _prepare_tokenizer(tok)
