"""Answers by content: the same photo asked for again (another format, threshold or background) reuses
the model's result instead of running the model again.

The page asks for matte, cut-out and overlay of each photo at once and again at every threshold
change; without this, each would be a model run. Entries are the futures themselves, so requests
for a photo already in flight wait for that one run. Finished results are dropped, least recently
used first, beyond ``max_bytes`` (the decoded photo plus the logits each one holds).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

from mgd_rt.runtime.segmenter import Result


def _size(future: Future[Result]) -> int:
    result = future.result()
    return result.image.nbytes + result.logits.nbytes  # type: ignore[union-attr]


def _usable(future: Future[Result]) -> bool:
    return not future.cancelled() and future.exception() is None and future.result().ok


class ResultCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self._items: OrderedDict[str, Future[Result]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def get_or_submit(self, key: str, submit: Callable[[], Future[Result]]) -> tuple[Future[Result], bool]:
        """(future, True) for a photo known or in flight; else (``submit()``, False). ``submit`` must not block
        (it runs under the lock, so two requests for one photo never both run the model)."""
        with self._lock:
            future = self._items.get(key)
            if future is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return future, True
            future = submit()
            if self.max_bytes > 0:
                self._items[key] = future
        future.add_done_callback(lambda done: self._settle(key, done))
        return future, False

    def _settle(self, key: str, future: Future[Result]) -> None:
        with self._lock:
            if self._items.get(key) is not future:
                return
            if not _usable(future):  # a failure is not remembered: the next try runs again
                del self._items[key]
                return
            self._sizes[key] = _size(future)
            total = sum(self._sizes.values())
            for old in list(self._items):  # oldest first; in-flight entries have no size yet and stay
                if total <= self.max_bytes:
                    break
                if old in self._sizes:
                    total -= self._sizes.pop(old)
                    del self._items[old]
