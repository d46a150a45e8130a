"""The distillation losses: soft teacher targets, hard labels and feature matching."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

FEATURE_LOSSES = ("cosine", "mse")


def _mean(per_sample: torch.Tensor, sample_weight: torch.Tensor | None) -> torch.Tensor:
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight).sum() / sample_weight.sum().clamp(min=1e-12)


def _pairs(student_feat, teacher_feat) -> list[tuple[torch.Tensor, torch.Tensor]]:
    s = [student_feat] if isinstance(student_feat, torch.Tensor) else list(student_feat or [])
    t = [teacher_feat] if isinstance(teacher_feat, torch.Tensor) else list(teacher_feat or [])
    if not s or not t or len(s) != len(t):
        raise ValueError(f"feature matching needs student_feat and teacher_feat, one per mapped layer pair "
                         f"(got {len(s)} and {len(t)})")
    for a, b in zip(s, t):
        if a.shape != b.shape:
            raise ValueError(f"student_feat {list(a.shape)} and teacher_feat {list(b.shape)} differ; the "
                             "projection must map to the teacher width")
    return list(zip(s, t))


def feature_loss(student_feat: torch.Tensor | Sequence[torch.Tensor], teacher_feat: torch.Tensor | Sequence[torch.Tensor],
                 kind: str = "cosine", sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The feature term, averaged over the mapped layer pairs (so its scale does not grow with
    their number). Each pair: the student's projected hidden state [N, D] against the teacher's
    pooled, standardized hidden state [N, D].

    cosine: 1 - cos(s, t) = 0.5 * || s/|s| - t/|t| ||^2, in [0, 2] whatever the activation scale.
    mse: mean over dimensions of (s - t)^2; the teacher side has unit variance per dimension
    after standardization, so this starts near 1 and also asks for the magnitude.
    """
    terms = []
    for s, t in _pairs(student_feat, teacher_feat):
        if kind == "cosine":
            per = 1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)
        elif kind == "mse":
            per = (s - t).pow(2).mean(dim=1)
        else:
            raise ValueError(f"feature loss must be one of {', '.join(FEATURE_LOSSES)}, not {kind!r}")
        terms.append(_mean(per, sample_weight))
    return torch.stack(terms).mean()


def stage_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
               student_feat, teacher_feat, *, kl: float, ce: float, feature: float, T: float,
               feature_kind: str = "cosine", sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """total = kl * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + ce * CE(student, labels)
             + feature * feature_loss(student_feat, teacher_feat)

    Every term is a mean over the batch, weighted by sample_weight [N] when given (the feedback
    step's re-weighting). The T^2 factor keeps the KL gradient's scale independent of T. A term
    of weight 0 adds nothing (feature = 0: the features may be None). Returns the total (a
    tensor for backward) and the unweighted parts as floats for logging.
    """
    kl_per = F.kl_div(F.log_softmax(student_logits / T, dim=1), F.log_softmax(teacher_logits / T, dim=1),
                      reduction="none", log_target=True).sum(dim=1) * (T * T)
    kl_term = _mean(kl_per, sample_weight)
    ce_term = _mean(F.cross_entropy(student_logits, labels, reduction="none"), sample_weight)
    total = kl * kl_term + ce * ce_term
    feat = torch.zeros((), dtype=total.dtype)
    if feature:
        feat = feature_loss(student_feat, teacher_feat, feature_kind, sample_weight)
        total = total + feature * feat
    parts = {"total": float(total.detach()), "kl": float(kl_term.detach()), "ce": float(ce_term.detach()),
             "feature": float(feat.detach())}
    return total, parts


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 student_feat, teacher_feat, alpha: float, T: float, beta: float,
                 feature_kind: str = "cosine", sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The joint loss: alpha * T^2 * KL + (1 - alpha) * CE + beta * feature term (stage_loss).

    student_feat is the projection of the student's hidden state [N, D] (or a list, one per
    mapped layer pair), teacher_feat the teacher's pooled hidden state of the mapped layer
    [N, D] (or the list); the caller standardizes the teacher's per dimension over the training
    set first, so a direction every sample shares does not make the cosine trivially high
    (transformer hidden states can be in the hundreds, which would swamp a plain MSE).
    """
    return stage_loss(student_logits, teacher_logits, labels, student_feat, teacher_feat, kl=alpha, ce=1.0 - alpha,
                      feature=beta, T=T, feature_kind=feature_kind, sample_weight=sample_weight)
