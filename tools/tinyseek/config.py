"""One validated configuration for a run, read from TOML; every field has a default.

The built-in default (no --config) is the smart-home intents task with the tiny offline
DeepSeek teacher. Unknown keys are errors, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The configuration file is unreadable or names an unknown or invalid setting."""


@dataclass
class TaskConfig:
    kind: str = "intents"  # intents | jsonl | npz | audio (docs/audio.md)
    train: str = ""  # jsonl/npz: training file
    test: str = ""  # jsonl/npz: test file (empty: hold out test_fraction of train)
    val: str = ""  # jsonl/npz: validation file, e.g. a benchmark's official split (empty: hold out val_fraction)
    test_fraction: float = 0.2
    val_fraction: float = 0.15  # intents: share of templates; jsonl/npz: of groups (task.group) or samples
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    samples_per_intent: int = 240  # built-in intents: samples per intent and language
    # jsonl: the classes, in order (empty: the training file's labels). With it, lines may have no
    # label: the teacher labels them (teacher.labels = "zero-shot"); docs/datasets.md.
    labels: list[str] = field(default_factory=list)
    # jsonl/npz: hold out validation (and test, without a test file) by whole groups: the JSONL
    # key (or NPZ array) naming each sample's speaker, session, template or source file. Empty:
    # stratified random samples, which overrates held-out accuracy when samples come in families.
    group: str = ""
    seed: int = 0
    # audio: clips are cut or zero-padded to this length; the built-in spoken commands (task.train
    # empty) speak clips_per_intent of the intents task's utterances per intent and language.
    clip_seconds: float = 3.0
    clips_per_intent: int = 40
    # audio: front-end frames (20 ms each) per student step: the LSTM steps once per this many
    # frames, on their concatenation (the device runs fewer LSTM steps, and what the student
    # learns from a command's start has fewer steps to survive; docs/audio.md).
    frames_per_step: int = 4


@dataclass
class TeacherConfig:
    source: str = "default"  # "default" (tiny DeepSeek-V3 built locally), an HF folder, or a .gguf file
    tokenizer: str = ""  # GGUF only: folder of the tokenizer (empty: the one inside the GGUF)
    # The built-in teacher's size.
    hidden_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    # Domain adaptation.
    pretrain_epochs: int = 2  # continued pretraining (causal LM) on the task's text
    finetune_epochs: int = 6  # classification head (+ backbone) on the labels
    head_epochs: int = 300  # at most, when only the head trains on a frozen backbone's features
    patience: int = 20  # stop after this many epochs without a better validation accuracy (0: never)
    lr: float = 1e-3
    batch_size: int = 32
    max_tokens: int = 48
    # Knowledge extraction.
    layers: list[int] = field(default_factory=list)  # hidden-state layers; empty = evenly spaced, 3 of them
    attentions: bool = False  # also cache attention maps of those layers (head-averaged)
    shard_size: int = 256  # samples per cache shard: an interrupted extraction resumes from the last whole shard
    # Where the shards run (docs/teachers.md, "Beyond one machine"): local = this process;
    # ray = Ray actors, one teacher replica each (a GPU each where Ray sees GPUs), writing the
    # same shard files. ray_address: "" starts a local Ray cluster, else the address of one to
    # join ("auto", "ray://host:10001", "host:6379"). workers: actors (0: one per GPU Ray sees,
    # else one per teacher.threads CPUs); each runs teacher.threads threads (0: one).
    engine: str = "local"  # local | ray
    ray_address: str = ""
    workers: int = 0
    # Size: the weights' dtype (auto: bfloat16 above 100M parameters, float32 below) and device
    # (auto: CUDA when torch sees a GPU). See docs/teachers.md.
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch CPU threads of adaptation and extraction (0: OMP_NUM_THREADS if set, else every core).
    # Two torch jobs on the same cores slow each other many times over: give each its share.
    threads: int = 0
    # What adaptation trains (docs/teachers.md): full = the weights themselves, lora = low-rank
    # adapters on the frozen backbone (saved alone), none = nothing of the backbone.
    adapt: str = "auto"  # auto (full for the built-in teacher, lora for a pretrained one) | full | lora | none
    lora_rank: int = 8
    lora_alpha: float = 16.0
    # Linear layers that get adapters, by name: attention and MLP projections of deepseek_v2/v3
    # (multi-head latent attention), qwen2 and llama; absent names are ignored. "experts" adds
    # the routed experts' fused weights of MoE layers (docs/teachers.md).
    lora_targets: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
        "gate_proj", "up_proj", "down_proj"])
    # Where the soft labels come from: head = a classifier trained on the labels; zero-shot = the
    # LM's next-token log-probabilities of each label's words after the prompt (no labels needed).
    labels: str = "head"  # head | zero-shot
    prompt: str = "Classify the text into one of these categories: {labels}.\nText: {text}\nCategory:"
    verbalizers: dict[str, list[str]] = field(default_factory=dict)  # label -> words; default: the name, _ as space
    verbalizer_score: str = "mean"  # mean | sum of a multi-token verbaliser's token log-probs
    # Few-shot labels: this many labelled training examples per class, written as `example`,
    # go into the prompt (at {examples}, or before it); 0 = zero-shot.
    shots: int = 0
    example: str = "Text: {text}\nCategory: {label}\n\n"
    # Noise-aware adaptation: the adaptation's training split also holds noise_copies corrupted
    # copies of every sample; noise as distill.noise (empty = the modality's default recipe).
    # -1 (auto): scaled by the training split's size (scaled_settings), 2 on the built-in task.
    noise_copies: int = -1
    noise: str = ""
    # The generated transfer set (teacher/transfer.py): utterances a language model writes (the
    # adapted teacher's own, prompted with the first words of training examples, or
    # transfer_writer's, prompted with transfer_prompt and a list of a class's examples), kept
    # where the teacher's head is confident; the student distills on them beside the training
    # split. 0: none.
    transfer_samples: int = 0
    transfer_confidence: float = 0.6
    transfer_temperature: float = 1.0
    # A pretrained LM (local folder or .gguf) that writes instead of the teacher, or "recombine":
    # pieces of a class's training texts recombined, no language model writing.
    transfer_writer: str = ""
    transfer_prompt: str = "Sentences with the same meaning:\n"
    seed: int = 0


