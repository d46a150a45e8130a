"""Core ML (iPhone, iPad, Mac): the torch student traced and converted by coremltools 9 into
an ML program (.mlpackage), float32, and its weights quantized by coremltools' own optimizer
(`tinyseek edge --runtime coreml`, docs/edge.md).

Core ML runs predictions on Apple systems only: coremltools' `MLModel.predict` needs the
Core ML framework, which its Linux wheel does not have (it raises "Model prediction is only
supported on macOS"). Off macOS this module converts, saves, reloads the package and checks
its spec (inputs, output, the ML program's operators, the quantized weight ops) and reports
"converted, not run" instead of an accuracy; on macOS the same code runs the predictions.

coremltools has no ONNX frontend (removed in version 6): it reads the torch model. The
inputs are int32 [1, L] (Core ML has no int64 tensors), right-padded like TVM's; deployment
target iOS 18, the first with 4-bit blockwise weights.
"""
from __future__ import annotations

import contextlib
import io
import logging
import platform
import warnings
from pathlib import Path

import numpy as np

INSTALL = "pip install coremltools==9.0 (or pip install -e '.[edge-runtimes]', or `make setup`)"


class CoremlError(ValueError):
    """coremltools is missing, or it could not convert a model."""


@contextlib.contextmanager
def _quiet():
    """coremltools warns about untested torch versions and the Core ML framework it cannot
    load off macOS, and draws progress bars; none of it is an error here."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


class _ErrorLog(logging.Handler):
    """Keeps coremltools' ERROR records (they name the failing op and where it is) while a
    conversion runs, instead of printing them."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.text = ""

    def emit(self, record):
        self.text = " ".join(record.getMessage().split()).replace("ERROR - ", "")

    def __enter__(self):
        self.logger = logging.getLogger("coremltools")
        self.saved = self.logger.handlers, self.logger.propagate
        self.logger.handlers, self.logger.propagate = [self], False
        return self

    def __exit__(self, *exc):
        self.logger.handlers, self.logger.propagate = self.saved


def _ct():
    try:
        with _quiet():
            import coremltools as ct
    except ImportError as e:
        raise CoremlError(f"coremltools is not installed ({e}): {INSTALL}") from e
    _fix_converters()
    return ct


def _fix_converters() -> None:
    """Two of coremltools 9's torch conversions, fixed (registered over its own, once; every
    case they do not cover still goes to coremltools' own code). Both stopped the truncated
    DeepSeek teacher:
    - `int` casts a constant with int(value); a traced shape computation such as the rotary
      embedding's `cos.shape[-1] // 2` folds to a one-element array, which numpy 2 no longer
      lets int() take ("only 0-dimensional arrays can be converted to Python scalars");
    - `scatter` with a scalar value fills the updates in the scalar's own type, where torch
      casts it to the tensor's (the MoE router's `group_mask.scatter_(1, idx, 1)` on a float
      mask: "updates has dtype int32 whereas data has dtype fp32")."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY, register_torch_op
    from coremltools.converters.mil.mil import types
    if _TORCH_OPS_REGISTRY.get_func("int") is not ops._int:
        return  # registered already

    def _int(context, node):
        x = ops._get_inputs(context, node, expected=1)[0]
        if x.can_be_folded_to_const() and np.ndim(x.val) > 0 and np.size(x.val) == 1:
            context.add(mb.const(val=int(np.asarray(x.val).item()), name=node.name), node.name)
        else:
            ops._int(context, node)

    def scatter(context, node):
        inputs = ops._get_inputs(context, node, expected=(4, 5))
        data, value = inputs[0], inputs[3]
        if len(inputs) > 4 or not types.is_scalar(value.sym_type) or value.dtype == data.dtype:
            return ops.scatter(context, node)
        value = mb.const(val=types.nptype_from_builtin(data.dtype)(value.val))  # a scalar, as _scatter fills it
        ops._scatter(context, [data, inputs[1], inputs[2], value], "update", node.name)

    register_torch_op(_int, torch_alias=["int"], override=True)
    register_torch_op(scatter, torch_alias=["scatter.src", "scatter.value", "scatter.reduce", "scatter.value_reduce"],
                      override=True)


def convert(wrapper, example: tuple[np.ndarray, ...], input_names: list[str], out_path: Path,
            quant: str = "float", block_size: int = 32) -> Path:
    """wrapper(*inputs) -> logits (a torch module) traced at the example's shape [1, L] and
    converted; quant "int8" (per channel, symmetric) or "int4" (blocks of block_size along
    the input dimension; 0: per channel) quantizes the weights with coremltools.optimize."""
    import shutil

    import torch
    ct = _ct()
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in example)
    where = _ErrorLog()
    try:
        with _quiet(), where, torch.no_grad():
            traced = torch.jit.trace(wrapper.eval(), tensors)
            inputs = [ct.TensorType(name, shape=a.shape, dtype=np.int32 if a.dtype.kind == "i" else np.float32)
                      for name, a in zip(input_names, example)]
            model = ct.convert(traced, inputs=inputs, outputs=[ct.TensorType("logits")], convert_to="mlprogram",
                               minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT32)
            if quant != "float":
                opt = ct.optimize.coreml
                if quant == "int8":
                    op = opt.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
                elif quant == "int4" and block_size == 0:
                    op = opt.OpLinearQuantizerConfig(mode="linear", dtype="int4", granularity="per_channel")
                elif quant == "int4":
                    op = opt.OpLinearQuantizerConfig(mode="linear", dtype="int4", granularity="per_block",
                                                     block_size=block_size)
                else:
                    raise CoremlError(f"unknown Core ML weight quantization {quant!r}; choose float, int8 or int4")
                model = opt.linear_quantize_weights(model, opt.OptimizationConfig(global_config=op))
    except CoremlError:
        raise
    except Exception as e:  # the op that failed is in coremltools' error log, not in the exception
        op = f" at {where.text}" if where.text else ""
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1]  # an assert in coremltools says nothing
        raise CoremlError(f"coremltools could not convert the model{op}: {last}") from e
    if out_path.exists():
        shutil.rmtree(out_path)
    model.save(str(out_path))
    return out_path


def package_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def inspect(path: Path) -> dict:
    """What can be checked without the Core ML framework: the package reloads, its inputs and
    output, and the ML program's operators (constexpr_* ops hold quantized weights)."""
    ct = _ct()
    with _quiet():
        model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    ops: dict[str, int] = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
    return {"type": spec.WhichOneof("Type"), "specification_version": spec.specificationVersion,
            "inputs": {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input},
            "outputs": [o.name for o in spec.description.output], "ops": dict(sorted(ops.items())),
            "bytes": package_bytes(path)}


def runnable() -> bool:
    """Core ML predictions need macOS (coremltools' predict raises elsewhere)."""
    return platform.system() == "Darwin"


class Runner:
    """A saved .mlpackage in Core ML (macOS only): runner(*inputs [1, L]) -> logits [C]."""

    def __init__(self, path: Path, input_names: list[str]):
        ct = _ct()
        self.names = input_names
        with _quiet():
            self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        feeds = {n: a.astype(np.int32 if a.dtype.kind == "i" else np.float32) for n, a in zip(self.names, arrays)}
        try:
            out = self.model.predict(feeds)
        except Exception as e:
            raise CoremlError(f"Core ML could not run the model here ({platform.system()}): {e}") from e
        return np.asarray(out["logits"], np.float32).reshape(-1)
