"""The log-likelihood of label continuations on the KV cache of their prompts.

After a prompt pass has scored every label's first token (evaluate.runner), the labels still
in the running need their remaining tokens scored, each on its prompt's cache. Two ways:

- As a token tree (`tree_logp`, full-attention SDPA models): a prompt's labels share one row.
  Each distinct label prefix is one node, run once ("card", "_" are shared by ten of
  banking77's intents), and a node attends to its prompt and its own ancestors only, at the
  positions it would have alone. The prompt's cache is used by one row, not copied once per
  label.
- Pair by pair (`pairs_logp`, any model, e.g. Gemma 3's sliding-window layers, which a custom
  mask would not reach): each (prompt, label) is a row on a copy of its prompt's cache.

Measured on banking77's 77 intents (SmolLM2-135M, fp32, 2 cores, 100 messages): see
docs/evaluate.md.
"""

from __future__ import annotations

import numpy as np
import torch

from tuneloop.models.generate import cache_kwarg, pad_batch, rows_of
from tuneloop.models.packed import packable


def continuation_logp(model, cache, attn: torch.Tensor, start: torch.Tensor,
                      pairs: list[tuple[int, int]], choice_ids: list[list[int]],
                      max_tokens: int, probes: list[tuple[int, int]] = ()
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (prompt row, choice) of `pairs`: summed log p of the choice's tokens after its
    first, on the prompt pass's cache (left as it is), `attn` mask and next positions `start`.
    At most about `max_tokens` label tokens run per forward.

    Also, for each of `probes` (pairs not scored): an upper bound of that sum, from what the
    forward computed anyway. A tree's nodes give the next-token distribution after every
    prefix they hold, so a probe sharing a prefix with a scored label gets the log p of its
    tokens as far as that prefix reaches (`card_linking` after `card_arrival`: the `_` and
    `link` after `card` and `card_`); the rest would only lower it. 0 where nothing is known.
    """
    if not packable(model):
        return pairs_logp(model, cache, attn, start, pairs, choice_ids, max_tokens), \
            torch.zeros(len(probes))
    return tree_logp(model, cache, attn, start, pairs, choice_ids, max_tokens, probes)


def pairs_logp(model, cache, attn: torch.Tensor, start: torch.Tensor,
               pairs: list[tuple[int, int]], choice_ids: list[list[int]],
               max_tokens: int) -> torch.Tensor:
    """continuation_logp, one row per pair.

    Pairs run sorted by length, right-padded to the chunk's longest: a pad comes after every
    real token of its row, so causal attention keeps it out of their scores, and its own score
    is masked.
    """
    res = torch.zeros(len(pairs))
    todo = sorted((k for k, (_, c) in enumerate(pairs) if len(choice_ids[c]) > 1),
                  key=lambda k: len(choice_ids[pairs[k][1]]))
    dev = attn.device
    s = 0
    while s < len(todo):
        width = len(choice_ids[pairs[todo[s]][1]])
        n = max(1, max_tokens // width)
        ks, s = todo[s:s + n], s + n
        prompt_rows = torch.tensor([pairs[k][0] for k in ks], device=dev)
        tgt, mask = pad_batch([choice_ids[pairs[k][1]] for k in ks], 0)
        tgt, mask, width = tgt.to(dev), mask.to(dev), tgt.shape[1]
        full_attn = torch.cat([attn[prompt_rows], mask[:, :-1]], dim=1)
        pos = start[prompt_rows] + torch.arange(width - 1, device=dev)[None]
        logits = model(input_ids=tgt[:, :-1], attention_mask=full_attn, position_ids=pos,
                       **{cache_kwarg(model): rows_of(cache, prompt_rows)}).logits.float()
        lp = torch.log_softmax(logits, -1).gather(2, tgt[:, 1:, None])[..., 0]
        res[ks] = (lp * mask[:, 1:]).sum(1).cpu()
    return res


class _Tree:
    """One prompt's labels as a token tree: a node per distinct prefix of their input tokens
    (every token but the last), its parent and depth, and which node predicts which target."""

    def __init__(self, row: int):
        self.row = row
        self.tokens: list[int] = []
        self.parent: list[int] = []
        self.depth: list[int] = []
        self.targets: list[tuple[int, int, int]] = []  # (pair index, node, next token)
        self._node: dict[tuple[int, ...], int] = {}

    def add(self, k: int, ids: list[int]) -> None:
        parent = -1
        for j in range(len(ids) - 1):
            key = tuple(ids[:j + 1])
            node = self._node.get(key)
            if node is None:
                node = self._node[key] = len(self.tokens)
                self.tokens.append(ids[j])
                self.parent.append(parent)
                self.depth.append(j)
            self.targets.append((k, node, ids[j + 1]))
            parent = node

    def known(self, ids: list[int]) -> list[tuple[int, int]]:
        """(node, next token) for each token of `ids` after its first whose prefix is a node
        here, as far as the prefixes are nodes."""
        out = []
        for j in range(len(ids) - 1):
            node = self._node.get(tuple(ids[:j + 1]))
            if node is None:
                break
            out.append((node, ids[j + 1]))
        return out

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestry(self, width: int) -> np.ndarray:
        """(width, width) bool: node i sees node j iff j is i or one of its ancestors; slots
        past the last node see themselves only (their outputs are never read)."""
        anc = np.eye(width, dtype=bool)
        for i, p in enumerate(self.parent):  # parents come before their children
            if p >= 0:
                anc[i] |= anc[p]
        return anc


def _trees(pairs: list[tuple[int, int]], choice_ids: list[list[int]],
           max_tokens: int) -> list[_Tree]:
    """The pairs' label trees, one per prompt row, split where a tree would outgrow a forward."""
    trees: dict[int, _Tree] = {}
    done: list[_Tree] = []
    for k, (r, c) in enumerate(pairs):
        ids = choice_ids[c]
        if len(ids) < 2:
            continue
        tree = trees.get(r)
        if tree is not None and len(tree) + len(ids) - 1 > max_tokens:
            done.append(tree)
            tree = None
        if tree is None:
            tree = trees[r] = _Tree(r)
        tree.add(k, ids)
    return done + list(trees.values())


def tree_logp(model, cache, attn: torch.Tensor, start: torch.Tensor,
              pairs: list[tuple[int, int]], choice_ids: list[list[int]],
              max_tokens: int, probes: list[tuple[int, int]] = ()
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """continuation_logp with one row per prompt: its labels as a token tree (module doc)."""
    res = torch.zeros(len(pairs))
    bounds = torch.zeros(len(probes))
    probes_of: dict[int, list[int]] = {}
    for j, (r, _) in enumerate(probes):
        probes_of.setdefault(r, []).append(j)
    trees = sorted(_trees(pairs, choice_ids, max_tokens), key=len)
    dev = attn.device
    s = 0
    while s < len(trees):
        n = 1
        while s + n < len(trees) and (n + 1) * len(trees[s + n]) <= max_tokens:
            n += 1
        chunk, s = trees[s:s + n], s + n
        width = len(chunk[-1])
        rows = torch.tensor([t.row for t in chunk], device=dev)
        ids = torch.zeros(n, width, dtype=torch.long)
        pos = torch.zeros(n, width, dtype=torch.long)
        own = np.zeros((n, width, width), dtype=bool)
        for i, t in enumerate(chunk):
            ids[i, :len(t)] = torch.tensor(t.tokens)
            pos[i, :len(t)] = torch.tensor(t.depth)
            own[i] = t.ancestry(width)
        prompt = attn[rows].bool()[:, None, :].expand(n, width, attn.shape[1])
        mask = torch.cat([prompt, torch.from_numpy(own).to(dev)], dim=2)[:, None]
        logits = model(input_ids=ids.to(dev), attention_mask=mask,
                       position_ids=(start[rows] + pos.to(dev)),
                       **{cache_kwarg(model): rows_of(cache, rows)}).logits
        logp = torch.log_softmax(logits.float(), -1)
        _add(res, logp, [(k, i, node, nxt) for i, t in enumerate(chunk)
                         for k, node, nxt in t.targets])
        # A row split over several trees gets a bound from each: the lowest is the tightest.
        for i, t in enumerate(chunk):
            js = probes_of.get(t.row)
            if js:
                part = torch.zeros(len(js))
                _add(part, logp, [(m, i, node, nxt) for m, j in enumerate(js)
                                  for node, nxt in t.known(choice_ids[probes[j][1]])])
                bounds[js] = torch.minimum(bounds[js], part)
    return res, bounds


def _add(out: torch.Tensor, logp: torch.Tensor, picks: list[tuple[int, int, int, int]]) -> None:
    """out[k] += logp[row, node, token] for each (k, row, node, token)."""
    if picks:
        k, row, node, nxt = (torch.tensor(x) for x in zip(*picks, strict=True))
        out.index_add_(0, k, logp[row, node, nxt].cpu())
