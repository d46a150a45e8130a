"""Labels from the teacher itself: zero-shot scoring of label words (verbalisers) after a prompt.

Each text is put into a prompt template (`{text}` is replaced by the text, `{labels}` by the
labels' first verbalisers joined with ", "); the causal LM's next-token log-probabilities
then score every verbaliser as the continuation of that prompt:

- a verbaliser of several tokens scores the **mean** (default) or the **sum** of its tokens'
  log-probabilities, each given the prompt and the tokens before it. The sum is the
  log-probability of the whole word; it favours short verbalisers, the mean does not;
- a label with several verbalisers scores the log of the sum of their exponentiated scores
  (for "sum": the probability that the LM says any of them);
- the labels' distribution is the softmax of the label scores: `zero_shot_logits` returns its
  logarithm, float32 [N, C], which is what the knowledge cache stores as logits.

Where the verbaliser meets the prompt: trailing spaces of the prompt move into the
verbaliser (" lights on" is one or two tokens, "lights on" after a separate " " token would
be an unusual tokenization); a prompt ending in another whitespace (a newline) is followed
directly; otherwise one space is put between them, unless either side is a CJK character.

Cost: one forward pass per text gives every verbaliser's first token; each verbaliser of
more than one token adds one forward pass over the prompt and that verbaliser. The prompt's
lines before the text's (the labelled examples of few-shot labels, the instructions) are the
same for every text: they are read once, and every pass starts from their key/value cache,
so a long few-shot prompt costs each text only its own tokens.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .load import TeacherError, cache_arg, cache_of

DEFAULT_PROMPT = "Classify the text into one of these categories: {labels}.\nText: {text}\nCategory:"
SCORES = ("mean", "sum")


class VerbalizerError(TeacherError):
    """The prompt or the verbalisers cannot score the labels as configured."""


def default_verbalizer(label: str) -> str:
    """A label's default verbaliser: its name with underscores as spaces ("lights_on" -> "lights on")."""
    return label.replace("_", " ").strip()


def resolve_verbalizers(labels: list[str], verbalizers: dict | None = None) -> dict[str, list[str]]:
    """Every label's verbalisers: `verbalizers[label]` (a word or a list of words), else the
    default. Raises VerbalizerError naming an unknown label or an empty verbaliser."""
    given = dict(verbalizers or {})
    unknown = [k for k in given if k not in labels]
    if unknown:
        raise VerbalizerError(f"teacher.verbalizers names labels {unknown} that the task does not have "
                              f"(its labels: {', '.join(labels)}); fix the names or add the labels to task.labels")
    out = {}
    for label in labels:
        words = given.get(label, [default_verbalizer(label)])
        words = [words] if isinstance(words, str) else list(words)
        if not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise VerbalizerError(f"teacher.verbalizers.{label} = {words!r}: give one or more non-empty words, "
                                  f"e.g. {label} = [\"{default_verbalizer(label) or label}\"]")
        out[label] = [w.strip() for w in words]
    seen: dict[str, str] = {}
    for label, words in out.items():
        for w in words:
            if w in seen and seen[w] != label:
                raise VerbalizerError(f"the verbaliser {w!r} is given for both {seen[w]!r} and {label!r}; "
                                      f"every label needs words of its own")
            seen[w] = label
    return out


def check_prompt(prompt: str) -> None:
    if "{text}" not in prompt:
        raise VerbalizerError(f"teacher.prompt {prompt!r} has no {{text}} placeholder; write where the text goes, "
                              f"e.g. {DEFAULT_PROMPT!r}")


def _is_cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef"


def _join(prefix: str, word: str) -> tuple[str, str]:
    """(prefix, continuation): the prompt and the verbaliser as scored (module docstring)."""
    if prefix.endswith(" "):
        return prefix.rstrip(" "), " " + word
    if not prefix or prefix[-1].isspace() or _is_cjk(prefix[-1]) or _is_cjk(word[0]):
        return prefix, word
    return prefix, " " + word


def _lead_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text (a bos token, or nothing)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return full[:k]
    return []


