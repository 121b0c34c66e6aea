"""Measure one candidate base model on the project's validation examples.

Runs in its own process (`python -m tuneloop.select.measure SPEC OUT`) so that a candidate that
crashes, or leaves memory behind, cannot disturb the next one, and its peak memory is its own.
Stages are reported as JSON lines on stdout ({"stage": ...}); the result is written to OUT.
Scoring reuses the evaluation stage (run_llm + score) and the training estimator, unchanged.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tuneloop.config import Config
from tuneloop.errors import TuneloopError
from tuneloop.records import Example, Message

STAGES = ("resolve", "estimate", "load", "zero_shot", "few_shot", "latency", "probe")
Report = Callable[[str], None]


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the next peak belongs to this candidate."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """Peak resident memory of this process since the last reset, in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _arch(model) -> dict:
    c = getattr(model.config, "text_config", None) or model.config
    return {"type": getattr(c, "model_type", None), "layers": getattr(c, "num_hidden_layers", None),
            "hidden": getattr(c, "hidden_size", None), "vocab": getattr(c, "vocab_size", None),
            "heads": getattr(c, "num_attention_heads", None)}


def _latency(model, tok, prompts: list[list[Message]], new_tokens: int) -> dict:
    """Seconds per generated token at batch 1: (time for L tokens - time for 1) / extra tokens,
    so prompt prefill is not counted as generation."""
    from tuneloop.models.generate import generate_with_counts  # why: as in _measure

    t0 = time.perf_counter()
    _, first = generate_with_counts(model, tok, prompts, 1, batch_size=1)
    t1 = time.perf_counter()
    _, full = generate_with_counts(model, tok, prompts, new_tokens, batch_size=1)
    t2 = time.perf_counter()
    extra = sum(full) - sum(first)
    per_token = ((t2 - t1) - (t1 - t0)) / extra if extra > 0 else None
    return {"s_per_token": None if per_token is None else round(max(per_token, 0.0), 5),
            "prefill_s_per_prompt": round((t1 - t0) / max(len(prompts), 1), 4),
            "prompts": len(prompts), "decode_tokens": extra}


def _probe(model, tok, cfg: Config, items, plan, val: list[Example], steps: int, placement) -> dict:
    """Train `steps` optimizer steps of the config's method as training runs them (its model
    set-up, CPU kernels, autocast and train_step, at the configured learning rate without
    warm-up), then measure how far the validation loss fell."""
    # why: as at the top of _measure, the parent `tuneloop select` process stays light
    import torch

    from tuneloop.evaluate.runner import perplexity_bpb, target_nll
    from tuneloop.train.batches import micro_batch
    from tuneloop.train.loss import TargetLoss
    from tuneloop.train.step import accelerator_for, optimizer_for, prepare_model, train_step

    acc = accelerator_for(placement)
    torch.manual_seed(cfg.seed)
    model = prepare_model(model, cfg.method, placement, cfg.train, cfg.model.max_seq_len)
    loss_fn = TargetLoss(model)
    model, opt = acc.prepare(model, optimizer_for(model, cfg.train))

    def nll() -> list[tuple[float, int, int]]:
        model.eval()
        rows = target_nll(model, tok, val, cfg.model.max_seq_len, cfg.eval.batch_size)
        model.train()
        return rows

    # Measured again on the prepared model: the same weights and precision as `after`.
    before = nll()
    ga = cfg.train.grad_accum
    t0 = time.perf_counter()
    for k in range(steps):
        batches = [micro_batch([items[i] for i in plan.indices(k * ga + m)], tok.pad_token_id, cfg)
                   for m in range(ga)]
        train_step(model, loss_fn, [{n: v.to(acc.device) for n, v in b.items()} for b in batches],
                   opt, None, acc, cfg.train.max_grad_norm)
    seconds = time.perf_counter() - t0
    loss_fn.remove()
    after = nll()

    def loss(rows):
        return sum(r[0] for r in rows) / max(sum(r[1] for r in rows), 1)

    b0, b1 = perplexity_bpb(before)["bits_per_byte"], perplexity_bpb(after)["bits_per_byte"]
    return {"steps": steps, "learning_rate": cfg.train.learning_rate,
            "val_loss_before": round(loss(before), 4), "val_loss_after": round(loss(after), 4),
            "val_loss_drop_per_step": round((loss(before) - loss(after)) / steps, 5),
            "bpb_before": round(b0, 4), "bpb_after": round(b1, 4),
            "bpb_drop_per_step": round((b0 - b1) / steps, 5),
            "seconds_per_step": round(seconds / steps, 3)}


