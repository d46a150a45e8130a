"""One client's local training: a few epochs on its shard, starting from the global model.

The objective is the distillation's (distill/losses.py): with the teacher's logits from the
knowledge cache, alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(labels); without a
cache, CE on the hard labels alone. Training otherwise follows distill/train.py: AdamW, the
gradient norm clipped to 1, word dropout on text, and the cell-state penalty beyond
`cell_bound` that keeps the int16 cell state of the quantized model in range. The learning
rate is constant (a fresh AdamW every round; the global model carries the progress).

FedProx adds (mu / 2) * ||w - w_global||^2 over the trained weights, which pulls a client
that sees few intents back towards the global model; mu = 0 is FedAvg's plain local training,
the same arithmetic to the bit.

The centralised baseline trains with this same function on the whole training split, so the
comparison differs only in the federation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..distill.losses import stage_loss
from ..distill.train import drop_tokens, layer_states
from ..student.tinylstm import TinyLSTM


@dataclass(frozen=True)
class LocalSettings:
    """What a client trains with; the server sends it each round. The defaults were chosen on
    validation (bench/federated.py): distill's lr 0.003 and batch 64 leave FedAvg far behind
    centralised training after the same epochs, 0.02 and 16 take it within 2 points."""
    epochs: int = 2
    lr: float = 2e-2
    batch_size: int = 16
    mu: float = 0.0  # FedProx's proximal weight; 0: FedAvg
    alpha: float = 0.7  # weight of the KL term when the teacher's logits are there
    temperature: float = 4.0
    word_dropout: float = 0.2
    cell_bound: float = 4.0
    cell_weight: float = 1.0
    weight_decay: float = 1e-2
    clip_norm: float = 1.0


@dataclass
class LocalData:
    """A client's training samples as model inputs; teacher_logits None: hard labels only."""
    x: torch.Tensor
    lengths: torch.Tensor
    y: torch.Tensor
    teacher_logits: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.y)


def local_train(model: TinyLSTM, data: LocalData, s: LocalSettings, seed: int,
                on_epoch=None) -> dict[str, float]:
    """Train `model` in place for s.epochs on `data`; returns the last epoch's mean losses.
    Deterministic for a seed (one thread, seeded shuffling and dropout). on_epoch(epoch) is
    called after each epoch (the centralised baseline measures validation there)."""
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(model, data, s, seed, on_epoch)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def _train(model: TinyLSTM, data: LocalData, s: LocalSettings, seed: int, on_epoch) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    spec = model.spec
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if s.mu else None
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    n = len(data)
    kl = s.alpha if data.teacher_logits is not None else 0.0
    sums: dict[str, float] = {}
    for epoch in range(1, s.epochs + 1):
        model.train()
        sums = {"total": 0.0, "kl": 0.0, "ce": 0.0, "cell": 0.0, "proximal": 0.0}
        perm = torch.randperm(n, generator=gen)
        for b in range(math.ceil(n / s.batch_size)):
            idx = perm[b * s.batch_size : (b + 1) * s.batch_size]
            xb, lb = data.x[idx], data.lengths[idx]
            if s.word_dropout and spec.kind == "text":
                xb, lb = drop_tokens(xb, lb, s.word_dropout, gen)
            if s.cell_weight:
                h, cells = layer_states(model, xb, lb, cells=True)
                last = h[-1]
                real = max(1, int(lb.sum()) * spec.layers * spec.hidden)
                cell_pen = F.relu(cells.abs() - s.cell_bound).pow(2).sum() / real
            else:
                last, cell_pen = model.encode(xb, lb), torch.zeros(())
            t_logits = data.teacher_logits[idx] if data.teacher_logits is not None else torch.zeros(len(idx), spec.num_classes)
            loss, parts = stage_loss(model.head(last), t_logits, data.y[idx], None, None,
                                     kl=kl, ce=1.0 - kl, feature=0.0, T=s.temperature)
            loss = loss + s.cell_weight * cell_pen
            prox = torch.zeros(())
            if anchor is not None:
                prox = sum((p - a).pow(2).sum() for p, a in zip(params, anchor))
                loss = loss + 0.5 * s.mu * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, s.clip_norm)
            opt.step()
            w = len(idx) / n
            for k, v in (("total", float(loss.detach())), ("kl", parts["kl"]), ("ce", parts["ce"]),
                         ("cell", float(cell_pen.detach())), ("proximal", float(prox.detach()))):
                sums[k] += w * v
        if on_epoch is not None:
            on_epoch(epoch)
    model.eval()
    return sums


def round_seed(seed: int, server_round: int, client: int) -> int:
    """A client's training seed for a round: distinct per (round, client), fixed by the run's seed."""
    return int(np.random.SeedSequence([seed, server_round, client]).generate_state(1)[0])
