"""Inject known faults into real data and print precision/recall per audit check.

Faults: exact duplicates (case/space changed), paraphrase-level near duplicates, label flips,
PII (six kinds), train/test leaks (exact and perturbed), over-long records.
The audit's thresholds were chosen on banking77; --dataset clinc150 (or sentiment) runs the same
injection on data they were not chosen on.
Run: .venv/bin/python benchmarks/audit_quality.py [--dataset banking77] [--n 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _banking77 import DATA, banking77  # noqa: E402

from tuneloop.config import parse_config  # noqa: E402
from tuneloop.data.audit import run_audit  # noqa: E402
from tuneloop.data.audit.text import words  # noqa: E402
from tuneloop.models.load import load_tokenizer, resolve_model  # noqa: E402

# Synthetic PII only (documentation test numbers and reserved ranges), never real people.
PII = {"email": "my email is {name}@example.com",
       "phone": "call me on +44 20 7946 {d4}",
       "credit_card": "my card number is 4539 1488 0343 6467",
       "iban": "send it to GB82 WEST 1234 5698 7654 32",
       "ip_address": "my ip is 203.0.113.{d2}",
       "ssn": "my ssn is 123-45-{d4}"}


def paraphrase(text: str, rng: random.Random) -> str:
    """A light rewrite: polite framing, case, punctuation and a word or two changed."""
    swaps = {"card": "debit card", "money": "funds", "account": "bank account",
             "my": "my own", "can": "could", "how": "how exactly", "why": "for what reason"}
    words = text.rstrip("?.!").split()
    hits = [i for i, w in enumerate(words) if w.lower() in swaps]
    if hits:
        i = rng.choice(hits)
        words[i] = swaps[words[i].lower()]
    out = " ".join(words)
    return rng.choice(["Hi, {}?", "{} please", "Hello! {}", "{}, thanks"]).format(out)


def edit(text: str, rng: random.Random) -> str:
    """A copy-paste-level change: one word appended, or the final punctuation changed."""
    t = text.rstrip("?.! ")
    return rng.choice([t + " please?", t + "!!", t + " now?", "so " + t + "?"])


def pr(found: set[str], truth: set[str], allowed: set[str] | None = None) -> str:
    """Recall over truth; precision over flagged ids (those in `allowed` also count as right)."""
    ok = truth | (allowed or set())
    rec = len(found & truth) / len(truth) if truth else float("nan")
    prec = len(found & ok) / len(found) if found else float("nan")
    return f"recall {rec:.2f}  precision {prec:.2f}  (flagged {len(found)}, injected {len(truth)})"


def clinc150(split: str) -> list[tuple[str, str]]:
    """(text, intent) rows of CLINC150's full in-scope set (CC BY 3.0); see its SOURCE.md."""
    path = DATA / "clinc150" / "data_full.json"
    if not path.exists():
        raise SystemExit(f"{path} not found; set TUNELOOP_DATA to the shared data folder")
    return [(t.strip(), lab) for t, lab in json.loads(path.read_text(encoding="utf-8"))[split]]


def sentiment(split: str) -> list[tuple[str, str]]:
    """(sentence, 0/1) rows of the UCI sentiment labelled sentences (amazon, imdb, yelp); rows
    are split 80/20 by a hash of the text, so both splits are fixed."""
    import zlib

    rows = []
    for f in sorted((DATA / "sentiment_labelled_sentences").glob("*_labelled.txt")):
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            text, _, lab = line.rpartition("\t")
            if text.strip() and lab.strip() in ("0", "1"):
                rows.append((text.strip(), lab.strip()))
    test = [r for r in rows if zlib.crc32(r[0].encode()) % 5 == 0]
    return test if split == "test" else [r for r in rows if zlib.crc32(r[0].encode()) % 5]


SETS = {"banking77": banking77, "clinc150": clinc150, "sentiment": sentiment}


