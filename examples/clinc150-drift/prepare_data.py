"""Cut the demo's small slices out of CLINC150 (CC BY 3.0, Larson et al. 2019).

Run once (the outputs are committed): `python prepare_data.py [/path/to/clinc150]`. Seeded, so
the same source files give the same slices. OLD intents (banking) are what the champion is
trained on; NEW intents (travel) are the drift that arrives as traffic after it ships.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

OLD = ["freeze_account", "pin_change", "pay_bill", "transfer", "report_fraud"]  # banking
NEW = ["book_flight", "lost_luggage", "international_visa", "plug_type", "car_rental"]  # travel
HERE = Path(__file__).parent


def pick(rows: list, intents: list[str], k: int, seed: int) -> list[dict]:
    """k rows per intent, shuffled with a fixed seed."""
    out = []
    for intent in intents:
        texts = sorted(t for t, lab in rows if lab == intent)
        random.Random(f"{seed}-{intent}").shuffle(texts)
        out += [{"text": t, "label": intent} for t in texts[:k]]
    random.Random(seed).shuffle(out)
    return out


def write(name: str, rows: list[dict]) -> None:
    with open(HERE / "data" / name, "w") as f:
        for i, r in enumerate(rows, 1):
            f.write(json.dumps({"id": f"{name.split('.')[0]}-{i}"} | r) + "\n")
    print(f"data/{name}: {len(rows)} rows")


def main(src: Path) -> None:
    d = json.loads((src / "data_full.json").read_text())
    (HERE / "data").mkdir(exist_ok=True)
    write("train.jsonl", pick(d["train"], OLD, 20, 0))  # the champion's training data
    write("test.jsonl", pick(d["test"], OLD, 10, 1))  # frozen, hash-pinned eval set
    write("traffic_old.jsonl", pick(d["val"], OLD, 8, 2))  # traffic like the training data
    write("traffic_new.jsonl", pick(d["train"], NEW, 20, 3))  # drifted traffic (+ feedback labels)


if __name__ == "__main__":
    # Default: ../shared/data/clinc150 beside the repository.
    default = Path(__file__).resolve().parents[3] / "shared" / "data" / "clinc150"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
