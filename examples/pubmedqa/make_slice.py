"""Rebuild this example's data slice from PubMedQA PQA-L (run from the repo root).

    python examples/pubmedqa/make_slice.py /path/to/shared/data/pubmedqa

Train: the first 300 questions (file order) of the 500 that are not in the official test
half. Test: the first 200 questions (file order) of the official test half. Each row holds
the question plus the abstract (its context passages, cut at 450 characters so a 2-core CPU
can evaluate it in minutes) as `text`, the full abstract as `source`, and the expert label.
"""

import csv
import json
import sys
from pathlib import Path

MAX_CHARS = 450


def row(pmid: str, rec: dict) -> list[str]:
    abstract = " ".join(" ".join(rec["CONTEXTS"]).split())
    short = abstract if len(abstract) <= MAX_CHARS else abstract[:MAX_CHARS].rsplit(" ", 1)[0] + " ..."
    text = f"Question: {rec['QUESTION'].strip()}\nAbstract: {short}"
    return [pmid, text, rec["final_decision"], abstract]


def main(src: Path, n_train: int = 300, n_test: int = 200) -> None:
    data = json.loads((src / "ori_pqal.json").read_text(encoding="utf-8"))
    test_ids = set(json.loads((src / "test_ground_truth.json").read_text(encoding="utf-8")))
    train = [p for p in data if p not in test_ids][:n_train]
    test = [p for p in data if p in test_ids][:n_test]
    here = Path(__file__).parent
    for name, ids in (("train.csv", train), ("test.csv", test)):
        with open(here / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "text", "label", "source"])
            for p in ids:
                w.writerow(row(p, data[p]))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
