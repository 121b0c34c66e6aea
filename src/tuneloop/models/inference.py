"""A loaded model made ready for a process that only runs it (eval, serve): the CPU paths
that cost memory or differ from training are chosen here, once per model."""

from __future__ import annotations

import psutil

from tuneloop.models.attention import use_gqa_sdpa
from tuneloop.models.prepack import linear_bytes, prepack_linears


def for_inference(model, placement):
    """On a CPU: grouped-query attention without key/value copies (models.attention), and,
    where fp32 runs, linear weights reordered for oneDNN (models.prepack) when that copy fits
    in a quarter of the memory available now (a larger model would trade a few percent of
    speed for swapping). bf16 autocast and GPUs keep their linears. Returns the model."""
    if placement.device != "cpu":
        return model
    use_gqa_sdpa(model)
    if placement.precision == "fp32" and \
            linear_bytes(model) <= psutil.virtual_memory().available / 4:
        prepack_linears(model)
    return model