@dataclass
class StudentConfig:
    hidden: int = 64
    layers: int = 1
    embed_dim: int = 32
    vocab_size: int = 1024
    max_len: int = 32
    # Hashed character n-grams averaged into each word's step (docs/numerics.md, "Subwords"):
    # at most this many n-gram ids per word; 0 = whole words only.
    subwords: int = 0


@dataclass
class DistillConfig:
    """docs/distillation.md: the schedules, the layer mapping, the feedback rounds."""
    # progressive (features, then logits, then hard labels) | joint (one loss). Chosen on validation
    # (bench/RESULTS.md "Distillation ablation").
    schedule: str = "progressive"
    # joint: alpha * KL(T) + (1 - alpha) * hard labels + beta * features, for `epochs`.
    alpha: float = 0.7  # weight of the KL term (1 - alpha on the hard labels)
    temperature: float = 4.0
    beta: float = 0.1  # weight of feature matching
    # 0 (auto): scaled by the training split's size (scaled_settings), 50 on the built-in task.
    # progressive: epochs in all, shared out in the ratio of the stage epochs below (automatic:
    # the stage epochs as given on the built-in task, proportionally fewer on bigger sets).
    epochs: int = 0
    # Feature matching: "teacher:student" layer pairs, e.g. "12:0, 24:1, 36:2"; empty = every
    # cached teacher layer spread evenly over the student's LSTM layers, the last to the last.
    layer_map: str = ""
    feature_loss: str = "cosine"  # cosine | mse, between the projected student and the teacher state
    # progressive: stage 1 features only; stage 2 KL with T annealed temperature_start ->
    # temperature_end plus hard labels at hard_weight (and features at stage2_beta); stage 3
    # hard labels at stage3_lr.
    stage1_epochs: int = 8
    stage2_epochs: int = 24
    stage3_epochs: int = 6
    temperature_start: float = 8.0
    temperature_end: float = 1.0
    hard_weight: float = 0.1
    stage2_beta: float = 0.0
    stage3_lr: float = 3e-4
    # Feedback: rounds re-running the classifier stages after re-weighting (weight x feedback_weight)
    # or re-labelling (the teacher's prediction) the training samples student and teacher disagree on.
    feedback_rounds: int = 0
    feedback: str = "reweight"  # reweight | relabel
    feedback_weight: float = 3.0
    # Noise-aware distillation: the training split also holds noise_copies corrupted copies of
    # every sample, each with its clean sample's teacher logits and hidden states as targets.
    # noise: "kind:level" pairs applied in order to each copy (data/noise.py); empty = ASR errors
    # at 0.1 then typos at 0.02 for text, sensor noise at 20 dB then a random walk of 0.5 for
    # sequences. An epoch costs 1 + noise_copies times as much. -1 (auto): scaled by the training
    # split's size (scaled_settings), 6 on the built-in task.
    noise_copies: int = -1
    noise: str = ""
    # Audio tasks (task.kind = "audio"): SpecAugment of every training batch, drawn anew each
    # epoch and never applied to validation: a shift of up to spec_shift_frames front-end frames
    # (the edge frames repeated), then spec_time_masks stretches of up to spec_time_frames frames
    # and spec_freq_masks bands of up to spec_freq_channels mel channels set to their training
    # mean. 0 turns each off. Chosen on the built-in spoken commands' validation voices: a shift
    # of up to 32 frames (640 ms); the masks did not help there (docs/audio.md, "SpecAugment").
    spec_shift_frames: int = 32
    spec_time_masks: int = 0
    spec_time_frames: int = 0
    spec_freq_masks: int = 0
    spec_freq_channels: int = 0
    lr: float = 3e-3
    batch_size: int = 64
    # Also train the same student on the hard labels alone (no teacher), the bar a teacher must
    # clear; the report shows both and warns when the teacher falls below it. Doubles the stage.
    hard_label_baseline: bool = False
    seed: int = 0


