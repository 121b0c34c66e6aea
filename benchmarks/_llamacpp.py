"""llama.cpp for the benchmarks through llama-cpp-py-sync (a prebuilt CPU libllama on PyPI).

llama-cpp-python (the [export] extra) builds llama.cpp from source at install time;
llama-cpp-py-sync ships the library prebuilt, with CFFI bindings to its C API. Its high-level
`Llama.generate` adds BOS, does not parse special tokens and always samples, so greedy
decoding here drives the C API directly (the same calls as llama.cpp's `batched` example):
token ids in, greedy token ids out, one sequence or several in one batch.

    .venv/bin/pip install llama-cpp-py-sync

Its libllama.so needs glibc >= 2.38 although the wheel is tagged manylinux2014 (0.11739:
`version GLIBC_2.38 not found` on Debian 12's 2.36). LLAMA_CPP_LIB=/path/to/libllama.so
makes it load that library instead of its own: one built for, or made to load on, this glibc
(it must be the same llama.cpp version, b11739: the bindings are generated from its headers).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence

_NO_LOG = []  # the CFFI callback must outlive every call into the library


def _quiet(bindings) -> None:
    """Silence llama.cpp's log (hundreds of lines per model load on stderr)."""
    if not _NO_LOG:
        _NO_LOG.append(bindings.ffi.callback("ggml_log_callback", lambda *_: None))
        bindings.get_lib().llama_log_set(_NO_LOG[0], bindings.ffi.NULL)


def _bindings():
    """llama_cpp_py_sync's CFFI bindings, its library loaded (LLAMA_CPP_LIB's when set)."""
    from llama_cpp_py_sync import _cffi_bindings

    if os.environ.get("LLAMA_CPP_LIB") and _cffi_bindings._lib is None:
        _cffi_bindings._lib = _cffi_bindings.ffi.dlopen(os.environ["LLAMA_CPP_LIB"])
    _quiet(_cffi_bindings)
    return _cffi_bindings


def unavailable() -> str | None:
    """None when llama.cpp loads through llama-cpp-py-sync, else why it does not."""
    try:
        _bindings()
    except ImportError:
        return "none (pip install llama-cpp-py-sync)"
    except (OSError, RuntimeError) as e:
        why = re.search(r"version `[^']+' not found", str(e))
        return (f"none (llama-cpp-py-sync's library: {why[0] if why else str(e)[:100]}; "
                "see benchmarks/_llamacpp.py)")
    return None


class GreedyLlama:
    """A GGUF in llama.cpp, decoded greedily from token ids; `seqs` sequences per batch."""

    def __init__(self, path: str, threads: int = 1, seqs: int = 1, ctx_per_seq: int = 4096,
                 n_batch: int = 512):
        from llama_cpp_py_sync import Llama

        _bindings()
        # n_ctx is split among the sequences (llama.cpp's default, non-unified KV cache).
        self.llm = Llama(str(path), n_ctx=ctx_per_seq * seqs, n_batch=n_batch, n_threads=threads,
                         n_threads_batch=threads, n_seq_max=seqs, verbose=False)
        self.lib, self.ffi, self.ctx = self.llm._lib, self.llm._ffi, self.llm._ctx
        self.lib.llama_set_embeddings(self.ctx, False)  # the wrapper turns them on; logits only
        self.sampler = self.lib.llama_sampler_init_greedy()
        self.n_batch, self.seqs = n_batch, seqs

    def close(self) -> None:
        if self.sampler is not None:
            self.lib.llama_sampler_free(self.sampler)
            self.sampler = None
        self.llm.close()

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenization: special tokens parsed, no BOS added."""
        return self.llm.tokenize(text, add_special=False, parse_special=True)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids), remove_special=True, unparse_special=False)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> dict[int, int]:
        """Decode (token, position, sequence, wants_next) entries; the greedy next token of
        each sequence that wants one. Chunks of n_batch (llama_decode aborts on wider)."""
        lib, out = self.lib, {}
        for s in range(0, len(entries), self.n_batch):
            chunk = entries[s:s + self.n_batch]
            batch = lib.llama_batch_init(len(chunk), 0, 1)
            try:
                batch.n_tokens = len(chunk)
                for i, (tok, pos, seq, want) in enumerate(chunk):
                    batch.token[i], batch.pos[i] = tok, pos
                    batch.n_seq_id[i], batch.seq_id[i][0] = 1, seq
                    batch.logits[i] = 1 if want else 0
                rc = lib.llama_decode(self.ctx, batch)
                if rc != 0:
                    raise RuntimeError(f"llama_decode returned {rc}")
                for i, (_, _, seq, want) in enumerate(chunk):
                    if want:
                        out[seq] = int(lib.llama_sampler_sample(self.sampler, self.ctx, i))
            finally:
                lib.llama_batch_free(batch)
        return out

    def greedy(self, prompts: Sequence[Sequence[int]], max_new: int, stop: Sequence[int]
               ) -> list[list[int]]:
        """Greedy continuations of up to `seqs` prompts decoded together (the KV cache is
        cleared first); each ends at its first stop token (kept) or after max_new tokens."""
        if len(prompts) > self.seqs:
            raise ValueError(f"{len(prompts)} prompts, but this context holds {self.seqs}")
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        stop = set(stop)
        nxt = self._decode([(t, p, s, p == len(q) - 1)
                            for s, q in enumerate(prompts) for p, t in enumerate(q)])
        outs: list[list[int]] = [[] for _ in prompts]
        while True:
            live = []
            for s, t in nxt.items():
                outs[s].append(t)
                if t not in stop and len(outs[s]) < max_new:
                    live.append((t, len(prompts[s]) + len(outs[s]) - 1, s, True))
            if not live:
                return outs
            nxt = self._decode(live)


def parity_answers(path, tok, prompts, max_new: int, threads: int | None = None):
    """tuneloop.export.parity.llama_cpp_answers through llama-cpp-py-sync: the same prompts
    (the chat template's text, tokenized by llama.cpp, special tokens parsed, no BOS), the
    same stop rule, the same return value: (answers, {load_s, new_tokens, tokens_per_s})."""
    from tuneloop.models.generate import stop_ids
    from tuneloop.models.tokens import render

    t0 = time.perf_counter()
    llm = GreedyLlama(path, threads=threads or os.cpu_count() or 1)
    load_s = time.perf_counter() - t0
    stops = stop_ids(tok)
    answers, new_tokens, gen_s = [], 0, 0.0
    try:
        for msgs in prompts:
            ids = llm.tokenize(render(tok, msgs, add_generation_prompt=True))
            t1 = time.perf_counter()
            out = llm.greedy([ids], max_new, stops)[0]
            gen_s += time.perf_counter() - t1
            out = [t for t in out if t not in stops]
            new_tokens += len(out)
            answers.append(llm.detokenize(out).strip())
    finally:
        llm.close()
    return answers, {"load_s": round(load_s, 3), "new_tokens": new_tokens,
                     "tokens_per_s": round(new_tokens / gen_s, 1) if gen_s else None}
