"""Merge an adapter into its base and write plain safetensors that transformers loads as is."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tuneloop.errors import TuneloopError
from tuneloop.models.generate import pad_batch
from tuneloop.models.load import Placement
from tuneloop.models.tokens import encode_prompt
from tuneloop.records import Message
from tuneloop.runs import load_run_model

PARITY_TOLERANCE = 1e-3  # max |logit difference| adapter vs merged, fp32


def _probe_inputs(tok) -> dict[str, torch.Tensor]:
    texts = ["Where is my new card?", "Summarise: the meeting moved to Tuesday at 10."]
    ids, attn = pad_batch([encode_prompt(tok, [Message("user", t)]) for t in texts],
                          tok.pad_token_id)
    return {"input_ids": ids, "attention_mask": attn}


def export_merged(run: str | Path, out: str | Path) -> dict:
    """Write merged weights + tokenizer to `out`, reload them and check logit parity."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TuneloopError(f"{out}: already exists and is not empty; choose a new folder")
    model, tok, cfg = load_run_model(run, Placement("cpu", "fp32"))
    if cfg.method.adds_virtual_tokens:
        raise TuneloopError(f"method {cfg.method.name!r} adds virtual tokens, which cannot be "
                            "merged into the weights; serve it with the adapter instead")
    probe = _probe_inputs(tok)
    mask = probe["attention_mask"].bool()
    with torch.no_grad():
        before = model(**probe).logits[mask]
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        after = reloaded(**probe).logits[mask]
    diff = float((before - after).abs().max())
    result = {"out": str(out), "max_logit_diff": diff, "tolerance": PARITY_TOLERANCE,
              "parity_ok": diff <= PARITY_TOLERANCE}
    if not result["parity_ok"]:
        raise TuneloopError(f"merged model differs from adapter model by {diff:.2e} "
                            f"(> {PARITY_TOLERANCE}); the export in {out} should not be used")
    return result
