"""CLI for base-model selection: `tuneloop select CONFIG --candidates a,b,PATH`.

Imports of the stage's logic sit inside the commands so `tuneloop --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop.console import err, out, print_json
from tuneloop.options import ConfigArg, JsonOpt, QuietOpt, SetOpt


def select_cmd(
    candidates: Annotated[str, typer.Option(
        help="Comma list of catalog names (`smollm2-135m-instruct`, `gemma3-270m`), model "
             "folders or cached hub ids.")],
    config: ConfigArg = Path("."),
    max_memory: Annotated[str | None, typer.Option(
        help="Drop candidates whose estimated training memory on this machine exceeds this, "
             "e.g. 8GB.")] = None,
    probe_steps: Annotated[int, typer.Option(
        help="Also run N LoRA steps per candidate and report the validation loss (and bits per "
             "byte) drop per step: how fast it adapts.")] = 0,
    weights: Annotated[str | None, typer.Option(
        help="Trade-off, e.g. `quality=0.7,cost=0.3`, or per metric: bpb, zero_shot, few_shot, "
             "adapt, latency, memory, train_time (e.g. `bpb=1,latency=0.2`).")] = None,
    max_examples: Annotated[int, typer.Option(
        help="Measure on at most N validation examples (a seeded sample; 0: all).")] = 200,
    few_shot_examples: Annotated[int, typer.Option(
        help="Few-shot metric on a seeded sample of N of those (k shots make each prompt k+1 "
             "times longer; 0: skip few-shot).")] = 50,
    write: Annotated[bool, typer.Option(
        "--write", help="Put the winner into the config's model.name (backup kept as "
                        ".bak; nothing else in the file changes).")] = False,
    set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Pick a base model by measuring each candidate on **your** validation data.

    Each candidate is measured in its own process: bits per byte of the target given the prompt
    (comparable across tokenizers), zero-shot and few-shot task metric, parameters, load time,
    peak memory, latency per generated token, and the estimated LoRA training time and memory
    here and on an RTX 4090 / A100. A weighted score ranks them; each gets one line saying why.
    A candidate that fails to load is reported and the others still rank.

    Exit codes: 0 when at least one candidate was measured, 1 when none was, 2 on a usage error.

    Example: `tuneloop select examples/pubmedqa --candidates smollm2-135m-instruct,gemma3-270m`
    """
    from tuneloop.select.run import parse_candidates, run_select

    res = run_select(config, parse_candidates(candidates), max_memory, probe_steps, weights,
                     max_examples or None, few_shot_examples, set_, quiet=quiet or json_, write=write)
    if json_:
        print_json(res)
    else:
        print_result(res)
    if res["winner"] is None:
        raise typer.Exit(1)


def _v(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def print_result(res: dict) -> None:
    """The ranked tables, the weights, one explanation line per candidate, and the failures."""
    from rich.table import Table

    ok = [c for c in res["candidates"] if c["status"] == "ok"]
    primary = res["primary_metric"]
    q = Table(title=f"Quality on {res['examples']} validation examples ({res['task']})")
    for col in ("rank", "candidate", "score", "bits/byte [95% CI]", f"zero-shot {primary}",
                f"few-shot {primary} (k={res['few_shot_k']}, n={res['few_shot_examples']})"):
        q.add_column(col, justify="left" if col == "candidate" else "right")
    if res["probe_steps"]:
        q.add_column("probe: bpb drop/step", justify="right")
    for c in ok:
        m, bpb = c["metrics"], c["quality"]["bits_per_byte"]
        row = [str(c["rank"]), c["name"], f"{c['score']:.3f}",
               f"{bpb['value']:.3f} [{bpb['ci'][0]:.3f}, {bpb['ci'][1]:.3f}]",
               _v(m["zero_shot"]), _v(m["few_shot"])]
        if res["probe_steps"]:
            row.append(_v(m["adapt"], ".4f"))
        q.add_row(*row)
    out.print(q)
    cost = Table(title="Cost (this machine; GPUs extrapolated, see assumptions)")
    for col in ("candidate", "params", "load s", "peak RSS GB", "s/token", "train min",
                "train GB", *(f"{g['gpu']} min / GB" for g in (ok[0]["gpu"] if ok else []))):
        cost.add_column(col, justify="left" if col == "candidate" else "right")
    for c in ok:
        t = c["train"]
        cost.add_row(c["name"], f"{c['params'] / 1e6:.1f}M", _v(c["load_s"], ".2f"),
                     _v(c["peak_rss_gb"], ".2f"), _v(c["latency"]["s_per_token"], ".4f"),
                     _v(t["estimated_train_minutes"], ".1f"), _v(t["estimated_peak_memory_gb"], ".2f"),
                     *(f"{g['estimated_train_minutes']:.2g} / {g['estimated_memory_gb']:.1f}"
                       + ("" if g["fits"] else " (no fit)") for g in c["gpu"]))
    if ok:
        out.print(cost)
    out.print("weights: " + ", ".join(f"{k}={w:.2f}" for k, w in res["weights"].items()))
    for c in ok:
        out.print(f"{c['rank']}. {c['name']}: {c['explanation']}", highlight=False)
    for c in res["candidates"]:
        if c["status"] != "ok":
            stage = f" (at {c['failed_stage']})" if c.get("failed_stage") else ""
            out.print(f"[{'yellow' if c['status'] == 'dropped' else 'red'}]{c['status']}: "
                      f"{c['name']}{stage}: {c['error']}[/]", highlight=False)
    if res["winner"]:
        out.print(f"winner: [bold]{res['winner']}[/bold] ({res['seconds']:.0f} s)")
    else:
        err.print("no candidate could be measured", style="red")
    if res.get("written"):
        w = res["written"]
        out.print(f"wrote model.name: {w['new']} into {w['file']} (was {w['old']}; backup "
                  f"{w['backup']})")
    for a in res["assumptions"]:
        out.print(f"[dim]- {a}[/dim]", highlight=False)


def register(app: typer.Typer) -> None:
    """Mount `tuneloop select`."""
    app.command("select")(select_cmd)