def measure(spec: dict, report: Report = lambda stage: None) -> dict:
    """Every number `tuneloop select` ranks on, for one candidate; errors become status=failed."""
    res: dict = {"name": spec["candidate"], "status": "ok", "error": None}
    t_start = time.perf_counter()
    try:
        _measure(spec, res, report)
    except TuneloopError as e:
        res |= {"status": "failed", "error": str(e)}
    except Exception as e:  # a broken model must not stop the others; keep the cause
        res |= {"status": "failed", "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=6)}
    stage = res.pop("_stage", None)
    if res["status"] == "failed":
        res["failed_stage"] = stage
    res["seconds"] = round(time.perf_counter() - t_start, 2)
    return res


def _measure(spec: dict, res: dict, report: Report) -> None:
    # why: `tuneloop select` imports this module (STAGES, and measure() for --no-isolate); the
    # model stack (torch, transformers, the training recipe) loads only where a candidate is
    # measured, not in the process that orchestrates them.
    from tuneloop.evaluate.baselines import prompted
    from tuneloop.evaluate.runner import perplexity_bpb
    from tuneloop.evaluate.scoring import PRIMARY, score
    from tuneloop.evaluate.systems import run_llm
    from tuneloop.models.load import chat_tokenizer, choose_placement, load_model, resolve_model
    from tuneloop.models.tokens import encode_all
    from tuneloop.train.batches import plan_for, total_steps
    from tuneloop.train.estimate import estimate
    from tuneloop.train.methods import count_parameters

    timings: dict[str, float] = {}
    res["stage_seconds"] = timings
    clock = [time.perf_counter()]

    def stage(name: str) -> None:
        # Where the time goes, per stage: the previous stage ends when the next begins.
        now = time.perf_counter()
        if "_stage" in res:
            timings[res["_stage"]] = round(now - clock[0], 2)
        clock[0] = now
        res["_stage"] = name
        report(name)

    cfg = Config.model_validate(spec["config"])
    val = [Example.from_dict(d) for d in spec["validation"]]
    train = [Example.from_dict(d) for d in spec["train"]]
    labels = spec.get("labels")
    task, primary = cfg.task.type, PRIMARY[cfg.task.type]
    n_boot = spec.get("bootstrap", 1000)

    stage("resolve")
    t0 = time.perf_counter()
    path = resolve_model(spec["candidate"])
    res["path"] = path
    res["resolve_s"] = round(time.perf_counter() - t0, 2)  # GGUF conversion on first use
    tok = chat_tokenizer(path)
    items, rep = encode_all(tok, train, cfg.model.max_seq_len, cfg.train.loss_on)
    res["tokens"] = {"train": rep.as_dict()}

    stage("estimate")
    placement = choose_placement(cfg.model.device, cfg.model.dtype)
    plan = plan_for(cfg, items)  # the batch plan of `train --dry-run` and the training recipe
    res["train"] = estimate(cfg, path, items, total_steps(cfg, plan), placement, plan)
    limit = spec.get("max_memory_gb")
    if limit is not None and res["train"]["estimated_peak_memory_gb"] > limit:
        res["status"] = "dropped"
        res["error"] = (f"estimated training memory {res['train']['estimated_peak_memory_gb']} GB "
                        f"exceeds --max-memory {limit:g} GB")
        stage("done")
        timings.pop("done", None)
        return

    stage("load")
    import torch  # why: as at the top of _measure

    torch.manual_seed(cfg.seed)
    reset = _reset_peak()
    t0 = time.perf_counter()
    model = load_model(path, placement).eval()
    res["load_s"] = round(time.perf_counter() - t0, 3)
    res["params"] = count_parameters(model)[1]
    res["trainable_params"] = res["train"]["trainable_params"]
    res["arch"] = _arch(model)

    stage("zero_shot")
    # The prompted baseline (label list for text/label rows), as `tuneloop eval` runs it; bpb
    # is on the validation examples as training renders them: where fine-tuning starts.
    prompts = [prompted(e, cfg.task) for e in val]
    zs = run_llm("zero_shot", model, tok, cfg, val, prompts, val, free_generation=False)
    zs_scored = score(zs, val, task, labels, n_boot, cfg.seed, faithfulness=False)
    q = zs_scored.metrics
    res["quality"] = {"examples": len(val), "primary_metric": primary,
                      "bits_per_byte": q.get("bits_per_byte"), "perplexity": q.get("perplexity"),
                      "bpb_check": round(perplexity_bpb(zs.val_nll or [])["bits_per_byte"], 6),
                      "zero_shot": {k: v for k, v in q.items()
                                    if k not in ("bits_per_byte", "perplexity")},
                      "zero_shot_s_per_example": round(zs.seconds_per_example, 4)}

    stage("few_shot")
    if spec.get("few_shot_prompts"):
        shots = [[Message(**m) for m in p] for p in spec["few_shot_prompts"]]
        by_id = {e.id: e for e in val}
        sub = [by_id[i] for i in spec["few_shot_ids"]]
        fs = run_llm("few_shot", model, tok, cfg, sub, shots, None, free_generation=False)
        res["quality"]["few_shot"] = score(fs, sub, task, labels, n_boot, cfg.seed,
                                           faithfulness=False).metrics
        res["quality"]["few_shot_examples"] = len(sub)
        res["quality"]["few_shot_s_per_example"] = round(fs.seconds_per_example, 4)

    stage("latency")
    k = spec.get("latency_prompts", 4)
    res["latency"] = _latency(model, tok, prompts[:k],
                              spec.get("latency_tokens", 24))
    res["peak_rss_gb"] = round(_peak_rss() / 2**30, 3)
    res["memory_kind"] = ("process peak RSS (VmHWM) during load, scoring and generation"
                          if reset else "process peak RSS since start (reset unavailable)")

    if spec.get("probe_steps"):
        stage("probe")
        res["probe"] = _probe(model, tok, cfg, items, plan, val, spec["probe_steps"], placement)
    stage("done")
    timings.pop("done", None)
    del model
    if not math.isfinite(res["quality"]["bpb_check"]):
        raise TuneloopError(f"{spec['candidate']}: bits per byte is not finite (broken weights?)")


def main() -> None:
    """Child-process entry: measure the spec in argv[1], write the result to argv[2]."""
    spec = json.loads(Path(sys.argv[1]).read_text())

    def report(stage: str) -> None:
        sys.stdout.write(json.dumps({"stage": stage}) + "\n")
        sys.stdout.flush()

    res = measure(spec, report)
    Path(sys.argv[2]).write_text(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
