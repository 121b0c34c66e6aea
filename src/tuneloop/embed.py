"""Sentence embeddings from the bundled all-MiniLM-L6-v2: one model, loaded once, no hub access."""

from __future__ import annotations

import os
from functools import cache

import numpy as np

DIM = 384  # all-MiniLM-L6-v2 output size; lets callers shape empty results without loading


@cache
def _model():
    # Set before the import so sentence-transformers and huggingface_hub never try the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from tuneloop.models.catalog import embedder_path

    return SentenceTransformer(str(embedder_path()), device="cpu", local_files_only=True)


def embed(texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """L2-normalised float32 MiniLM embeddings, one row per text (shape [len(texts), 384])."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    vecs = _model().encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                           convert_to_numpy=True, normalize_embeddings=True)
    return np.asarray(vecs, dtype=np.float32)
