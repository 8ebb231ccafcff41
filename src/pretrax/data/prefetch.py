"""Prepare batches ahead of the train step in a background thread, without losing exactness.

The wrapped iterator runs ahead by up to `depth` batches; each prepared batch
travels with the iterator state *after* it, and `get_state()` returns the
state after the last batch actually handed to the trainer. A checkpoint
therefore records what was consumed, not what was prefetched, and a resume
neither skips nor repeats a batch.
"""

from __future__ import annotations

import queue
import threading
from typing import Any


class Prefetcher:
    def __init__(self, iterator, depth: int):
        self._it = iterator
        self._depth = max(1, depth)
        self._state = iterator.get_state()
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> dict:
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def get_state(self) -> dict[str, Any]:
        return self._state

    def set_state(self, state: dict[str, Any]) -> None:
        if self._thread is not None:
            raise RuntimeError("set_state must come before the first batch is read")
        self._it.set_state(state)
        self._state = self._it.get_state()

    def close(self) -> None:
        self._stop.set()
        if self._queue is not None:
            while not self._queue.empty():  # unblock a producer waiting on a full queue
                self._queue.get_nowait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if hasattr(self._it, "close"):
            self._it.close()

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self._depth)
        self._thread = threading.Thread(target=self._produce, name="pretrax-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = next(self._it)
                self._put((batch, self._it.get_state()))
        except BaseException as e:  # surfaced to the trainer on its next batch
            self._put(e)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
