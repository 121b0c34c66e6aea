"""Sentence embeddings from the bundled all-MiniLM-L6-v2: one model, loaded once, no hub access."""

from __future__ import annotations

from functools import cache

import numpy as np

from tuneloop.models.catalog import embedder_path
from tuneloop.models.cpu import cpu_has_bf16

DIM = 384  # all-MiniLM-L6-v2 output size; lets callers shape empty results without loading


@cache
def _model():
    # why: sentence-transformers (and torch under it) takes seconds to import; many importers
    # of this module (scoring, zero-shot baselines, select) never embed anything.
    from sentence_transformers import SentenceTransformer

    # A local folder and local_files_only: no hub access, and no process-wide offline switch.
    return SentenceTransformer(str(embedder_path()), device="cpu", local_files_only=True)


def embed(texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """L2-normalised float32 MiniLM embeddings, one row per text (shape [len(texts), 384])."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    import torch  # why: as in _model; loaded by then anyway

    # bf16 matmuls run ~2x faster end to end on CPUs with AMX/avx512_bf16, and the vectors stay
    # within cosine 0.9999 of fp32 (measured on 2,000 banking77 texts); elsewhere stay in fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_bf16()):
        vecs = _model().encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                               convert_to_numpy=True, normalize_embeddings=False)
    vecs = np.asarray(vecs, dtype=np.float32)
    # Normalise in fp32 after the cast so rows are unit length to float precision.
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
