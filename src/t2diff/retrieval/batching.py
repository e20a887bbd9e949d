"""Answering recommendation jobs: one at a time, or micro-batched across concurrent requests.

A job is one validated request (internal-id history, timestamps, k, exclude_seen). :func:`answer_batch` runs
the user tower ONCE for a list of jobs and searches the index once per group of jobs that ask for the same
search (same k, same number of excluded items), so every job gets exactly the answer it would get alone:
users' vectors do not depend on their batch (padding to max_len, T2Diff's keyed noise) and each group's
search has the shape a lone request would have.

:class:`MicroBatcher` gathers concurrent jobs (bounded batch, bounded wait) and computes each batch in a
worker thread, while the event loop keeps reading requests; :class:`DirectRunner` computes each job alone in
a thread pool (the behaviour without micro-batching).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from t2diff.retrieval.user_tower import ModelOutputError, Retriever


@dataclass(frozen=True)
class BatchingConfig:
    """max_batch: most jobs per user-tower batch (1 = no micro-batching: each request alone, ``threads`` at
    once). max_wait_ms: how long a batch that is not full waits for more requests after the first one.
    workers: batches computed at once."""

    max_batch: int = 64
    max_wait_ms: float = 1.0
    workers: int = 1

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms must be in [0, 1000], got {self.max_wait_ms}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1


@dataclass(frozen=True)
class Job:
    history: list[int]  # internal ids, oldest first
    times: list[int] | None
    request_time: int | None
    k: int
    exclude_seen: bool


Answer = tuple[np.ndarray, np.ndarray]  # (scores [k] float32 descending, internal ids [k]; -1 where missing)


def answer_batch(retriever: Retriever, jobs: list[Job]) -> list[Answer | Exception]:
    """Answers in job order; a job the model or index cannot answer gets its exception, the others their
    answer (one broken history never fails its batch-mates)."""
    try:
        q = retriever.tower.embed([j.history for j in jobs],
                                  [j.times for j in jobs] if any(j.times is not None for j in jobs) else None,
                                  [j.request_time for j in jobs])  # [B, D]
    except Exception as e:  # the whole forward failed: every job gets the error
        return [e] * len(jobs)
    out: list[Answer | Exception] = [ModelOutputError()] * len(jobs)  # every slot is overwritten below
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for r, j in enumerate(jobs):
        if not np.isfinite(q[r]).all():
            continue  # keeps its ModelOutputError
        groups[(j.k, len(set(j.history)) if j.exclude_seen else -1)].append(r)
    for (k, n_excl), rows in groups.items():
        exclude = [set(jobs[r].history) for r in rows] if n_excl >= 0 else None
        try:
            scores, ids = retriever.index.search(q[rows], k, exclude)
        except Exception as e:
            for r in rows:
                out[r] = e
            continue
        for n, r in enumerate(rows):
            out[r] = (scores[n], ids[n])
    return out


class DirectRunner:
    """Each job computed alone, at most ``threads`` at once (no micro-batching)."""

    def __init__(self, retriever: Retriever, threads: int) -> None:
        self.retriever = retriever
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="t2diff-job")

    async def submit(self, job: Job) -> Answer:
        res = (await asyncio.get_running_loop().run_in_executor(self.pool, answer_batch, self.retriever, [job]))[0]
        if isinstance(res, Exception):
            raise res
        return res

    def arrived(self) -> None:  # the runners share one interface with the endpoint
        pass

    def left(self) -> None:
        pass

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class MicroBatcher:
    """Concurrent jobs -> batches of at most ``max_batch``, computed ``workers`` at a time in threads.

    A worker takes every job already queued; if that is fewer than max_batch it waits ``max_wait_ms`` once for
    more, then computes. Jobs whose caller gave up (timed out) are dropped before computing."""

    def __init__(self, retriever: Retriever, cfg: BatchingConfig) -> None:
        self.retriever, self.cfg = retriever, cfg
        self.pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="t2diff-batch")
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Answer]]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0  # counters for /health and tests
        self.jobs = 0
        self.in_flight = 0  # requests inside the endpoint (``arrived`` / ``left``), queued or not yet
        self._computing = 0  # jobs in batches being computed

    def _start(self) -> asyncio.Queue[tuple[Job, asyncio.Future[Answer]]]:
        # started lazily in the running loop, so the batcher also works without a lifespan (ASGI test clients)
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._tasks = [asyncio.get_running_loop().create_task(self._worker()) for _ in range(self.cfg.workers)]
        return self._queue

    async def submit(self, job: Job) -> Answer:
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._start().put_nowait((job, fut))
        return await fut

    def arrived(self) -> None:
        self.in_flight += 1

    def left(self) -> None:
        self.in_flight -= 1

    def _drain(self, batch: list[tuple[Job, asyncio.Future[Answer]]]) -> None:
        assert self._queue is not None
        while len(batch) < self.cfg.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            self._drain(batch)
            # wait for company only when other requests are on their way (being validated, or answered and
            # about to come back): a lone request is computed at once
            others = self.in_flight - len(batch) - self._computing
            if len(batch) < self.cfg.max_batch and self.cfg.max_wait_ms > 0 and others > 0:
                await asyncio.sleep(self.cfg.max_wait_ms / 1000)
                self._drain(batch)
            batch = [(j, f) for j, f in batch if not f.done()]  # callers that timed out
            if not batch:
                continue
            self._computing += len(batch)
            try:
                results = await loop.run_in_executor(self.pool, answer_batch, self.retriever, [j for j, _ in batch])
            except Exception as e:  # the executor itself failed; never let a worker die
                results = [e] * len(batch)
            finally:
                self._computing -= len(batch)
            self.batches += 1
            self.jobs += len(batch)
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
