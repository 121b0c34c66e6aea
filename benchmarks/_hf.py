"""The peer's way, shared by the benchmarks: transformers' own batched `generate`."""

from __future__ import annotations

import torch


@torch.no_grad()
def hf_batched_generate(model, tok, encoded: list[list[int]], batch: int, new_tokens: int,
                        stop: list[int]) -> list[str]:
    """Greedy answers from `model.generate` in length-sorted, left-padded batches (sorting is
    something any user can do, so the peer gets it too), cut at the first stop token."""
    from tuneloop.models.generate import pad_batch

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    texts = [""] * len(encoded)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        ids, attn = pad_batch([encoded[i] for i in idx], tok.pad_token_id, "left")
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=False,
                             max_new_tokens=new_tokens, eos_token_id=stop,
                             pad_token_id=tok.pad_token_id)
        for r, i in enumerate(idx):
            new = out[r, ids.shape[1]:].tolist()
            cut = next((k for k, t in enumerate(new) if t in stop), len(new))
            texts[i] = tok.decode(new[:cut], skip_special_tokens=True).strip()
    return texts
