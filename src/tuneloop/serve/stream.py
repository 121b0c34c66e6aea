"""A streamed completion: generation in a background thread, text handed out piece by piece."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from transformers import TextIteratorStreamer

if TYPE_CHECKING:  # annotations only: the engine imports this module to start streams
    from tuneloop.serve.engine import Generation, Handle, ModelPool, Params


class StreamJob:
    """Generation in a background thread; iterating yields text pieces, then `.result` is set.

    Text that could be the start of a stop string is held back until it is known not to be.
    """

    def __init__(self, pool: ModelPool, h: Handle, ids: list[int], p: Params):
        self.cancel = threading.Event()
        self.result: Generation | None = None
        self.error: BaseException | None = None
        self._stops = p.stop
        self._streamer = TextIteratorStreamer(h.loaded.tok, skip_prompt=True, skip_special_tokens=True,
                                              timeout=600)
        self.started = time.perf_counter()
        self._done, self._done_lock, self._callbacks = False, threading.Lock(), []
        self._thread = threading.Thread(target=self._work, args=(pool, h, ids, p), daemon=True)
        self._thread.start()

    def _work(self, pool: ModelPool, h: Handle, ids: list[int], p: Params) -> None:
        try:
            self.result = pool.generate_rows(h, [ids], [p], self._streamer, self.cancel)[0]
        except BaseException as e:  # re-raised in the consumer's thread
            self.error = e
            self._streamer.end()
        with self._done_lock:
            self._done = True
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def when_done(self, fn) -> None:
        """Call fn(job) from the worker once generation ends (at once if it has ended); the job's
        `result` or `error` says how it ended.

        For work that must happen even when the consumer is gone, such as logging a stream the
        client abandoned: a cancelled async task cannot await anything any more.
        """
        with self._done_lock:
            if not self._done:
                self._callbacks.append(fn)
                return
        fn(self)

    def __iter__(self) -> Iterator[str]:
        sent, buf = 0, ""
        hold = max((len(s) for s in self._stops), default=1) - 1
        for piece in self._streamer:
            # A match not found before must end in the new piece: search only from where it
            # could start (a stop string is at most hold + 1 characters), not the whole text.
            start = max(0, len(buf) - hold)
            buf += piece
            cut = min((i for i in (buf.find(s, start) for s in self._stops) if i >= 0), default=None)
            if cut is not None:
                if cut > sent:
                    yield buf[sent:cut]
                sent = cut
                self.cancel.set()
                break
            safe = len(buf) - hold
            if safe > sent:
                yield buf[sent:safe]
                sent = safe
        else:
            if len(buf) > sent:
                yield buf[sent:]
        self._thread.join()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop generating (the client went away)."""
        self.cancel.set()
