"""The truncated-teacher student (high-end phones): the adapted teacher's token embedding, its
first N decoder layers and its final norm, mean pooling over the real tokens and a linear
head (initialized from the teacher's). It reads the teacher's tokenizer and is fine-tuned by
distillation (distill/edge.py).

The forward pass is written out here instead of calling the Hugging Face decoder: the
causal + padding mask is built from the attention mask with plain tensor ops and each
decoder layer is called directly, so the graph exports to ONNX with dynamic batch and
sequence axes. Mixture-of-experts layers (DeepSeek-V2/V3) run their experts densely (every
expert on every token, weighted by the router's top-k weights, zero for the others): the
same sum as the sparse loop, without its data-dependent shapes. Each expert is its own pair
of 2-D products, so the exported graph holds one [D, 2I] and one [I, D] MatMul weight per
expert, which onnxruntime's quantizers take like any other (a 3-D Einsum weight stays float).
"""
from __future__ import annotations

import contextlib
import types

import torch
from torch import nn

from ..teacher.classifier import TeacherClassifier, mean_pool
from .tinylstm import StudentError

DENSE_EXPERTS = "tinyseek_dense"


def dense_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the routing weight (0 when not in the top k).
    For the expert layout of DeepSeek-V2/V3 in transformers: gate_up_proj [E, 2I, D],
    down_proj [E, D, I], no biases. One expert at a time, as two linear layers: the exporter
    folds each expert's slice into a 2-D MatMul weight."""
    weights = torch.zeros(hidden_states.shape[0], self.num_experts, dtype=top_k_weights.dtype,
                          device=hidden_states.device).scatter(1, top_k_index, top_k_weights)
    out = 0
    for e in range(self.num_experts):
        gate_up = torch.nn.functional.linear(hidden_states, self.gate_up_proj[e])
        expert = torch.nn.functional.linear(self._apply_gate(gate_up), self.down_proj[e])
        out = out + expert * weights[:, e:e + 1].to(expert.dtype)
    return out.to(hidden_states.dtype)


def _use_dense_experts(backbone) -> None:
    experts = [m for m in backbone.modules() if hasattr(m, "gate_up_proj") and hasattr(m, "has_gate")]
    if not experts:
        return
    odd = [type(m).__name__ for m in experts
           if not m.has_gate or m.has_bias or m.is_transposed or m.has_post_expert_norm]
    if odd:
        raise StudentError(f"truncated student: the experts of {sorted(set(odd))} have a layout the dense "
                           "expert mix does not implement (gated, untransposed, without biases)")
    from transformers.integrations.moe import ExpertsInterface
    ExpertsInterface.register(DENSE_EXPERTS, dense_experts_forward)
    for m in experts:
        m.config._experts_implementation = DENSE_EXPERTS


class TruncatedTeacher(nn.Module):
    """The first `num_layers` decoder layers of an adapted text teacher plus a classifier head
    (the teacher's own when it has one of `num_classes` outputs, else a new one).

    `encode` returns layer N's output, which is the full teacher's `hidden_states[N]` for
    N below the teacher's depth; `forward` applies the teacher's final norm to it, mean-pools
    and classifies. With N equal to the depth, the untrained student is the teacher itself.
    """

    def __init__(self, teacher: TeacherClassifier, num_layers: int, num_classes: int | None = None):
        super().__init__()
        if teacher.proj is not None:
            raise StudentError("the truncated student reads text through the teacher's tokenizer; this teacher was "
                               "adapted to a sequence task (use the TinyLSTM student for sequences)")
        decoder = teacher.backbone.base_model
        depth = len(decoder.layers)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= depth:
            raise StudentError(f"truncated student: {num_layers!r} layers asked for, but the teacher has {depth} "
                               f"decoder layers; choose --layers 1..{depth}")
        _use_dense_experts(teacher.backbone)
        self.num_layers, self.teacher_layers = num_layers, depth
        self.model_type = teacher.backbone.config.model_type
        self.embed = decoder.embed_tokens
        self.layers = nn.ModuleList(decoder.layers[:num_layers])
        self.norm = decoder.norm
        self.rotary = decoder.rotary_emb
        head = getattr(teacher, "head", None)
        if head is None and num_classes is None:
            raise StudentError("truncated student: this teacher has no classification head; give num_classes")
        self.head = nn.Linear(decoder.config.hidden_size, head.out_features if num_classes is None else num_classes)
        if head is not None and head.out_features == self.head.out_features:
            self.head.load_state_dict(head.state_dict())
        self.requires_grad_(True)  # a teacher adapted head-only or with LoRA comes frozen; the student trains all of it

    @property
    def hidden_size(self) -> int:
        return self.head.in_features

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, T] (right-padded, 1 = real token) -> layer N's output [B, T, D]."""
        x = self.embed(ids)
        t = ids.shape[1]
        positions = torch.arange(t, device=ids.device).unsqueeze(0)
        cos_sin = self.rotary(x, positions)
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
        allowed = causal[None, None] & mask.bool()[:, None, None, :]
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, torch.finfo(x.dtype).min)
        for layer in self.layers:
            out = layer(x, attention_mask=bias, position_ids=positions, position_embeddings=cos_sin)
            x = out[0] if isinstance(out, tuple) else out
        return x

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(mean_pool(self.norm(self.encode(ids, mask)).float(), mask))

    def spec(self, labels: list[str], max_tokens: int) -> dict:
        """student.json of the edge folder."""
        return {"kind": "truncated", "labels": list(labels), "layers": self.num_layers,
                "teacher_layers": self.teacher_layers, "model_type": self.model_type,
                "hidden_size": self.hidden_size, "max_tokens": max_tokens, "tokenizer": "tokenizer.json"}


