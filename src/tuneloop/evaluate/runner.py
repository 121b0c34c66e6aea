"""Batched scoring on any causal LM (base, adapter or merged): label choices and target NLL.

Classification scores each label as a complete answer: log p(label + end-of-turn | prompt),
so "card" cannot win over "card_arrival" by being a prefix. The prompt is run once per example
and its KV cache is shared by every label continuation (a 10-label task costs about one prompt
pass, not ten); the token prefix that all prompts share (chat template, system turn,
instruction and label list) runs once per call (models.generate.prefill's `prefix`). Greedy generation
lives in models/generate.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from tuneloop.console import progress
from tuneloop.evaluate.continuations import continuation_logp
from tuneloop.models.generate import (
    common_prefix_len,
    decode,
    detached,
    model_device,
    pad_batch,
    positions,
    prefill,
    prefix_cache,
    reply,
    rows_of,
    stop_ids,
)
from tuneloop.models.tokens import IGNORE, encode, encode_prompt, end_of_turn_id
from tuneloop.records import Example, Message


@torch.no_grad()
def score_choices(model, tok, prompts: Sequence[list[Message]], choices: Sequence[str],
                  batch_size: int = 16, quiet: bool = True, exact: bool = False) -> torch.Tensor:
    """Log-likelihood of each choice for each prompt: a (len(prompts), len(choices)) tensor.

    The argmax of every row is exact. With exact=False, a choice that cannot win keeps an upper
    bound of its score (see score_encoded); exact=True scores every choice in full.
    """
    choice_ids = _choice_ids(tok, choices)
    encoded = [encode_prompt(tok, m) for m in prompts]
    return score_encoded(model, encoded, choice_ids, tok.pad_token_id, batch_size, quiet, exact)


def _choice_ids(tok, choices: Sequence[str]) -> list[list[int]]:
    """Each choice as a complete answer: its tokens and the end-of-turn token."""
    eot = end_of_turn_id(tok)
    return [tok(c, add_special_tokens=False)["input_ids"] + [eot] for c in choices]


@torch.no_grad()
def score_and_generate(model, tok, prompts: Sequence[list[Message]], choices: Sequence[str],
                       sample: int, max_new_tokens: int, batch_size: int = 16,
                       quiet: bool = True) -> tuple[torch.Tensor, list[str], list[int], float]:
    """score_choices, plus greedy replies for the first `sample` prompts decoded from the same
    prompt pass (its KV cache and last logits): free generation then costs its new tokens only,
    not a second prefill of the prompt. Returns scores, replies, tokens each reply used, and
    the seconds spent decoding.

    The sampled prompts are spread over the length-sorted scoring batches, a few in each; their
    caches are set aside (_Pending) and decoded together, up to 4 x batch_size rows at a time:
    one decoding loop per batch cost 3.9 s of a 27 s zero-shot evaluation on 500 messages.
    """
    stop = stop_ids(tok)
    choice_ids = _choice_ids(tok, choices)
    encoded = [encode_prompt(tok, m) for m in prompts]
    new_ids: dict[int, list[int]] = {}
    spent = 0.0  # seconds decoding
    pending = _Pending()

    def flush() -> None:
        nonlocal spent
        t0 = time.perf_counter()
        idx, logits, cache, attn, start = pending.take()
        new = decode(model, logits, cache, attn, start, pad=tok.pad_token_id, stop=stop,
                     max_new_tokens=max_new_tokens)
        new_ids.update(zip(idx, new.tolist(), strict=True))
        spent += time.perf_counter() - t0

    def generate(idx: list[int], logits, cache, attn, start, shared: int) -> None:
        rows = [r for r, i in enumerate(idx) if i < sample]
        if rows:
            pending.add([idx[r] for r in rows], torch.tensor(rows, device=attn.device), logits,
                        cache, attn, start, shared)
            if pending.rows >= 4 * batch_size or not pending.mergeable:
                flush()

    scores = score_encoded(model, encoded, choice_ids, tok.pad_token_id, batch_size, quiet,
                           on_prefill=generate)
    if pending.rows:
        flush()
    replies = [reply(tok, new_ids[i], stop) for i in range(min(sample, len(encoded)))]
    return scores, [t for t, _ in replies], [n for _, n in replies], spent


class _Pending:
    """Rows of several prompt passes set aside to decode as one batch: each keeps its last
    logits, next position and its cache after the shared prefix (copied out, so the batch's
    cache can go); take() left-pads them to one width behind the prefix, as prefill lays
    out a batch. Only for caches of plain full-attention layers; otherwise (`mergeable`
    False) each pass's rows are taken alone."""

    def __init__(self):
        self.shared, self.rows, self.mergeable = 0, 0, True
        self.parts: list[tuple] = []
        self.template = None  # a cache object to fill (its prefix columns are everyone's)

    def add(self, idx: list[int], sel: torch.Tensor, logits, cache, attn, start,
            shared: int) -> None:
        """Set aside rows `sel` (prompts `idx`) of a prompt pass whose first `shared` columns
        are the prefix every pass shares."""
        self.mergeable, self.shared = _mergeable(cache), shared
        if not self.mergeable:
            self.parts.append((idx, logits[sel], rows_of(cache, sel), attn[sel], start[sel]))
        else:
            s = self.shared
            if self.template is None:
                self.template = rows_of(cache, sel[:1])
                for layer in self.template.layers:
                    layer.keys, layer.values = layer.keys[:, :, :s].clone(), layer.values[:, :, :s].clone()
            kv = [(layer.keys[sel, :, s:], layer.values[sel, :, s:]) for layer in cache.layers]
            self.parts.append((idx, logits[sel], kv, attn[sel, s:], start[sel]))
        self.rows += len(idx)

    def take(self):
        """(prompt indices, logits, cache, mask, next positions) of every row set aside."""
        parts, self.parts, self.rows = self.parts, [], 0
        idx = [i for p in parts for i in p[0]]
        logits, start = torch.cat([p[1] for p in parts]), torch.cat([p[4] for p in parts])
        if not self.mergeable:
            assert len(parts) == 1
            return idx, logits, parts[0][2], parts[0][3], start
        width = max(p[3].shape[1] for p in parts)
        n, s = len(idx), self.shared
        attn = torch.cat([_left_pad(p[3], width) for p in parts])
        attn = torch.cat([torch.ones(n, s, dtype=attn.dtype, device=attn.device), attn], dim=1)
        cache = detached(self.template)
        for k, layer in enumerate(cache.layers):
            for name, j in (("keys", 0), ("values", 1)):
                rest = torch.cat([_left_pad(p[2][k][j], width, dim=2) for p in parts])
                head = getattr(self.template.layers[k], name).expand(n, -1, -1, -1)
                setattr(layer, name, torch.cat([head, rest], dim=2))
        return idx, logits, cache, attn, start


