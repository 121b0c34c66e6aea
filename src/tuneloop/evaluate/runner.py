"""Batched scoring and generation on any causal LM (base, adapter or merged).

Classification scores each label as a complete answer: log p(label + end-of-turn | prompt),
so "card" cannot win over "card_arrival" by being a prefix. Generation is greedy, left-padded,
length-sorted and stops at the template's end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuneloop.console import progress
from tuneloop.data.schema import Example, Message
from tuneloop.models.tokens import encode_prompt, end_of_turn_id


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_choices(model, tok, prompts: Sequence[list[Message]], choices: Sequence[str],
                  batch_size: int = 16, quiet: bool = True) -> torch.Tensor:
    """Log-likelihood of each choice for each prompt: a (len(prompts), len(choices)) tensor."""
    eot = end_of_turn_id(tok)
    choice_ids = [tok(c, add_special_tokens=False)["input_ids"] + [eot] for c in choices]
    rows = []  # (prompt index, choice index, ids, number of target tokens)
    for p, msgs in enumerate(prompts):
        pids = encode_prompt(tok, msgs)
        for c, cids in enumerate(choice_ids):
            rows.append((p, c, pids + cids, len(cids)))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][2]))
    out = torch.full((len(prompts), len(choices)), float("-inf"))
    dev = _device(model)
    pad = tok.pad_token_id
    with progress(quiet) as bar:
        task = bar.add_task("score", total=len(rows))
        for s in range(0, len(order), batch_size):
            chunk = [rows[i] for i in order[s:s + batch_size]]
            width = max(len(r[2]) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for i, r in enumerate(chunk):
                ids[i, :len(r[2])] = torch.tensor(r[2])
                attn[i, :len(r[2])] = 1
            logits = model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits.float()
            logp = torch.log_softmax(logits, dim=-1).cpu()
            for i, (p, c, seq, n) in enumerate(chunk):
                L = len(seq)
                tgt = torch.tensor(seq[L - n:])
                out[p, c] = logp[i, L - n - 1:L - 1].gather(1, tgt[:, None]).sum()
            bar.advance(task, len(chunk))
    return out


def classify(model, tok, examples: Sequence[Example], labels: Sequence[str],
             batch_size: int = 16, quiet: bool = True) -> list[str]:
    """The most likely label for each example (constrained to the label list)."""
    scores = score_choices(model, tok, [ex.prompt_messages for ex in examples], labels,
                           batch_size, quiet)
    return [labels[i] for i in scores.argmax(dim=1).tolist()]


@torch.no_grad()
def generate(model, tok, prompts: Sequence[list[Message]], max_new_tokens: int = 64,
             batch_size: int = 8, quiet: bool = True) -> list[str]:
    """Greedy completions for many conversations at once (left padding, KV cache)."""
    eot = end_of_turn_id(tok)
    stop = sorted({eot, tok.eos_token_id} - {None})
    encoded = [encode_prompt(tok, m) for m in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[str] = [""] * len(encoded)
    dev = _device(model)
    pad = tok.pad_token_id
    with progress(quiet) as bar:
        task = bar.add_task("generate", total=len(encoded))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for r, i in enumerate(idx):
                n = len(encoded[i])
                ids[r, width - n:] = torch.tensor(encoded[i])
                attn[r, width - n:] = 1
            gen = model.generate(input_ids=ids.to(dev), attention_mask=attn.to(dev),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stop, pad_token_id=pad)
            for r, i in enumerate(idx):
                new = gen[r, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in stop), len(new))
                results[i] = tok.decode(new[:cut], skip_special_tokens=True).strip()
            bar.advance(task, len(idx))
    return results