def _cut(tokenizer, texts: list[str], max_tokens: int) -> list[str]:
    """Each text cut after its first `max_tokens` tokens (at that token's end in the string)."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [t if len(off) <= max_tokens else t[:off[max_tokens - 1][1]] for t, off in zip(texts, enc["offset_mapping"])]


def _encode_pairs(tokenizer, prompts: list[str], words: list[str]) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Token ids of every prompt (with the tokenizer's leading special tokens) and of every
    (prompt, verbaliser) continuation. The continuation is what the tokenizer makes of
    prompt + verbaliser beyond the prompt's own tokens; where a merge crosses the boundary,
    the verbaliser tokenized on its own."""
    lead = _lead_ids(tokenizer)
    pairs = [_join(p, w) for p in prompts for w in words]  # the prefix depends on the prompt only
    prefixes = [pairs[i * len(words)][0] for i in range(len(prompts))]
    ctx = tokenizer(prefixes, add_special_tokens=False)["input_ids"]
    full = tokenizer([pre + cont for pre, cont in pairs], add_special_tokens=False)["input_ids"]
    alone = tokenizer([cont for _, cont in pairs], add_special_tokens=False)["input_ids"]
    conts = []
    for i, c in enumerate(ctx):
        row = []
        for w in range(len(words)):
            k = i * len(words) + w
            ids = full[k][len(c):] if full[k][:len(c)] == c else alone[k]
            if not ids:
                raise VerbalizerError(f"the verbaliser {words[w]!r} gives no tokens with this tokenizer; "
                                      f"choose another word")
            row.append(ids)
        conts.append(row)
    # A prompt of no tokens at all (an empty text, "{text}", no bos) still needs a position to predict from.
    start = [next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                   if t is not None), 0)]
    return [lead + c or start for c in ctx], conts


def _causal_lm(model):
    """The causal LM of a TeacherClassifier, or the model itself."""
    return model.backbone if hasattr(model, "backbone") else model


@torch.inference_mode()
def _log_probs_at(lm, seqs: list[list[int]], positions: list[list[int]], targets: list[list[int]],
                  pad_id: int, prefix: "_Prefix | None" = None) -> list[torch.Tensor]:
    """For each sequence, log p(targets[j] | seq[:positions[j] + 1]): one forward pass over the
    right-padded batch, the LM head applied only at the positions asked for. With `prefix`,
    every sequence continues its tokens (read from its cache; positions count after it)."""
    device = lm.device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
    extra = {"use_cache": False}
    if prefix is not None:
        cache = copy.deepcopy(prefix.cache)  # the pass appends to it
        cache.batch_repeat_interleave(len(seqs))
        p = len(prefix.ids)
        extra = {cache_arg(lm.base_model): cache, "use_cache": True,
                 "position_ids": (p + torch.arange(width)).expand(len(seqs), width).to(device)}
        mask = torch.cat([torch.ones(len(seqs), p, dtype=mask.dtype), mask], 1)
    hidden = lm.base_model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra).last_hidden_state
    rows = torch.tensor([r for r, pos in enumerate(positions) for _ in pos], device=device)
    cols = torch.tensor([p for pos in positions for p in pos], device=device)
    logp = lm.get_output_embeddings()(hidden[rows, cols]).float().log_softmax(-1)
    picked = logp[torch.arange(len(rows), device=device), torch.tensor([t for tg in targets for t in tg], device=device)]
    return list(picked.cpu().split([len(p) for p in positions]))


class _Prefix:
    """The prompt's lines before the text's, read once: their token ids (the tokenizer's leading
    special tokens included) and the language model's key/value cache after them."""

    def __init__(self, lm, ids: list[int]):
        self.ids = ids
        with torch.no_grad():
            self.cache = cache_of(lm.base_model(input_ids=torch.tensor([ids], device=lm.device), use_cache=True))

    @classmethod
    def of(cls, lm, tokenizer, head: str) -> "_Prefix | None":
        """The shared lines of `head` (the prompt, labels filled in) up to the last line break
        before {text}: a token boundary in every tokenizer, so each text's prompt starts with
        exactly these ids. None where the prompt has no line before the text's."""
        before = head.split("{text}")[0]
        if "\n" not in before:
            return None
        ids = _lead_ids(tokenizer) + tokenizer(before[:before.rindex("\n") + 1], add_special_tokens=False)["input_ids"]
        return cls(lm, ids) if len(ids) > 1 else None

    def covers(self, contexts: list[list[int]]) -> bool:
        p = len(self.ids)
        return all(len(c) > p and c[:p] == self.ids for c in contexts)


