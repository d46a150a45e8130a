"""The adapted teacher: a causal LM backbone, mean pooling, a linear classification head and,
for sequence tasks, an input projection into the backbone's embedding space.

On disk (`<run>/teacher/`), always: the tokenizer files, `teacher.json` and, when the labels
come from a head (teacher.labels = "head"), `classifier.safetensors` (`head.weight`,
`head.bias`; sequence tasks also `proj.weight`, `proj.bias`, `proj.mean`, `proj.std`).
The backbone, by `teacher.json`'s `adapt`:
- "full": the whole backbone as a Hugging Face folder (config.json, model*.safetensors);
- "lora": only the LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`, in
  PEFT's format) on the base model named by `base` (a path; "base" = the `base/` folder
  inside, for the built-in teacher), with `base_fingerprint` to notice a changed base;
- "none": nothing; the base model named by `base` is used as it is.
`load_adapted` reads all three.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .load import TeacherError, load_teacher

CLASSIFIER_FILE = "classifier.safetensors"
META_FILE = "teacher.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILE = "adapter_model.safetensors"
BASE_DIR = "base"  # the built-in teacher's base model, inside the teacher folder (adapt = lora | none)
# PEFT's key prefix for a causal LM, so the adapter also loads with PeftModel.from_pretrained.
_PEFT_PREFIX = "base_model.model."


class InputProjection(nn.Module):
    """Standardize each feature with the training set's statistics, then Linear(F -> hidden)."""

    def __init__(self, num_features: int, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden, num_features))
        self.bias = nn.Parameter(torch.zeros(hidden))
        nn.init.xavier_uniform_(self.weight)
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def fit(self, x: np.ndarray) -> None:
        flat = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1]))
        self.mean.copy_(flat.mean(0))
        # A constant feature keeps std 1 instead of dividing by zero.
        self.std.copy_(torch.where(flat.std(0) > 1e-6, flat.std(0), torch.ones_like(self.std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear((x - self.mean) / self.std, self.weight, self.bias)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens: hidden [B, T, D], mask [B, T] of 0/1 -> [B, D]."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class TeacherClassifier(nn.Module):
    """backbone (decoder without LM head) -> mean pool of the last hidden state -> head."""

    def __init__(self, backbone, num_classes: int, num_features: int = 0):
        super().__init__()
        hidden = backbone.config.hidden_size
        self.backbone = backbone
        # No head (num_classes = 0) when the labels come from the LM itself (verbalize.py).
        self.head = nn.Linear(hidden, num_classes) if num_classes else None
        self.proj = InputProjection(num_features, hidden) if num_features else None

    def encode(self, inputs: torch.Tensor, mask: torch.Tensor, **outputs):
        """Run the decoder: `inputs` are token ids [B, T], or features [B, T, F] when the
        model has an input projection. `outputs` are passed on (output_hidden_states, ...)."""
        decoder = self.backbone.base_model
        if self.proj is not None:
            embeds = self.proj(inputs).to(self.backbone.dtype)  # a float32 projection into a bfloat16 model
            return decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False, **outputs)
        return decoder(input_ids=inputs, attention_mask=mask, use_cache=False, **outputs)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise TeacherError("this teacher has no classification head (teacher.labels = \"zero-shot\"); its "
                               "logits come from verbalize.zero_shot_logits")
        return self.head(mean_pool(self.encode(inputs, mask).last_hidden_state.float(), mask))

    def classifier_state(self) -> dict[str, torch.Tensor]:
        keys = ("head", "proj")
        return {k: v.detach().clone().contiguous() for k, v in self.state_dict().items() if k.split(".")[0] in keys}


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask [N, T] of `texts`, right-padded to the longest (at most max_tokens).

    A text that gives no tokens at all (possible without a bos token) is read as one pad
    token, so every row has something to attend to and to pool.
    """
    enc = tokenizer(list(texts), truncation=True, max_length=max_tokens, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if ids.shape[1] == 0:
        ids = torch.full((len(texts), 1), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
    mask[mask.sum(1) == 0, 0] = 1
    return ids, mask


def split_inputs(tokenizer, split, kind: str, max_tokens: int):
    """(inputs, mask) of a whole split: token ids for text, float features for sequences."""
    if kind == "text":
        return tokenize(tokenizer, split.texts, max_tokens)
    x = torch.from_numpy(np.asarray(split.x, dtype=np.float32))
    return x, torch.ones(x.shape[:2], dtype=torch.long)


def trim(inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing columns that are padding in every row of a batch."""
    t = max(int(mask.sum(1).max()), 1)
    return inputs[:, :t], mask[:, :t]


# -- LoRA ---------------------------------------------------------------------------------------

def _peft():
    try:
        import peft
    except ImportError as e:
        raise TeacherError("teacher.adapt = \"lora\" needs the peft package: pip install 'tinyseek[teacher]' "
                           "(or pip install peft)") from e
    return peft


def _blocks(backbone) -> tuple[nn.Module, str]:
    """The decoder layers and their name inside the causal LM ("model.layers")."""
    prefix = backbone.base_model_prefix
    return getattr(backbone, prefix).layers, f"{prefix}.layers."


def lora_target_names(backbone, targets: list[str]) -> list[str]:
    """Names (inside the decoder layers) of the nn.Linear modules whose own name is in
    `targets`, e.g. "0.self_attn.q_proj". Matching by module name works for every supported
    architecture. Routed experts of MoE layers are fused 3-D parameters in transformers 5, not
    Linear modules: the target name "experts" reaches them (lora_expert_parameters)."""
    blocks, _ = _blocks(backbone)
    found = [n for n, m in blocks.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets]
    if not found and not lora_expert_parameters(backbone, targets):
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in blocks.named_modules() if isinstance(m, nn.Linear)})
        raise TeacherError(f"teacher.lora_targets {list(targets)} name no linear layer of this "
                           f"{backbone.config.model_type} teacher; its linear layers are: {', '.join(linear)}")
    return found


