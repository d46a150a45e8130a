"""The teacher stage: load or build a DeepSeek-family teacher, adapt it to the task, and
extract its knowledge (logits, pooled hidden states, attention maps) into the cache."""
from .adapt import adapt
from .build import build_default_teacher
from .extract import default_layers, extract, select_layers, teacher_accuracy
from .load import SUPPORTED_MODEL_TYPES, TeacherError, load_teacher

__all__ = ["SUPPORTED_MODEL_TYPES", "TeacherError", "adapt", "build_default_teacher", "default_layers",
           "extract", "load_teacher", "select_layers", "teacher_accuracy"]