def build(n: int, seed: int, dataset: str = "banking77") -> dict:
    """Real rows with injected faults, the test split, and the ids of every injected fault."""
    rng = random.Random(seed)
    load = SETS[dataset]
    train = load("train")
    rng.shuffle(train)
    test = load("test")
    rng.shuffle(test)
    test = test[:300]
    labels = sorted({lab for _, lab in train})
    rows = [{"id": f"r{i}", "text": t, "label": lab} for i, (t, lab) in enumerate(train[:n])]
    base = list(rows)
    truth: dict[str, set[str]] = {k: set() for k in ("exact", "near_edit", "near_para", "flip",
                                                     "leak_exact", "leak_edit", "leak_para",
                                                     "long")}
    # Rows that get mutated (flips, PII, length) are drawn first and never used as sources of
    # copies, so an injected copy stays an exact copy of what is in the file.
    order = rng.sample(base, len(base))
    flips, pii_rows, longs, sources = order[:30], order[30:90], order[90:100], order[100:]
    originals: set[str] = set()
    source_of: dict[str, str] = {}  # injected copy id -> the id of the record it copies
    for k in range(30):
        src = sources[k]
        rows.append({"id": f"exact{k}", "text": "  " + src["text"].upper() + " ",
                     "label": src["label"]})
        truth["exact"].add(f"exact{k}")
    for k in range(30):
        src = sources[30 + k]
        kind = "near_edit" if k % 2 == 0 else "near_para"
        text = edit(src["text"], rng) if kind == "near_edit" else paraphrase(src["text"], rng)
        rows.append({"id": f"{kind}{k}", "text": text, "label": src["label"]})
        truth[kind].add(f"{kind}{k}")
        originals.add(src["id"])
        source_of[f"{kind}{k}"] = src["id"]
    for src in flips:
        src["label"] = rng.choice([x for x in labels if x != src["label"]])
        truth["flip"].add(src["id"])
    pii_truth: dict[str, set[str]] = {k: set() for k in PII}
    for k, src in enumerate(pii_rows):
        kind = list(PII)[k % len(PII)]
        src["text"] += " " + PII[kind].format(name=f"user{k}", d4=f"{1000 + k}", d2=k % 250)
        pii_truth[kind].add(src["id"])
    for k, (t, lab) in enumerate(test[:30]):
        kind = ("leak_exact", "leak_edit", "leak_para")[k % 3]
        text = {"leak_exact": t.lower(), "leak_edit": edit(t, rng),
                "leak_para": paraphrase(t, rng)}[kind]
        rows.append({"id": f"{kind}{k}", "text": text, "label": lab})
        truth[kind].add(f"{kind}{k}")
    for src in longs:
        src["text"] = " ".join([src["text"]] * 80)
        truth["long"].add(src["id"])
    rng.shuffle(rows)
    return {"rows": rows, "test": test, "labels": labels, "truth": truth, "pii": pii_truth,
            "originals": originals, "source_of": source_of}


def word_distance(a: str, b: str) -> int:
    """Word-level edit distance of two texts, case and punctuation ignored."""
    x, y = words(a), words(b)
    prev = list(range(len(y) + 1))
    for i, wa in enumerate(x, 1):
        cur = [i]
        for j, wb in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wa != wb)))
        prev = cur
    return prev[-1]


def genuine_copies(report, rows: list[dict], expected: set[str]) -> set[str]:
    """Real records the near check flagged that are within one word of a cluster partner: the
    same kind of copy the benchmark injects, already present in the real data (printed for review)."""
    text = {r["id"]: r["text"] for r in rows}
    out = set()
    for f in report.findings:
        if f.check != "duplicates.near":
            continue
        for c in f.evidence["clusters"]:
            for a in c["ids"]:
                if a in expected or a.startswith(("exact", "leak")):
                    continue
                close = [b for b in c["ids"] if b != a and word_distance(text[a], text[b]) <= 1]
                if close:
                    out.add(a)
                    print(f"    genuine: {text[a][:50]!r} ~ {text[close[0]][:50]!r}")
    return out


