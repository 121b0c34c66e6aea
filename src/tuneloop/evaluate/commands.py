"""CLI for the evaluation stage: `eval`, `report` and the `review` sub-app.

Imports of the stage's logic sit inside the commands so `tuneloop --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop.console import out, print_json
from tuneloop.options import JsonOpt, QuietOpt, SetOpt

LimitOpt = Annotated[int | None, typer.Option(
    "--limit", help="Evaluate at most N test examples (default: eval.max_examples).")]
BootOpt = Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the CIs.")]

review_app = typer.Typer(help="Human review: export outputs for raters, import their ratings.",
                         no_args_is_help=True)


def eval_cmd(
    target: Annotated[Path, typer.Argument(
        metavar="RUN|CONFIG", show_default=False,
        help="A run folder, or tuneloop.yaml or the folder holding it (default: the current "
             "folder; baselines only unless --seeds trains runs).")] = Path("."),
    baselines: Annotated[str | None, typer.Option(
        help="Comma list of zero_shot, few_shot, retrieval (nearest training answer, copied), "
             "rag (base model + top eval.rag_k chunks of eval.corpus), embedding_classifier "
             "(classification), or none. Default: all that apply to the task and config.")] = None,
    seeds: Annotated[int | None, typer.Option(
        help="Fine-tuned runs to evaluate: the run plus retrains with the next seeds; reports "
             "seed variance.")] = None,
    limit: LimitOpt = None,
    generate: Annotated[bool, typer.Option(
        "--generate/--no-generate", help="Classification: also free-generate answers and "
        "report parse failures, on the first eval.generate_sample examples (default 50; "
        "--set eval.generate_sample=null for all).")] = True,
    bootstrap: BootOpt = 1000,
    set_: SetOpt = None, json_: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Score the fine-tuned model and its baselines on the same test examples, with 95% CIs
    and paired tests. Writes eval.json + predictions.jsonl (RUN/eval/)."""
    from tuneloop.evaluate.suite import run_eval

    # Progress goes to stderr, so it stays on with --json (stdout is the JSON alone).
    res = run_eval(target, baselines, seeds, limit, generate, bootstrap, set_, quiet=quiet)
    if json_:
        print_json(res)
        return
    _print_systems(res)


def _print_systems(res: dict) -> None:
    from rich.table import Table

    from tuneloop.evaluate.report import fmt_metric, metric_names

    metrics = metric_names(res)
    t = Table(title=f"{res['task']}: {res['examples']} {res['split']} examples "
                    "(value [95% CI])")
    t.add_column("system")
    for m in metrics:
        t.add_column(m, justify="right")
    t.add_column("s/example", justify="right")
    for name, s in res["systems"].items():
        t.add_row(name, *(fmt_metric(s["metrics"].get(m)) for m in metrics),
                  str(s["cost"].get("latency_s_per_example")))
    out.print(t)
    for c in res["comparisons"]:
        out.print(f"- {c['verdict']}")
    for b, j in (res.get("judge") or {}).get("baselines", {}).items():
        out.print(f"- judge ({res['judge']['model']}): finetuned vs {b} win rate "
                  f"{fmt_metric(j['win_rate'])} over {j['n']} examples, both orders "
                  f"(first-shown answer picked {j['position_bias']} of the time)")
    out.print(f"written: {res['eval_dir']}/eval.json; next: tuneloop report "
              f"{res['eval_dir']}")


def report_cmd(
    run: Annotated[Path, typer.Argument(help="A run folder (with eval/) or an eval folder.")],
    curve: Annotated[Path | None, typer.Option(help="A curve folder to include.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Write the evaluation report: self-contained HTML (plots embedded), Markdown and JSON."""
    from tuneloop.evaluate.report import build_report

    paths = build_report(run, curve)
    if json_:
        print_json(paths)
        return
    for k, v in paths.items():
        out.print(f"{k}: {v}")


@review_app.command("export")
def review_export(
    run: Annotated[Path, typer.Argument(help="A run folder (with eval/) or an eval folder.")],
    n: Annotated[int, typer.Option("-n", help="Examples to sample.")] = 50,
    systems: Annotated[str | None, typer.Option(help="Comma list of systems to include.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Write a blind CSV sample of outputs (rating 1-5 and comment columns) for reviewers."""
    from tuneloop.evaluate.review import export_review

    path = export_review(run, n, systems.split(",") if systems else None, seed)
    out.print(f"written: {path}; fill in 'rating' (1-5), then: tuneloop review import {run} "
              f"{path}")


@review_app.command("import")
def review_import(
    run: Annotated[Path, typer.Argument(help="The run (or eval folder) the CSV came from.")],
    file: Annotated[Path, typer.Argument(help="The filled-in review CSV.")],
    json_: JsonOpt = False,
) -> None:
    """Fold reviewers' ratings into the evaluation (shown by `tuneloop report`)."""
    from tuneloop.evaluate.report import fmt_metric
    from tuneloop.evaluate.review import import_review

    res = import_review(run, file)
    if json_:
        print_json(res)
        return
    for s, v in res["systems"].items():
        out.print(f"{s}: mean rating {fmt_metric(v['mean_rating'])} (n={v['n']})")


def register(app: typer.Typer) -> None:
    """Mount eval, report and review on the main app."""
    app.command("eval")(eval_cmd)
    app.command("report")(report_cmd)
    app.add_typer(review_app, name="review")