def lora_expert_parameters(backbone, targets: list[str]) -> list[str]:
    """With "experts" in `targets`: the routed experts' fused weights (3-D parameters of an
    `experts` module, e.g. "3.mlp.experts.gate_up_proj"), which peft adapts per expert through
    `target_parameters`; empty for a teacher without routed experts."""
    if "experts" not in targets:
        return []
    blocks, _ = _blocks(backbone)
    return [n for n, p in blocks.named_parameters() if p.ndim == 3 and n.rsplit(".", 2)[-2] == "experts"]


def add_lora(backbone, rank: int, alpha: float, targets: list[str]):
    """Freeze `backbone` and inject LoRA adapters (float32, B = 0 so the model is unchanged
    at first) into the target layers (and, with "experts" in `targets`, the routed experts'
    fused weights); returns the peft LoraConfig (names relative to the causal LM, as
    PeftModel.save_pretrained writes them).

    The adapters go into the decoder layers module rather than the whole model: peft's
    transformers-5 conversion for MoE model types (deepseek_v2/v3) would otherwise rename the
    targets gate_proj/up_proj/down_proj to the routed experts' fused parameters and drop the
    dense and shared-expert MLPs."""
    peft = _peft()
    blocks, prefix = _blocks(backbone)
    names, experts = lora_target_names(backbone, targets), lora_expert_parameters(backbone, targets)
    backbone.requires_grad_(False)
    peft.inject_adapter_in_model(peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=names,
                                                 target_parameters=experts or None), blocks)
    for name, p in blocks.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()  # adapters train in float32 whatever the base's dtype
            p.requires_grad_(True)
    return peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                           target_modules=[prefix + n for n in names],
                           target_parameters=[prefix + n for n in experts] or None)


def lora_state(backbone) -> dict[str, torch.Tensor]:
    """The adapter weights under PEFT's file keys (base_model.model.model.layers.0...lora_A.weight)."""
    blocks, prefix = _blocks(backbone)
    state = _peft().get_peft_model_state_dict(blocks)
    return {_PEFT_PREFIX + prefix + k: v.detach().float().contiguous().cpu() for k, v in state.items()}


def save_lora(backbone, lora_config, out_dir: Path) -> None:
    """adapter_config.json and adapter_model.safetensors, loadable by load_lora and by
    peft.PeftModel.from_pretrained(base, out_dir)."""
    lora_config.save_pretrained(str(out_dir))
    save_file(lora_state(backbone), str(out_dir / ADAPTER_FILE))


def load_lora(backbone, folder: Path) -> None:
    """Inject the adapter saved in `folder` into `backbone` (in place, frozen)."""
    peft = _peft()
    blocks, prefix = _blocks(backbone)
    config = peft.LoraConfig.from_pretrained(str(folder))
    strip_prefix = lambda names: [t[len(prefix):] if t.startswith(prefix) else t for t in names]  # noqa: E731
    config.target_modules = strip_prefix(config.target_modules)
    if config.target_parameters:
        config.target_parameters = strip_prefix(config.target_parameters)
    config.inference_mode = True
    peft.inject_adapter_in_model(config, blocks)
    strip = _PEFT_PREFIX + prefix
    state = {k[len(strip):]: v for k, v in load_file(str(folder / ADAPTER_FILE)).items() if k.startswith(strip)}
    expected = {k for k, _ in blocks.named_parameters() if "lora_" in k}
    if len(state) != len(expected):
        raise TeacherError(f"{folder / ADAPTER_FILE} holds {len(state)} adapter tensors for {len(expected)} "
                           f"adapter weights; the adapter folder is damaged: run `tinyseek teacher --force`")
    result = peft.set_peft_model_state_dict(blocks, state)
    if result.unexpected_keys:
        raise TeacherError(f"{folder / ADAPTER_FILE} does not fit this base model (unexpected "
                           f"{result.unexpected_keys[:3]}); run `tinyseek teacher --force`")
    for name, p in blocks.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
    backbone.requires_grad_(False)


