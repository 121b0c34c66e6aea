"""models.embed keeps recent vectors: a text is embedded once per process, and eviction never
drops a text the current call needs."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.models import embed as embed_mod


@pytest.fixture
def fake(monkeypatch):
    """A deterministic stand-in for MiniLM that records what it was asked to encode."""
    calls: list[list[str]] = []

    def encode(texts, batch_size, progress):
        calls.append(list(texts))
        return np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=np.float32)

    monkeypatch.setattr(embed_mod, "_encode", encode)
    monkeypatch.setattr(embed_mod, "_RECENT", type(embed_mod._RECENT)())
    return calls


def test_each_text_is_encoded_once(fake):
    first = embed_mod.embed(["a card", "a loan", "a card"])
    again = embed_mod.embed(["a loan", "new text", "a card"])
    assert fake == [["a card", "a loan"], ["new text"]]
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[2], first[0])


def test_eviction_keeps_the_texts_in_use(fake, monkeypatch):
    monkeypatch.setattr(embed_mod, "RECENT_MAX", 3)
    embed_mod.embed(["old", "kept"])
    out = embed_mod.embed(["kept", "x", "y"])  # "old" must go, "kept" must stay
    assert list(embed_mod._RECENT) == ["kept", "x", "y"]
    assert out.shape == (3, 3) and out[0][0] == len("kept")
    embed_mod.embed(["a", "b", "c", "d"])  # more than fit: encoded as they come, not kept
    assert fake[-1] == ["a", "b", "c", "d"] and "a" not in embed_mod._RECENT
    embed_mod.embed(["kept"], recent=False)  # a timed embedding pays for itself
    assert fake[-1] == ["kept"]


@pytest.mark.integration
def test_cached_vectors_are_minilm_vectors():
    texts = ["my card has not arrived", "what is the exchange rate"]
    direct = embed_mod._encode(texts, 64, False)
    embed_mod.embed(texts[:1])
    np.testing.assert_allclose(embed_mod.embed(texts), direct, atol=1e-3)
