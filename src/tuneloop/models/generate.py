"""Padding, prompt prefill and greedy decoding on any causal LM (base, adapter or merged).

Generation is greedy, left-padded, length-sorted and stops at the template's end-of-turn
token. The token prefix that all prompts share (chat template, system turn, instruction and
label list) is run once per call (its KV cache reused by every batch through prefill's
`prefix`), not once per example: on a CPU, prompt prefill is the cost
(benchmarks/eval_speed.py). Evaluation, the server's micro-batcher and `select` all decode
with this module, so a served answer is the answer that was measured.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch

from tuneloop.console import progress
from tuneloop.errors import TuneloopError
from tuneloop.models.load import causal_lm
from tuneloop.models.packed import packable, packed_prefill, padding_share
from tuneloop.models.tokens import encode_prompt, end_of_turn_id
from tuneloop.records import Message

# Packed prefill (models.packed) pays where a batch is small and ragged, as the server's are:
# from this share of padding on, up to this many remainder tokens (its attention mask grows
# with their square; evaluation's length-sorted batches of ~2,000 tokens stay padded).
PACK_MIN_PADDING = 0.15
PACK_MAX_TOKENS = 512


def model_device(model) -> torch.device:
    """The device of the model's (first) parameters: where its inputs must go."""
    return next(model.parameters()).device


def pad_batch(seqs: Sequence[Sequence[int]], value: int, side: str = "right",
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as one (rows, longest) long tensor padded with `value`, and the 0/1 mask of
    real tokens. side="left" for prompts that generation continues (every row then ends where
    new tokens start); "right" for training and scoring."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        if len(s):
            cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
            ids[r, cols] = torch.tensor(s)
            mask[r, cols] = 1
    return ids, mask


def positions(attn: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only: with left padding, a row still starts at 0."""
    return (attn.cumsum(-1) - 1).clamp(min=0)


def cache_kwarg(model) -> str:
    """transformers 5.x renamed `past_key_values` to `cache`; accept either generation."""
    forward = causal_lm(model).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_of(output):
    """The KV cache of a forward pass, under either name."""
    return getattr(output, "cache", None) or output.past_key_values


def stop_ids(tok, strict: bool = True) -> list[int]:
    """The template's end-of-turn token and EOS: the tokens that end a reply.

    strict=False: a template without an end-of-turn marker stops at EOS alone (the server
    answers anyway) instead of raising TuneloopError.
    """
    try:
        eot = end_of_turn_id(tok)
    except TuneloopError:
        if strict:
            raise
        eot = None
    return sorted({eot, tok.eos_token_id} - {None})


def common_prefix_len(seqs: Sequence[list[int]]) -> int:
    """Tokens every prompt starts with (template, system turn, instruction), leaving each
    prompt at least one token of its own."""
    if not seqs:
        return 0
    n, first = min(len(q) for q in seqs) - 1, seqs[0]
    for q in seqs[1:]:
        k = 0
        while k < n and q[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def detached(cache):
    """A copy of a KV cache that forward passes can extend, select rows of or repeat without
    touching the original: shallow copies of the cache and its layers, whose tensors those
    operations replace rather than edit (a deep copy would duplicate every tensor first)."""
    own = copy.copy(cache)
    own.layers = [copy.copy(layer) for layer in cache.layers]
    return own


def rows_of(cache, rows: torch.Tensor):
    """A cache holding only `rows` of `cache`, which stays as it is (detached: a deep copy
    would first duplicate every row of every layer, measured 2.4x slower end to end with 77
    labels). All rows in order: no copy at all."""
    own = detached(cache)
    if not torch.equal(rows.cpu(), torch.arange(own.layers[0].keys.shape[0])):
        own.batch_select_indices(rows)
    return own


def prefix_cache(model, ids: list[int], dev):
    """The batch-1 KV cache of a prompt prefix (reuse it through prefill's `prefix`); None for
    an empty prefix."""
    if not ids:
        return None
    return cache_of(model(input_ids=torch.tensor([ids], device=dev), use_cache=True,
                          logits_to_keep=1))


def prefill(model, seqs: list[list[int]], shared: int, pad: int, dev, keep: int = 1,
            prefix=None):
    """Run a batch of prompts: their shared prefix once (batch 1; `prefix`, when given, is its
    cache, kept as it is), then the remainders. Returns the logits of the last `keep`
    positions (b, keep, V), cache, attention mask, next positions.

    Remainders run left-padded, or packed without padding (models.packed) when padding
    would be a large share of a small batch. With left padding every row ends at the right
    edge, so the last `keep` columns are each row's last `keep` tokens (fewer where a row is
    shorter: the rest is padding).
    """
    b = len(seqs)
    cache = None
    if shared:
        cache = detached(prefix) if prefix is not None else prefix_cache(model, seqs[0][:shared], dev)
    rests = [q[shared:] for q in seqs]
    lens = [len(r) for r in rests]
    if keep == 1 and b > 1 and sum(lens) <= PACK_MAX_TOKENS \
            and padding_share(lens) >= PACK_MIN_PADDING and packable(model):
        return packed_prefill(model, rests, shared, dev, cache, cache_kwarg(model))
    ids, attn = pad_batch(rests, pad, "left")
    ids, attn = ids.to(dev), attn.to(dev)
    extra = {}
    if cache is not None:
        cache.batch_repeat_interleave(b)
        extra = {cache_kwarg(model): cache}
        attn = torch.cat([torch.ones(b, shared, dtype=attn.dtype, device=dev), attn], dim=1)
    # Positions count real tokens only, so padding between prefix and remainder is invisible.
    pos = positions(attn)[:, shared:]
    # logits_to_keep: a prompt pass needs the last position's logits only (scoring, decoding);
    # the LM head over every position would cost a fifth of a small model's forward.
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                logits_to_keep=keep, **extra)
    return out.logits[:, -keep:].float(), cache_of(out), attn, pos[:, -1:] + 1


def greedy_ids(model, seqs: list[list[int]], shared: int, pad: int, dev, stop: list[int],
               max_new_tokens: int, prefix=None) -> torch.Tensor:
    """Greedy decoding of a batch with the KV cache; finished rows emit pad. (b, steps) ids.
    `prefix`: the cache of the `shared` tokens, when the caller keeps one (prefill)."""
    logits, cache, attn, pos = prefill(model, seqs, shared, pad, dev, prefix=prefix)
    return decode(model, logits[:, -1], cache, attn, pos, pad, stop, max_new_tokens)


def decode(model, logits: torch.Tensor, cache, attn: torch.Tensor, pos: torch.Tensor, pad: int,
           stop: list[int], max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding after a prompt pass (its last logits, cache, mask and next positions):
    (b, steps) new ids, pad after a row's stop token. The cache grows as tokens are added."""
    dev = logits.device
    stop_t = torch.tensor(stop, device=dev)
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=dev)
    steps = []
    kw = cache_kwarg(model)
    for step in range(max_new_tokens):
        nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
        steps.append(nxt)
        done |= torch.isin(nxt, stop_t)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos,
                    use_cache=True, **{kw: cache})
        logits, cache, pos = out.logits[:, -1].float(), cache_of(out), pos + 1
    return torch.stack(steps, dim=1).cpu()


