"""Generation and extraction in `tuneloop eval`: the retrieval and RAG baselines, the text and
faithfulness metrics, and the paired tests, on a tiny model and hand-made outputs.

Every figure the suite writes is checked against a recomputation from predictions.jsonl with
rouge-score and the metric definitions written out here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from rouge_score import rouge_scorer
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.evaluate.compare import compare
from tuneloop.evaluate.faithfulness import not_in_source
from tuneloop.evaluate.rag import Chunk, Retriever, chunk_text, load_corpus, with_documents
from tuneloop.evaluate.scoring import score
from tuneloop.evaluate.suite import parse_baselines
from tuneloop.evaluate.systems import SystemOutput
from tuneloop.records import Example, Message

runner = CliRunner()
TOPICS = ["aspirin dosing", "insulin storage", "statin side effects", "vaccine schedules",
          "antibiotic resistance", "blood pressure targets"]


def _row(i: int) -> dict:
    topic = TOPICS[i % len(TOPICS)]
    source = (f"Study {i} looked at {topic} in {20 + i} adults. The main result was that "
              f"{topic} changed outcomes by {i} percent.")
    return {"id": f"r{i}", "prompt": f"What did study {i} find about {topic}?",
            "completion": f"{topic} changed outcomes by {i} percent.", "source": source}


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model) -> Path:
    """Train rows 0..29 (all of them: validation has its own file); test rows 100..109 plus
    exact copies of training rows 3 and 4."""
    root = tmp_path_factory.mktemp("genproj")
    _write(root / "train.jsonl", [_row(i) for i in range(30)])
    _write(root / "test.jsonl", [_row(i) for i in range(100, 110)] + [_row(3), _row(4)])
    _write(root / "val.jsonl", [_row(i) for i in range(200, 204)])
    _write(root / "corpus.jsonl", [{"id": f"d{i}", "text": _row(i)["source"]}
                                   for i in list(range(30)) + list(range(100, 110))])
    cfg = {"data": {"train": "train.jsonl", "test": "test.jsonl", "validation": "val.jsonl"},
           "task": {"type": "generation"},
           "model": {"name": str(tiny_model), "max_seq_len": 128},
           "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2, "save_every": 2},
           "eval": {"max_new_tokens": 6, "few_shot_k": 1, "corpus": "corpus.jsonl",
                    "rag_k": 2, "chunk_chars": 200, "finetuned_rag": True},
           "output": {"dir": "runs"}}
    (root / "tuneloop.yaml").write_text(yaml.safe_dump(cfg))
    return root


@pytest.fixture(scope="module")
def evaluated(project) -> tuple[dict, dict[str, list[dict]], Path]:
    from tuneloop.train.recipe import train

    run, _ = train(load_config(project), quiet=True)
    res = runner.invoke(app, ["eval", str(run), "--json", "--bootstrap", "100"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    by_system: dict[str, list[dict]] = {}
    for line in (run / "eval" / "predictions.jsonl").read_text().splitlines():
        r = json.loads(line)
        by_system.setdefault(r["system"], []).append(r)
    return json.loads(res.stdout), by_system, project


def test_every_text_baseline_runs_by_default(evaluated):
    res, by_system, _ = evaluated
    assert list(res["systems"]) == ["zero_shot", "few_shot", "rag", "retrieval", "finetuned",
                                    "finetuned_rag"]
    assert all(len(v) == 12 for v in by_system.values())
    for s in res["systems"].values():
        assert {"rouge_l", "f1", "embedding_similarity", "words", "unsupported_rate"} <= set(
            s["metrics"])


def test_retrieval_copies_the_nearest_training_answer(evaluated):
    _, by_system, _ = evaluated
    retrieval = {r["id"]: r for r in by_system["retrieval"]}
    # The last two test rows are training rows 3 and 4: their nearest neighbour is themselves.
    for i in (3, 4):
        assert retrieval[f"r{i}"]["prediction"] == _row(i)["completion"]
        assert retrieval[f"r{i}"]["rouge_l"] == pytest.approx(1.0)
    assert {r["prediction"] for r in retrieval.values()} <= {_row(i)["completion"]
                                                             for i in range(30)}


def _lcs(a: list[str], b: list[str]) -> int:
    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            dp[i + 1][j + 1] = dp[i][j] + 1 if x == y else max(dp[i][j + 1], dp[i + 1][j])
    return dp[-1][-1]


def _rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 from its definition: LCS over lower-cased word tokens."""
    p, r = re.findall(r"\w+", pred.lower()), re.findall(r"\w+", ref.lower())
    lcs = _lcs(p, r)
    if not lcs:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def test_metrics_recomputed_from_predictions(evaluated):
    res, by_system, _ = evaluated
    for name, rows in by_system.items():
        m = res["systems"][name]["metrics"]
        rl = [_rouge_l(r["prediction"] or "", r["reference"]) for r in rows]
        assert m["rouge_l"]["value"] == pytest.approx(np.mean(rl), abs=1e-6)
        assert m["rouge_l"]["ci"][0] <= m["rouge_l"]["value"] <= m["rouge_l"]["ci"][1]
        words = [len((r["prediction"] or "").split()) for r in rows]
        assert m["words"]["value"] == pytest.approx(np.mean(words), abs=1e-6)
        unsup = [r["unsupported_rate"] for r in rows if r["unsupported_rate"] is not None]
        if unsup:
            assert m["unsupported_rate"]["value"] == pytest.approx(np.mean(unsup), abs=1e-6)
    # rouge-score itself agrees with the definition on these strings.
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    row = by_system["retrieval"][0]
    assert scorer.score(row["reference"], row["prediction"])["rougeL"].fmeasure == \
        pytest.approx(_rouge_l(row["prediction"], row["reference"]))


