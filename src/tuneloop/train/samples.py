"""Samples while training (`train.sample_every: N`): watch the model learn the form.

Every N optimizer steps, and at step 0 (the base model's answers) and at the last step, the
training model answers a few fixed validation prompts (the first `train.sample_prompts`; the
first training examples where a run has no validation split) greedily, and each answer is
appended to RUN/samples.jsonl as {"step", "id", "split", "prompt", "reference", "output"}.
Each sample point is flushed when written, so a crash keeps the earlier ones; a resumed run
drops the rows after its checkpoint (like metrics.jsonl) and never writes a step twice.

Only the main process samples, on the unwrapped model in eval mode (no dropout) under the
training autocast. Greedy decoding draws no random numbers, and the RNG state is restored
around it anyway, so a run with samples trains bit for bit like one without.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.console import err
from tuneloop.records import Example

if TYPE_CHECKING:
    from tuneloop.config import Config
    from tuneloop.data.load import Splits

FILE = "samples.jsonl"
PROMPT_CHARS = 500


class Sampler:
    """Writes one JSON line per fixed prompt at each due step."""

    def __init__(self, path: Path, examples: list[Example], split: str, tok, acc, every: int,
                 max_new_tokens: int, batch_size: int, resumed_step: int = 0):
        self.path, self.examples, self.split, self.tok, self.acc = path, examples, split, tok, acc
        self.every, self.max_new_tokens, self.batch_size = every, max_new_tokens, batch_size
        self.done = _keep_until(path, resumed_step)

    def due(self, step: int, last: bool = False) -> bool:
        """Whether `step` is a sample point (step 0, every N, the last) not yet written."""
        return step not in self.done and (step % self.every == 0 or last)

    def at(self, model, step: int, last: bool = False) -> None:
        """Sample the fixed prompts with the model as it is after `step` optimizer steps."""
        if not self.due(step, last):
            return
        outputs = self._generate(self.acc.unwrap_model(model))
        with open(self.path, "a", encoding="utf-8") as f:
            for e, out in zip(self.examples, outputs, strict=True):
                f.write(json.dumps({"step": step, "id": e.id, "split": self.split,
                                    "prompt": e.user_text[:PROMPT_CHARS],
                                    "reference": e.target, "output": out}) + "\n")
            f.flush()
        self.done.add(step)

    def _generate(self, model) -> list[str]:
        # why: torch loads here, not on import: the report reads samples.jsonl through this module
        from tuneloop.models.generate import generate
        from tuneloop.train import checkpoint

        rng, was_training = checkpoint.rng_state(), model.training
        model.eval()  # no dropout; the CPU kernels take their inference path
        try:
            with self.acc.autocast():  # frozen weights may be stored in bf16 (train/cpu)
                return generate(model, self.tok, [e.prompt_messages for e in self.examples],
                                self.max_new_tokens, self.batch_size)
        finally:
            model.train(was_training)
            checkpoint.set_rng_state(rng)


def sampler_for(cfg: Config, acc, run: Path, splits: Splits, tok, step: int) -> Sampler | None:
    """The run's Sampler, or None: no `train.sample_every`, not the main process, or sharded."""
    if not cfg.train.sample_every or not acc.is_main_process:
        return None
    from tuneloop.train.step import sharded  # here: the report and the UI import this module

    if sharded(acc):
        err.print("train.sample_every is skipped: the parameters are sharded across processes "
                  "(FSDP / ZeRO-3), and only the main process samples")
        return None
    split, pool = ("validation", splits.validation) if splits.validation else ("train", splits.train)
    return Sampler(run / FILE, pool[:cfg.train.sample_prompts], split, tok, acc,
                   cfg.train.sample_every, cfg.eval.max_new_tokens, cfg.eval.batch_size, step)


def read_samples(path: Path) -> list[dict]:
    """The rows of a samples.jsonl (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _keep_until(path: Path, step: int) -> set[int]:
    """Drop rows sampled after `step` (a resume replays those steps); the steps kept."""
    rows = read_samples(path)
    keep = [r for r in rows if r["step"] <= step]
    if len(keep) < len(rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    return {r["step"] for r in keep}

