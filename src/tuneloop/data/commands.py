"""`tuneloop data audit | fix | split`: parse, call one function, print.

Imports of the stage's logic sit inside the commands so `tuneloop --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop.config import Config, load_config, parse_config
from tuneloop.errors import TuneloopError
from tuneloop.options import DEFAULT_CONFIG, ConfigOpt, SetOpt

data_app = typer.Typer(no_args_is_help=True, help="Audit, clean and split a data set before "
                       "any compute is spent.")

DataArg = Annotated[Path | None, typer.Argument(
    help="Data file (.jsonl/.csv/.tsv/.parquet); default: data.train of --config.")]
NearOpt = Annotated[float | None, typer.Option(
    help="Word 5-gram Jaccard for near duplicates (default: audit.near_threshold, 0.7).")]


def _resolve(data: Path | None, config: Path | None, sets: list[str] | None,
             ) -> tuple[Path, Config]:
    """The data path and a Config: from the file, or defaults when there is no config."""
    if config is None and data is None and (DEFAULT_CONFIG / "tuneloop.yaml").exists():
        config = DEFAULT_CONFIG
    if config is not None:
        cfg = load_config(config, sets)
    elif data is not None:
        cfg = parse_config({"data": {"train": str(data)}}, "<command line>", Path.cwd(), sets)
    else:
        raise TuneloopError("give a DATA file or --config (whose data.train is audited)")
    return (Path(data) if data is not None else Path(cfg.data.train)), cfg


def _audit_sets(sets: list[str] | None, **flags: float | None) -> list[str]:
    """The threshold flags as `--set audit.KEY=VALUE` overrides: the config holds every threshold."""
    return list(sets or []) + [f"audit.{k}={v}" for k, v in flags.items() if v is not None]


def _tokenizer(cfg: Config) -> Any | None:
    from tuneloop.console import err
    from tuneloop.models.load import load_tokenizer_for

    try:
        return load_tokenizer_for(cfg.model.name)[1]
    except (TuneloopError, OSError) as e:
        err.print(f"warning: no tokenizer for {cfg.model.name!r} ({e}); lengths are in words",
                  highlight=False, markup=False)
        return None


def _write_card(path: Path, text: str, flag: str) -> None:
    from tuneloop.files import atomic_write_text

    if path.is_dir():
        raise TuneloopError(f"{flag} {path}: is a folder; give a file path, e.g. "
                            f"{path / 'card.html' if flag == '--html' else path / 'card.md'}")
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise TuneloopError(f"{flag} {path}: cannot write it ({e.strerror or e})") from None


@data_app.command()
def audit(
    data: DataArg = None, config: ConfigOpt = None, sets: SetOpt = None,
    against: Annotated[list[Path] | None, typer.Option(
        help="Also check leakage into this file (repeatable).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON report only.")] = False,
    html: Annotated[Path | None, typer.Option(help="Write the HTML data card here.")] = None,
    md: Annotated[Path | None, typer.Option(help="Write the Markdown data card here.")] = None,
    near_threshold: NearOpt = None,
    semantic_threshold: Annotated[float | None, typer.Option(
        help="MiniLM cosine for paraphrase duplicates (default: audit.semantic_threshold, 0.95).")]
    = None,
    leak_threshold: Annotated[float | None, typer.Option(
        help="MiniLM cosine to the nearest eval/--against record for a reworded leak (it must "
             "also share --leak-overlap of its words; default: audit.leak_semantic_threshold, "
             "0.75).")] = None,
    leak_overlap: Annotated[float | None, typer.Option(
        help="Word-set Jaccard a reworded leak must share with that record (default: "
             "audit.leak_word_overlap, 0.6).")] = None,
    embeddings: Annotated[bool, typer.Option(
        help="MiniLM checks: semantic duplicates, mislabels, outliers.")] = True,
    model: Annotated[bool, typer.Option(
        help="Measure lengths with the model's tokenizer (else in words).")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Show what is wrong with a data set; exit 1 when any error-severity finding exists."""
    from tuneloop.console import out, print_json
    from tuneloop.data.audit import card, run_audit

    path, cfg = _resolve(data, config, _audit_sets(
        sets, near_threshold=near_threshold, semantic_threshold=semantic_threshold,
        leak_semantic_threshold=leak_threshold, leak_word_overlap=leak_overlap))
    tok = _tokenizer(cfg) if model else None
    report = run_audit(path, cfg, against or [], tok, embeddings, progress=not (quiet or json_out))
    if html:
        _write_card(html, card.to_html(report), "--html")
    if md:
        _write_card(md, card.to_markdown(report), "--md")
    if json_out:
        print_json(report.to_dict())
    elif not quiet:
        from rich.markdown import Markdown

        out.print(Markdown(card.to_markdown(report)))
    if report.has_errors:
        raise typer.Exit(1)


