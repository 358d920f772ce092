"""The micro-batcher: one per model operation, turning many small requests into few full
forward passes. It knows rows, tensors and futures; nothing of HTTP.

A *row* is the unit of work (one image). ``submit`` enqueues a job of n rows, or raises
``QueueFull`` when the queue cannot take them: it is bounded in rows (memory) and, once the
forward-pass rate is measured, in seconds of work (the latency of accepted requests). One asyncio task per batcher
takes up to ``max_batch_rows`` rows from the front of the queue, across jobs, splitting a large
job over several batches, runs one forward pass in the executor (off the event loop) and copies
each job's rows into its result. A job whose client has gone or whose deadline has passed is
dropped before its remaining rows run.

No wait when idle: a batch starts as soon as the worker finds rows. Only when the worker comes
straight from a previous batch (the model is busy, so more rows are likely on their way) and the
batch is not full does it wait up to ``max_wait_s`` to top it up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from app.engine.exceptions import BatchFailed, DeadlineExceeded, NotReady, QueueFull

log = logging.getLogger("latentserve.batching")


class BatcherMetrics(Protocol):
    def batch(self, model: str, rows: int, seconds: float) -> None: ...
    def rows(self, model: str, outcome: str, count: int) -> None: ...
    def queue_rows(self, model: str, rows: int) -> None: ...


class NullMetrics:
    def batch(self, model: str, rows: int, seconds: float) -> None:
        pass

    def rows(self, model: str, outcome: str, count: int) -> None:
        pass

    def queue_rows(self, model: str, rows: int) -> None:
        pass


@dataclass(eq=False)
class Job:
    inputs: tuple[torch.Tensor, ...]  # each (n, ...), row i of the job in row i of each
    n: int
    deadline: float  # in loop.time()
    future: asyncio.Future
    result: np.ndarray | None = None  # (n, ...) once the first rows come back
    taken: int = 0  # rows handed to batches so far
    done: int = 0  # rows whose outputs are in ``result``
    dropped: bool = False
    batch_ids: list[int] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None  # fails the job at its deadline


class Batcher:
    def __init__(self, name: str, run_batch: Callable[..., np.ndarray], *, max_batch_rows: int,
                 max_queue_rows: int, executor: Executor, max_wait_s: float = 0.0,
                 max_queue_wait_s: float = 0.0, metrics: BatcherMetrics | None = None):
        if max_batch_rows <= 0:
            raise ValueError("max_batch_rows must be greater than 0")
        if max_queue_rows <= 0:
            raise ValueError("max_queue_rows must be greater than 0")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        if max_queue_wait_s < 0:
            raise ValueError("max_queue_wait_s must be >= 0")
        self.name = name
        self.run_batch = run_batch
        self.max_batch_rows = max_batch_rows
        self.max_queue_rows = max_queue_rows
        self.max_wait_s = max_wait_s
        self.max_queue_wait_s = max_queue_wait_s
        self.executor = executor
        self.metrics = metrics or NullMetrics()
        self._queue: deque[Job] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._accepting = False
        self._in_flight = 0  # rows in the running forward pass
        self._in_flight_jobs: list[Job] = []
        # counters read by tests, metrics and benchmarks
        self.batches_run = 0
        self.rows_run = 0
        self.last_batch_id = 0
        self._rows_per_s = 0.0  # moving average of the rows/s this batcher delivers: Retry-After, time bound
        self._last_end = 0.0  # perf_counter() at the end of the previous pass

    # -- lifecycle --
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        if self._task is None:
            self._accepting = True
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, timeout_s: float) -> bool:
        """Stop taking jobs, let queued and running rows finish (up to ``timeout_s``), then stop.
        Returns True when everything accepted was finished."""
        self._accepting = False
        deadline = time.monotonic() + timeout_s
        while (self._queued_rows or self._in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        clean = not (self._queued_rows or self._in_flight)
        await self.stop()
        return clean

    async def stop(self) -> None:
        self._accepting = False
        # the worker clears these as it is cancelled: rows taken into a pass (or topping one up)
        # are no longer queued, so failing their jobs counts only the rows not taken yet
        in_flight, in_flight_rows = list(self._in_flight_jobs), self._in_flight
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if in_flight_rows:  # the pass may finish in its thread, but nobody gets its rows
            self.metrics.rows(self.name, "failed", in_flight_rows)
        for job in [*in_flight, *self._queue]:
            self._fail(job, NotReady("the service is shutting down"), "failed")
        self._queue.clear()
        self._in_flight_jobs = []

    # -- the client side --
    def submit(self, inputs: Sequence[torch.Tensor], timeout_s: float) -> Job:
        n = int(inputs[0].shape[0])
        if n <= 0:
            raise ValueError("a job needs at least one row")
        if any(int(t.shape[0]) != n for t in inputs):
            raise ValueError("all inputs of a job need the same number of rows")
        self.admit(n)
        loop = asyncio.get_running_loop()
        job = Job(tuple(inputs), n, loop.time() + timeout_s, loop.create_future())
        job.timer = loop.call_at(job.deadline, self._expire, job)  # a timer, not a task per request
        self._queue.append(job)
        self._queued_rows += n
        self.metrics.queue_rows(self.name, self._queued_rows)
        self._wakeup.set()
        return job

    def admit(self, n: int) -> None:
        """Raise NotReady or QueueFull unless a job of ``n`` rows would be queued now. ``submit``
        checks this too; callers check it first to refuse work before preparing its inputs."""
        if not self._accepting or not self.running:
            raise NotReady(f"model {self.name} is not accepting work")
        refusal = self._refusal(n)
        if refusal is not None:
            self.metrics.rows(self.name, "rejected", n)
            raise QueueFull(refusal, self.retry_after_s())

    def saturated(self) -> bool:
        """True when not even one more row would be admitted (queue full in rows or in time)."""
        return self._refusal(1) is not None

    def _refusal(self, n: int) -> str | None:
        """Why ``n`` more rows cannot be queued now, or None: the bound in rows, then in time."""
        if self._queued_rows + n > self.max_queue_rows:
            return (f"model {self.name} has {self._queued_rows} rows queued; "
                    f"{n} more would exceed the bound of {self.max_queue_rows}")
        wait = self.expected_wait_s(n)
        if self.max_queue_wait_s and self._queued_rows and wait > self.max_queue_wait_s:
            return (f"model {self.name} has {self._queued_rows} rows queued, about {wait:.1f} s of work with "
                    f"these {n}; the bound is {self.max_queue_wait_s:g} s")
        return None

    def _update_rate(self, rate: float) -> None:
        self._rows_per_s = rate if self._rows_per_s == 0 else 0.8 * self._rows_per_s + 0.2 * rate

    def expected_wait_s(self, n: int = 0) -> float:
        """Seconds until ``n`` more rows would be done, from the measured rows/s (0 if unknown)."""
        if self._rows_per_s <= 0:
            return 0.0
        return (self._queued_rows + self._in_flight + n) / self._rows_per_s

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained, from the measured rows/s (1 to 60)."""
        return max(1, min(60, math.ceil(self.expected_wait_s())))

    async def result(self, job: Job) -> np.ndarray:
        """The job's outputs, (n, ...). Raises DeadlineExceeded at the deadline; on cancellation
        (the client went away) the job's remaining rows are dropped."""
        try:
            return await job.future
        except asyncio.CancelledError:
            self.drop(job, "cancelled")
            raise

    def _expire(self, job: Job) -> None:
        if not job.future.done():
            self._fail(job, DeadlineExceeded(f"the request did not finish within its deadline on model {self.name}"),
                       "timed_out")

    async def run(self, inputs: Sequence[torch.Tensor], timeout_s: float) -> np.ndarray:
        return await self.result(self.submit(inputs, timeout_s))

    def drop(self, job: Job, outcome: str) -> None:
        """Forget the job's rows that have not run yet (counted under ``outcome``)."""
        if job.timer is not None:
            job.timer.cancel()
        if job.dropped:
            return
        job.dropped = True
        left = job.n - job.taken
        if left:
            self._queued_rows -= left
            self.metrics.rows(self.name, outcome, left)
            self.metrics.queue_rows(self.name, self._queued_rows)
        if not job.future.done():
            job.future.cancel()

    def _fail(self, job: Job, error: BaseException, outcome: str) -> None:
        if not job.future.done():
            job.future.set_exception(error)
            job.future.exception()  # mark retrieved: the client may be gone
        self.drop(job, outcome)

    # -- the worker side --
    def _take(self, budget: int, now: float) -> list[tuple[Job, int, int]]:
        """Up to ``budget`` rows from the front of the queue as (job, start, count) slices."""
        batch: list[tuple[Job, int, int]] = []
        while budget > 0 and self._queue:
            job = self._queue[0]
            if job.dropped:
                self._queue.popleft()
                continue
            if now >= job.deadline:
                self._queue.popleft()
                self._expire(job)  # its timer has not fired yet; fail it the same way
                continue
            count = min(budget, job.n - job.taken)
            batch.append((job, job.taken, count))
            job.taken += count
            self._queued_rows -= count
            budget -= count
            if job.taken == job.n:
                self._queue.popleft()
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        busy = False
        while True:
            if not self._queue:
                busy = False
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take(self.max_batch_rows, loop.time())
            rows = sum(c for _, _, c in batch)
            if busy and self.max_wait_s > 0 and 0 < rows < self.max_batch_rows:
                # rows taken are in flight while the batch tops up: drain() waits for them, and
                # stop() fails their jobs instead of leaving them to their deadlines
                self._in_flight, self._in_flight_jobs = rows, [job for job, _, _ in batch]
                try:
                    await asyncio.sleep(self.max_wait_s)
                finally:
                    self._in_flight, self._in_flight_jobs = 0, []
                more = self._take(self.max_batch_rows - rows, loop.time())
                batch += more
                rows += sum(c for _, _, c in more)
            self.metrics.queue_rows(self.name, self._queued_rows)
            if not batch:
                continue
            busy_before, busy = busy, True
            try:
                await self._run(batch, rows, loop, busy_before)
            except Exception as e:  # never let one bad batch stop the worker
                log.error("batch of %s failed outside the forward pass: %r", self.name, e,
                          exc_info=(type(e), e, e.__traceback__))
                for job in {id(j): j for j, _, _ in batch}.values():
                    self._fail(job, BatchFailed(f"the batch failed on model {self.name}"), "failed")
            finally:
                self._in_flight, self._in_flight_jobs = 0, []

    async def _run(self, batch: list[tuple[Job, int, int]], rows: int, loop: asyncio.AbstractEventLoop,
                   back_to_back: bool = False) -> None:
        self.last_batch_id += 1
        batch_id = self.last_batch_id
        self._in_flight = rows
        self._in_flight_jobs = [job for job, _, _ in batch]
        n_inputs = len(batch[0][0].inputs)
        inputs = [torch.cat([job.inputs[k][s:s + c] for job, s, c in batch]) for k in range(n_inputs)]
        t0 = time.perf_counter()
        try:
            out = await loop.run_in_executor(self.executor, self.run_batch, *inputs)
        except Exception as e:  # a failed pass fails only its own jobs
            log.error("forward pass %d of %s failed on %d rows: %r", batch_id, self.name, rows, e,
                      exc_info=(type(e), e, e.__traceback__))
            for job in {id(j): j for j, _, _ in batch}.values():
                self._fail(job, BatchFailed(f"the forward pass failed on model {self.name}"), "failed")
            self.metrics.rows(self.name, "failed", rows)
            return
        if len(out) != rows:
            raise RuntimeError(f"run_batch returned {len(out)} rows for {rows}")
        end = time.perf_counter()
        seconds = end - t0
        # The rate that matters is the one under load. Back to back, it is rows per second of wall
        # time since the previous pass ended (the event loop collecting work counts too); a lone
        # pass counts only when at least half full: a 1-row pass says little of what full ones do.
        if back_to_back and self._last_end:
            self._update_rate(rows / max(end - self._last_end, 1e-6))
        elif 2 * rows >= self.max_batch_rows:
            self._update_rate(rows / max(seconds, 1e-6))
        self._last_end = end
        self.batches_run += 1
        self.rows_run += rows
        self.metrics.batch(self.name, rows, seconds)
        self.metrics.rows(self.name, "computed", rows)
        offset = 0
        for job, start, count in batch:
            if not job.future.done():
                if job.result is None:
                    job.result = np.empty((job.n, *out.shape[1:]), dtype=out.dtype)
                job.result[start:start + count] = out[offset:offset + count]
                job.done += count
                job.batch_ids.append(batch_id)
                if job.done == job.n:
                    job.future.set_result(job.result)
                    if job.timer is not None:
                        job.timer.cancel()
            offset += count
