"""Batched scoring and generation on any causal LM (base, adapter or merged).

Classification scores each label as a complete answer: log p(label + end-of-turn | prompt),
so "card" cannot win over "card_arrival" by being a prefix. The prompt is run once per example
and its KV cache is shared by every label continuation (a 10-label task costs about one prompt
pass, not ten). Generation is greedy, left-padded, length-sorted and stops at the template's
end-of-turn token. Both compute the token prefix that all prompts share (chat template, system
turn, instruction and label list) once per batch, not once per example: on a CPU, prompt
prefill is the cost (benchmarks/eval_speed.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tuneloop.console import progress
from tuneloop.records import Example, Message
from tuneloop.models.tokens import IGNORE, encode, encode_prompt, end_of_turn_id


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s)
        attn[r, width - len(s):] = 1
    return ids, attn


def _positions(attn: torch.Tensor) -> torch.Tensor:
    # With left padding, real tokens must still start at position 0.
    return (attn.cumsum(-1) - 1).clamp(min=0)


def _cache_kw(model) -> str:
    """transformers 5.x renamed `past_key_values` to `cache`; accept either generation."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _cache_of(output):
    return getattr(output, "cache", None) or output.past_key_values


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


def _prefill(model, seqs: list[list[int]], shared: int, pad: int, dev):
    """Run a batch of prompts: their shared prefix once (batch 1, cache repeated per row), then
    the left-padded remainders. Returns last logits, cache, attention mask, next positions."""
    b = len(seqs)
    ids, attn = _left_pad([q[shared:] for q in seqs], pad)
    ids, attn = ids.to(dev), attn.to(dev)
    extra = {}
    if shared:
        pre = model(input_ids=torch.tensor([seqs[0][:shared]], device=dev), use_cache=True,
                    logits_to_keep=1)
        cache = _cache_of(pre)
        cache.batch_repeat_interleave(b)
        extra = {_cache_kw(model): cache}
        attn = torch.cat([torch.ones(b, shared, dtype=attn.dtype, device=dev), attn], dim=1)
    # Positions count real tokens only, so padding between prefix and remainder is invisible.
    pos = _positions(attn)[:, shared:]
    # logits_to_keep=1: only the last position's logits are needed from a prompt pass.
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                logits_to_keep=1, **extra)
    return out.logits[:, -1].float(), _cache_of(out), attn, pos[:, -1:] + 1


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
    n_c, width_c = len(choice_ids), max(len(c) for c in choice_ids)
    cont = torch.full((n_c, width_c), pad, dtype=torch.long)
    cmask = torch.zeros_like(cont)
    for c, ids in enumerate(choice_ids):
        cont[c, :len(ids)] = torch.tensor(ids)
        cmask[c, :len(ids)] = 1
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    shared = common_prefix_len(prompts)
    out = torch.full((len(prompts), n_c), float("-inf"))
    dev = _device(model)
    # Continuation rows are prompts x choices; keep that product near the batch size.
    per_batch = max(1, batch_size * 4 // n_c) if n_c > 4 else batch_size
    with progress(quiet) as bar:
        task = bar.add_task("score", total=len(prompts))
        for s in range(0, len(order), per_batch):
            idx = order[s:s + per_batch]
            logits, cache, attn, start = _prefill(model, [prompts[i] for i in idx], shared,
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
                               position_ids=pos, **{_cache_kw(model): cache}).logits.float()
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
    dev = _device(model)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        ids, attn = _left_pad([r[2] for r in chunk], tok.pad_token_id)
        logits = model(input_ids=ids.to(dev), attention_mask=attn.to(dev),
                       position_ids=_positions(attn).to(dev)).logits.float()
        logp = torch.log_softmax(logits, -1).cpu()
        width = ids.shape[1]
        for i, (p, c, seq, n) in enumerate(chunk):
            tgt = torch.tensor(seq[len(seq) - n:])
            out[p, c] = logp[i, width - n - 1:width - 1].gather(1, tgt[:, None]).sum()
    return out


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
    eot = end_of_turn_id(tok)
    stop = sorted({eot, tok.eos_token_id} - {None})
    encoded = [encode_prompt(tok, m) for m in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    shared = common_prefix_len(encoded)
    results: list[str] = [""] * len(encoded)
    counts: list[int] = [0] * len(encoded)
    dev = _device(model)
    pad = tok.pad_token_id
    with progress(quiet) as bar:
        task = bar.add_task("generate", total=len(encoded))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            new = greedy_ids(model, [encoded[i] for i in idx], shared, pad, dev, stop,
                             max_new_tokens)
            for r, i in enumerate(idx):
                row = new[r].tolist()
                cut = next((k for k, t in enumerate(row) if t in stop), len(row))
                results[i] = tok.decode(row[:cut], skip_special_tokens=True).strip()
                counts[i] = min(cut + 1, len(row))
            bar.advance(task, len(idx))
    return results, counts


def greedy_ids(model, seqs: list[list[int]], shared: int, pad: int, dev, stop: list[int],
               max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding of a batch with the KV cache; finished rows emit pad. (b, steps) ids."""
    logits, cache, attn, pos = _prefill(model, seqs, shared, pad, dev)
    stop_t = torch.tensor(stop, device=dev)
    done = torch.zeros(len(seqs), dtype=torch.bool, device=dev)
    steps = []
    kw = _cache_kw(model)
    for step in range(max_new_tokens):
        nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
        steps.append(nxt)
        done |= torch.isin(nxt, stop_t)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos,
                    use_cache=True, **{kw: cache})
        logits, cache, pos = out.logits[:, -1].float(), _cache_of(out), pos + 1
    return torch.stack(steps, dim=1).cpu()


@torch.no_grad()
def target_nll(model, tok, examples: Sequence[Example], max_len: int = 2048,
               batch_size: int = 8, quiet: bool = True) -> list[tuple[float, int, int]]:
    """Per example: (summed NLL in nats of the target tokens, their count, UTF-8 bytes of target).

    Bits per byte = sum NLL / ln 2 / bytes: comparable across tokenizers, unlike perplexity.
    """
    items = [encode(tok, ex, max_len) for ex in examples]
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    res: list[tuple[float, int, int]] = [(0.0, 0, 0)] * len(items)
    dev = _device(model)
    with progress(quiet) as bar:
        task = bar.add_task("nll", total=len(items))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            width = max(len(items[i].input_ids) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
            lab = torch.full_like(ids, IGNORE)
            attn = torch.zeros_like(ids)
            for r, i in enumerate(idx):
                n = len(items[i].input_ids)
                ids[r, :n] = torch.tensor(items[i].input_ids)
                lab[r, :n] = torch.tensor(items[i].labels)
                attn[r, :n] = 1
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