def _mergeable(cache) -> bool:
    """Whether every layer keeps all its keys (a sliding-window layer drops old ones)."""
    return all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)


def _left_pad(t: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    """`t` with zeros before it along `dim` up to `width` (masked slots: their value is unused)."""
    missing = width - t.shape[dim]
    if not missing:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@torch.no_grad()
def score_encoded(model, prompts: list[list[int]], choice_ids: list[list[int]], pad: int,
                  batch_size: int = 16, quiet: bool = True, exact: bool = False,
                  on_prefill: Callable | None = None) -> torch.Tensor:
    """score_choices on token ids: one prompt pass per batch, its KV cache reused per choice.

    The prompt pass scores every choice's first token. Log-probabilities only fall as tokens
    are added, so the score of a choice's first tokens is an upper bound of its whole score.
    Unless `exact`, only the choices whose bound beats the best complete score are scored on
    (_branch_and_bound); the others cannot be the argmax and keep their bound. A fine-tuned
    model is sure of its first token, so this usually means one choice per prompt instead of
    all of them (branch and bound; the argmax is the same).
    Continuations run sorted by length, so little of them is padding. `on_prefill(idx,
    logits, cache, attn, start, shared)` sees each batch's prompt pass first (it must not
    change the cache: use rows_of); the first `shared` columns are the common prefix.
    """
    n_c = len(choice_ids)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    shared = common_prefix_len(prompts)
    out = torch.full((len(prompts), n_c), float("-inf"))
    dev = model_device(model)
    first_ids = torch.tensor([c[0] for c in choice_ids], device=dev)
    prefix = prefix_cache(model, prompts[0][:shared], dev)  # once, not per batch
    with progress(quiet) as bar:
        task = bar.add_task("score", total=len(prompts))
        for idx in _token_batches(order, [len(p) - shared for p in prompts], batch_size):
            logits, cache, attn, start = prefill(model, [prompts[i] for i in idx], shared,
                                                 pad, dev, prefix=prefix)
            logits = logits[:, -1]
            if on_prefill is not None:
                on_prefill(idx, logits, cache, attn, start, shared)
            total = torch.log_softmax(logits, -1)[:, first_ids].cpu()  # (b, n_c)
            if exact:
                every = torch.ones_like(total, dtype=torch.bool)
                _score_pairs(model, cache, attn, start, every, total.clone(), total, choice_ids,
                             batch_size)
            else:
                _branch_and_bound(model, cache, attn, start, total, choice_ids, batch_size)
            out[idx] = total
            bar.advance(task, len(idx))
    return out


def _token_batches(order: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """Length-sorted prompts cut into batches of about 4 x batch_size x 32 prompt tokens.

    Short prompts (a message and the chat template) run many to a batch: a matmul over 64
    rows of 20 tokens runs ~25% faster per token than over 16 (measured, fp32, SmolLM2-135M);
    long ones run fewer, so the batch's KV cache stays small. The choices that follow run in
    chunks of their own (evaluate.continuations), whatever the batch.
    """
    budget = 4 * batch_size * 32
    max_prompts = 4 * batch_size
    batches: list[list[int]] = []
    for i in order:  # ascending length: the newest prompt is the batch's longest
        if batches and len(batches[-1]) < max_prompts and \
                (len(batches[-1]) + 1) * max(lengths[i], 1) <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _branch_and_bound(model, cache, attn, start, total: torch.Tensor,
                      choice_ids: list[list[int]], batch_size: int) -> None:
    """Score in full every choice that could still beat the best complete score of its prompt;
    `total` (first-token scores on entry) ends with exact scores there and bounds elsewhere.

    Rounds score 1, 2, 4, ... of the open choices per prompt, best bound first: a sure model
    stops after the first, an unsure one after a few. Each round also tightens the bounds of
    the choices it left open, from the tokens its labels share with them (continuation_logp's
    probes, no extra forward): the intents that begin like the one scored lose their bound
    where they part from it. (Tightening with the first 2 or 4 tokens of each open choice, at
    the cost of a forward, was tried: on banking77's 77 long labels it ruled out almost none
    and cost more.)
    """
    first = total.clone()
    done = torch.zeros_like(total, dtype=torch.bool)  # scored in full
    k = 1
    while (open_ := _still_open(total, done)).any():
        bound = torch.where(open_, total, float("-inf"))
        top = bound.topk(min(k, bound.shape[1]), dim=1).indices
        pick = torch.zeros_like(open_).scatter_(1, top, True) & open_
        _score_pairs(model, cache, attn, start, pick, first, total, choice_ids, batch_size,
                     probe=open_ & ~pick)
        done |= pick
        k *= 2


def _still_open(total: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Choices not scored in full whose bound is above their prompt's best complete score."""
    best = torch.where(done, total, float("-inf")).max(1).values
    return ~done & (total > best[:, None])


def _score_pairs(model, cache, attn, start, pick: torch.Tensor, first: torch.Tensor,
                 total: torch.Tensor, choice_ids: list[list[int]], batch_size: int,
                 probe: torch.Tensor | None = None) -> None:
    """total = first-token score + the rest of `choice_ids` for each picked (prompt, choice);
    the `probe` ones keep the lower of their bound and the one this pass gives them."""
    pairs = [tuple(p) for p in pick.nonzero().tolist()]
    if not pairs:
        return
    probes = [] if probe is None else [tuple(p) for p in probe.nonzero().tolist()]
    scores, bounds = continuation_logp(model, cache, attn, start, pairs, choice_ids,
                                       4 * batch_size * 8, probes)
    r, c = torch.tensor(pairs).T
    total[r, c] = first[r, c] + scores
    if probes:
        r, c = torch.tensor(probes).T
        total[r, c] = torch.minimum(total[r, c], first[r, c] + bounds)


@torch.no_grad()
def score_choices_naive(model, tok, prompts: Sequence[list[Message]], choices: Sequence[str],
                        batch_size: int = 16) -> torch.Tensor:
    """Reference scorer: every prompt+choice as its own full sequence (for tests/benchmarks)."""
    choice_ids = _choice_ids(tok, choices)
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
    The prefix every example shares (template, system turn, instruction) runs once per call,
    and the LM head runs only over each batch's target span: rows are left-padded, so the
    last `keep` columns hold every row's targets.
    """
    items = [encode(tok, ex, max_len) for ex in examples]
    first = [next((j for j, v in enumerate(it.labels) if v != IGNORE), len(it.labels))
             for it in items]
    # The token before a row's first target must be in its own part: its logits score it.
    shared = max(0, min([common_prefix_len([it.input_ids for it in items])] + [f - 1 for f in first]))
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    res: list[tuple[float, int, int]] = [(0.0, 0, 0)] * len(items)
    dev = model_device(model)
    prefix = prefix_cache(model, items[0].input_ids[:shared], dev)
    with progress(quiet) as bar:
        task = bar.add_task("nll", total=len(items))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            keep = max(len(items[i].input_ids) - first[i] + 1 for i in idx)
            logits, *_ = prefill(model, [items[i].input_ids for i in idx], shared,
                                 tok.pad_token_id, dev, keep, prefix)
            # Next-token targets, left-padded like the rows: column c is scored by logits c.
            lab, _ = pad_batch([items[i].labels[1:] + [IGNORE] for i in idx], IGNORE, "left")
            tgt = lab[:, -keep:].to(dev)
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt.clamp(min=0),
                                                    reduction="none")
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
