"""Rebuild this example's data from CUAD v1's master_clauses.csv (run from the repository root).

    python examples/cuad-extract/make_slice.py ../shared/data/cuad

Extraction: clause type + a contract passage -> that clause copied exactly, or `none`.
CUAD's master table holds each contract's clauses (not the full text), so a passage is built
from one contract's own clauses: three of them, 40-300 characters each, in random order. In
three quarters of the records one of them is the asked-for clause (the answer is its exact
text); in the rest none is (the answer is `none`), and no passage clause shares text with the
asked-for clause of that contract. Train and test come from different contracts (the first
80% of the file vs the rest); the seed is fixed, so the files rebuild byte for byte.
"""

import ast
import csv
import io
import random
import sys
from pathlib import Path

CATEGORIES = ["Governing Law", "Anti-Assignment", "Expiration Date", "Termination For Convenience",
              "Audit Rights", "Cap On Liability", "Insurance", "Renewal Term", "Exclusivity",
              "License Grant", "Minimum Commitment", "Post-Termination Services"]
PROMPT = ("Copy the {cat} clause from the contract passage exactly as written. If the passage "
          "has no {cat} clause, answer none.\n\nPassage:\n{passage}")
MIN_CHARS, MAX_CHARS, NONE_SHARE = 40, 300, 0.25


def clauses(row: dict) -> dict[str, list[str]]:
    """Category -> its clause snippets of usable length, whitespace normalised."""
    out = {}
    for cat in CATEGORIES:
        cell = row.get(cat) or "[]"
        snippets = ast.literal_eval(cell) if cell.startswith("[") else []
        ok = [" ".join(s.split()) for s in snippets if MIN_CHARS <= len(s) <= MAX_CHARS]
        out[cat] = [s for s in ok if s]
        out[cat + "/all"] = [" ".join(s.split()) for s in snippets]
    return out


def overlaps(a: str, b: str) -> bool:
    return a in b or b in a


def record(name: str, cl: dict[str, list[str]], rng: random.Random) -> list[str] | None:
    present = [c for c in CATEGORIES if cl[c]]
    if len(present) < 3:
        return None
    none = rng.random() < NONE_SHARE
    cat = rng.choice(CATEGORIES if none else present)
    if none:
        # A "none" record: three clauses of other types sharing no text with this type's clause.
        pool = [s for c in present if c != cat for s in cl[c][:1]
                if not any(overlaps(s, t) for t in cl[cat + "/all"])]
        if len(pool) < 3:
            return None
        passage, answer = rng.sample(pool, 3), "none"
    else:
        answer = cl[cat][0]
        pool = [s for c in present if c != cat for s in cl[c][:1] if not overlaps(s, answer)]
        if len(pool) < 2:
            return None
        passage = rng.sample(pool, 2) + [answer]
        rng.shuffle(passage)
    text = "\n\n".join(passage)
    rid = f"{Path(name).stem[:60]}|{cat}"
    return [rid, PROMPT.format(cat=cat, passage=text), answer, text]


def main(src: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> None:
    # One byte of the file is Mac Roman (SOURCE.md); replace it rather than fail.
    raw = (src / "master_clauses.csv").read_text(encoding="utf-8", errors="replace")
    rows = list(csv.DictReader(io.StringIO(raw, newline="")))
    cut = int(len(rows) * 0.8)
    rng = random.Random(seed)
    here = Path(__file__).parent
    for name, part, n in (("train.csv", rows[:cut], n_train), ("test.csv", rows[cut:], n_test)):
        out, seen = [], set()
        parsed = [(r["Filename"], clauses(r)) for r in part]
        while len(out) < n:
            fname, cl = rng.choice(parsed)
            rec = record(fname, cl, rng)
            if rec and rec[0] not in seen:
                seen.add(rec[0])
                out.append(rec)
        with open(here / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "prompt", "completion", "source"])
            w.writerows(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