def _concatenated_expand_kv(self, kv_nope: torch.Tensor, k_rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepseekV2Attention.expand_kv and V3's (transformers 5) with the key's two parts concatenated
    instead of copied into an empty tensor: the same values."""
    batch_size, _, seq_length, _ = kv_nope.shape
    kv = self.kv_b_proj(kv_nope).view(batch_size, seq_length, -1, self.qk_nope_head_dim + self.v_head_dim)
    k_nope, value_states = torch.split(kv.transpose(1, 2), [self.qk_nope_head_dim, self.v_head_dim], dim=-1)
    return torch.cat((k_nope, k_rot.expand(-1, k_nope.shape[1], -1, -1)), dim=-1), value_states


@contextlib.contextmanager
def concatenated_keys(model: nn.Module):
    """Within it, multi-head latent attention (DeepSeek-V2/V3's `expand_kv`) builds its keys with
    a concatenation. Its own code copies the two parts into slices of an empty tensor, which
    coremltools 9 converts with the wrong slice shape ("The update tensor should have shape
    [1, 4, 24, 24]. Got (1, 4, 24, 16)"): Core ML conversion runs inside this. Other modules,
    and models without that attention, are left as they are."""
    patched = [m for m in model.modules()
               if type(m).__name__ in ("DeepseekV2Attention", "DeepseekV3Attention") and hasattr(m, "expand_kv")]
    for m in patched:
        m.expand_kv = types.MethodType(_concatenated_expand_kv, m)
    try:
        yield model
    finally:
        for m in patched:
            del m.expand_kv


def param_count(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


WEIGHTS_FILE = "student.safetensors"


def save_truncated(model: TruncatedTeacher, folder) -> None:
    """The fine-tuned weights (`load_truncated` rebuilds the module from the teacher's folder)."""
    from pathlib import Path

    from safetensors.torch import save_model
    save_model(model, str(Path(folder) / WEIGHTS_FILE))


def load_truncated(folder, teacher_dir) -> TruncatedTeacher:
    """The truncated student of an edge folder (student.json, student.safetensors), built on the
    adapted teacher in teacher_dir (its architecture and rotary tables) and then given the
    fine-tuned weights; eval mode."""
    import json
    from pathlib import Path

    from safetensors.torch import load_model

    from ..teacher.classifier import load_adapted
    folder = Path(folder)
    spec_file, weights = folder / "student.json", folder / WEIGHTS_FILE
    if not weights.is_file() or not spec_file.is_file():
        raise StudentError(f"{weights} is missing: re-run `tinyseek edge --student truncated` (older runs kept "
                           "the ONNX graph only)")
    spec = json.loads(spec_file.read_text())
    teacher, _, _ = load_adapted(Path(teacher_dir))
    model = TruncatedTeacher(teacher, spec["layers"], len(spec["labels"]))
    load_model(model, str(weights))
    return model.eval()
