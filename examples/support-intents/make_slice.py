"""Rebuild this example's data slice from banking77 (run from the repo root).

    python examples/support-intents/make_slice.py /path/to/shared/data/banking77

Takes 10 intents, the first 30 training rows of each (file order) and the first 20 test rows
of each, so the slice is reproducible byte for byte.
"""

import csv
import sys
from pathlib import Path

INTENTS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed",
           "cash_withdrawal_charge", "pin_blocked", "declined_card_payment", "change_pin",
           "transfer_not_received_by_recipient", "request_refund"]


def take(src: Path, dst: Path, per_label: int) -> None:
    counts = dict.fromkeys(INTENTS, 0)
    with open(src, newline="", encoding="utf-8") as f, open(dst, "w", newline="",
                                                             encoding="utf-8") as g:
        w = csv.writer(g)
        w.writerow(["text", "label"])
        for row in csv.DictReader(f):
            lab = row["category"]
            if lab in counts and counts[lab] < per_label:
                counts[lab] += 1
                w.writerow([" ".join(row["text"].split()), lab])


if __name__ == "__main__":
    root = Path(sys.argv[1])
    here = Path(__file__).parent
    take(root / "train.csv", here / "train.csv", 30)
    take(root / "test.csv", here / "test.csv", 20)
