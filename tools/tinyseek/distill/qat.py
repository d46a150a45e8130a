"""Quantization-aware distillation: the float student trained on for a few more epochs with its
LSTM gate matrices, its embedding and (binary) its head fake-quantized to the deployed widths
(docs/students.md, "Low-bit weights").

The forward pass sees exactly the weights the quantizer will store (per-row scales, rounded
to int8 / int4 or reduced to signs, then scaled back); the backward pass treats the rounding
as the identity (straight-through estimator), so the latent float weights keep learning. The
result is a float student whose post-training quantization is the model it was trained as.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..quant.model import EMBEDDING_GAIN_MAX, INT4_MAX
from ..student.tinylstm import export_params, load_student
from .schedule import DistillError, Stage
from .train import Distilled, max_abs_cell, prepare

GATE_WEIGHTS = ("weight_ih_l", "weight_hh_l")
TOPS = {"int8": 127, "int4": INT4_MAX}


def fake_quant(w: torch.Tensor, width: str) -> torch.Tensor:
    """w [rows, cols] quantized per row as tinyseek.quant.quantize.quantize_rows does, then
    dequantized; gradients pass straight through to w."""
    if width == "binary":
        s = w.detach().abs().mean(dim=1, keepdim=True)
        q = torch.where(w.detach() >= 0, 1.0, -1.0) * torch.where(s > 0, s, torch.ones_like(s))
    else:
        top = TOPS[width]
        amax = w.detach().abs().amax(dim=1, keepdim=True)
        s = torch.where(amax > 0, amax / top, torch.ones_like(amax))
        q = torch.clamp(torch.round(w.detach() / s), -top, top) * s
    return w + (q - w).detach()


def fake_quant_embedding(w: torch.Tensor, width: str) -> torch.Tensor:
    """The embedding table [V, E] as tinyseek.quant.quantize.quantize_embedding stores it (one
    input scale, integer gains per row, int8 / int4 / sign codes), dequantized; gradients pass
    straight through to w."""
    d = w.detach()
    if width == "int8":
        s_x = d.abs().amax().clamp_min(1e-30) / 127
        q = torch.clamp(torch.round(d / s_x), -127, 127) * s_x
    elif width == "int4":
        amax = d.abs().amax(dim=1)
        s_x = amax.max().clamp_min(1e-30) / (INT4_MAX * EMBEDDING_GAIN_MAX["int4"])
        gain = torch.clamp(torch.ceil(amax / (INT4_MAX * s_x) - 1e-9), 0, EMBEDDING_GAIN_MAX["int4"])
        step = (gain.clamp_min(1) * s_x)[:, None]
        q = torch.clamp(torch.round(d / step), -INT4_MAX, INT4_MAX) * step * (gain > 0)[:, None]
    else:
        mean = d.abs().mean(dim=1)
        s_x = mean.max().clamp_min(1e-30) / EMBEDDING_GAIN_MAX["binary"]
        gain = torch.clamp(torch.round(mean / s_x), 0, EMBEDDING_GAIN_MAX["binary"])
        q = torch.where(d >= 0, 1.0, -1.0) * (gain * s_x)[:, None]
    return w + (q - w).detach()


@contextlib.contextmanager
def _forward_replaced(module: nn.Module, forward):
    """Within the block `module` runs `forward` (an instance attribute over its class's)."""
    module.forward = forward
    try:
        yield
    finally:
        del module.forward


def fake_quantized_embedding(embed: nn.Embedding, width: str):
    """Within the block every lookup of `embed` reads the fake-quantized table."""
    return _forward_replaced(embed, lambda x: F.embedding(x, fake_quant_embedding(embed.weight, width),
                                                          embed.padding_idx))


def fake_quantized_linear(linear: nn.Linear, width: str):
    """Within the block `linear` runs on its fake-quantized weight rows (a binary model's head)."""
    return _forward_replaced(linear, lambda x: F.linear(x, fake_quant(linear.weight, width), linear.bias))


@contextlib.contextmanager
def fake_quantized(lstm: nn.LSTM, width: str):
    """Within the block every forward of `lstm` runs on fake-quantized gate matrices (the biases
    stay float: the integer spec keeps them in int32 Q3.12)."""
    def swap(module, _args):
        module._flat_weights = [fake_quant(getattr(module, n), width) if n.startswith(GATE_WEIGHTS)
                                else getattr(module, n) for n in module._flat_weights_names]

    def restore(module, _args, _out):
        module._init_flat_weights()

    hooks = [lstm.register_forward_pre_hook(swap), lstm.register_forward_hook(restore)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        lstm._init_flat_weights()


def qat_stage(cfg) -> Stage:
    """The QAT epochs: the logits stage's objective (teacher KL at the final temperature plus
    the hard-label weight) at quant.qat_lr (or the width's default), every epoch competing on validation accuracy."""
    d = cfg.distill
    return Stage("qat", cfg.quant.qat_epochs, cfg.quant.qat_peak_lr, 1.0 - d.hard_weight, d.hard_weight, 0.0,
                 (d.temperature_end, d.temperature_end), True)


def train_qat(dataset, knowledge_path: str | Path, cfg, student_dir: str | Path, *, progress: bool = True) -> Distilled:
    """Start from the float student in `student_dir` and train cfg.quant.qat_epochs epochs with
    its gate matrices fake-quantized to cfg.quant.weights and its embedding (text students) to
    cfg.quant.embedding (or the same width); the epoch of best (fake-quantized)
    validation accuracy is returned. One thread, deterministic for distill.seed."""
    if cfg.quant.qat_epochs < 1:
        raise DistillError(f"quant.qat_epochs = {cfg.quant.qat_epochs}: quantization-aware training needs at least 1")
    float_model, spec = load_student(student_dir)
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        tr = prepare(dataset, knowledge_path, cfg, progress=progress, standardize=False)  # the saved student reads raw features
        if tr.spec != spec:
            raise DistillError(f"{student_dir} holds a student of another shape than cfg.student; re-run "
                               "`tinyseek distill` before quantization-aware training")
        tr.model.load_state_dict(float_model.state_dict(), strict=False)
        embed = getattr(tr.model, "embed", None)  # text students
        with (fake_quantized(tr.model.lstm, cfg.quant.weights),
              fake_quantized_embedding(embed, cfg.quant.embedding or cfg.quant.weights)
              if embed is not None else contextlib.nullcontext(),
              fake_quantized_linear(tr.model.head, "binary")  # a binary model's head is binary too
              if cfg.quant.weights == "binary" else contextlib.nullcontext()):
            tr.run(qat_stage(cfg))
            tr.restore_best()
            cells = max_abs_cell(tr.model, tr.x, tr.lengths)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
    best = tr.history[tr.best_epoch - 1]
    summary = {"weights": cfg.quant.weights, "embedding": cfg.quant.embedding or cfg.quant.weights, "epochs": tr.history, "best_epoch": tr.best_epoch,
               "best_val_accuracy": best.get("val_accuracy"), "max_abs_cell": cells,
               "params": export_params(tr.model)}
    return Distilled(tr.model, spec, summary)
