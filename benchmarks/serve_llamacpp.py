"""Per-request latency of tuneloop's decoder against llama.cpp on the prompts serve_load sends.

    .venv/bin/python benchmarks/serve_llamacpp.py [--n 100] [--warmup 5] [--max-tokens 8]
                                                  [--threads N] [--batch 8] [--gguf-dir DIR]

The requests are benchmarks/serve_load.py's: real customer messages (banking77's test split,
../shared/data; a seeded sample of --n), each one user turn of a chat, rendered with the
model's chat template (tuneloop.models.tokens.encode_prompt), greedy replies of --max-tokens.
Each side gets the same prompt token ids (no BOS added) and returns token ids: the decoder
alone, without tokenizing, HTTP or the traffic log (serve_load.py measures the server).

  (a) tuneloop: models.generate.greedy_ids on one prompt, the base SmolLM2-135M-Instruct at
      the placement `tuneloop serve` uses (choose_placement("auto", "fp32"), reordered fp32
      weights, the template prefix's cache kept between requests), in process;
  (b) llama.cpp (llama-cpp-py-sync, see benchmarks/_llamacpp.py) on the F16 and Q8_0 GGUF
      that `tuneloop export --format gguf` writes of the same model, one request at a time;
  (c) both with --batch prompts decoded together: tuneloop's greedy_ids on a batch with its
      shared prefix (what the server's micro-batcher runs), llama.cpp with one sequence per
      prompt in each llama_decode (--batch 0 skips it).

Printed per side: p50/p99 latency per request (per batch for (c)) after --warmup requests,
and agreement: prompts whose reply tokens equal tuneloop's one-at-a-time reply. Without
--gguf-dir (a folder with model-f16.gguf and model-q8_0.gguf), the base model is exported
first as benchmarks/export_parity.py does it (a LoRA run whose B matrices are zero). Torch and
llama.cpp both use --threads (default: all CPUs, as `tuneloop serve` without --threads).
On a glibc older than 2.38 the wheel's library does not load: see benchmarks/_llamacpp.py.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _llamacpp  # noqa: E402
from _banking77 import banking77  # noqa: E402
from export_parity import zero_lora_run  # noqa: E402

QUANTS = ("f16", "q8_0")


def export_ggufs(model: str, work: Path) -> Path:
    """model-{quant}.gguf of the base model in `work`, as benchmarks/export_parity.py makes them."""
    from tuneloop.export.exporter import export_run

    run = zero_lora_run(model, work)
    for q in QUANTS:
        export_run(run, work / q, "gguf", q, parity_n=0)
        (work / q / f"model-{q}.gguf").rename(work / f"model-{q}.gguf")
    return work


def timed(fn, items, warmup: int) -> tuple[list, np.ndarray]:
    """fn over items (the first `warmup` again beforehand, untimed): results, latencies in ms."""
    for x in items[:warmup]:
        fn(x)
    out, ms = [], []
    for x in items:
        t = time.perf_counter()
        out.append(fn(x))
        ms.append((time.perf_counter() - t) * 1000)
    return out, np.array(ms)


def row(label: str, ms: np.ndarray, agree: int | None = None, n: int = 0) -> None:
    """One line: latency percentiles, and the agreement with tuneloop's replies."""
    print(f"{label:40} p50 {np.percentile(ms, 50):8.1f} ms  p99 {np.percentile(ms, 99):8.1f} ms"
          + (f"  agree {agree}/{n}" if agree is not None else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=100, help="timed requests per side")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=8, help="prompts per batch in (c); 0: skip (c)")
    ap.add_argument("--gguf-dir", type=Path, help="folder with model-f16.gguf and model-q8_0.gguf")
    args = ap.parse_args()
    if why := _llamacpp.unavailable():
        raise SystemExit(f"llama.cpp: {why}")
    work = None if args.gguf_dir else Path(tempfile.mkdtemp(prefix="serve-llamacpp-"))
    try:
        measure(args, args.gguf_dir or export_ggufs(args.model, work))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def measure(args, folder: Path) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from tuneloop.models.cpu import cpu_kind
    from tuneloop.models.generate import greedy_ids, model_device, stop_ids
    from tuneloop.models.inference import for_inference
    from tuneloop.models.load import chat_tokenizer, choose_placement, load_model, resolve_model
    from tuneloop.models.tokens import encode_prompt
    from tuneloop.records import Message
    from tuneloop.serve.prefixes import PrefixStore

    path = resolve_model(args.model)
    tok = chat_tokenizer(path)
    texts = [t for t, _ in banking77("test")]
    prompts = [encode_prompt(tok, [Message("user", t)])
               for t in random.Random(0).sample(texts, min(args.n, len(texts)))]
    stop, pad, k = stop_ids(tok), tok.pad_token_id, args.max_tokens
    placement = choose_placement("auto", "fp32")
    model = for_inference(load_model(path, placement).eval(), placement)  # as the server loads it
    dev = model_device(model)
    prefixes = PrefixStore()
    print(f"{os.cpu_count()} CPUs ({cpu_kind()}), threads {args.threads}, {args.model} "
          f"{placement.device}/{placement.precision}, {len(prompts)} requests of {k} tokens")

    def cut(row: list[int]) -> list[int]:
        """Reply ids up to and including the first stop token (greedy_ids pads after it)."""
        end = next((i for i, t in enumerate(row) if t in stop), len(row) - 1)
        return row[:end + 1]

    @torch.no_grad()
    def tuneloop(rows: list[list[int]]) -> list[list[int]]:
        # As the server's batcher: the template's prefix cache kept between requests.
        shared, prefix = prefixes.for_batch("base", tok, model, rows, dev)
        return [cut(r) for r in greedy_ids(model, rows, shared, pad, dev, stop, k, prefix).tolist()]

    def agreeing(out: list[list[int]]) -> int:
        return sum(a == b for a, b in zip(out, ref, strict=True))

    ref, ms = timed(lambda q: tuneloop([q])[0], prompts, args.warmup)
    p50 = {"tuneloop": np.percentile(ms, 50)}
    row("(a) tuneloop greedy_ids, one request", ms)
    batches = [prompts[i:i + args.batch] for i in range(0, len(prompts), args.batch or 1)]
    agree = {}
    for q in QUANTS:
        llm = _llamacpp.GreedyLlama(str(folder / f"model-{q}.gguf"), threads=args.threads,
                                    seqs=max(args.batch, 1), ctx_per_seq=1024)
        try:
            out, ms = timed(lambda ids, llm=llm: llm.greedy([ids], k, stop)[0], prompts, args.warmup)
            agree[q], p50[q] = agreeing(out), np.percentile(ms, 50)
            row(f"(b) llama.cpp {q}, one request", ms, agree[q], len(ref))
            if args.batch:
                out, ms = timed(lambda rows, llm=llm: llm.greedy(rows, k, stop), batches, 1)
                row(f"(c) llama.cpp {q}, batches of {args.batch}", ms, agreeing(sum(out, [])),
                    len(ref))
        finally:
            llm.close()
    if args.batch:
        out, ms = timed(tuneloop, batches, 1)
        row(f"(c) tuneloop greedy_ids, batches of {args.batch}", ms, agreeing(sum(out, [])),
            len(ref))
    else:
        print("(c) skipped (--batch 0)")
    print(f"tuneloop_p50_ms={p50['tuneloop']:.1f} llamacpp_f16_p50_ms={p50['f16']:.1f} "
          f"llamacpp_q8_0_p50_ms={p50['q8_0']:.1f} agree_f16={agree['f16']}/{len(ref)} "
          f"agree_q8_0={agree['q8_0']}/{len(ref)} cpu_kind={cpu_kind()}")


if __name__ == "__main__":
    main()
