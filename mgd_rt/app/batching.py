"""A bounded queue in front of one model, and the thread that drains it in batches.

Web requests arrive on many threads; the model is one object that must run one call at a time.
``Batcher.submit`` puts a job in a queue of fixed size and returns a Future at once, or raises
:class:`QueueFull` (the server answers 503 + Retry-After) instead of letting the backlog, and
every client's wait, grow without limit. A single worker thread takes the first waiting job,
gathers whatever else arrives within ``wait_s`` up to ``max_batch`` jobs, and hands the group to
``run`` in one call: requests that arrive together share one model call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Job = TypeVar("Job")
Out = TypeVar("Out")

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``capacity`` jobs already; the caller should retry later."""


class Batcher(Generic[Job, Out]):
    """``run(jobs) -> outputs`` (one output per job, in order; an output may itself be an error value).

    An exception from ``run`` fails every future of that group, and the worker goes on with the
    next: one broken batch never stops the service.
    """

    def __init__(self, run: Callable[[Sequence[Job]], Sequence[Out]], *, max_batch: int, capacity: int,
                 wait_s: float) -> None:
        self._run = run
        self.max_batch = max_batch
        self.capacity = capacity
        self.wait_s = wait_s
        self._queue: queue.Queue[tuple[Job, Future[Out]] | None] = queue.Queue(maxsize=capacity)
        self.batches = 0  # model calls so far, and the largest group: what /v1/health reports
        self.largest = 0
        self._thread = threading.Thread(target=self._work, name="mgd-rt-app-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future[Out]:
        future: Future[Out] = Future()
        try:
            self._queue.put_nowait((job, future))
        except queue.Full:
            raise QueueFull(f"{self.capacity} requests are already waiting for the model") from None
        return future

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def _gather(self) -> list[tuple[Job, Future[Out]]] | None:
        first = self._queue.get()
        if first is None:
            return None
        group = [first]
        deadline = time.perf_counter() + self.wait_s
        while len(group) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(deadline - time.perf_counter(), 0.0))
            except queue.Empty:
                break
            if item is None:  # close(): finish this group, then stop
                self._queue.put(None)
                break
            group.append(item)
        return group

    def _work(self) -> None:
        while (group := self._gather()) is not None:
            live = [(job, fut) for job, fut in group if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            self.batches += 1
            self.largest = max(self.largest, len(live))
            try:
                outputs = self._run([job for job, _ in live])
            except BaseException as exc:  # noqa: B036 - handed to the waiting requests, never swallowed
                log.exception("a batch of %d failed", len(live))
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            for (_, fut), out in zip(live, outputs, strict=True):
                fut.set_result(out)

    def close(self, timeout: float = 30.0) -> None:
        """Finish the jobs already queued, then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout)
