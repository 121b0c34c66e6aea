"""Generative evaluation speed: tuneloop's batched greedy decoding vs transformers' own batched
`generate`, on the same prompts, batches and max_new_tokens; prints measured figures.

    .venv/bin/python benchmarks/generate_speed.py [--n 48] [--new-tokens 96] [--batch 8]

Prompts: the first N test questions of examples/pubmedqa-answers (question + abstract, ~330
tokens each, the grounded-generation example). Both sides get the same length-sorted batches
(sorting is something any user can do, so the peer gets it too), left padding, greedy
decoding, the template's end-of-turn and EOS as stop tokens, and the bundled model in the
same precision. One warm-up batch per side is run first and not timed. The answers are
compared string by string after cutting at the first stop token.

What differs: tuneloop runs the token prefix that all prompts share (chat template and the
instruction) once per batch and reuses its KV cache, asks for last-position logits only in
the prompt pass, and stops a batch as soon as every row has finished.

Measured 2026-11-30 (2-core AMD EPYC with avx512_bf16, bf16 autocast, 2 threads, quiet machine,
defaults: 48 prompts of 304 tokens on average, 62.4 new tokens on average, batch 8):
transformers 80.3 s, tuneloop 79.7 s, speed-up 1.01x, answers identical 48/48. On this
workload the two are the same: the shared prefix is ~10% of each prompt and decoding
dominates. tuneloop's batched path is what eval, select and the server share, so a served
answer is the measured one; it is not faster than transformers' own batched generate here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _hf import hf_batched_generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    from tuneloop.config import load_config
    from tuneloop.data.load import load_splits
    from tuneloop.models.generate import generate_with_counts, stop_ids
    from tuneloop.models.load import choose_placement, load_model, load_tokenizer_for
    from tuneloop.models.tokens import encode_prompt

    cfg = load_config(ROOT / "examples" / "pubmedqa-answers")
    examples = load_splits(cfg).test[: args.n + args.batch]
    warm, examples = examples[: args.batch], examples[args.batch:]
    prompts = [e.prompt_messages for e in examples]
    placement = choose_placement(cfg.model.device, cfg.model.dtype)
    path, tok = load_tokenizer_for(cfg.model.name)
    model = load_model(path, placement).eval()
    stop = stop_ids(tok)

    def hf_generate(msgs) -> list[str]:
        return hf_batched_generate(model, tok, [encode_prompt(tok, m) for m in msgs],
                                   args.batch, args.new_tokens, stop)

    warm_prompts = [e.prompt_messages for e in warm]
    hf_generate(warm_prompts)
    generate_with_counts(model, tok, warm_prompts, args.new_tokens, args.batch)

    t0 = time.perf_counter()
    hf = hf_generate(prompts)
    t_hf = time.perf_counter() - t0
    print(f"transformers generate: {t_hf:.1f}s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    ours, counts = generate_with_counts(model, tok, prompts, args.new_tokens, args.batch)
    t_ours = time.perf_counter() - t0
    print(f"tuneloop generate: {t_ours:.1f}s", file=sys.stderr, flush=True)
    same = sum(a == b for a, b in zip(hf, ours, strict=True))
    prompt_tokens = [len(encode_prompt(tok, m)) for m in prompts]
    res = {"model": cfg.model.name, "device": placement.device,
           "precision": placement.precision, "threads": torch.get_num_threads(),
           "prompts": len(prompts), "mean_prompt_tokens": round(sum(prompt_tokens)
                                                                / len(prompts), 1),
           "mean_new_tokens": round(sum(counts) / len(counts), 1),
           "max_new_tokens": args.new_tokens, "batch": args.batch,
           "transformers_generate_s": round(t_hf, 2), "tuneloop_generate_s": round(t_ours, 2),
           "speedup": round(t_hf / t_ours, 2), "same_answers": f"{same}/{len(prompts)}"}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