# quant.qat_lr when left at 0, per gate width: chosen on the built-in task's validation split
# (6 epochs from the default's float student; int4 1e-3 / 3e-3 / 1e-2 / 3e-2: 76.6 / 78.3 / 78.6 /
# 78.2 %, binary 3e-4 / 1e-3 / 3e-3 / 1e-2 / 3e-2: 73.7 / 73.5 / 77.3 / 78.2 / 79.4 %; int8, not
# swept, as int4). bench/RESULTS.md, "Low-bit weights".
QAT_LR = {"int8": 1e-2, "int4": 1e-2, "binary": 3e-2}


@dataclass
class QuantConfig:
    calibration_samples: int = 512
    # Width of the LSTM gate matrices: int8, int4 (two per byte) or binary (sign bits, eight per
    # byte); the head is int8, binary in a binary model (docs/numerics.md, "Low-bit weights").
    weights: str = "int8"
    # Width of the stored embedding (text students): int8, int4 or binary rows with a gain per row
    # (docs/numerics.md, "Low-bit embedding"); empty = the same as `weights`.
    embedding: str = ""
    # Quantization-aware epochs after distillation: the float student trained on with its gate
    # weights fake-quantized to `weights` (straight-through gradients); 0 = post-training only.
    qat_epochs: int = 0
    # Peak learning rate of the QAT epochs (cosine decay, as every stage); 0 = QAT_LR's for the width.
    qat_lr: float = 0.0

    @property
    def qat_peak_lr(self) -> float:
        return self.qat_lr or QAT_LR[self.weights]


@dataclass
class CodegenConfig:
    name: str = ""  # C prefix; empty = the run name
    out_dir: str = ""  # empty = firmware/lib/<name>


@dataclass
class RobustnessConfig:
    kinds: list[str] = field(default_factory=list)  # noise kinds (data/noise.py); empty = the task's defaults
    seed: int = 0  # of the noise
    max_drop_points: float = 3.0  # goal: accuracy drop at the medium level, percentage points


