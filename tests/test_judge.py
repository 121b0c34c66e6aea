"""The pairwise LLM judge: verdict parsing and scoring by hand, then against tuneloop's own
OpenAI-compatible server (uvicorn in a thread) as the judge endpoint, serving a tiny model
built to always answer "A" (a judge of pure position bias)."""

from __future__ import annotations

import csv
import json
import re
import socket
import threading
import time

import pytest

from tuneloop.config import JudgeConfig
from tuneloop.errors import TuneloopError
from tuneloop.evaluate.judge import (
    example_score,
    judge_agreement,
    judge_pairs,
    load_review_ratings,
    parse_verdict,
    summarize,
)
from tuneloop.records import Example, Message

KEY = "judge-test-key"


def _examples(n: int) -> list[Example]:
    return [Example(id=str(i), source="The card ships in 3 days." if i % 2 else None,
                    messages=[Message("system", "Answer briefly."),
                              Message("user", f"where is my card {i}"),
                              Message("assistant", f"reference {i}")]) for i in range(n)]


def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.parametrize("text, verdict", [
    ("A", "A"), ("B", "B"), (" **B**\n", "B"), ("A.", "A"), ("Answer A is better.", "A"),
    ("Verdict: B", "B"), ("I think Answer B is better", "B"), ("[[A]]", "A"), ("[[C]]", "tie"),
    ("tie", "tie"), ("Tie.", "tie"), ("A tie", "tie"), ("It's a tie", "tie"),
    ("Answers A and B are equally good", "tie"),
    ("", None), (None, None), ("Apple", None), ("a", None), ("blah blah", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_example_score_combines_both_orders():
    # First verdict: target shown as A; second: baseline shown as A.
    assert example_score("A", "B") == 1.0  # target preferred in both orders
    assert example_score("B", "A") == 0.0  # baseline preferred in both
    assert example_score("A", "A") == 0.5  # always the first shown: inconsistent
    assert example_score("tie", "tie") == 0.5
    assert example_score("A", "tie") == 0.5
    assert example_score(None, "B") is None and example_score("A", None) is None


def test_summarize_counts_bias_and_consistency():
    pairs = [("A", "B"), ("A", "A"), ("B", "A"), ("tie", "B"), (None, "A")]
    r = summarize(pairs, n_boot=200)
    assert (r["n"], r["wins"], r["ties"], r["losses"], r["unparsed"]) == (5, 1, 2, 1, 1)
    assert r["win_rate"]["value"] == 0.5  # mean of 1, 0.5, 0, 0.5; the unparsed left out
    lo, hi = r["win_rate"]["ci"]
    assert 0 <= lo <= 0.5 <= hi <= 1
    assert r["position_bias"] == 0.625  # 5 of the 8 A/B verdicts picked the first shown
    assert r["consistency"] == 0.5  # pairs 1 and 3 agree across orders; 2 and 4 do not
    empty = summarize([(None, None)], n_boot=10)
    assert empty["win_rate"]["value"] is None and empty["position_bias"] is None
    assert empty["consistency"] is None and empty["unparsed"] == 1


def test_agreement_with_human_ratings():
    per = [("1", "zs", 1.0), ("2", "zs", 0.0), ("3", "zs", 0.5), ("4", "zs", 0.0),
           ("5", "zs", None), ("6", "zs", 0.0), ("1", "fs", 0.0), ("2", "fs", 0.0)]
    judged = {"target": "finetuned",
              "per_example": [{"id": i, "baseline": b, "score": s} for i, b, s in per]}
    human = {("finetuned", 1): 5, ("zs", 1): 2,  # judge agrees
             ("finetuned", 2): 4, ("zs", 2): 3,  # judge prefers zs: disagrees
             ("finetuned", 3): 2, ("zs", 3): 4,  # judge tie, humans prefer zs: disagrees
             ("finetuned", 4): 3, ("zs", 4): 3,  # human tie: left out, counted
             ("finetuned", 5): 5, ("zs", 5): 1,  # judge unparsed: left out
             ("zs", 6): 2,                        # target unrated: left out
             ("fs", 1): 1, ("fs", 2): 5}
    ratings = [{"system": s, "example_id": i, "rating": r} for (s, i), r in human.items()]
    ratings.append({"system": "fs", "example_id": 1, "rating": 3})  # two raters: mean 2
    a = judge_agreement(judged, ratings, n_boot=50)
    zs, fs = a["baselines"]["zs"], a["baselines"]["fs"]
    assert (zs["n"], zs["agreement"]["value"], zs["human_ties"]) == (3, round(1 / 3, 6), 1)
    assert (fs["n"], fs["agreement"]["value"], fs["human_ties"]) == (2, 0.5, 0)
    assert (a["n"], a["agreement"]["value"], a["human_ties"]) == (5, 0.4, 1)


def test_review_ratings_load_from_an_imported_review(tmp_path):
    from tuneloop.evaluate.review import export_review, import_review

    (tmp_path / "eval.json").write_text("{}")
    preds = [{"id": str(i), "system": s, "input": f"q{i}", "reference": f"r{i}", "generated": f"{s}{i}"}
             for i in range(3) for s in ("finetuned", "zero_shot")]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    assert load_review_ratings(tmp_path) is None  # nothing imported yet
    path = export_review(tmp_path, n=3)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    key = json.loads((path.parent / "key.json").read_text())
    for r in rows:  # finetuned rated 4, zero_shot 2, except example 0 where zero_shot gets 5
        ft = key[r["system_code"]] == "finetuned"
        r["rating"] = "4" if ft else ("5" if r["example_id"] == "0" else "2")
    filled = tmp_path / "filled.csv"
    with open(filled, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import_review(tmp_path, filled)
    got = load_review_ratings(tmp_path)
    assert sorted((r["system"], r["example_id"], r["rating"]) for r in got) == sorted(
        [("finetuned", str(i), 4.0) for i in range(3)] + [("zero_shot", "0", 5.0),
                                                         ("zero_shot", "1", 2.0), ("zero_shot", "2", 2.0)])
    judged = {"target": "finetuned", "per_example": [
        {"id": str(i), "baseline": "zero_shot", "score": 1.0} for i in range(3)]}
    assert judge_agreement(judged, got, n_boot=10)["agreement"]["value"] == round(2 / 3, 6)


def test_missing_key_env_is_a_user_error(monkeypatch):
    monkeypatch.delenv("TL_NO_SUCH_KEY", raising=False)
    cfg = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="TL_NO_SUCH_KEY")
    with pytest.raises(TuneloopError, match="TL_NO_SUCH_KEY"):
        judge_pairs(cfg, _examples(1), {"finetuned": ["x"], "zero_shot": ["y"]})


def test_unreachable_endpoint_fails_fast():
    cfg = JudgeConfig(base_url=f"http://127.0.0.1:{_free_port()}/v1", model="m", timeout_s=2)
    start = time.perf_counter()
    with pytest.raises(TuneloopError, match=r"127\.0\.0\.1.*/v1/chat/completions"):
        judge_pairs(cfg, _examples(1), {"finetuned": ["x"], "zero_shot": ["y"]})
    assert time.perf_counter() - start < 5


def _first_shown_judge(tiny_model, dest):
    """A real model that always answers "A": the judge of pure position bias. The tiny model's
    tokenizer, with weights set so the residual stream is the token embedding alone: after any
    token but "A" the logits pick "A", after "A" they pick end-of-turn."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model)
    cfg = LlamaConfig.from_pretrained(tiny_model)
    cfg.tie_word_embeddings = False
    model = LlamaForCausalLM(cfg)
    a, eos = tok.convert_tokens_to_ids("A"), tok.eos_token_id
    with torch.no_grad():
        for layer in model.model.layers:  # layers add nothing to the residual stream
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.zero_()
        head.zero_()
        emb[:, 0], emb[a, 1] = 10, 10  # every token points along dim 0; "A" also along dim 1
        head[a, 0], head[eos, 1] = 10, 20
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory, tiny_model):
    """tuneloop's own server over real HTTP, behind a key, serving as 'base' a model that
    always prefers the first-shown answer."""
    import uvicorn

    from tuneloop.serve.app import ServeSettings, create_app
    from tuneloop.serve.engine import ModelPool
    from tuneloop.serve.store import TrafficStore

    root = tmp_path_factory.mktemp("judge")
    store = TrafficStore(f"sqlite:///{root / 'traffic.db'}")
    model = _first_shown_judge(tiny_model, root / "judge-model")
    app = create_app(ModelPool(None, str(model)), store,
                     ServeSettings(api_key=KEY, max_tokens=32, default_model="base"))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield {"url": f"http://127.0.0.1:{port}/v1", "store": store}
    server.should_exit = True
    thread.join(timeout=10)


def _answers(body: dict) -> tuple[str, str]:
    text = body["messages"][-1]["content"]
    m = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]\n(.*?)\n\n", text, re.S)
    return m.group(1), m.group(2)


def test_judge_against_a_live_server(judge_server, monkeypatch):
    monkeypatch.setenv("TL_JUDGE_KEY", KEY)
    store = judge_server["store"]
    cfg = JudgeConfig(base_url=judge_server["url"], model="base", api_key_env="TL_JUDGE_KEY",
                      max_examples=3, timeout_s=30)
    exs = _examples(4)
    outputs = {s: [f"{s} says {i}" for i in range(4)] for s in ("finetuned", "zero_shot", "few_shot")}
    before = len(store.requests())
    res = judge_pairs(cfg, exs, outputs, n_boot=100)
    rows = store.requests()[before:]
    assert len(rows) == 2 * 2 * 3  # two baselines x three examples (max_examples) x both orders
    bodies = [json.loads(r["request_json"]) for r in rows]
    assert all(b["temperature"] == 0 and b["model"] == "base" and r["status"] == 200
               for b, r in zip(bodies, rows, strict=True))
    said = {_answers(b): r["output_text"] for b, r in zip(bodies, rows, strict=True)}
    ft = outputs["finetuned"]
    assert set(said) == {p for bl in ("zero_shot", "few_shot") for i in range(3)
                         for p in ((ft[i], outputs[bl][i]), (outputs[bl][i], ft[i]))}
    prompts = [b["messages"][-1]["content"] for b in bodies]
    assert sum("[Source]\nThe card ships in 3 days." in t for t in prompts) == 4  # example 1 only
    assert all("[Reference answer]\nreference " in t and "where is my card" in t for t in prompts)

    assert res["target"] == "finetuned" and set(res["baselines"]) == {"zero_shot", "few_shot"}
    assert len(res["per_example"]) == 6
    for bl, rep in res["baselines"].items():
        mine = [p for p in res["per_example"] if p["baseline"] == bl]
        assert [p["id"] for p in mine] == ["0", "1", "2"]
        verdicts = []
        for p in mine:  # recompute each verdict from what the server actually answered
            i = int(p["id"])
            v = [parse_verdict(said[(ft[i], outputs[bl][i])]), parse_verdict(said[(outputs[bl][i], ft[i])])]
            assert p["verdicts"] == v and p["score"] == example_score(*v)
            verdicts += v
        assert rep["n"] == 3 and rep["wins"] + rep["ties"] + rep["losses"] + rep["unparsed"] == 3
        scores = [p["score"] for p in mine if p["score"] is not None]
        if scores:
            assert 0 <= rep["win_rate"]["value"] <= 1
            assert rep["win_rate"]["value"] == round(sum(scores) / len(scores), 6)
        else:
            assert rep["win_rate"]["value"] is None
        shown = [v for v in verdicts if v in ("A", "B")]
        assert rep["position_bias"] == (round(shown.count("A") / len(shown), 6) if shown else None)
        # This judge always picks the first shown: every pair inconsistent, so all ties.
        assert set(said.values()) == {"A"} and verdicts == ["A"] * 6
        assert (rep["wins"], rep["ties"], rep["losses"], rep["unparsed"]) == (0, 3, 0, 0)
        assert rep["win_rate"] == {"value": 0.5, "ci": [0.5, 0.5]}
        assert (rep["position_bias"], rep["consistency"]) == (1.0, 0.0)


def test_wrong_key_is_reported_with_status(judge_server, monkeypatch):
    monkeypatch.setenv("TL_JUDGE_KEY", "not-the-key")
    cfg = JudgeConfig(base_url=judge_server["url"], model="base", api_key_env="TL_JUDGE_KEY")
    with pytest.raises(TuneloopError, match=r"chat/completions answered HTTP 401"):
        judge_pairs(cfg, _examples(1), {"finetuned": ["x"], "zero_shot": ["y"]})
