"""Batched scoring/generation on a tiny random model: the fast paths equal the slow ones."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tuneloop.evaluate.runner import (
    perplexity_bpb,
    score_and_generate,
    score_choices,
    score_choices_naive,
    target_nll,
)
from tuneloop.models.generate import generate, generate_with_counts
from tuneloop.models.tokens import IGNORE, encode, end_of_turn_id
from tuneloop.records import Example, Message


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from tuneloop.models.load import load_model, load_tokenizer
    from tuneloop.models.tokens import ensure_template

    tok = load_tokenizer(str(tiny_model))
    ensure_template(tok)
    return load_model(str(tiny_model)).eval(), tok


def _prompts(n: int) -> list[list[Message]]:
    return [[Message("user", "where is my card " * (i % 4 + 1) + str(i))] for i in range(n)]


@pytest.mark.parametrize("batch_size", [4, 1])  # 1: several batches reuse one prefix cache
def test_shared_prefix_scoring_equals_full_sequences(tiny, batch_size):
    model, tok = tiny
    labels = ["card_arrival", "exchange_rate", "yes", "no maybe"]
    fast = score_choices(model, tok, _prompts(9), labels, batch_size=batch_size, exact=True)
    slow = score_choices_naive(model, tok, _prompts(9), labels, batch_size=5)
    assert fast.shape == (9, 4)
    assert torch.allclose(fast, slow, atol=1e-4)


def test_pruned_scoring_keeps_the_argmax_and_bounds_the_rest(tiny):
    """Branch and bound: the winner's score is exact, a pruned label keeps an upper bound."""
    model, tok = tiny
    # A random model is unsure of every token, so no label could be pruned. A bias on the
    # tokens of "yes" and end-of-turn makes it sure of that answer, as a fine-tuned model is.
    model = copy.deepcopy(model)
    bias = torch.zeros(model.config.vocab_size)
    bias[tok("yes", add_special_tokens=False)["input_ids"] + [end_of_turn_id(tok)]] = 15.0
    model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
    # Labels of 1 to 4 tokens, two sharing a first token.
    labels = ["card_arrival", "card", "exchange_rate", "yes", "no maybe", "top_up_failed"]
    exact = score_choices(model, tok, _prompts(11), labels, batch_size=3, exact=True)
    pruned = score_choices(model, tok, _prompts(11), labels, batch_size=3)
    assert torch.equal(pruned.argmax(1), exact.argmax(1))
    rows = torch.arange(11)
    win = exact.argmax(1)
    assert torch.allclose(pruned[rows, win], exact[rows, win], atol=1e-4)
    assert bool((pruned >= exact - 1e-4).all())  # bounds never understate a score
    assert bool((pruned - exact > 1e-3).any())  # something was really pruned


def test_batched_generation_matches_one_at_a_time(tiny):
    model, tok = tiny
    prompts = _prompts(5)
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=5)
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single


def test_bits_per_byte_from_target_nll(tiny):
    model, tok = tiny
    exs = [Example(str(i), [Message("user", "hi " * (i + 1)), Message("assistant", "héllo")])
           for i in range(3)]
    rows = target_nll(model, tok, exs, batch_size=2)
    assert all(r[2] == len("héllo".encode()) for r in rows)  # UTF-8 bytes, not characters
    assert all(r[1] > 0 and r[0] > 0 for r in rows)
    # batching must not change per-example values
    single = [target_nll(model, tok, [e])[0] for e in exs]
    for a, b in zip(rows, single, strict=True):
        assert a[0] == pytest.approx(b[0], rel=1e-4) and a[1] == b[1]
    m = perplexity_bpb(rows)
    tot = sum(r[0] for r in rows)
    assert m["bits_per_byte"] == pytest.approx(tot / math.log(2) / sum(r[2] for r in rows))
    assert m["perplexity"] == pytest.approx(math.exp(tot / sum(r[1] for r in rows)))