def review_semantic(report, rows: list[dict], injected: set[str], limit: int = 20) -> None:
    """Print the real records in clusters the word-overlap rule made, so a reader can judge whether
    the strict precision above counts real duplicates as wrong."""
    text = {r["id"]: r["text"] for r in rows}
    shown = 0
    for f in report.findings:
        if f.check != "duplicates.semantic":
            continue
        for c in f.evidence["clusters"]:
            ids = [i for i in c["ids"] if i not in injected and not i.startswith("leak")]
            if len(ids) >= 2 and shown < limit and c.get("rule") == "cosine+words":
                shown += 1
                print(f"    real: {text[ids[0]][:50]!r} ~ {text[ids[1]][:50]!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", choices=sorted(SETS), default="banking77",
                    help="real data to inject faults into (thresholds were chosen on banking77)")
    args = ap.parse_args()
    b = build(args.n, args.seed, args.dataset)
    rows, test, labels, truth = b["rows"], b["test"], b["labels"], b["truth"]
    pii_truth, originals = b["pii"], b["originals"]
    with tempfile.TemporaryDirectory() as d:
        tr, te = Path(d) / "train.jsonl", Path(d) / "test.jsonl"
        tr.write_text("".join(json.dumps(r) + "\n" for r in rows))
        te.write_text("".join(json.dumps({"id": f"t{i}", "text": t, "label": lab}) + "\n"
                              for i, (t, lab) in enumerate(test)))
        cfg = parse_config({"data": {"train": str(tr), "test": str(te)},
                            "task": {"type": "classification", "labels": labels},
                            "model": {"max_seq_len": 1024}})
        tok = load_tokenizer(resolve_model("smollm2-135m-instruct"))
        report = run_audit(tr, cfg, tokenizer=tok)
    flagged: dict[str, set[str]] = {}
    for f in report.findings:
        flagged.setdefault(f.check, set()).update(f.ids)

    def union(*checks: str) -> set[str]:
        return set().union(*(flagged.get(c, set()) for c in checks))

    print(f"{args.dataset}: {args.n} real records + injected faults = {len(rows)} records, "
          f"seed {args.seed}, score {report.score}")
    exact_found = {i for i in union("duplicates.exact") if i.startswith("exact")}
    print(f"exact duplicates   : {pr(exact_found, truth['exact'])}")
    near_truth = truth["near_edit"] | truth["near_para"]
    near = union("duplicates.near", "duplicates.semantic") - truth["exact"]
    # An original and its copy are flagged together; both count as correct for precision, and so
    # does an injected paraphrase copy the near check also catches (it is an injected duplicate).
    near_ok = originals | truth["near_para"]
    print(f"near, light edits  : {pr(union('duplicates.near'), truth['near_edit'], near_ok)}")
    genuine = genuine_copies(report, rows, truth["near_edit"] | near_ok)
    print(f"  + genuine copies : {pr(union('duplicates.near'), truth['near_edit'], near_ok | genuine)}"
          f" (counting {len(genuine)} real records one word or less from another as right)")
    print(f"near+semantic edits: {pr(near & truth['near_edit'], truth['near_edit'])}")
    print(f"near+semantic paras: {pr(near & truth['near_para'], truth['near_para'])}")
    print(f"near+semantic all  : {pr(near, near_truth, originals)}")
    # Rows given PII or repeated text share an injected sentence with each other; those flags come
    # from the injection, not the real data, so this line leaves them out of precision.
    mutated = set().union(*pii_truth.values()) | truth["long"]
    print(f"  - mutated rows   : {pr(near - mutated, near_truth, originals)} (leaving out "
          f"{len(near & mutated)} flags of rows that got the same injected PII or repeat)")
    sem_only = union("duplicates.semantic") - mutated
    print(f"semantic check     : {pr(sem_only, near_truth, originals)} (the MiniLM rule alone)")
    worded = {i for f in report.findings if f.check == "duplicates.semantic"
              for c in f.evidence["clusters"] if c.get("rule") == "cosine+words" for i in c["ids"]}
    print(f"  cosine+words     : {pr(worded - mutated, near_truth, originals)} (clusters that "
          "needed the word-overlap rule)")
    review_semantic(report, rows, near_truth | originals | mutated | truth["exact"])
    print(f"label flips        : {pr(union('labels.mislabel'), truth['flip'])}")
    leak_truth = truth["leak_exact"] | truth["leak_edit"] | truth["leak_para"]
    leak = union("leakage.exact", "leakage.near", "leakage.ngram")
    sem = union("leakage.semantic")
    for kind in ("leak_exact", "leak_edit", "leak_para"):
        print(f"leakage {kind[5:]:<10} : {pr(leak & truth[kind], truth[kind])} "
              f"(+semantic: recall {len((leak | sem) & truth[kind]) / len(truth[kind]):.2f})")
    print(f"leakage exact/near : {pr(leak, leak_truth)}")
    print(f"leakage +semantic  : {pr(leak | sem, leak_truth)}")
    # Strict precision counts every real train/test pair as wrong, yet banking77's splits share
    # many reworded questions. Show how many extra flags pair records of the same intent, and a
    # few of them, so a reader can judge whether they are real leaks.
    labels_of = {r["id"]: r["label"] for r in rows}
    test_of = {f"t{i}": (t, lab) for i, (t, lab) in enumerate(test)}
    extra = [p for f in report.findings if f.check == "leakage.semantic"
             for p in f.evidence["pairs"] if p["id"] not in leak_truth]
    same = sum(labels_of[p["id"]] == test_of[p["other_id"]][1] for p in extra)
    print(f"semantic extra     : {len(extra)} pairs from the real data, {same} of the same intent")
    text_of = {r["id"]: r["text"] for r in rows}
    for p in extra[:5]:
        print(f"    {p['cosine']:.2f}/{p['word_overlap']:.2f} {text_of[p['id']][:50]!r} ~ "
              f"{test_of[p['other_id']][0][:50]!r}")
    for kind, ids in pii_truth.items():
        print(f"pii {kind:<15}: {pr(union(f'pii.{kind}'), ids)}")
    print(f"over-long          : {pr(union('lengths.truncated'), truth['long'])}")


if __name__ == "__main__":
    main()
