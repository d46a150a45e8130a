"""Distillation: the losses, the schedules and the training loop that turn the knowledge cache
into the float student (`<run>/student/`)."""
from .losses import distill_loss, feature_loss, stage_loss
from .schedule import DistillError
from .train import Distilled, distill, evaluate, load_features, load_knowledge, predict_logits, train_student

__all__ = ["DistillError", "Distilled", "distill", "distill_loss", "evaluate", "feature_loss", "load_features",
           "load_knowledge", "predict_logits", "stage_loss", "train_student"]