@dataclass
class EdgeConfig:
    """The students for bigger devices (`tinyseek edge`, docs/students.md); KD uses
    distill.alpha and distill.temperature."""
    # TinyBert (edge boxes): a MobileBERT-style bottleneck transformer over the hash tokenizer.
    vocab_size: int = 2048
    max_len: int = 32
    hidden: int = 128  # inter-block width
    bottleneck: int = 64  # intra-block width (attention, FFNs)
    layers: int = 4
    heads: int = 4
    ffn_stack: int = 2  # feed-forward networks per block
    embed_dim: int = 64  # token embedding, before its projection to `hidden`
    trigram: bool = False  # MobileBERT's trigram embedding (neighbours' embeddings concatenated)
    epochs: int = 10  # the best validation epoch of 20 was the 10th on the intents task
    lr: float = 2e-3
    attention_weight: float = 1.0  # attention transfer from the cached maps (needs teacher.attentions); 0 = off
    # Truncated teacher (high-end phones): the first truncated_layers decoder layers, fine-tuned.
    truncated_layers: int = 2
    truncated_epochs: int = 4
    truncated_lr: float = 3e-4
    batch_size: int = 64
    seed: int = 0
    # `tinyseek edge --quantize`: of the quantizers' settings (int8 per tensor / per channel; 4-bit
    # algorithm and block size), the smallest file whose validation accuracy is within this many
    # points of the most accurate setting's (0: the most accurate).
    quant_tolerance: float = 1.0


@dataclass
class SearchConfig:
    """`tinyseek search` (docs/distillation.md, "Budget-aware student search"): the smallest student
    of the grid below whose int8 model keeps `target` of the teacher's validation accuracy."""
    board: str = "qemu_m4"  # board profile (codegen/boards/): clock, flash, RAM, kernel cost coefficients
    flash_kb: float = 0.0  # the model's flash budget, KB (0: the board's flash)
    ram_kb: float = 0.0  # the model's RAM budget incl. stack allowance, KB (0: the board's RAM)
    latency_ms: float = 0.0  # worst-case (student.max_len steps) latency at the board's clock (0: no limit)
    target: float = 0.95  # int8 validation accuracy / the teacher's
    hidden: list[int] = field(default_factory=lambda: [16, 24, 32, 48, 64, 96])
    layers: list[int] = field(default_factory=lambda: [1, 2])
    embed_dim: list[int] = field(default_factory=lambda: [16, 32])
    vocab_size: list[int] = field(default_factory=lambda: [256, 512, 1024])  # text tasks only
    epochs: int = 10  # distillation epochs per candidate (0: distill.epochs)
    max_candidates: int = 8  # students trained at most


@dataclass
class WakeConfig:
    """A wake word beside an audio task's command model (docs/audio.md, "A wake word in `tinyseek
    build`"): trained on the built-in synthesisers' voices saying `keyword`, against the task's
    own clips as other speech, hard labels only (tinyseek.audio.wakeword)."""
    keyword: str = ""  # empty: no wake word; e.g. "hey tiny" (audio tasks only)
    # Your recordings of the keyword: a folder of 16 kHz mono WAVs, or of train/ val/ test/ folders
    # of them; they join the synthesised keywords in training and in their split's stream.
    recordings: str = ""
    keywords: int = 3000  # training utterances of the keyword
    near_misses: int = 1500  # training utterances of words that share a part of it ("hey tony")
    mining_keywords: int = 1500  # keywords in the hard-negative mining stream (0: no mining)
    hard_negatives: int = 6000  # mined windows of highest margin added as other
    val_keywords: int = 100  # validation voices' keywords: the validation stream and windows
    test_keywords: int = 150  # test voices' keywords: the report's stream
    false_accepts_per_hour: float = 1.0  # the threshold keeps the validation stream to this rate
    frames_per_step: int = 2
    # 48: on bench/wakeword.py's validation stream 93 % of keywords at 1 false accept an hour, 32: 89 %
    hidden: int = 48
    epochs: int = 20
    seed: int = 0


