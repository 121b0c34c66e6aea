"""A model card (README.md with Hugging Face YAML front matter) for a run or a registry version.

It sits in the registry stage so that both `tuneloop registry add` and `tuneloop export` (a
later stage) can write it. It only reads what the folder already holds: config.yaml,
summary.json, data.json, eval/eval.json (or eval.json in a registry version), an optional
audit.json, and provenance.json; nothing is measured here. Light imports only (the CLI
imports the registry at start).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

# Hub ids of the catalog models (the card's base_model must name a model others can find).
BASE_IDS = {"smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
            "gemma3-270m": ("google/gemma-3-270m", "gemma")}
LOWER_IS_BETTER = {"unsupported_rate", "not_in_source_rate", "parse_failure_rate",
                   "perplexity", "bits_per_byte"}
SYSTEM_ORDER = ("finetuned", "finetuned_rag", "zero_shot", "few_shot", "retrieval", "rag",
                "embedding_classifier")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def read_folder(folder: str | Path) -> dict[str, Any]:
    """Everything the card draws on, from a run folder or a registry version folder."""
    f = Path(folder)
    cfg = yaml.safe_load((f / "config.yaml").read_text(encoding="utf-8")) \
        if (f / "config.yaml").is_file() else {}
    data = _json(f / "data.json")
    audit = _json(f / "audit.json") or data.get("audit") or {}
    return {"name": f.name, "config": cfg or {}, "summary": _json(f / "summary.json"),
            "data": data, "audit": audit,
            "eval": _json(f / "eval" / "eval.json") or _json(f / "eval.json"),
            "provenance": _json(f / "provenance.json"),
            "kind": "model" if (f / "model").is_dir() else "adapter"}


def _fmt(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "–"
    ci = m.get("ci") or []
    if len(ci) == 2 and None not in ci:
        return f"{m['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{m['value']:.3f}"


def _eval_section(ev: dict) -> list[str]:
    if not ev.get("systems"):
        return ["Not evaluated yet: run `tuneloop eval RUN` and export again to fill this table."]
    systems = ev["systems"]
    names = [s for s in SYSTEM_ORDER if s in systems] + [s for s in systems if s not in SYSTEM_ORDER]
    primary = ev.get("primary_metric")
    metrics: list[str] = [primary] if primary else []
    for s in names:
        metrics += [m for m in systems[s].get("metrics", {}) if m not in metrics]
    boot = ev.get("bootstrap") or {}
    lines = [f"{ev.get('examples', '?')} {ev.get('split', 'test')} examples, task "
             f"`{ev.get('task', '?')}`; each cell is the value and its "
             f"{int(100 * boot.get('level', 0.95))}% bootstrap interval "
             f"({boot.get('resamples', '?')} resamples). The fine-tuned model is compared with "
             "what a user could run instead (the base model prompted zero-/few-shot, retrieval, "
             "an embedding classifier).", "",
             "| system | " + " | ".join(metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for s in names:
        ms = systems[s].get("metrics", {})
        lines.append(f"| {s} | " + " | ".join(_fmt(ms.get(m)) for m in metrics) + " |")
    verdicts = [c["verdict"] for c in ev.get("comparisons", []) if c.get("verdict")]
    if verdicts:
        lines += ["", "Paired tests on the same examples:", ""] + [f"- {v}" for v in verdicts]
    return lines


def _baselines_better(ev: dict) -> list[str]:
    """Comparisons in which a baseline beat the fine-tuned model significantly."""
    out = []
    for c in ev.get("comparisons", []):
        d, p = c.get("diff"), c.get("p_value")
        if c.get("a") != "finetuned" or d is None or p is None or p >= 0.05:
            continue
        if (d < 0) != (c.get("metric") in LOWER_IS_BETTER):
            out.append(f"{c['b']} did better than the fine-tuned model on {c['metric']} "
                       f"({c.get('verdict', '')}); consider it before deploying.")
    return out


def _data_section(info: dict) -> list[str]:
    data, audit = info["data"], info["audit"]
    counts = data.get("counts") or info["summary"].get("examples") or {}
    lines = []
    if counts:
        lines.append("- records: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if data.get("format"):
        lines.append(f"- format: {data['format']}")
    train_tokens = (data.get("tokens") or {}).get("train") or {}
    if train_tokens:
        lines.append(f"- training tokens: {train_tokens.get('tokens')} "
                     f"({train_tokens.get('target_tokens')} trained on), mean length "
                     f"{train_tokens.get('length_mean')}, truncated {train_tokens.get('truncated')}")
    fp = (data.get("fingerprint") or {}).get("train")
    if fp:
        lines.append(f"- training data fingerprint: `{fp[:16]}`")
    if audit:
        left = [f for f in audit.get("findings", []) if f.get("severity") in ("error", "warning")]
        lines.append(f"- audit score: {audit.get('score', '?')}/100; findings left: {len(left)}"
                     + (" (" + "; ".join(str(f.get("message", f.get("check", "")))[:80]
                                         for f in left[:5]) + ")" if left else ""))
    else:
        lines.append("- audit: none recorded with this run (`tuneloop data audit --json` "
                     "scores the data and lists its findings)")
    return lines


def _training_section(cfg: dict, summary: dict) -> list[str]:
    m, t = cfg.get("method") or {}, cfg.get("train") or {}
    method = m.get("name", "?")
    knobs = {"lora": ("r", "alpha", "dropout", "target_modules"),
             "dora": ("r", "alpha", "dropout", "target_modules")}.get(method, ())
    lines = [f"- method: {method}" + (" (" + ", ".join(f"{k}={m.get(k)}" for k in knobs) + ")"
                                      if knobs else "")]
    lines.append("- optimiser: AdamW, learning rate " + str(t.get("learning_rate")) + ", batch "
                 f"{t.get('batch_size')} x {t.get('grad_accum', 1)} accumulation, epochs "
                 f"{t.get('epochs')}, warm-up {t.get('warmup_ratio')}, seed {cfg.get('seed', 0)}")
    if summary:
        lines.append(f"- ran {summary.get('steps')} steps in {summary.get('train_seconds')} s on "
                     f"{summary.get('device')} ({summary.get('precision')}); validation loss "
                     f"{summary.get('val_loss')}, best {summary.get('best_val_loss')} at step "
                     f"{summary.get('best_step')}")
    return lines


def model_card(folder: str | Path, library: str | None = None, title: str | None = None,
               extra_tags: list[str] | None = None, usage: list[str] | None = None,
               notes: list[str] | None = None) -> str:
    """README.md text for the run or registry version in `folder`.

    library: "peft" (an adapter folder) or "transformers" (merged or fully fine-tuned weights,
    also GGUF, which transformers reads with gguf_file=); default: by what the folder holds.
    title: the heading (default: the folder's name); usage: Markdown lines for "How to run"; notes: extra
    known limits (e.g. an export's parity figures).
    """
    info = read_folder(folder)
    library = library or ("transformers" if info["kind"] == "model" else "peft")
    cfg, ev, summary = info["config"], info["eval"], info["summary"]
    task, model = cfg.get("task") or {}, cfg.get("model") or {}
    base_name = str(model.get("name") or info["provenance"].get("base_model") or "unknown")
    # A local folder is named by its folder name: the card must not publish a machine's paths.
    base_id, licence = BASE_IDS.get(base_name, (Path(base_name).name if base_name.startswith(
        ("/", "~", ".")) else base_name, "other"))
    method = (cfg.get("method") or {}).get("name", "lora")
    data_cfg = cfg.get("data") or {}
    data_files = [Path(data_cfg[k]).name for k in ("train", "validation", "test") if data_cfg.get(k)]
    metrics = []
    for s in (ev.get("systems") or {}).values():
        metrics += [m for m in s.get("metrics", {}) if m not in metrics]
    front = {"base_model": base_id, "library_name": library, "license": licence,
             "tags": ["tuneloop", method, task.get("type", "chat"), *(extra_tags or [])],
             "datasets": data_files, "metrics": metrics, "pipeline_tag": "text-generation"}
    name = title or info["name"]
    labels = task.get("labels") or []
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {name}", "",
             f"`{base_id}` fine-tuned with {method} by [tuneloop](https://pypi.org/project/tuneloop/) "
             f"for a `{task.get('type', 'chat')}` task.", "",
             "## Intended use", ""]
    if labels:
        lines.append(f"- Classifies a message into one of {len(labels)} labels: "
                     + ", ".join(f"`{x}`" for x in labels) + ".")
    if task.get("system_prompt"):
        lines.append(f"- System prompt used in training: \"{task['system_prompt']}\" (send it too).")
    if task.get("prompt_template"):
        lines.append(f"- User turn format: `{task['prompt_template']!s}`.")
    lines += ["- Prompt it with the chat template it was trained with (it travels in the "
              "tokenizer, the GGUF and the Modelfile) and decode greedily: that is what was "
              "measured below.", "- Only for the task and data distribution described here; "
              "it was not evaluated for safety, other languages or other tasks.", ""]
    if usage:
        lines += ["## How to run", "", *usage, ""]
    lines += ["## Evaluation", "", *_eval_section(ev), "",
              "## Training data", "", *_data_section(info), "",
              "## Training", "", *_training_section(cfg, summary), "",
              "## Known limits", ""]
    limits = _baselines_better(ev) + list(notes or [])
    n_eval = ev.get("examples")
    if n_eval and n_eval < 200:
        limits.append(f"Evaluated on {n_eval} examples: differences smaller than the intervals "
                      "above are not established.")
    fin = (ev.get("systems") or {}).get("finetuned", {}).get("metrics", {})
    pf = (fin.get("parse_failure_rate") or {}).get("value")
    if pf:
        limits.append(f"In free generation {pf:.0%} of answers did not parse as a label; "
                      "score labels (as `tuneloop eval` does) or constrain decoding.")
    limits.append(f"A {base_name} model: small models make confident mistakes; keep a person "
                  "or a check in the loop where errors cost.")
    lines += [f"- {x}" for x in limits]
    return "\n".join(lines) + "\n"


def write_card(folder: str | Path, dest: str | Path, **kwargs: Any) -> Path:
    """Write model_card(folder, **kwargs) to dest (e.g. FOLDER/README.md)."""
    dest = Path(dest)
    dest.write_text(model_card(folder, **kwargs), encoding="utf-8")
    return dest
