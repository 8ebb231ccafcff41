"""Worker processes for the per-document work: read, tokenize, objective.

Every document's features are a pure function of its global index g (the
grain dataset's randomness comes from (seed, g)), so computing them in other
processes changes nothing but speed: the batches, and the iterator state of
two integers per row, are identical with any number of workers. The packers
still run in the training process, in order; the workers only compute
documents the packers are about to ask for.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Sequence

_WORKER_DOCS = None  # the document dataset, built once in each worker process


def _init_worker(build: Callable[[Any], tuple[Any, int]], cfg) -> None:
    """Build the document dataset in this worker: build is pipeline.train_documents, passed in (not
    imported here) so the pipeline depends on this module and not the other way round."""
    global _WORKER_DOCS
    _WORKER_DOCS, _ = build(cfg)


def _load(g: int):
    return _WORKER_DOCS[g]


class ParallelDocuments:
    """docs[g], computed ahead by a pool of worker processes.

    Reading g schedules g + stride, g + 2*stride, ... (the same row's next
    documents) up to `lookahead`; anything not scheduled is computed here.
    """

    def __init__(self, cfg, docs: Sequence[Any], *, build: Callable[[Any], tuple[Any, int]], num_workers: int,
                 stride: int, lookahead: int = 4):
        self._docs = docs
        self._stride = stride
        self._lookahead = lookahead
        # spawn, not fork: the trainer's process holds JAX runtime threads that fork would copy
        self._pool = ProcessPoolExecutor(
            num_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(build, cfg)
        )
        self._futures: dict[int, Future] = {}
        self._limit = max(64, stride * lookahead * 2)

    def __len__(self) -> int:
        return len(self._docs)

    def __getitem__(self, g: int):
        for j in range(1, self._lookahead + 1):
            nxt = g + j * self._stride
            if nxt not in self._futures and nxt < len(self._docs):
                self._futures[nxt] = self._pool.submit(_load, nxt)
        future = self._futures.pop(g, None)
        if len(self._futures) > self._limit:  # after a jump (set_state), drop stale work
            for f in self._futures.values():
                f.cancel()
            self._futures.clear()
        return self._docs[g] if future is None else future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Strided:
    """view[k] = base[start + k * step]: one batch row's stream of documents."""

    def __init__(self, base, start: int, step: int):
        self._base, self._start, self._step = base, start, step

    def __len__(self) -> int:
        return max(0, (len(self._base) - self._start + self._step - 1) // self._step)

    def __getitem__(self, k: int):
        return self._base[self._start + k * self._step]