@dataclass
class Config:
    run: str = "intents"
    models_dir: str = "models"
    task: TaskConfig = field(default_factory=TaskConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    codegen: CodegenConfig = field(default_factory=CodegenConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    wake: WakeConfig = field(default_factory=WakeConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.models_dir) / self.run

    @property
    def model_name(self) -> str:
        return self.codegen.name or self.run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fill(cls, data: dict[str, Any], where: str):
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown setting '{where}{key}'; known: {', '.join(sorted(known))}")
        default = known[key].default_factory() if callable(known[key].default_factory) else known[key].default
        if is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"'{where}{key}' must be a table ([{where}{key}])")
            kwargs[key] = _fill(type(default), value, f"{where}{key}.")
            continue
        if isinstance(default, bool) != isinstance(value, bool) or (
            isinstance(default, (int, float)) and not isinstance(value, (int, float))
        ) or (isinstance(default, (str, list)) and not isinstance(value, type(default))):
            raise ConfigError(f"'{where}{key}' must be {type(default).__name__}, not {value!r}")
        if isinstance(default, float):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    cfg = _fill(Config, data, "")
    validate(cfg)
    return cfg


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a TOML config (None: the built-in default), then apply dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p} is not valid TOML: {e}") from e
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(data)


def validate(cfg: Config) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)
    need(cfg.task.kind in ("intents", "jsonl", "npz", "audio"),
         f"task.kind must be intents, jsonl, npz or audio, not {cfg.task.kind!r}")
    need(0.1 <= cfg.task.clip_seconds <= 60, f"task.clip_seconds must be in [0.1, 60], not {cfg.task.clip_seconds}")
    need(1 <= cfg.task.frames_per_step <= 50,
         f"task.frames_per_step must be in [1, 50] (front-end frames per student step), not {cfg.task.frames_per_step}")
    need(cfg.task.clips_per_intent >= 3, f"task.clips_per_intent must be at least 3, not {cfg.task.clips_per_intent}")
    need(cfg.task.kind in ("intents", "audio") or bool(cfg.task.train),
         f"task.kind = {cfg.task.kind!r} needs task.train (a file path)")
    need(0.0 <= cfg.task.test_fraction < 1.0 and 0.0 <= cfg.task.val_fraction < 1.0, "task fractions must be in [0, 1)")
    need(set(cfg.task.languages) <= {"en", "zh"} and cfg.task.languages != [], "task.languages: choose from en, zh")
    need(bool(_RUN_NAME.fullmatch(cfg.run)) and cfg.run not in (".", ".."),
         f"run must be a plain folder name (letters, digits, '.', '_', '-'), not {cfg.run!r}; it names "
         f"{cfg.models_dir}/<run>. To write elsewhere set models_dir to an absolute path")
    for key in ("models_dir", "codegen.out_dir"):
        value = cfg.models_dir if key == "models_dir" else cfg.codegen.out_dir
        need(Path(value).is_absolute() or ".." not in Path(value).parts,
             f"{key} = {value!r} leaves the project through '..'; a folder outside the project needs an explicit "
             f"absolute path (e.g. {str(Path(value).resolve())!r})")
    t = cfg.teacher
    need(t.batch_size >= 1, f"teacher.batch_size must be >= 1, not {t.batch_size}")
    need(t.max_tokens >= 2, f"teacher.max_tokens must be >= 2 (tokens per text the teacher reads), not {t.max_tokens}")
    need(t.source != "default" or t.num_layers >= 1 and t.num_heads >= 1 and t.hidden_size >= 8 and t.hidden_size % t.num_heads == 0
         and (t.hidden_size // t.num_heads) % 2 == 0,
         f"teacher.hidden_size = {t.hidden_size} with teacher.num_heads = {t.num_heads}: the built-in teacher needs "
         f"hidden_size >= 8 divided by num_heads into an even head size (the attention kernels need aligned "
         f"strides), e.g. hidden_size = {max(8, 2 * t.num_heads * max(1, round(t.hidden_size / (2 * max(t.num_heads, 1)))))}"
         f", and num_layers >= 1")
    need(cfg.teacher.shard_size >= 1, "teacher.shard_size must be >= 1 (samples per cache shard)")
    need(cfg.teacher.threads >= 0, "teacher.threads must be >= 0 (0: OMP_NUM_THREADS if set, else every core)")
    need(cfg.teacher.engine in ("local", "ray") and cfg.teacher.workers >= 0,
         f"teacher.engine must be local or ray (not {cfg.teacher.engine!r}) and teacher.workers >= 0 "
         f"(0: one per GPU, else per CPU), not {cfg.teacher.workers}")
    need(cfg.task.kind != "audio" or not cfg.teacher.transfer_samples,
         "teacher.transfer_samples is for text tasks: a written sentence has no audio for an audio student; "
         "set it to 0 for task.kind = \"audio\"")
    w = cfg.wake
    need(not w.keyword or cfg.task.kind == "audio",
         f"wake.keyword ({w.keyword!r}) is for audio tasks: set task.kind = \"audio\" or leave wake.keyword empty")
    need(not w.keyword or bool(re.fullmatch(r"[a-z' ]+", w.keyword.strip())),
         f"wake.keyword must be English words (a-z, spaces), not {w.keyword!r}: the English voices speak it")
    need(min(w.keywords, w.val_keywords, w.test_keywords, w.epochs, w.hidden, w.frames_per_step) >= 1
         and min(w.near_misses, w.mining_keywords, w.hard_negatives) >= 0 and w.false_accepts_per_hour >= 0
         and 50 % w.frames_per_step == 0,
         "wake.keywords, val_keywords, test_keywords, epochs and hidden must be >= 1, near_misses, "
         "mining_keywords, hard_negatives and false_accepts_per_hour >= 0, and wake.frames_per_step must "
         f"divide the 50-frame window (1, 2, 5, 10, 25, 50), not {w.frames_per_step}")
    need(cfg.teacher.transfer_samples >= 0 and 0.0 <= cfg.teacher.transfer_confidence < 1.0
         and cfg.teacher.transfer_temperature > 0,
         "teacher.transfer_samples must be >= 0, transfer_confidence in [0, 1), transfer_temperature > 0")
    need(cfg.teacher.head_epochs >= 1 and cfg.teacher.patience >= 0,
         "teacher.head_epochs must be >= 1 and teacher.patience >= 0 (0: no early stopping)")
    need(cfg.teacher.dtype in ("auto", "bfloat16", "float16", "float32"),
         f"teacher.dtype must be auto, bfloat16, float16 or float32, not {cfg.teacher.dtype!r}")
    need(bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.teacher.device)),
         f"teacher.device must be auto, cpu, cuda or cuda:N, not {cfg.teacher.device!r}")
    need(cfg.teacher.adapt in ("auto", "full", "lora", "none"),
         f"teacher.adapt must be auto, full, lora or none, not {cfg.teacher.adapt!r}")
    need(cfg.teacher.lora_rank >= 1 and cfg.teacher.lora_alpha > 0 and bool(cfg.teacher.lora_targets),
         "teacher.lora_rank must be >= 1, teacher.lora_alpha > 0 and teacher.lora_targets not empty")
    need(cfg.teacher.labels in ("head", "zero-shot") and cfg.teacher.verbalizer_score in ("mean", "sum"),
         "teacher.labels must be head or zero-shot, teacher.verbalizer_score mean or sum")
    need(cfg.teacher.shots >= 0 and "{text}" in cfg.teacher.example and "{label}" in cfg.teacher.example,
         "teacher.shots must be >= 0 and teacher.example hold {text} and {label}")
    need(cfg.teacher.labels == "head" or ("{text}" in cfg.teacher.prompt and cfg.task.kind not in ("npz", "audio")),
         "teacher.labels = \"zero-shot\" needs a text task and a teacher.prompt with a {text} placeholder")
    need(isinstance(cfg.teacher.verbalizers, dict) and all(
        isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(w, str) for w in v))
        for v in cfg.teacher.verbalizers.values()),
        "teacher.verbalizers must be a table of label = \"word\" or [\"word\", ...]")
    need(len(set(cfg.task.labels)) == len(cfg.task.labels) and all(str(s).strip() for s in cfg.task.labels)
         and (not cfg.task.labels or cfg.task.kind == "jsonl"),
         "task.labels (jsonl tasks only) must name each class once, none of them empty")
    need(cfg.student.layers in (1, 2), "student.layers must be 1 or 2")
    need(1 <= cfg.student.hidden <= 1024 and 1 <= cfg.student.embed_dim <= 1024, "student.hidden/embed_dim must be 1..1024")
    need(2 <= cfg.student.vocab_size <= 65535, "student.vocab_size must be 2..65535")
    need(0 <= cfg.student.subwords <= 15, "student.subwords must be 0..15 (0: whole words only)")
    need(cfg.quant.weights in ("int8", "int4", "binary"),
         f"quant.weights must be int8, int4 or binary (the width of the LSTM gate matrices), not {cfg.quant.weights!r}")
    need(cfg.quant.embedding in ("", "int8", "int4", "binary"),
         f"quant.embedding must be int8, int4, binary or empty (the same as quant.weights), not {cfg.quant.embedding!r}")
    need(cfg.quant.qat_lr >= 0, f"quant.qat_lr must be > 0 (or 0: the width's default), not {cfg.quant.qat_lr}")
    need(cfg.quant.qat_epochs >= 0, f"quant.qat_epochs must be >= 0 (0: post-training quantization only), not "
         f"{cfg.quant.qat_epochs}")
    need(0.0 <= cfg.distill.alpha <= 1.0, "distill.alpha must be in [0, 1]")
    need(cfg.distill.temperature > 0, "distill.temperature must be > 0")
    d = cfg.distill
    need(d.schedule in ("joint", "progressive") and d.feedback in ("reweight", "relabel")
         and d.feature_loss in ("cosine", "mse"),
         "distill.schedule must be joint or progressive, distill.feedback reweight or relabel, "
         "distill.feature_loss cosine or mse")
    noise_pairs = r"\s*([a-z_]+\s*:\s*[0-9.e+-]+\s*(,\s*[a-z_]+\s*:\s*[0-9.e+-]+\s*)*)?"
    need(-1 <= cfg.teacher.noise_copies <= 16 and bool(re.fullmatch(noise_pairs, cfg.teacher.noise)),
         f"teacher.noise_copies must be -1 (auto) or 0..16 and teacher.noise \"kind:level\" pairs like \"asr:0.1, typo:0.02\" "
         f"(or empty), not {cfg.teacher.noise_copies} and {cfg.teacher.noise!r}")
    need(min(d.spec_shift_frames, d.spec_time_masks, d.spec_time_frames, d.spec_freq_masks, d.spec_freq_channels) >= 0,
         "distill.spec_shift_frames, spec_time_masks, spec_time_frames, spec_freq_masks and spec_freq_channels must be "
         f"0 or more, not {d.spec_shift_frames}, {d.spec_time_masks}, {d.spec_time_frames}, {d.spec_freq_masks} and "
         f"{d.spec_freq_channels}")
    need(-1 <= d.noise_copies <= 16 and bool(re.fullmatch(noise_pairs, d.noise)),
         f"distill.noise_copies must be -1 (auto) or 0..16 and distill.noise \"kind:level\" pairs like \"asr:0.1, typo:0.02\" "
         f"(or empty), not {d.noise_copies} and {d.noise!r}")
    need(bool(re.fullmatch(r"\s*(\d+\s*:\s*\d+\s*(,\s*\d+\s*:\s*\d+\s*)*)?", d.layer_map)),
         f"distill.layer_map must be \"teacher:student\" pairs like \"12:0, 24:1\" (or empty), not {d.layer_map!r}")
    need(d.epochs >= 0, f"distill.epochs must be >= 0 (0: scaled by the training split's size), not {d.epochs}")
    need(min(d.stage1_epochs, d.stage2_epochs, d.stage3_epochs, d.feedback_rounds) >= 0
         and d.stage2_epochs + d.stage3_epochs >= 1, "distill: stage epochs and feedback_rounds must be >= 0, "
         "stage2_epochs + stage3_epochs >= 1")
    need(0 < d.temperature_end <= d.temperature_start and 0.0 <= d.hard_weight <= 1.0 and d.stage2_beta >= 0
         and d.stage3_lr > 0 and d.feedback_weight > 0,
         "distill: 0 < temperature_end <= temperature_start, hard_weight in [0, 1], stage2_beta >= 0, stage3_lr "
         "and feedback_weight > 0")
    need(cfg.robustness.max_drop_points > 0, "robustness.max_drop_points must be > 0 (percentage points)")
    e = cfg.edge
    need(min(e.vocab_size - 1, e.max_len, e.hidden, e.bottleneck, e.layers, e.heads, e.ffn_stack, e.embed_dim,
             e.epochs, e.truncated_layers, e.truncated_epochs, e.batch_size) >= 1 and e.bottleneck % e.heads == 0,
         "edge: sizes, epochs and batch_size must be >= 1, vocab_size >= 2, bottleneck a multiple of heads")
    need(e.lr > 0 and e.truncated_lr > 0 and e.attention_weight >= 0 and 0 <= e.quant_tolerance <= 100,
         "edge.lr and edge.truncated_lr must be > 0, edge.attention_weight >= 0, edge.quant_tolerance in [0, 100] "
         "(validation accuracy points)")
    sc = cfg.search
    need(min(sc.flash_kb, sc.ram_kb, sc.latency_ms) >= 0 and 0 < sc.target <= 2 and sc.epochs >= 0
         and sc.max_candidates >= 1, "search: flash_kb, ram_kb, latency_ms and epochs must be >= 0 (0: no limit / "
         "distill.epochs), target in (0, 2], max_candidates >= 1")
    need(all(bool(v) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
             for v in (sc.hidden, sc.layers, sc.embed_dim, sc.vocab_size))
         and min(sc.hidden + sc.embed_dim) >= 1 and max(sc.hidden + sc.embed_dim) <= 1024
         and set(sc.layers) <= {1, 2} and min(sc.vocab_size) >= 2 and max(sc.vocab_size) <= 65535,
         "search.hidden / embed_dim must be lists of integers 1..1024, search.layers of 1 and 2, "
         "search.vocab_size of integers 2..65535 (none of them empty)")
    name = cfg.model_name
    need(bool(_C_IDENT.fullmatch(name)) and len(name) <= 32 and name not in _C_KEYWORDS,
         f"model name {name!r} must be a C identifier (not a keyword) of at most 32 ASCII characters; "
         "set codegen.name or choose another run name")


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# No leading underscore: the upper-cased macros would be reserved identifiers.
_C_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "_Bool _Complex _Imaginary".split())