def base_fingerprint(source: str | Path) -> str:
    """A cheap identity of a base model: config.json's bytes and the weight files' names and
    sizes (a .gguf file: its name and size). Reading the weights would take minutes for a 7B
    model; a different checkpoint of the same architecture differs in these."""
    path = Path(source).expanduser()
    h = hashlib.sha256()
    if path.is_dir():
        if (path / "config.json").is_file():
            h.update((path / "config.json").read_bytes())
        for f in sorted(path.glob("*.safetensors")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    elif path.is_file():
        h.update(f"{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()


def resolve_base(teacher_dir: Path, meta: dict) -> Path:
    """The base model of a "lora" or "none" teacher: `meta["base"]`, relative to the teacher folder."""
    base = Path(meta["base"]).expanduser()
    return base if base.is_absolute() else teacher_dir / base


# -- saving and loading ------------------------------------------------------------------------

def save_adapted(model: TeacherClassifier, tokenizer, out_dir: Path, meta: dict, lora_config=None) -> None:
    """Write the adapted teacher (see the module docstring): the whole backbone when
    meta["adapt"] is "full" (the default), the adapter (`lora_config` from add_lora) for
    "lora", no backbone for "none"; the head when the model has one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    adapt = meta.get("adapt", "full")
    if adapt == "full":
        model.backbone.save_pretrained(str(out_dir))
    elif adapt == "lora":
        save_lora(model.backbone, lora_config, out_dir)
    tokenizer.save_pretrained(str(out_dir))
    if model.head is not None:
        save_file(model.classifier_state(), str(out_dir / CLASSIFIER_FILE))
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def load_adapted(teacher_dir: str | Path, dtype: str = "float32", device: str = "cpu"):
    """(TeacherClassifier in eval mode, tokenizer, teacher.json) from `<run>/teacher/`, whatever
    its `adapt` (full, lora: base + adapter, none: base). The backbone loads in `dtype` on
    `device` (see load.load_teacher); the head (and input projection) stay float32 on that
    device, a sequence task's projection runs in the backbone's dtype. A zero-shot teacher
    (teacher.json's `labels_from`) has no head: `model.head` is None."""
    teacher_dir = Path(teacher_dir)
    meta_file, head_file = teacher_dir / META_FILE, teacher_dir / CLASSIFIER_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
    has_head = meta is not None and meta.get("labels_from", "head") == "head"
    if meta is None or (has_head and not head_file.is_file()):
        raise TeacherError(f"{teacher_dir} is not an adapted teacher (no {META_FILE} or {CLASSIFIER_FILE}); "
                           f"run `tinyseek teacher` first")
    adapt = meta.get("adapt", "full")
    if adapt == "full":
        backbone, tokenizer = load_teacher(teacher_dir, dtype=dtype, device=device)
    else:
        base = resolve_base(teacher_dir, meta)
        if not base.exists():
            raise TeacherError(f"the teacher in {teacher_dir} (teacher.adapt = {adapt!r}) uses the base model {base}, "
                               f"which does not exist any more; put it back there or run `tinyseek teacher --force`")
        if meta.get("base_fingerprint") not in (None, base_fingerprint(base)):
            raise TeacherError(f"the base model {base} changed since the teacher in {teacher_dir} was adapted to it "
                               f"(its config or weight files differ); run `tinyseek teacher --force`")
        backbone, tokenizer = load_teacher(base, teacher_dir, dtype=dtype, device=device)
        if adapt == "lora":
            load_lora(backbone, teacher_dir)
    model = TeacherClassifier(backbone, len(meta["labels"]) if has_head else 0, meta.get("num_features", 0))
    if has_head:
        missing, unexpected = model.load_state_dict(load_file(str(head_file)), strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise TeacherError(f"{head_file} does not match teacher.json: missing {missing}, unexpected {unexpected}")
        model.head.to(backbone.device)
    if model.proj is not None:
        model.proj.to(backbone.device, backbone.dtype)
    return model.eval(), tokenizer, meta