def zero_shot_logits(model, tokenizer, texts: list[str], labels: list[str], verbalizers: dict | None = None,
                     prompt: str = DEFAULT_PROMPT, batch_size: int = 16, score: str = "mean",
                     max_tokens: int | None = None, share_prefix: bool = True) -> np.ndarray:
    """The teacher's zero-shot distribution over `labels` for each text, as log-probabilities,
    float32 [N, C] (each row's exp sums to 1); see the module docstring for the scoring.

    `model` is a causal LM (transformers, LoRA adapters included) or a TeacherClassifier;
    `verbalizers` maps a label to a word or a list of words (missing labels: the label name
    with underscores as spaces); `prompt` holds `{text}` (and optionally `{labels}`);
    `score` is "mean" or "sum" over a multi-token verbaliser's tokens; `max_tokens` cuts each
    text after that many tokens before it goes into the prompt. Batches of `batch_size`.
    `share_prefix`: read the prompt's lines before the text's once (module docstring); a batch
    whose prompts do not all start with their tokens is read whole.
    """
    check_prompt(prompt)
    if score not in SCORES:
        raise VerbalizerError(f"teacher.verbalizer_score {score!r} is unknown; choose mean or sum")
    if len(labels) < 2:
        raise VerbalizerError(f"zero-shot labels need at least 2 labels, got {labels}")
    verbs = resolve_verbalizers(list(labels), verbalizers)
    words = [w for label in labels for w in verbs[label]]
    owner = torch.tensor([c for c, label in enumerate(labels) for _ in verbs[label]])
    out = np.zeros((len(texts), len(labels)), np.float32)
    if not len(texts):
        return out
    lm = _causal_lm(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    texts = _cut(tokenizer, list(texts), max_tokens) if max_tokens else list(texts)
    # {labels} first: a text that happens to contain "{labels}" stays as it is.
    head = prompt.replace("{labels}", ", ".join(verbs[label][0] for label in labels))
    shared = _Prefix.of(lm, tokenizer, head) if share_prefix else None
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        contexts, conts = _encode_pairs(tokenizer, [head.replace("{text}", t) for t in batch], words)
        prefix = shared if shared is not None and shared.covers(contexts) else None
        skip = len(prefix.ids) if prefix is not None else 0  # tokens read from the cache
        # First tokens of every verbaliser: one pass over the prompts.
        first = _log_probs_at(lm, [c[skip:] for c in contexts], [[len(c) - 1 - skip] * len(words) for c in contexts],
                              [[ids[0] for ids in row] for row in conts], pad, prefix)
        word_lp = [[[float(first[i][w])] for w in range(len(words))] for i in range(len(batch))]
        # The remaining tokens of longer verbalisers: one pass per (prompt, verbaliser).
        longer = [(i, w) for i in range(len(batch)) for w in range(len(words)) if len(conts[i][w]) > 1]
        for s in range(0, len(longer), batch_size):
            chunk = longer[s:s + batch_size]
            seqs = [contexts[i][skip:] + conts[i][w][:-1] for i, w in chunk]
            positions = [list(range(len(contexts[i]) - skip, len(contexts[i]) - skip + len(conts[i][w]) - 1))
                         for i, w in chunk]
            rest = _log_probs_at(lm, seqs, positions, [conts[i][w][1:] for i, w in chunk], pad, prefix)
            for (i, w), lp in zip(chunk, rest):
                word_lp[i][w].extend(lp.tolist())
        word_scores = torch.tensor([[sum(t) / (len(t) if score == "mean" else 1) for t in row] for row in word_lp],
                                   dtype=torch.float64)
        label_scores = torch.full((len(batch), len(labels)), -torch.inf, dtype=torch.float64)
        for c in range(len(labels)):
            label_scores[:, c] = word_scores[:, owner == c].logsumexp(1)
        out[start:start + len(batch)] = label_scores.log_softmax(1).numpy()
    return out


def zero_shot_from_meta(model, tokenizer, texts: list[str], meta: dict, batch_size: int = 16) -> np.ndarray:
    """zero_shot_logits with the settings an adapted teacher recorded in its teacher.json
    (`labels`, `zero_shot.prompt`, `zero_shot.verbalizers`, `zero_shot.score`, `max_tokens`)."""
    zs = meta["zero_shot"]
    return zero_shot_logits(model, tokenizer, texts, meta["labels"], zs["verbalizers"], zs["prompt"],
                            batch_size, zs["score"], meta.get("max_tokens"))
