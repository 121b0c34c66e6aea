import pytest

from tuneloop.errors import TuneloopError
from tuneloop.models.load import load_tokenizer
from tuneloop.models.tokens import IGNORE, encode, encode_all, end_of_turn_id
from tuneloop.records import Example, Message


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(str(tiny_model))


def _targets(tok, e) -> str:
    return tok.decode([i for i, lab in zip(e.input_ids, e.labels, strict=True) if lab != IGNORE])


def test_single_turn_mask_covers_reply_and_end_of_turn(tok):
    ex = Example("1", [Message("user", "where is my card"), Message("assistant", "card_arrival")])
    e = encode(tok, ex, 256)
    assert _targets(tok, e) == "card_arrival<|im_end|>\n"
    assert end_of_turn_id(tok) in [x for x in e.labels if x != IGNORE]
    # everything before the reply (system/user turns and the assistant header) is masked
    first = next(i for i, lab in enumerate(e.labels) if lab != IGNORE)
    assert tok.decode(e.input_ids[:first]).endswith("<|im_start|>assistant\n")


def test_multi_turn_masks_every_non_assistant_turn(tok):
    ex = Example("1", [Message("system", "be brief"), Message("user", "hi"),
                       Message("assistant", "hello"), Message("user", "rate?"),
                       Message("assistant", "exchange_rate")])
    e = encode(tok, ex, 256)
    assert _targets(tok, e) == "hello<|im_end|>\nexchange_rate<|im_end|>\n"
    assert "rate?" not in _targets(tok, e) and "be brief" not in _targets(tok, e)


def test_loss_on_all_tokens(tok):
    ex = Example("1", [Message("user", "hi"), Message("assistant", "yo")])
    e = encode(tok, ex, 256, loss_on="all")
    assert e.labels == e.input_ids


def test_truncation_is_counted_and_empty_masks_dropped(tok):
    long_user = Example("1", [Message("user", "word " * 200), Message("assistant", "short")])
    short = Example("2", [Message("user", "hi"), Message("assistant", "hello there")])
    items, rep = encode_all(tok, [long_user, short], max_len=32)
    assert rep.truncated == 1 and rep.dropped_empty == 1
    assert [e.example_id for e in items] == ["2"]


def test_lint_rejects_template_without_end_of_turn(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    ex = Example("1", [Message("user", "hi"), Message("assistant", "hello")])
    with pytest.raises(TuneloopError, match="end-of-turn"):
        encode_all(tok, [ex], 64)


def test_lint_rejects_template_that_is_not_prefix_stable(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    # Renders the generation prompt differently from a finished turn: masks would be wrong.
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>"
                         "{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}")
    ex = Example("1", [Message("user", "hi"), Message("assistant", "hello")])
    with pytest.raises(TuneloopError, match="prefix"):
        encode_all(tok, [ex], 64)
