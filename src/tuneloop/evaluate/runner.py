"""Batched scoring on any causal LM (base, adapter or merged): label choices and target NLL.

Classification scores each label as a complete answer: log p(label + end-of-turn | prompt),
so "card" cannot win over "card_arrival" by being a prefix. The prompt is run once per example
and its KV cache is shared by every label continuation (a 10-label task costs about one prompt
pass, not ten); the token prefix that all prompts share (chat template, system turn,
instruction and label list) runs once per batch (models.generate.prefill). Greedy generation
lives in models/generate.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tuneloop.console import progress
from tuneloop.models.generate import (
    cache_kwarg,
    common_prefix_len,
    model_device,
    pad_batch,
    positions,
    prefill,
)
from tuneloop.models.tokens import IGNORE, encode, encode_prompt, end_of_turn_id
from tuneloop.records import Example, Message


@torch.no_grad()
def score_choices(model, tok, prompts: Sequence[list[Message]], choices: Sequence[str],
                  batch_size: int = 16, quiet: bool = True) -> torch.Tensor:
    """Log-likelihood of each choice for each prompt: a (len(prompts), len(choices)) tensor."""
    eot = end_of_turn_id(tok)
    choice_ids = [tok(c, add_special_tokens=False)["input_ids"] + [eot] for c in choices]
    encoded = [encode_prompt(tok, m) for m in prompts]
    return score_encoded(model, encoded, choice_ids, tok.pad_token_id, batch_size, quiet)


def score_encoded(model, prompts: list[list[int]], choice_ids: list[list[int]], pad: int,
                  batch_size: int = 16, quiet: bool = True) -> torch.Tensor:
    """score_choices on token ids: one prompt pass per batch, its KV cache reused per choice."""
    cont, cmask = pad_batch(choice_ids, pad)
    n_c, width_c = cont.shape
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    shared = common_prefix_len(prompts)
    out = torch.full((len(prompts), n_c), float("-inf"))
    dev = model_device(model)
    # Continuation rows are prompts x choices; keep that product near the batch size.
    per_batch = max(1, batch_size * 4 // n_c) if n_c > 4 else batch_size
    with progress(quiet) as bar:
        task = bar.add_task("score", total=len(prompts))
        for s in range(0, len(order), per_batch):
            idx = order[s:s + per_batch]
            logits, cache, attn, start = prefill(model, [prompts[i] for i in idx], shared,
                                                 pad, dev)
            first_logp = torch.log_softmax(logits, -1)  # (b, V)
            b = len(idx)
            tgt = cont.to(dev).repeat(b, 1)  # row r: prompt r // n_c, choice r % n_c
            tmask = cmask.to(dev).repeat(b, 1)
            total = first_logp.repeat_interleave(n_c, 0).gather(1, tgt[:, :1])[:, 0]
            if width_c > 1:
                cache.batch_repeat_interleave(n_c)
                full_attn = torch.cat([attn.repeat_interleave(n_c, 0), tmask], dim=1)
                pos = start.repeat_interleave(n_c, 0) + torch.arange(width_c - 1, device=dev)[None]
                logits = model(input_ids=tgt[:, :-1], attention_mask=full_attn[:, :-1],
                               position_ids=pos, **{cache_kwarg(model): cache}).logits.float()
                lp = torch.log_softmax(logits, -1).gather(2, tgt[:, 1:, None])[..., 0]
                total = total + (lp * tmask[:, 1:]).sum(1)
            out[idx] = total.view(b, n_c).cpu()
            bar.advance(task, b)
    return out


@torch.no_grad()
def score_choices_naive(model, tok, prompts: Sequence[list[Message]], choices: Sequence[str],
                        batch_size: int = 16) -> torch.Tensor:
    """Reference scorer: every prompt+choice as its own full sequence (for tests/benchmarks)."""
    eot = end_of_turn_id(tok)
    choice_ids = [tok(c, add_special_tokens=False)["input_ids"] + [eot] for c in choices]
    rows = [(p, c, encode_prompt(tok, m) + cids, len(cids))
            for p, m in enumerate(prompts) for c, cids in enumerate(choice_ids)]
    out = torch.full((len(prompts), len(choices)), float("-inf"))
    dev = model_device(model)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        ids, attn = pad_batch([r[2] for r in chunk], tok.pad_token_id, "left")
        logits = model(input_ids=ids.to(dev), attention_mask=attn.to(dev),
                       position_ids=positions(attn).to(dev)).logits.float()
        logp = torch.log_softmax(logits, -1).cpu()
        width = ids.shape[1]
        for i, (p, c, seq, n) in enumerate(chunk):
            tgt = torch.tensor(seq[len(seq) - n:])
            out[p, c] = logp[i, width - n - 1:width - 1].gather(1, tgt[:, None]).sum()
    return out


@torch.no_grad()
def target_nll(model, tok, examples: Sequence[Example], max_len: int = 2048,
               batch_size: int = 8, quiet: bool = True) -> list[tuple[float, int, int]]:
    """Per example: (summed NLL in nats of the target tokens, their count, UTF-8 bytes of target).

    Bits per byte = sum NLL / ln 2 / bytes: comparable across tokenizers, unlike perplexity.
    """
    items = [encode(tok, ex, max_len) for ex in examples]
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    res: list[tuple[float, int, int]] = [(0.0, 0, 0)] * len(items)
    dev = model_device(model)
    with progress(quiet) as bar:
        task = bar.add_task("nll", total=len(items))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ids, attn = pad_batch([items[i].input_ids for i in idx], tok.pad_token_id)
            lab, _ = pad_batch([items[i].labels for i in idx], IGNORE)
            logits = model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits.float()
            tgt = lab[:, 1:].to(dev)
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), tgt.clamp(min=0), reduction="none")
            mask = tgt != IGNORE
            sums, cnt = (nll * mask).sum(1).cpu(), mask.sum(1).cpu()
            for r, i in enumerate(idx):
                nbytes = len(examples[i].target.encode("utf-8"))
                res[i] = (float(sums[r]), int(cnt[r]), nbytes)
            bar.advance(task, len(idx))
    return res


def perplexity_bpb(nll: Sequence[tuple[float, int, int]]) -> dict[str, float]:
    """Token perplexity and bits per byte from target_nll rows."""
    tot = sum(r[0] for r in nll)
    toks = sum(r[1] for r in nll)
    nbytes = sum(r[2] for r in nll)
    return {"perplexity": math.exp(min(tot / max(toks, 1), 50)),
            "bits_per_byte": tot / math.log(2) / max(nbytes, 1)}
