"""Rebuild this example's data slice from CUAD v1 master_clauses.csv (run from the repo root).

    python examples/cuad-clauses/make_slice.py /path/to/shared/data/cuad

Clause-type classification: a clause excerpt -> one of 8 CUAD categories. Contracts are split
by file (sorted by name): the first 80% feed train, the rest test, so no contract appears in
both. Per category: up to 25 train and 12 test clauses, the first clause of each contract in
file order, whitespace-normalised and cut at 400 characters.
"""

import ast
import csv
import sys
from pathlib import Path

CATEGORIES = {"Governing Law": "governing_law", "Anti-Assignment": "anti_assignment",
              "Cap On Liability": "cap_on_liability", "Audit Rights": "audit_rights",
              "Insurance": "insurance", "Termination For Convenience": "termination_for_convenience",
              "Exclusivity": "exclusivity", "Non-Compete": "non_compete"}
MAX_CHARS = 400


def clip(s: str) -> str:
    s = " ".join(s.split())
    return s if len(s) <= MAX_CHARS else s[:MAX_CHARS].rsplit(" ", 1)[0] + " ..."


def take(rows: list[dict], per_label: int, first: int) -> list[list[str]]:
    out, counts = [], dict.fromkeys(CATEGORIES, 0)
    for n, r in enumerate(rows, start=first):
        for cat, lab in CATEGORIES.items():
            if counts[cat] >= per_label:
                continue
            clauses = ast.literal_eval(r[cat] or "[]")
            if clauses:
                counts[cat] += 1
                # id: contract number in sorted file order + category (file names are not unique
                # once shortened); the contract file name goes in `contract`.
                out.append([f"c{n:03d}-{lab}", clip(clauses[0]), lab, r["Filename"]])
    return out


def main(src: Path) -> None:
    with open(src / "master_clauses.csv", encoding="utf-8", errors="replace", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["Filename"])
    cut = int(len(rows) * 0.8)
    here = Path(__file__).parent
    for name, part, k, first in (("train.csv", rows[:cut], 25, 0),
                                 ("test.csv", rows[cut:], 12, cut)):
        with open(here / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "text", "label", "contract"])
            w.writerows(take(part, k, first))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
