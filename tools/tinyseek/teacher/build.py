"""The built-in offline teacher: a tiny DeepSeek-V3-architecture causal LM built from scratch.

It has the real architecture (multi-head latent attention, RMSNorm, RoPE, dense MLP in the
first layer, then mixture-of-experts layers with a shared expert and sigmoid top-k routing),
only small. Text tasks get a byte-level BPE tokenizer trained on the task's training texts;
sequence tasks feed `inputs_embeds` and get a tokenizer of the special tokens only, so the
folder still loads like any other teacher.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, DeepseekV3Config, PreTrainedTokenizerFast

from .load import TeacherError

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3 in this order
_CJK = "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"  # CJK unified ideographs (+ ext. A, compatibility)


def train_text_tokenizer(texts: list[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Byte-level BPE (NFKC, lowercased) trained on `texts`; every encoding starts with <bos>.

    Byte level means no text is ever out of vocabulary, whatever the language. Each CJK
    character is its own pre-token: merging whole Chinese phrases into single tokens would
    memorise the training phrasings instead of the words they share with new ones.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # The prepended space makes a text's first word the same token as anywhere else; a text
    # that starts with a CJK character does not need one.
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Lowercase(), normalizers.Prepend(" "),
        normalizers.Replace(Regex(f"^ (?={_CJK})"), "")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CJK), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <eos> $B", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return _wrap(tok)


def special_tokens_tokenizer() -> PreTrainedTokenizerFast:
    """The minimal tokenizer of a sequence-task teacher: its inputs never go through it."""
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIAL_TOKENS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>", padding_side="right")


def tiny_deepseek_config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                         max_positions: int) -> DeepseekV3Config:
    """A DeepSeek-V3 configuration scaled down: the first layer dense, the others MoE with
    4 routed experts (top-2, one group) plus one shared expert, MLA with low-rank q and kv."""
    if num_layers < 1 or num_heads < 1 or hidden_size < 8 or hidden_size % num_heads:
        raise TeacherError(
            f"teacher size hidden_size={hidden_size}, num_layers={num_layers}, num_heads={num_heads} is invalid: "
            f"need num_layers >= 1, hidden_size >= 8 and hidden_size a multiple of num_heads")
    return DeepseekV3Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        moe_intermediate_size=max(4, hidden_size // 2), num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads,
        first_k_dense_replace=1 if num_layers > 1 else 0,
        n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1,
        routed_scaling_factor=1.0, norm_topk_prob=True,
        q_lora_rank=hidden_size, kv_lora_rank=max(8, hidden_size // 2),
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions, num_mtp_layers=0,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)


def build_default_teacher(dataset, cfg, out_dir: str | Path, vocab_size: int = 2000) -> Path:
    """Build the untrained tiny DeepSeek-V3 teacher for `dataset` and save it to `out_dir`
    as a Hugging Face folder (config.json, model.safetensors, tokenizer files).

    Text tasks: a BPE tokenizer of at most `vocab_size` tokens trained on the training texts.
    Sequence tasks: the special-tokens tokenizer (inputs go in as embeddings). Seeded by
    `cfg.seed`, so the same inputs give the same weights.
    """
    out = Path(out_dir)
    if dataset.kind == "text":
        texts = list(dataset.train.texts or [])
        if not texts:
            raise TeacherError(f"task {dataset.name!r} has no training texts to train the teacher's tokenizer on")
        tokenizer = train_text_tokenizer(texts, vocab_size)
        max_positions = cfg.max_tokens
    elif dataset.kind == "sequence":
        tokenizer = special_tokens_tokenizer()
        max_positions = max(cfg.max_tokens, int(dataset.train.x.shape[1]))
    else:
        raise TeacherError(f"task kind {dataset.kind!r} is unknown; expected 'text' or 'sequence'")
    config = tiny_deepseek_config(len(tokenizer), cfg.hidden_size, cfg.num_layers, cfg.num_heads, max_positions)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
