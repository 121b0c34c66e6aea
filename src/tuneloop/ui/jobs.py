"""Slow work the pages ask for (a data audit, a monitor run), done once in a background thread.

A page asks for a job by key; the first ask starts it, later asks see it running, then its
result. One worker: two audits at once would only make both slower on a small CPU.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tuneloop.errors import TuneloopError


@dataclass
class Job:
    """One piece of background work and what came of it."""

    key: tuple
    status: str = "queued"  # queued, running, done, error
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.error,
            "started": self.started,
            "seconds": round((self.finished or time.time()) - self.started, 1),
        }


class Jobs:
    """Background jobs by key, kept until replaced (the newest 32)."""

    def __init__(self) -> None:
        self._jobs: dict[tuple, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneloop-ui-job")

    def get(self, key: tuple) -> Job | None:
        return self._jobs.get(key)

    def latest(self, kind: str) -> Job | None:
        """The most recently started job whose key starts with `kind`."""
        jobs = [j for k, j in self._jobs.items() if k and k[0] == kind]
        return max(jobs, key=lambda j: j.started, default=None)

    def start(self, key: tuple, fn: Callable[[], Any], again: bool = False) -> Job:
        """The job for `key`, started now unless it exists (or `again` and it has ended)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not (again and job.status in ("done", "error")):
                return job
            job = Job(key)
            self._jobs[key] = job
            while len(self._jobs) > 32:
                self._jobs.pop(next(iter(self._jobs)))
        self._pool.submit(self._run, job, fn)
        return job

    @staticmethod
    def _run(job: Job, fn: Callable[[], Any]) -> None:
        job.status = "running"
        try:
            job.result = fn()
            job.status = "done"
        except TuneloopError as e:
            job.status, job.error = "error", str(e)
        except Exception as e:  # shown on the page; the traceback goes to the server log
            traceback.print_exc()
            job.status, job.error = "error", f"{type(e).__name__}: {e}"
        finally:
            job.finished = time.time()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
