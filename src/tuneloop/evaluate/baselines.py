"""The systems fine-tuning must beat, run on the same examples: zero-shot, few-shot, embeddings.

- zero_shot: the base model on the task's instruction prompt (for text/label rows the
  baseline template with the label list, `TaskConfig.baseline_prompt`).
- few_shot: the base model with k training examples, retrieved by MiniLM similarity to each
  query, as earlier user/assistant turns after the instruction (prompt engineering at its
  cheapest).
- retrieval: the answer of the most similar training example (MiniLM cosine), copied; no LLM
  at all, the cheapest system there is.
- embedding_classifier: MiniLM sentence embeddings + logistic regression (no LLM at all).
- rag (retrieval-augmented prompting over eval.corpus) lives in rag.py.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from tuneloop.config import DEFAULT_CLASSIFY_TEMPLATE, TaskConfig
from tuneloop.data.formats import fill_template
from tuneloop.errors import TuneloopError
from tuneloop.models.embed import embed
from tuneloop.records import Example, Message, label_set


def raw_input(ex: Example, task: TaskConfig) -> str:
    """The user's own text without the task's prompt template, so embeddings see content only."""
    if "text" in ex.meta:  # text/label rows keep their raw text
        return str(ex.meta["text"])
    text = ex.user_text
    if task.type != "classification":
        return text
    template = task.prompt_template or DEFAULT_CLASSIFY_TEMPLATE
    try:
        filled = template.format(text="\x00", labels=", ".join(task.labels or []))
    except (KeyError, IndexError):
        return text
    if filled.count("\x00") != 1:
        return text
    pre, post = filled.split("\x00")
    if text.startswith(pre) and text.endswith(post):
        return text[len(pre):len(text) - len(post)]
    return text


def prompted(ex: Example, task: TaskConfig) -> list[Message]:
    """The prompt a base model sees: text/label rows re-rendered with the baseline instruction
    (the label list), since a fine-tuned model's short training prompt means nothing to it."""
    if task.type != "classification" or "text" not in ex.meta:
        return ex.prompt_messages
    system = [m for m in ex.messages[:1] if m.role == "system"]
    user = fill_template(task.baseline_prompt(), str(ex.meta["text"]), task.labels)
    return system + [Message("user", user)]


def retrieve(queries: Sequence[str], pool: Sequence[str], k: int) -> list[list[int]]:
    """Indices of the k most similar pool texts per query (MiniLM cosine), most similar last."""
    if k <= 0 or not pool:
        return [[] for _ in queries]
    sims = embed(list(queries)) @ embed(list(pool)).T
    k = min(k, len(pool))
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    # Most similar shot nearest the query: small models weigh recent turns most.
    return [row[::-1].tolist() for row in top]


def few_shot_prompts(examples: Sequence[Example], train: Sequence[Example], k: int,
                     task: TaskConfig) -> list[list[Message]]:
    """Each example's prompt preceded by its k retrieved training examples as solved turns.

    The instruction (with the label list, for text/label rows) comes once, in the first turn;
    later shots and the query are the bare texts the shots taught the model to answer. Before,
    every shot repeated the label list: with 77 labels, five copies of ~460 tokens per prompt.
    Now the instruction is a prefix the prompts share, run once (models.generate).
    """
    picks = retrieve([raw_input(e, task) for e in examples],
                     [raw_input(t, task) for t in train], k)
    prompts = []
    for ex, idx in zip(examples, picks, strict=True):
        msgs = prompted(ex, task)
        system = [m for m in msgs[:1] if m.role == "system"]
        turns: list[Message] = []
        for i in idx:
            shot = train[i]
            turns += _user_turn(shot, task, first=not turns)
            turns.append(Message("assistant", shot.target))
        prompts.append(system + turns + _user_turn(ex, task, first=not turns))
    return prompts


def _user_turn(ex: Example, task: TaskConfig, first: bool) -> list[Message]:
    """The example's user turn: with the instruction when first, else its bare text (for
    text/label rows; other records keep their own prompt)."""
    msgs = [m for m in prompted(ex, task) if m.role != "system"]
    if first or "text" not in ex.meta or task.type != "classification":
        return msgs
    return [Message("user", str(ex.meta["text"]))]


def nearest_answers(examples: Sequence[Example], train: Sequence[Example],
                    task: TaskConfig) -> tuple[list[str], float]:
    """The retrieval baseline: each example's nearest training answer, and seconds per example."""
    if not train:
        raise TuneloopError("the retrieval baseline needs training examples")
    t0 = time.perf_counter()
    picks = retrieve([raw_input(e, task) for e in examples], [raw_input(t, task) for t in train], 1)
    answers = [train[idx[-1]].target for idx in picks]
    return answers, (time.perf_counter() - t0) / max(len(examples), 1)


def embedding_classifier(train: Sequence[Example], examples: Sequence[Example],
                         task: TaskConfig, seed: int = 0) -> tuple[list[str], np.ndarray, float]:
    """Predicted labels, class probabilities (columns in task.labels order) and seconds per example."""
    labels = label_set(train, task.labels)
    y = [t.label for t in train]
    if len(set(y)) < 2:
        raise TuneloopError("embedding_classifier needs at least two labels in the training set")
    clf = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    clf.fit(embed([raw_input(t, task) for t in train]), y)
    t0 = time.perf_counter()
    # Not from the recent-embeddings cache (few-shot retrieval embedded these texts): the
    # latency reported is what this classifier costs per example.
    x = embed([raw_input(e, task) for e in examples], recent=False)
    pred = clf.predict(x).tolist()
    proba = np.zeros((len(examples), len(labels)))
    for j, c in enumerate(clf.classes_):
        if c in labels:
            proba[:, labels.index(c)] = clf.predict_proba(x)[:, j]
    return pred, proba, (time.perf_counter() - t0) / max(len(examples), 1)
