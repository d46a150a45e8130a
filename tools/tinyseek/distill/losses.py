"""The distillation loss: soft teacher targets, hard labels and feature matching."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 student_feat: torch.Tensor | None, teacher_feat: torch.Tensor | None,
                 alpha: float, T: float, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """total = alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))
             + (1 - alpha) * CE(student, labels)
             + beta * (1 - cos(student_feat, teacher_feat))

    student_feat is `feature_proj` of the student's last hidden state [N, D]; teacher_feat the
    teacher's pooled hidden state of the chosen layer [N, D]. The feature term is the
    normalized MSE: 0.5 * || s/|s| - t/|t| ||^2 = 1 - cos(s, t), in [0, 2] whatever the
    teacher's activation scale (transformer hidden states can be in the hundreds, which would
    swamp a plain MSE). The caller standardizes teacher_feat per dimension over the training set
    first, so a direction shared by every sample does not make the cosine trivially high.
    The T^2 factor keeps the KL gradient's scale independent of the temperature.

    KL and CE are means over the batch. beta = 0 skips the feature term (the features may then
    be None). Returns the total (a tensor for backward) and its parts as floats for logging.
    """
    kl = F.kl_div(F.log_softmax(student_logits / T, dim=1), F.log_softmax(teacher_logits / T, dim=1),
                  reduction="batchmean", log_target=True) * (T * T)
    ce = F.cross_entropy(student_logits, labels)
    total = alpha * kl + (1.0 - alpha) * ce
    feature = torch.zeros((), dtype=total.dtype)
    if beta:
        if student_feat is None or teacher_feat is None:
            raise ValueError("distill_loss: beta > 0 needs student_feat and teacher_feat")
        if student_feat.shape != teacher_feat.shape:
            raise ValueError(f"distill_loss: student_feat {list(student_feat.shape)} and teacher_feat "
                             f"{list(teacher_feat.shape)} differ; feature_proj must map to the teacher width")
        feature = (1.0 - F.cosine_similarity(student_feat, teacher_feat, dim=1, eps=1e-8)).mean()
        total = total + beta * feature
    parts = {"total": float(total.detach()), "kl": float(kl.detach()), "ce": float(ce.detach()),
             "feature": float(feature.detach())}
    return total, parts