def test_target_nll_equals_full_sequences(tiny):
    """Shared prefix once and the LM head over the target span only: the same NLL as scoring
    every full sequence, also where a conversation has two answers (targets not contiguous)."""
    model, tok = tiny
    sys = Message("system", "You sort bank messages.")
    exs = [Example(str(i), [sys, Message("user", "where is my card " * (i % 3 + 1)),
                            Message("assistant", "card_arrival" if i % 2 else "no idea at all")])
           for i in range(5)]
    exs.append(Example("chat", [sys, Message("user", "hi"), Message("assistant", "hello there"),
                                Message("user", "card?"), Message("assistant", "arriving")]))
    fast = target_nll(model, tok, exs, batch_size=4)
    for ex, (nll, count, _) in zip(exs, fast, strict=True):
        item = encode(tok, ex, 2048)
        ids, lab = torch.tensor([item.input_ids]), torch.tensor([item.labels])
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()[0, :-1]
        tgt = lab[0, 1:]
        keep = tgt != IGNORE
        ref = torch.nn.functional.cross_entropy(logits[keep], tgt[keep], reduction="sum")
        assert count == int(keep.sum()) and nll == pytest.approx(float(ref), rel=1e-4)


@pytest.mark.parametrize("mergeable", [True, False])  # False: as for Gemma 3's sliding layers
def test_generation_from_the_scoring_pass_equals_separate_generation(learnable_model, monkeypatch,
                                                                      mergeable):
    from tuneloop.evaluate import runner
    from tuneloop.models import generate as gen
    from tuneloop.models.load import load_model, load_tokenizer
    from tuneloop.models.tokens import ensure_template

    # The larger-weight tiny model: its replies depend on the prompt (the default one's are
    # one token repeated whatever it reads, which would hide a broken cache).
    tok = load_tokenizer(str(learnable_model))
    ensure_template(tok)
    model = load_model(str(learnable_model)).eval()
    # The raw new token ids, not their text: the random model's tokens decode to "".
    for module in (runner, gen):
        monkeypatch.setattr(module, "reply", lambda _tok, ids, _stop: (str(ids), len(ids)))
    prompts, labels = _prompts(9), ["card_arrival", "exchange_rate", "yes"]
    grad = []  # autograd on in the forward passes would keep every activation (it did: 24 GB)
    hook = model.register_forward_pre_hook(lambda *_: grad.append(torch.is_grad_enabled()))
    if not mergeable:
        monkeypatch.setattr(runner, "_mergeable", lambda _cache: False)
    merged = []  # widths of the scoring batches whose sampled rows were decoded together
    take = runner._Pending.take
    monkeypatch.setattr(runner._Pending, "take",
                        lambda self: merged.append([p[3].shape[1] for p in self.parts]) or take(self))
    try:
        scores, texts, counts, _ = score_and_generate(model, tok, prompts, labels, sample=5,
                                                      max_new_tokens=6, batch_size=1)
    finally:
        hook.remove()
    assert grad and not any(grad)
    # Mergeable: rows of unlike batches decoded together; else each batch's rows alone.
    assert any(len(set(widths)) > 1 for widths in merged) is mergeable
    assert torch.equal(scores, score_choices(model, tok, prompts, labels, batch_size=1))
    assert (texts, counts) == generate_with_counts(model, tok, prompts[:5], 6, batch_size=3)
    none = score_and_generate(model, tok, prompts, labels, sample=0, max_new_tokens=6)
    assert none[1:3] == ([], [])


@pytest.mark.integration
def test_real_model_shared_prefix_scoring_and_batched_generation():
    """On SmolLM2-135M: KV-shared label scoring equals full sequences; batching keeps outputs."""
    from tuneloop.models.load import load_model, load_tokenizer, resolve_model
    from tuneloop.models.tokens import ensure_template

    path = resolve_model("smollm2-135m-instruct")
    tok = load_tokenizer(path)
    ensure_template(tok)
    model = load_model(path).eval()
    prompts = [[Message("user", f"Is {x} a fruit? Answer yes or no.")]
               for x in ("an apple", "a chair made of oak wood", "banana")]
    labels = ["yes", "no", "maybe"]
    fast = score_choices(model, tok, prompts, labels, batch_size=2, exact=True)
    slow = score_choices_naive(model, tok, prompts, labels, batch_size=4)
    assert torch.allclose(fast, slow, atol=1e-3)
    batched = generate(model, tok, prompts, max_new_tokens=5, batch_size=3)
    assert batched == [generate(model, tok, [p], max_new_tokens=5)[0] for p in prompts]