@data_app.command()
def fix(
    data: DataArg = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Cleaned copy to write.")] = ...,
    config: ConfigOpt = None, sets: SetOpt = None,
    redact: Annotated[bool, typer.Option(help="Mask PII (e-mails, cards, ...).")] = False,
    near_threshold: NearOpt = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write a cleaned copy and a log of every change; the input is never touched."""
    from tuneloop.console import out, print_json
    from tuneloop.data.fix import fix_file

    path, cfg = _resolve(data, config, _audit_sets(sets, near_threshold=near_threshold))
    r = fix_file(path, output, cfg, redact)
    summary = {"records": r.records, "kept": r.kept, "dropped": r.dropped,
               "redacted": r.redacted, "output": str(r.out), "log": str(r.log)}
    if json_out:
        print_json(summary)
    else:
        out.print(f"{r.kept} of {r.records} records kept, {r.dropped} dropped, {r.redacted} "
                  f"redacted -> {r.out} (changes: {r.log})", highlight=False)


@data_app.command()
def split(
    data: DataArg = None, config: ConfigOpt = None, sets: SetOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Folder for train/validation/test; default <name>_splits.")] = None,
    fractions: Annotated[str, typer.Option(help="train,validation,test shares.")] = "0.8,0.1,0.1",
    seed: Annotated[int | None, typer.Option(help="Default: the config's seed.")] = None,
    near_threshold: NearOpt = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Stratified 3-way split that keeps each near-duplicate cluster inside one split."""
    from tuneloop.console import out, print_json
    from tuneloop.data.audit.records import read_set
    from tuneloop.data.fix import write_records
    from tuneloop.data.split import grouped_split

    path, cfg = _resolve(data, config, _audit_sets(sets, near_threshold=near_threshold))
    try:
        fr = tuple(float(x) for x in fractions.split(","))
    except ValueError:
        fr = ()
    if len(fr) != 3 or abs(sum(fr) - 1) > 1e-6 or min(fr) < 0:
        raise TuneloopError(f"--fractions {fractions!r}: give three shares that sum to 1, "
                            "e.g. 0.8,0.1,0.1")
    from tuneloop.data.audit.dedup import duplicate_groups

    recs = read_set(path, cfg.data, cfg.task).valid
    if not recs:
        raise TuneloopError(f"{path}: no valid records to split; run `tuneloop data audit`")
    groups = duplicate_groups(recs, cfg.audit.near_threshold, cfg.audit.num_perm)
    by_example = {id(r.example): r for r in recs}
    parts = grouped_split([r.example for r in recs], fr, cfg.seed if seed is None else seed,
                          groups)
    folder = output or Path(f"{path.stem}_splits")
    counts = {}
    for name, exs in zip(("train", "validation", "test"), parts, strict=True):
        write_records([by_example[id(e)].data or {} for e in exs], folder / f"{name}{path.suffix}")
        counts[name] = len(exs)
    result = {**counts, "clusters_kept_together": len(groups), "output": str(folder)}
    if json_out:
        print_json(result)
    else:
        out.print(f"train {counts['train']}, validation {counts['validation']}, test "
                  f"{counts['test']} ({len(groups)} duplicate clusters kept whole) -> {folder}",
                  highlight=False)


def register(app: typer.Typer) -> None:
    """Mount `tuneloop data ...` on the main CLI."""
    app.add_typer(data_app, name="data")