# What the automatic settings aim at: about this many (noisy) samples per distillation epoch and
# sample-steps per distillation, and samples per teacher epoch. They give the settings measured
# on the built-in task (4,320 training samples: teacher 2 copies, student 6 copies, 50 epochs;
# bench/RESULTS.md) and keep a 100k-sample dataset to about the same cost instead of hours.
DISTILL_SAMPLES_PER_EPOCH = 32_000
DISTILL_SAMPLE_STEPS = 1_600_000
TEACHER_SAMPLES_PER_EPOCH = 13_000


def scaled_teacher(teacher: "TeacherConfig", n_train: int):
    """teacher with an automatic noise_copies (-1) resolved for n_train training samples."""
    from dataclasses import replace
    if teacher.noise_copies >= 0:
        return teacher
    return replace(teacher, noise_copies=max(0, min(2, TEACHER_SAMPLES_PER_EPOCH // max(1, n_train) - 1)))


def scaled_settings(teacher: "TeacherConfig", distill: "DistillConfig", n_train: int):
    """(teacher, distill) with the automatic settings (noise_copies -1, epochs 0) resolved for a
    training split of n_train samples; explicit settings stay as they are."""
    from dataclasses import replace
    n = max(1, n_train)
    d_copies = distill.noise_copies if distill.noise_copies >= 0 else \
        max(0, min(6, DISTILL_SAMPLES_PER_EPOCH // n - 1))
    epochs = distill.epochs or max(10, min(50, round(DISTILL_SAMPLE_STEPS / (n * (1 + d_copies)))))
    return scaled_teacher(teacher, n), replace(distill, noise_copies=d_copies, epochs=epochs,
                                               **progressive_stages(distill, epochs))


STAGE_EPOCHS = ("stage1_epochs", "stage2_epochs", "stage3_epochs")


def progressive_stages(distill: "DistillConfig", auto_epochs: int) -> dict:
    """The progressive schedule's stage epochs for this run: scaled to distill.epochs in all when
    it is given; with automatic epochs as configured on the built-in task (50) and proportionally
    fewer on bigger training sets. A stage that trains keeps at least one epoch."""
    stages = {k: getattr(distill, k) for k in STAGE_EPOCHS}
    total = sum(stages.values())
    target = distill.epochs or round(total * min(1.0, auto_epochs / 50))
    if distill.schedule != "progressive" or not total or target == total:
        return {}
    return {k: max(1, round(n * target / total)) if n else 0 for k, n in stages.items()}
