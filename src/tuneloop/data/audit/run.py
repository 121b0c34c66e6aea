"""Run every check on one file (plus the files it must not leak into) and score the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.config import Config
from tuneloop.console import progress as bar
from tuneloop.data.audit import conflicts, dedup, format_checks, hygiene, labels, leakage, pii
from tuneloop.data.audit.findings import Finding, sort_findings
from tuneloop.data.audit.lengths import length_findings, token_lengths
from tuneloop.data.audit.locate import attach_locations
from tuneloop.data.audit.neighbours import knn
from tuneloop.data.audit.records import AuditSet, read_set
from tuneloop.data.audit.score import recommend, score
from tuneloop.errors import TuneloopError
from tuneloop.models.embed import embed


@dataclass
class AuditReport:
    """What the audit found: the JSON of the issue, plus what the data card draws."""

    path: Path
    records: int
    score: int
    findings: list[Finding]
    recommendation: dict[str, Any]
    lengths: list[int] = field(default_factory=list)
    label_counts: dict[str, int] = field(default_factory=dict)

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "score": self.score,
                "findings": [f.to_dict() for f in self.findings],
                "recommendation": self.recommendation}


def against_files(path: Path, cfg: Config, extra: list[str | Path]) -> list[Path]:
    """--against files plus the config's validation/test files (other than the audited one),
    each file once however it is spelled, so no leak is listed (or penalised) twice."""
    seen = {path.resolve()}
    for p in extra:
        if Path(p).resolve() == path.resolve():
            raise TuneloopError(f"--against {p}: that is the audited file itself; name a "
                                "validation or test file to check for leakage")
    out = []
    named = [(p, True) for p in extra] + [(cfg.data.validation, False), (cfg.data.test, False)]
    for p, required in named:  # a missing --against file is an error (read_set says so)
        if not p or (not required and not Path(p).exists()) or Path(p).resolve() in seen:
            continue
        seen.add(Path(p).resolve())
        out.append(Path(p))
    return out


def run_audit(path: str | Path, cfg: Config, against: list[str | Path] = (),
              tokenizer: Any | None = None, embeddings: bool = True,
              progress: bool = False) -> AuditReport:
    """Audit one data file with the thresholds of `cfg.audit`; never raises on bad records
    (they become findings). `embeddings=False` skips the MiniLM checks (semantic duplicates,
    mislabels, outliers)."""
    opts = cfg.audit
    path = Path(path)
    aset = read_set(path, cfg.data, cfg.task)
    recs = aset.valid
    other_sets = [read_set(p, cfg.data, cfg.task) for p in against_files(path, cfg, against)]
    others = [(o.path, o.valid) for o in other_sets]
    findings = format_checks.format_findings(aset)
    classification = cfg.task.type == "classification" or (
        bool(recs) and all(r.label is not None for r in recs))
    with bar(disable=not progress) as pb:
        task = pb.add_task("audit", total=7)
        emb, other_emb = None, {}
        if embeddings and recs:
            pb.update(task, description="audit: embeddings")
            emb = embed([r.input for r in recs])
            other_emb = {p: embed([o.input for o in rs]) for p, rs in others}
        pb.update(task, advance=1, description="audit: duplicates")
        # One neighbour search serves semantic duplicates (10 nearest) and outliers (5 nearest).
        nn = knn(emb, 10) if emb is not None else None
        findings += dedup.duplicate_findings(
            recs, opts.near_threshold, opts.num_perm, emb, opts.semantic_threshold, nn,
            opts.semantic_min_cosine, opts.semantic_word_overlap)
        findings += conflicts.conflict_findings(recs, opts.near_threshold, opts.num_perm)
        pb.update(task, advance=1, description="audit: leakage")
        for p, rs in others:
            findings += leakage.leakage_findings(recs, rs, p, opts.near_threshold, opts.num_perm,
                                                 emb, other_emb.get(p), opts.leak_semantic_threshold,
                                                 opts.leak_word_overlap)
        pb.update(task, advance=1, description="audit: lengths")
        lengths, unit = token_lengths(recs, tokenizer)
        findings += length_findings(recs, lengths, unit, cfg.model.max_seq_len, classification)
        pb.update(task, advance=1, description="audit: labels")
        if classification:
            findings += labels.distribution_findings(recs, cfg.task.labels, opts.min_per_class)
            if emb is not None:
                findings += labels.mislabel_findings(recs, emb, cfg.seed)
        if emb is not None:
            findings += labels.outlier_findings(recs, emb, nn=nn)
        pb.update(task, advance=1, description="audit: pii and hygiene")
        rows = [(r.id, {k: v for k, v in r.data.items() if k != "id"})
                for r in aset.records if r.data is not None]
        findings += pii.pii_findings(rows)
        findings += _without_decoding_errors(hygiene.hygiene_findings(rows), aset)
        pb.update(task, advance=2, description="audit: done")
    total, drivers = score(findings, len(aset.records))
    findings = sort_findings(findings)
    attach_locations(findings, aset, {str(o.path): {r.id: r.line for r in o.records}
                                      for o in other_sets})
    why = ", ".join(f"{d['check']} -{d['points']:g}" for d in drivers[:5]) or "no problems found"
    if not recs:  # an empty or all-invalid file is not 94% good: nothing can be trained on
        total, why = 0, "no usable records"
    findings.append(Finding("score", "info", [], f"score {total}/100: {why}",
                            {"drivers": drivers}))
    redundant = sum(len(g) - 1 for g in dedup.duplicate_groups(recs, opts.near_threshold,
                                                                opts.num_perm))
    capped = [min(n, cfg.model.max_seq_len) for n in lengths] if unit == "tokens" else lengths
    rec = recommend(len(recs) - redundant, float(np.mean(capped)) if capped else 0.0, unit)
    counts = next((f.evidence["counts"] for f in findings if f.check == "labels.distribution"),
                  {})
    return AuditReport(path, len(aset.records), total, findings, rec, lengths, counts)


def _without_decoding_errors(findings: list[Finding], aset: AuditSet) -> list[Finding]:
    """Hygiene findings less the U+FFFD that came from bytes the reader could not decode: those
    are reported once, with file:line, by `format.encoding`."""
    bad = {r.id for r, _ in aset.encoding}
    out = []
    for f in findings:
        if f.check == "hygiene.invalid_utf8" and bad:
            ids = [i for i in f.ids if i not in bad]
            if not ids:
                continue
            ex = {k: v for k, v in f.evidence.get("examples", {}).items() if k not in bad}
            f = Finding(f.check, f.severity, ids, f"{len(ids)} records contain U+FFFD (text "
                        "that lost its characters before it reached this file)",
                        {**f.evidence, "examples": ex})
        out.append(f)
    return out