def test_finetune_is_paired_tested_against_every_system(evaluated):
    res, _, _ = evaluated
    pairs = {(c["a"], c["b"], c["metric"]) for c in res["comparisons"]}
    for b in ("zero_shot", "few_shot", "rag", "retrieval", "finetuned_rag"):
        assert ("finetuned", b, "rouge_l") in pairs
        assert ("finetuned", b, "unsupported_rate") in pairs
    for b in ("zero_shot", "few_shot", "rag", "retrieval"):
        assert ("finetuned_rag", b, "rouge_l") in pairs
    assert ("finetuned_rag", "finetuned", "rouge_l") not in pairs


def test_default_baselines_follow_task_and_corpus(project):
    cfg = load_config(project)
    assert parse_baselines(None, cfg) == ["zero_shot", "few_shot", "retrieval", "rag"]
    no_corpus = load_config(project, ["eval.corpus="])
    assert parse_baselines(None, no_corpus) == ["zero_shot", "few_shot", "retrieval"]
    with pytest.raises(TuneloopError, match="eval.corpus"):
        parse_baselines("rag", no_corpus)
    with pytest.raises(TuneloopError, match="classification"):
        parse_baselines("embedding_classifier", cfg)


def test_finetuned_rag_without_corpus_is_a_user_error(project):
    res = runner.invoke(app, ["eval", str(project), "--set", "eval.corpus=",
                              "--baselines", "retrieval"])
    assert isinstance(res.exception, TuneloopError) and "eval.corpus" in str(res.exception)


# --- retrieval-augmented prompting -------------------------------------------------------


def test_chunks_respect_the_size_and_keep_every_word():
    text = ("First sentence is short. Second one is a little longer than the first one.\n\n"
            "A new paragraph starts here! " + "word " * 80)
    chunks = chunk_text(text, 60)
    assert all(len(c) <= 60 for c in chunks)
    assert " ".join(chunks).split() == text.split()
    assert chunks[0] == "First sentence is short."  # the next sentence would not fit


def test_retriever_ranks_the_matching_document_first():
    docs = [("a", "Insulin should be stored in a refrigerator before opening."),
            ("b", "The exchange rate of the euro rose against the dollar."),
            ("c", "Penguins live in the southern hemisphere.")]
    r = Retriever(docs, 500)
    top = r.top(["how should insulin be stored", "euro dollar exchange rate"], 2)
    assert [c.doc_id for c in top[0]][0] == "a" and [c.doc_id for c in top[1]][0] == "b"
    assert len(top[0]) == 2


def test_documents_go_before_the_last_user_turn():
    prompt = [Message("system", "Be brief."), Message("user", "What is X?")]
    out = with_documents(prompt, [Chunk("d1", "X is a letter."), Chunk("d2", "Y follows X.")])
    assert out[0] == prompt[0]
    assert out[1].role == "user"
    assert out[1].content.endswith("[1] X is a letter.\n\n[2] Y follows X.\n\nWhat is X?")


