"""One turn of the loop after shipping: monitor; on drift, retrain from the champion and gate."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneloop.config import Config
from tuneloop.files import write_json
from tuneloop.monitor.check import run_monitor
from tuneloop.monitor.report import write_html
from tuneloop.retrain.gate import run_gate
from tuneloop.retrain.retrain import retrain

Report = Callable[[str, dict[str, Any]], None]


def run_loop(cfg: Config, window: str | None = None, force: bool = False, html: Path | None = None,
             quiet: bool = True, report: Report = lambda stage, res: None) -> dict[str, Any]:
    """Monitor, then (on drift or `force`) retrain and gate; the record goes to OUTPUT_DIR/loop/.

    `report(stage, result)` is called as each stage ends ("monitor", "gate"), so a terminal
    shows the drift verdict before the minutes of retraining.
    """
    res: dict[str, Any] = {"monitor": run_monitor(cfg, window, quiet=quiet)}
    if html:
        write_html(res["monitor"], html)
    report("monitor", res["monitor"])
    if res["monitor"]["drift"] or force:
        res["retrain"] = retrain(cfg, quiet=quiet)
        res["gate"] = run_gate(cfg, quiet=quiet)
        report("gate", res["gate"])
    res["action"] = ("promoted" if res.get("gate", {}).get("promoted") else
                     "kept_champion" if "gate" in res else "none")
    log = Path(cfg.output.dir) / "loop" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(log, res)
    res["log"] = str(log)
    return res
