"""Distillation: the loss and the training loop that turn the knowledge cache into the float
student (`<run>/student/`)."""
from .losses import distill_loss
from .train import DistillError, distill, evaluate, load_knowledge, predict_logits

__all__ = ["DistillError", "distill", "distill_loss", "evaluate", "load_knowledge", "predict_logits"]
