"""Retrieval-augmented prompting: a corpus of documents, chunked, embedded, top-k in the prompt.

The `rag` baseline is what a team would build instead of fine-tuning when the answers live in
documents: the base model, shown the k corpus chunks most similar (MiniLM cosine) to the
request. `finetuned_rag` is the fine-tuned model given the same prompt, to show whether
fine-tuning and retrieval add up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneloop.data.io import SUFFIXES, read_rows
from tuneloop.errors import TuneloopError
from tuneloop.models.embed import embed
from tuneloop.records import Message

TEXT_KEYS = ("text", "content", "document", "body", "passage")
DOC_SUFFIXES = (".txt", ".md")
RAG_INSTRUCTION = "Use these documents if they help answer the request.\n\n"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Chunk:
    """A piece of one document, small enough to put several into a prompt."""

    doc_id: str
    text: str


def load_corpus(path: str | Path) -> list[tuple[str, str]]:
    """(id, text) per document: a .jsonl/.csv/.tsv/.parquet with a text column, or a folder of
    .txt/.md files (id: the relative path)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in DOC_SUFFIXES)
        docs = [(str(f.relative_to(p)), f.read_text(encoding="utf-8", errors="replace"))
                for f in files]
    elif p.suffix.lower() in SUFFIXES:
        docs = []
        for raw in read_rows(p):
            if raw.error:
                raise TuneloopError(f"{p}: {raw.where}: {raw.error}")
            key = next((k for k in TEXT_KEYS if k in (raw.data or {})), None)
            if key is None:
                raise TuneloopError(f"{p}: {raw.where}: no document text; expected a column "
                                    f"named one of {', '.join(TEXT_KEYS)}")
            doc_id = raw.data.get("id")
            docs.append((str(doc_id if doc_id not in (None, "") else raw.row), str(raw.data[key])))
    elif not p.exists():
        raise TuneloopError(f"eval.corpus: {p} not found")
    else:
        raise TuneloopError(f"eval.corpus: {p}: expected a .jsonl/.csv/.tsv/.parquet file or a "
                            "folder of .txt/.md documents")
    docs = [(i, t) for i, t in docs if t.strip()]
    if not docs:
        raise TuneloopError(f"eval.corpus: {p} holds no non-empty documents")
    return docs


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split at paragraph, then sentence, ends into pieces of at most ~max_chars, packed greedily
    (a sentence longer than max_chars is cut at a space)."""
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        for sent in _SENTENCE_END.split(" ".join(para.split())):
            while len(sent) > max_chars:
                cut = sent.rfind(" ", 0, max_chars)
                cut = cut if cut > max_chars // 2 else max_chars
                pieces.append(sent[:cut])
                sent = sent[cut:].lstrip()
            if sent:
                pieces.append(sent)
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 1 + len(piece) <= max_chars:
            chunks[-1] += " " + piece
        else:
            chunks.append(piece)
    return chunks


class Retriever:
    """The corpus's chunks and their MiniLM embeddings, embedded once per evaluation."""

    def __init__(self, docs: Sequence[tuple[str, str]], max_chars: int) -> None:
        self.chunks = [Chunk(i, c) for i, t in docs for c in chunk_text(t, max_chars)]
        self.vectors = embed([c.text for c in self.chunks])

    def top(self, queries: Sequence[str], k: int) -> list[list[Chunk]]:
        """The k chunks most similar to each query, most similar first."""
        sims = embed(list(queries)) @ self.vectors.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return [[self.chunks[j] for j in row] for row in order]


def with_documents(prompt: list[Message], chunks: Sequence[Chunk]) -> list[Message]:
    """The prompt with the retrieved chunks, numbered, ahead of the last user turn."""
    docs = "\n\n".join(f"[{n}] {c.text}" for n, c in enumerate(chunks, 1))
    *head, last = prompt
    return [*head, Message(last.role, f"{RAG_INSTRUCTION}{docs}\n\n{last.content}")]