@torch.no_grad()
def generate(model, tok, prompts: Sequence[list[Message]], max_new_tokens: int = 64,
             batch_size: int = 8, quiet: bool = True) -> list[str]:
    """Greedy completions for many conversations at once (left padding, KV cache)."""
    texts, _ = generate_with_counts(model, tok, prompts, max_new_tokens, batch_size, quiet)
    return texts


@torch.no_grad()
def generate_with_counts(model, tok, prompts: Sequence[list[Message]], max_new_tokens: int = 64,
                         batch_size: int = 8, quiet: bool = True) -> tuple[list[str], list[int]]:
    """generate(), plus the number of new tokens each completion used (for cost reports)."""
    stop = stop_ids(tok)
    encoded = [encode_prompt(tok, m) for m in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    shared = common_prefix_len(encoded)
    results: list[str] = [""] * len(encoded)
    counts: list[int] = [0] * len(encoded)
    dev = model_device(model)
    pad = tok.pad_token_id
    prefix = prefix_cache(model, encoded[0][:shared], dev)
    with progress(quiet) as bar:
        task = bar.add_task("generate", total=len(encoded))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            new = greedy_ids(model, [encoded[i] for i in idx], shared, pad, dev, stop,
                             max_new_tokens, prefix)
            for r, i in enumerate(idx):
                results[i], counts[i] = reply(tok, new[r].tolist(), stop)
            bar.advance(task, len(idx))
    return results, counts


def reply(tok, new: list[int], stop: list[int]) -> tuple[str, int]:
    """A row of decode()'s ids as text up to its stop token, and the tokens it used (the stop
    token included)."""
    cut = next((k for k, t in enumerate(new) if t in stop), len(new))
    return tok.decode(new[:cut], skip_special_tokens=True).strip(), min(cut + 1, len(new))
