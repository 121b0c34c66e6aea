"""Rebuild this example's data from PubMedQA PQA-L (run from the repository root).

    python examples/pubmedqa-answers/make_slice.py ../shared/data/pubmedqa

Grounded generation: question + abstract -> the abstract's conclusion (PubMedQA's LONG_ANSWER,
written by the paper's authors and left out of the abstract text given). Only abstracts of at
most 1,300 characters (438 of the 1,000) are used, so training fits a 2-core CPU.

- train.csv: the first 200 such questions not in the official test half.
- test.csv: the first 100 such questions of the official test half.
- closed-book/{train,test}.csv: the same questions without the abstract (the honest-limits
  experiment: can fine-tuning put the facts into the model?).
- corpus.jsonl: the abstracts of all 300 questions, one document each, for retrieval.
Every row keeps the full abstract as `source`: the unsupported-content rate is measured
against it.
"""

import csv
import json
import sys
from pathlib import Path

MAX_CHARS = 1300
OPEN = ("Answer the biomedical research question from the abstract in one or two sentences, "
        "as the authors' conclusion would.\n\nQuestion: {q}\n\nAbstract: {a}")
CLOSED = "Answer the biomedical research question in one or two sentences.\n\nQuestion: {q}"


def abstract(rec: dict) -> str:
    return " ".join(" ".join(rec["CONTEXTS"]).split())


def write(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "completion", "source"])
        w.writerows(rows)


def main(src: Path, n_train: int = 200, n_test: int = 100) -> None:
    data = json.loads((src / "ori_pqal.json").read_text(encoding="utf-8"))
    test_ids = set(json.loads((src / "test_ground_truth.json").read_text(encoding="utf-8")))
    short = [p for p in data if len(abstract(data[p])) <= MAX_CHARS]
    splits = {"train": [p for p in short if p not in test_ids][:n_train],
              "test": [p for p in short if p in test_ids][:n_test]}
    here = Path(__file__).parent
    for name, ids in splits.items():
        for folder, template in ((here, OPEN), (here / "closed-book", CLOSED)):
            write(folder / f"{name}.csv",
                  [[p, template.format(q=data[p]["QUESTION"].strip(), a=abstract(data[p])),
                    " ".join(data[p]["LONG_ANSWER"].split()), abstract(data[p])] for p in ids])
    with open(here / "corpus.jsonl", "w", encoding="utf-8") as f:
        for p in splits["train"] + splits["test"]:
            f.write(json.dumps({"id": p, "text": abstract(data[p])}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