def test_corpus_formats_and_bad_corpora(tmp_path):
    (tmp_path / "c.csv").write_text("id,content\n7,Alpha beta.\n8,Gamma.\n")
    assert load_corpus(tmp_path / "c.csv") == [("7", "Alpha beta."), ("8", "Gamma.")]
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "one.txt").write_text("One.")
    (folder / "sub" / "two.md").write_text("Two.")
    (folder / "skip.bin").write_text("no")
    assert load_corpus(folder) == [("one.txt", "One."), ("sub/two.md", "Two.")]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(TuneloopError, match=r"bad.jsonl: line 2: no document text"):
        load_corpus(tmp_path / "bad.jsonl")
    with pytest.raises(TuneloopError, match="not found"):
        load_corpus(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text('{"text": "  "}\n')
    with pytest.raises(TuneloopError, match="no non-empty documents"):
        load_corpus(tmp_path / "empty.jsonl")


# --- extraction and faithfulness metrics ---------------------------------------------------

PASSAGE = "The laws of  Nevada govern this Agreement. Either party may terminate on notice."


def _ex(i: int, target: str) -> Example:
    return Example(id=str(i), messages=[Message("user", "q"), Message("assistant", target)],
                   source=PASSAGE)


def test_not_in_source_is_a_verbatim_span_check():
    assert not_in_source("The laws of Nevada govern this Agreement.", PASSAGE) == 0.0
    assert not_in_source("Nevada law governs this Agreement.", PASSAGE) == 1.0
    assert not_in_source("None", PASSAGE) is None


def test_extraction_scores_by_hand():
    gold = ["The laws of Nevada govern this Agreement.", "none",
            "Either party may terminate on notice."]
    examples = [_ex(i, t) for i, t in enumerate(gold)]
    preds = ["The laws of Nevada govern this Agreement.", "none", "Either party may quit."]
    sc = score(SystemOutput("x", preds), examples, "extraction", None, n_boot=50)
    assert sc.metrics["exact_match"]["value"] == pytest.approx(2 / 3, abs=1e-6)
    # Token F1 of the third: 3 shared of 4 predicted and 6 gold tokens -> 2*.75*.5/1.25 = 0.6.
    assert sc.metrics["f1"]["value"] == pytest.approx((1 + 1 + 0.6) / 3, abs=1e-6)
    # "none" claims no span: the rate is over the two extracted answers, one invented.
    assert sc.metrics["not_in_source_rate"]["value"] == pytest.approx(0.5)


def test_lower_is_better_metrics_get_the_right_verdict():
    examples = [_ex(i, "The laws of Nevada govern this Agreement.") for i in range(40)]
    faithful = SystemOutput("a", ["The laws of Nevada govern this Agreement."] * 40)
    invented = SystemOutput("b", ["Texas law governs everything forever."] * 40)
    a = score(faithful, examples, "extraction", None, n_boot=50)
    b = score(invented, examples, "extraction", None, n_boot=50)
    rec = next(c for c in compare("extraction", "a", a, "b", b, 40, 50)
               if c["metric"] == "not_in_source_rate")
    assert rec["diff"] == pytest.approx(-1.0)
    assert rec["verdict"].startswith("a is better on not_in_source_rate")


def test_token_f1_counts_shared_tokens():
    examples = [_ex(0, "alpha beta gamma delta")]
    sc = score(SystemOutput("x", ["beta gamma epsilon"]), examples, "generation", None,
               n_boot=10, faithfulness=False)
    common = sum((Counter("beta gamma epsilon".split())
                  & Counter("alpha beta gamma delta".split())).values())
    p, r = common / 3, common / 4
    assert sc.metrics["f1"]["value"] == pytest.approx(2 * p * r / (p + r), abs=1e-6)


def test_without_a_source_the_prompt_is_the_grounding():
    ex = Example(id="0", messages=[Message("user", "Summarise: the trial enrolled 40 patients."),
                                   Message("assistant", "40 patients enrolled.")])
    sc = score(SystemOutput("x", ["The trial enrolled 41 patients in Paris."]), [ex],
               "generation", None, n_boot=10)
    # Content terms: trial, enrolled, 41, patients, paris; unsupported: 41 and paris.
    assert sc.metrics["unsupported_rate"]["value"] == pytest.approx(2 / 5)


def test_a_config_without_a_run_evaluates_the_baselines_only(project, tmp_path):
    res = runner.invoke(app, ["eval", str(project), "--json", "--bootstrap", "20",
                              "--baselines", "retrieval,rag", "--limit", "4"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = json.loads(res.stdout)
    assert list(out["systems"]) == ["rag", "retrieval"] and out["comparisons"] == []
    assert out["runs"] == [] and out["examples"] == 4
