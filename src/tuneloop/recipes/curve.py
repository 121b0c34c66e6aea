"""Learning curve: train on nested subsets of the training set, one run each, and measure.

`data.max_examples=N` takes the first N rows of the train file, so the subsets are nested by
construction (the 100-example run sees the 50 examples of the 50-example run, plus 50 more).
"""

from __future__ import annotations

import time
from pathlib import Path

from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.evaluate.plots import curve_png
from tuneloop.evaluate.suite import run_eval
from tuneloop.files import write_json
from tuneloop.train.recipe import train


def parse_sizes(spec: str) -> list[int]:
    """'50,100,200' -> [50, 100, 200] (sorted, unique, positive)."""
    try:
        sizes = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise TuneloopError(f"--sizes {spec!r}: expected comma-separated integers, e.g. 50,100,200"
                            ) from None
    if not sizes or sizes[0] < 1:
        raise TuneloopError(f"--sizes {spec!r}: sizes must be positive integers")
    return sizes


def run_curve(config: str | Path, sizes: list[int], limit: int | None = None,
              overrides: list[str] | None = None, n_boot: int = 1000,
              free_generation: bool = False, quiet: bool = False) -> dict:
    """One fine-tune per size, each evaluated on the same test examples; writes curve.json/png."""
    base = load_config(config, overrides)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(base.output.dir) / f"curve-{stamp}"
    points = []
    for n in sizes:
        cfg = load_config(config, list(overrides or []) + [
            f"data.max_examples={n}", f"output.name=curve-{stamp}/n{n}"])
        run, summary = train(cfg, quiet=quiet)
        res = run_eval(run, baselines="none", limit=limit, free_generation=free_generation,
                       n_boot=n_boot, quiet=quiet)
        m = res["systems"]["finetuned"]["metrics"]
        points.append({"requested": n, "train_examples": summary["examples"]["train"],
                       "run_dir": str(run), "train_seconds": summary["train_seconds"],
                       "metrics": m})
    primary = res["primary_metric"]
    curve = {"task": base.task.type, "metric": primary, "test_examples": res["examples"],
             "points": points}
    write_json(out / "curve.json", curve)
    (out / "curve.png").write_bytes(curve_png(curve))
    curve["curve_dir"] = str(out)
    return curve
