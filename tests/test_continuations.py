"""Label continuations on a prompt cache: the token tree equals label-by-label scoring."""

from __future__ import annotations

import copy

import pytest
import torch

from tuneloop.evaluate import continuations as cont
from tuneloop.models.attention import use_gqa_sdpa
from tuneloop.models.generate import common_prefix_len, prefill
from tuneloop.models.tokens import encode_prompt
from tuneloop.records import Message

LABELS = ["card_arrival", "card_linking", "card", "exchange_rate", "exchange_via_app",
          "yes", "top_up_failed", "top_up_reverted"]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from tuneloop.models.load import load_model, load_tokenizer
    from tuneloop.models.tokens import ensure_template

    tok = load_tokenizer(str(tiny_model))
    ensure_template(tok)
    return load_model(str(tiny_model)).eval(), tok


def _choice_ids(tok) -> list[list[int]]:
    return [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in LABELS]


@torch.no_grad()
def _prompt_pass(model, tok):
    texts = ["hi", "where is my card " * 4, "ok 3", "exchange rate please " * 2]
    seqs = [encode_prompt(tok, [Message("user", t)]) for t in texts]
    return prefill(model, seqs, common_prefix_len(seqs), tok.pad_token_id, "cpu")


@pytest.mark.parametrize("max_tokens", [512, 9])  # 9: trees split, one tree per forward
@torch.no_grad()
def test_tree_equals_pair_by_pair(tiny, max_tokens):
    model, tok = tiny
    _, cache, attn, start = _prompt_pass(model, tok)
    ids = _choice_ids(tok)
    # Rows pick different, overlapping label sets; row 2 asks for none.
    pairs = [(0, c) for c in range(len(LABELS))] + [(1, 0), (1, 1), (1, 6)] + [(3, 3), (3, 4)]
    ref = cont.pairs_logp(model, cache, attn, start, pairs, ids, 64)
    keys = [layer.keys.clone() for layer in cache.layers]
    out, none = cont.tree_logp(model, cache, attn, start, pairs, ids, max_tokens)
    assert torch.allclose(out, ref, atol=1e-4) and none.shape == (0,)
    assert bool((ref < 0).all())  # every label here has tokens after its first
    assert all(torch.equal(a.keys, b) for a, b in zip(cache.layers, keys, strict=True))
    # And through the grouped-head attention that eval and serve use.
    fast = copy.deepcopy(model)
    assert use_gqa_sdpa(fast)
    assert torch.allclose(cont.tree_logp(fast, cache, attn, start, pairs, ids, max_tokens)[0],
                          ref, atol=1e-4)


@torch.no_grad()
def test_probes_get_the_log_p_of_the_prefix_they_share_with_scored_labels(tiny):
    model, tok = tiny
    _, cache, attn, start = _prompt_pass(model, tok)
    ids = _choice_ids(tok)
    scored = [(0, LABELS.index("card_arrival")), (1, LABELS.index("top_up_failed"))]
    probes = [(0, LABELS.index("card_linking")), (0, LABELS.index("card")),
              (1, LABELS.index("top_up_reverted")), (1, LABELS.index("yes")),
              (2, LABELS.index("card_linking"))]  # row 2 has nothing scored
    _, bounds = cont.tree_logp(model, cache, attn, start, scored, ids, 512, probes)
    # Reference: each probe's tokens up to where it parts from the scored label, scored alone.
    shared = []
    for (r, c), (_, s) in zip(probes, [scored[0], scored[0], scored[1], scored[1], scored[0]],
                              strict=True):
        a, b = ids[c], ids[s]
        n = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
        shared.append(ids[c][:n + 1] if r != 2 else ids[c][:1])  # +1: the parting token's logp
    ref = cont.pairs_logp(model, cache, attn, start, [(r, j) for j, (r, _) in enumerate(probes)],
                          shared, 64)
    assert torch.allclose(bounds, ref, atol=1e-4)
    assert bounds[0] < 0 and bounds[2] < 0 and bounds[3] == 0 and bounds[4] == 0
    full = cont.pairs_logp(model, cache, attn, start, probes, ids, 64)
    assert bool((bounds >= full - 1e-4).all())  # a bound never understates the score
    assert torch.allclose(bounds[1], full[1], atol=1e-4)  # "card" is all inside "card_arrival"


def test_a_tree_runs_each_shared_prefix_once(tiny):
    _, tok = tiny
    ids = _choice_ids(tok)
    tree = cont._Tree(row=0)
    for k, c in enumerate(ids):
        tree.add(k, c)
    prefixes = {tuple(c[:j + 1]) for c in ids for j in range(len(c) - 1)}
    assert len(tree) == len(prefixes) < sum(len(c) - 1 for c in ids)
    assert len(tree.targets) == sum(len(c) - 1 for c in ids)
    anc = tree.ancestry(len(tree) + 2)
    for i, p in enumerate(tree.parent):
        assert anc[i, i] and (p < 0 or anc[i, p])
        assert int(anc[i].sum()) == tree.depth[i] + 1  # itself and its ancestors, nothing else
    assert anc[-1].sum() == 1  # a padding slot sees itself only


def test_models_that_cannot_take_a_tree_mask_go_pair_by_pair(tiny, monkeypatch):
    model, tok = tiny
    _, cache, attn, start = _prompt_pass(model, tok)
    calls = []
    monkeypatch.setattr(cont, "pairs_logp", lambda *a: calls.append("pairs") or torch.zeros(1))
    monkeypatch.setattr(cont, "tree_logp",
                        lambda *a: calls.append("tree") or (torch.zeros(1), torch.zeros(0)))
    cont.continuation_logp(model, cache, attn, start, [(0, 0)], _choice_ids(tok), 64)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    cont.continuation_logp(eager, cache, attn, start, [(0, 0)], _choice_ids(tok), 64)
    assert calls == ["tree", "pairs"]
