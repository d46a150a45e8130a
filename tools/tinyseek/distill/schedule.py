"""What the distillation trains, in which order: the layer mapping, the stages of a schedule,
the temperature annealing and the feedback step (docs/distillation.md).

Pure planning, no torch: train.py runs the stages this module describes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SCHEDULES = ("joint", "progressive")
FEEDBACK_MODES = ("reweight", "relabel")
_PAIR = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


class DistillError(ValueError):
    """The knowledge cache, the dataset or the distill settings do not fit the distillation."""


# -- layer mapping ------------------------------------------------------------------------

def parse_layer_map(text: str) -> list[tuple[int, int]]:
    """'12:0, 24:1, 36:2' -> [(12, 0), (24, 1), (36, 2)] as (teacher layer, student layer);
    '' -> [] (the default mapping)."""
    if not text.strip():
        return []
    pairs = []
    for part in text.split(","):
        m = _PAIR.fullmatch(part)
        if m is None:
            raise DistillError(f"distill.layer_map = {text!r}: {part.strip()!r} is not 'teacher:student' "
                                "(e.g. \"12:0, 24:1, 36:2\": teacher layer 12 to student layer 0, ...)")
        pairs.append((int(m.group(1)), int(m.group(2))))
    teachers = [t for t, _ in pairs]
    if len(set(teachers)) != len(teachers):
        raise DistillError(f"distill.layer_map = {text!r} names a teacher layer twice; map each one once")
    return pairs


def default_layer_map(cached: list[int], student_layers: int) -> list[tuple[int, int]]:
    """Every cached teacher layer, in order, spread evenly over the student's LSTM layers, the
    last to the last: cached layer i of n goes to student layer S-1 - floor((n-1-i) * S / n).
    With one student layer every cached layer is matched to it, each by its own projection."""
    n, s = len(cached), student_layers
    return [(layer, s - 1 - ((n - 1 - i) * s) // n) for i, layer in enumerate(cached)]


def resolve_layer_map(setting: str, cached: list[int], student_layers: int) -> list[tuple[int, int]]:
    """The (teacher layer, student layer) pairs for distill.layer_map, checked against the
    layers the knowledge cache holds and the student's depth."""
    if not cached:
        raise DistillError("the knowledge cache holds no hidden states ('<split>.hidden.<layer>'), so there is "
                            "nothing to match features to: set distill.beta = 0 (joint) or "
                            "distill.stage1_epochs = 0 (progressive), or re-run `tinyseek teacher` with teacher.layers")
    pairs = parse_layer_map(setting) or default_layer_map(cached, student_layers)
    for t, s in pairs:
        if t not in cached:
            raise DistillError(f"distill.layer_map maps teacher layer {t}, which the knowledge cache does not hold: "
                                f"the cached layers are {cached}; map those, or re-run `tinyseek teacher` with "
                                f"teacher.layers including {t}")
        if not 0 <= s < student_layers:
            raise DistillError(f"distill.layer_map maps to student layer {s}, but the student has {student_layers} "
                                f"LSTM layer(s), numbered 0..{student_layers - 1}")
    return pairs


# -- stages -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    """One stretch of training with a fixed objective:
    total = kl * T^2 * KL(teacher/T || student/T) + ce * CE(labels) + feature * feature term,
    T going linearly from temperature[0] to temperature[1] over the stage's epochs.
    A term of weight 0 is not trained: its parameters (head, projections) are frozen."""
    name: str
    epochs: int
    lr: float
    kl: float
    ce: float
    feature: float
    temperature: tuple[float, float]
    select: bool  # its epochs compete for the best validation accuracy (not stage 1: no head yet)

    @property
    def trains_head(self) -> bool:
        return bool(self.kl or self.ce)


def annealed_temperature(start: float, end: float, epoch: int, epochs: int) -> float:
    """T of epoch 1..epochs, linear from start (first epoch) to end (last epoch)."""
    if epochs <= 1:
        return end
    return start + (end - start) * (epoch - 1) / (epochs - 1)


def plan(d) -> list[Stage]:
    """The stages of the first round for a DistillConfig (stages with 0 epochs left out)."""
    if d.schedule == "joint":
        stages = [Stage("joint", d.epochs, d.lr, d.alpha, 1.0 - d.alpha, d.beta,
                        (d.temperature, d.temperature), True)]
    elif d.schedule == "progressive":
        stages = [Stage("features", d.stage1_epochs, d.lr, 0.0, 0.0, 1.0, (1.0, 1.0), False),
                  *logit_stages(d)]
    else:
        raise DistillError(f"distill.schedule must be one of {', '.join(SCHEDULES)}, not {d.schedule!r}")
    return [s for s in stages if s.epochs > 0]


def logit_stages(d) -> list[Stage]:
    """What a feedback round re-runs: the stages that train the classifier (joint: the joint
    stage; progressive: stages 2 and 3)."""
    if d.schedule == "joint":
        return [s for s in plan(d) if s.trains_head]
    stages = [Stage("logits", d.stage2_epochs, d.lr, 1.0 - d.hard_weight, d.hard_weight, d.stage2_beta,
                    (d.temperature_start, d.temperature_end), True),
              Stage("finetune", d.stage3_epochs, d.stage3_lr, 0.0, 1.0, 0.0, (1.0, 1.0), True)]
    return [s for s in stages if s.epochs > 0]


def check(d) -> None:
    """Settings no single stage can judge; the first problem as a DistillError."""
    if d.schedule not in SCHEDULES:
        raise DistillError(f"distill.schedule must be one of {', '.join(SCHEDULES)}, not {d.schedule!r}")
    if d.feedback not in FEEDBACK_MODES:
        raise DistillError(f"distill.feedback must be one of {', '.join(FEEDBACK_MODES)}, not {d.feedback!r}")
    if d.feature_loss not in ("cosine", "mse"):
        raise DistillError(f"distill.feature_loss must be cosine or mse, not {d.feature_loss!r}")
    if not plan(d) or not any(s.select for s in plan(d)):
        raise DistillError("the schedule trains no classifier: give distill.epochs (joint) or distill.stage2_epochs "
                            "/ distill.stage3_epochs (progressive) at least 1 epoch")
    if d.stage2_beta < 0:
        raise DistillError(f"distill.stage2_beta must be >= 0, not {d.stage2_beta}")
    if d.feedback_rounds < 0 or d.feedback_weight <= 0:
        raise DistillError(f"distill.feedback_rounds must be >= 0 and distill.feedback_weight > 0 "
                            f"(got {d.feedback_rounds}, {d.feedback_weight})")


# -- feedback -----------------------------------------------------------------------------

def feedback_targets(labels: np.ndarray, weights: np.ndarray, teacher_logits: np.ndarray,
                     student_logits: np.ndarray, mode: str, weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """After a round: the samples whose student prediction differs from the teacher's, and the
    next round's (labels, per-sample weights). reweight multiplies those samples' weights by
    `weight`; relabel sets their hard label to the teacher's prediction. Returns
    (labels, weights, disagree mask)."""
    disagree = student_logits.argmax(axis=1) != teacher_logits.argmax(axis=1)
    labels, weights = labels.copy(), weights.copy()
    if mode == "reweight":
        weights[disagree] *= weight
    elif mode == "relabel":
        labels[disagree] = teacher_logits.argmax(axis=1)[disagree]
    else:
        raise DistillError(f"distill.feedback must be one of {', '.join(FEEDBACK_MODES)}, not {mode!r}")
    return labels, weights, disagree
