"""app.engine.batching.Batcher with a fake forward pass: a plain function run in a one-thread executor
that records every batch it is given and returns values derived from its inputs, so each row's
identity can be checked after reassembly. Scenarios are sequenced with threading.Events (the
forward pass blocks until the test opens a gate), never with timing thresholds."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from app.engine.batching import Batcher, NullMetrics
from app.engine.exceptions import BatchFailed, DeadlineExceeded, NotReady, QueueFull

LONG = 10.0  # a deadline no test reaches (bounds a hang too)


class FakeModel:
    """run_batch(x, y): x (B, 2) float32 with row ids in column 0, y (B,) int64.
    Returns (B, 2) float32: [2 * id, y]. Calls listed in ``block`` wait for ``gate``; calls in
    ``fail`` raise."""

    def __init__(self, block: tuple[int, ...] = (), fail: tuple[int, ...] = ()):
        self.block, self.fail = set(block), set(fail)
        self.sizes: list[int] = []  # rows per call, in call order
        self.ids: list[int] = []  # every row id passed to a call
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        call = len(self.sizes)
        self.sizes.append(int(x.shape[0]))
        self.ids.extend(int(v) for v in x[:, 0].tolist())
        if call in self.block:
            self.entered.set()
            if not self.gate.wait(10):
                raise RuntimeError("test gate never opened")
        if call in self.fail:
            raise RuntimeError(f"boom in call {call}")
        return np.stack([x[:, 0].numpy() * 2, y.numpy().astype(np.float32)], axis=1)

    def release(self) -> None:
        self.gate.set()


class RecordingMetrics:
    def __init__(self):
        self.batches: list[tuple[str, int]] = []
        self.row_events: list[tuple[str, str, int]] = []
        self.queue: list[tuple[str, int]] = []

    def batch(self, model: str, rows: int, seconds: float) -> None:
        assert seconds >= 0
        self.batches.append((model, rows))

    def rows(self, model: str, outcome: str, count: int) -> None:
        self.row_events.append((model, outcome, count))

    def queue_rows(self, model: str, rows: int) -> None:
        self.queue.append((model, rows))

    def totals(self) -> Counter:
        c: Counter = Counter()
        for _, outcome, count in self.row_events:
            c[outcome] += count
        return c


def job_inputs(first_id: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(first_id, first_id + n, dtype=torch.float32)
    return torch.stack([ids, -ids], dim=1), (torch.arange(first_id, first_id + n) % 10)


def expected(first_id: int, n: int) -> np.ndarray:
    ids = np.arange(first_id, first_id + n)
    return np.stack([ids * 2.0, ids % 10], axis=1).astype(np.float32)


def ids_of(first_id: int, n: int) -> list[int]:
    return list(range(first_id, first_id + n))


async def wait_until(predicate, what: str = "condition", limit_s: float = 10.0) -> None:
    """Poll (a "does not hang" bound only)."""
    for _ in range(int(limit_s / 0.002)):
        if predicate():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def make():
    executor = ThreadPoolExecutor(1)
    made: list[tuple[Batcher, FakeModel]] = []

    def factory(fake: FakeModel, start: bool = True, **kw) -> Batcher:
        kw.setdefault("max_batch_rows", 8)
        kw.setdefault("max_queue_rows", 256)
        b = Batcher("m", fake, executor=executor, **kw)
        made.append((b, fake))
        if start:
            b.start()
        return b

    yield factory
    for b, fake in made:
        fake.release()
        await b.stop()
    executor.shutdown(wait=True)


# -- construction and submit validation --

@pytest.mark.parametrize("kw, message", [
    ({"max_batch_rows": 0}, "max_batch_rows must be greater than 0"),
    ({"max_batch_rows": -3}, "max_batch_rows must be greater than 0"),
    ({"max_queue_rows": 0}, "max_queue_rows must be greater than 0"),
    ({"max_wait_s": -0.001}, "max_wait_s must be >= 0"),
    ({"max_queue_wait_s": -1}, "max_queue_wait_s must be >= 0"),
])
def test_constructor_validation(kw, message):
    args = {"max_batch_rows": 4, "max_queue_rows": 16, "max_wait_s": 0.0, **kw}
    with ThreadPoolExecutor(1) as ex:
        with pytest.raises(ValueError) as info:
            Batcher("m", FakeModel(), executor=ex, **args)
    assert str(info.value) == message


def test_constructor_defaults():
    with ThreadPoolExecutor(1) as ex:
        b = Batcher("m", FakeModel(), max_batch_rows=4, max_queue_rows=16, executor=ex)
    assert b.max_wait_s == 0.0
    assert isinstance(b.metrics, NullMetrics)
    assert not b.running
    assert (b.queued_rows, b.batches_run, b.rows_run, b.last_batch_id) == (0, 0, 0, 0)


async def test_submit_rejects_empty_and_mismatched_jobs(make):
    fake = FakeModel()
    metrics = RecordingMetrics()
    b = make(fake, metrics=metrics)
    with pytest.raises(ValueError, match="a job needs at least one row"):
        b.submit((torch.empty(0, 2), torch.empty(0, dtype=torch.long)), LONG)
    with pytest.raises(ValueError, match="all inputs of a job need the same number of rows"):
        b.submit((torch.zeros(3, 2), torch.zeros(2, dtype=torch.long)), LONG)
    assert b.queued_rows == 0
    assert metrics.queue == [] and metrics.row_events == []
    # the batcher is still fine
    np.testing.assert_array_equal(await b.run(job_inputs(0, 2), LONG), expected(0, 2))
    assert fake.sizes == [2]


# -- basic batching --

async def test_lone_job_runs_at_once_as_one_batch(make):
    fake = FakeModel()
    b = make(fake, max_wait_s=5.0)  # no top-up wait when idle
    assert b.running
    job = b.submit(job_inputs(10, 3), LONG)
    assert b.queued_rows == 3
    out = await asyncio.wait_for(b.result(job), 5)  # "does not hang" bound, far below max_wait_s
    assert out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_array_equal(out, expected(10, 3))
    assert fake.sizes == [3]
    assert fake.ids == ids_of(10, 3)
    assert (b.batches_run, b.rows_run, b.queued_rows) == (1, 3, 0)
    assert job.batch_ids == [1] and job.done == job.taken == 3


async def test_idle_worker_does_not_wait_to_top_up(make):
    fake = FakeModel(block=(0,))
    b = make(fake, max_wait_s=60.0)
    job = b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the forward pass to start")  # would take 60 s if it waited
    assert fake.sizes == [1]
    fake.release()
    np.testing.assert_array_equal(await b.result(job), expected(0, 1))


async def test_many_concurrent_jobs_share_forward_passes(make):
    fake = FakeModel(block=(0,))
    b = make(fake, max_batch_rows=8)
    first = b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    sizes = [i % 5 + 1 for i in range(20)]  # 1..5 rows, 60 in all
    jobs, starts = [], []
    for i, n in enumerate(sizes):
        starts.append(1000 * (i + 1))
        jobs.append(b.submit(job_inputs(starts[-1], n), LONG))
    assert b.queued_rows == 60
    fake.release()
    results = await asyncio.gather(b.result(first), *(b.result(j) for j in jobs))
    np.testing.assert_array_equal(results[0], expected(0, 1))
    for out, start, n in zip(results[1:], starts, sizes):
        assert out.shape == (n, 2)
        np.testing.assert_array_equal(out, expected(start, n))
    assert fake.sizes == [1] + [8] * 7 + [4]
    assert len(fake.sizes) < 1 + len(jobs)
    assert max(fake.sizes) <= 8
    assert sorted(fake.ids) == sorted([0] + [i for s, n in zip(starts, sizes) for i in ids_of(s, n)])
    assert len(fake.ids) == len(set(fake.ids)) == 61  # no row ran twice
    assert (b.batches_run, b.rows_run, b.queued_rows) == (9, 61, 0)
    # jobs cut by a batch boundary were reassembled from two passes
    assert sum(len(j.batch_ids) == 2 for j in jobs) >= 1
    assert all(1 <= len(j.batch_ids) <= 2 for j in jobs)


async def test_large_job_is_split_and_reassembled_in_order(make):
    fake = FakeModel()
    b = make(fake, max_batch_rows=4)
    job = b.submit(job_inputs(100, 10), LONG)
    out = await b.result(job)
    np.testing.assert_array_equal(out, expected(100, 10))
    assert fake.sizes == [4, 4, 2]
    assert fake.ids == ids_of(100, 10)
    assert job.batch_ids == [1, 2, 3]
    assert (b.batches_run, b.rows_run) == (3, 10)


async def test_split_job_shares_batches_with_others(make):
    fake = FakeModel(block=(0,))
    b = make(fake, max_batch_rows=4)
    first = b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    a = b.submit(job_inputs(100, 3), LONG)
    big = b.submit(job_inputs(200, 7), LONG)
    c = b.submit(job_inputs(300, 2), LONG)
    fake.release()
    outs = await asyncio.gather(*(b.result(j) for j in (first, a, big, c)))
    for out, (s, n) in zip(outs, [(0, 1), (100, 3), (200, 7), (300, 2)]):
        np.testing.assert_array_equal(out, expected(s, n))
    assert fake.sizes == [1, 4, 4, 4]
    assert fake.ids[1:5] == [100, 101, 102, 200]
    assert fake.ids[5:9] == [201, 202, 203, 204]
    assert fake.ids[9:] == [205, 206, 300, 301]
    assert big.batch_ids == [2, 3, 4]


# -- back-pressure --

async def test_queue_bound_raises_queue_full_then_recovers(make):
    fake = FakeModel(block=(0,))
    metrics = RecordingMetrics()
    b = make(fake, max_batch_rows=4, max_queue_rows=10, metrics=metrics)
    first = b.submit(job_inputs(0, 2), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    assert b.queued_rows == 0  # taken by the running batch
    j1 = b.submit(job_inputs(100, 6), LONG)
    j2 = b.submit(job_inputs(200, 4), LONG)  # exactly at the bound: accepted
    assert b.queued_rows == 10
    with pytest.raises(QueueFull) as info:
        b.submit(job_inputs(300, 1), LONG)
    err = info.value
    assert err.retry_after_s >= 1
    assert isinstance(err.retry_after_s, int)
    assert "10 rows queued" in err.message and "bound of 10" in err.message
    assert b.queued_rows == 10
    assert metrics.totals()["rejected"] == 1
    fake.release()
    for job, (s, n) in zip((first, j1, j2), [(0, 2), (100, 6), (200, 4)]):
        np.testing.assert_array_equal(await b.result(job), expected(s, n))
    assert b.queued_rows == 0
    # serves new jobs again, including one as large as the whole queue
    np.testing.assert_array_equal(await b.run(job_inputs(400, 10), LONG), expected(400, 10))
    assert 300 not in fake.ids  # the rejected row never ran
    assert b.rows_run == 2 + 6 + 4 + 10


async def test_queue_bound_in_seconds_of_work(make):
    """Once rows/s is measured, a job that would wait longer than max_queue_wait_s is refused,
    however many rows the row bound allows; a lone job is always taken."""
    fake = FakeModel(block=(1,))
    metrics = RecordingMetrics()
    b = make(fake, max_batch_rows=4, max_queue_rows=1000, max_queue_wait_s=1.0, metrics=metrics)
    assert b.expected_wait_s(100) == 0.0  # nothing measured yet: no time bound
    await b.run(job_inputs(0, 4), LONG)
    assert b.expected_wait_s(100) > 0  # measured now
    b._rows_per_s = 40.0  # as if measured: 40 rows/s
    second = b.submit(job_inputs(10, 4), LONG)  # the worker takes it, and the pass blocks
    await wait_until(fake.entered.is_set, "the second pass")
    queued = b.submit(job_inputs(100, 30), LONG)  # (4 in flight + 30) / 40 = 0.85 s: accepted
    with pytest.raises(QueueFull) as info:
        b.submit(job_inputs(200, 8), LONG)  # (4 + 30 + 8) / 40 = 1.05 s > 1 s
    assert "about 1.1 s of work" in info.value.message and "bound is 1 s" in info.value.message
    assert info.value.retry_after_s == 1  # ceil(34 / 40)
    assert metrics.totals()["rejected"] == 8 and b.queued_rows == 30
    fake.release()
    await b.result(second)
    await b.result(queued)
    assert 200 not in fake.ids


async def test_lone_job_is_taken_whatever_its_expected_time(make):
    fake = FakeModel()
    b = make(fake, max_batch_rows=4, max_queue_rows=1000, max_queue_wait_s=0.001)
    b._rows_per_s = 1.0
    np.testing.assert_array_equal(await b.run(job_inputs(0, 50), LONG), expected(0, 50))


async def test_job_larger_than_queue_is_rejected(make):
    fake = FakeModel()
    b = make(fake, max_batch_rows=4, max_queue_rows=10)
    with pytest.raises(QueueFull):
        b.submit(job_inputs(0, 11), LONG)
    assert b.queued_rows == 0 and fake.sizes == []


# -- deadlines --

async def test_deadline_while_queued_raises_and_rows_never_run(make):
    fake = FakeModel(block=(0,))
    metrics = RecordingMetrics()
    b = make(fake, metrics=metrics)
    first = b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    late = b.submit(job_inputs(100, 3), 0.05)
    with pytest.raises(DeadlineExceeded, match="did not finish within its deadline on model m"):
        await asyncio.wait_for(b.result(late), 10)
    assert late.dropped and isinstance(late.future.exception(), DeadlineExceeded)
    assert b.queued_rows == 0
    fake.release()
    np.testing.assert_array_equal(await b.result(first), expected(0, 1))
    np.testing.assert_array_equal(await b.run(job_inputs(200, 2), LONG), expected(200, 2))
    assert fake.sizes == [1, 2]
    assert not set(ids_of(100, 3)) & set(fake.ids)
    assert b.rows_run == 3
    assert metrics.totals()["timed_out"] == 3


async def test_worker_drops_expired_job_before_running_it(make):
    fake = FakeModel(block=(0,))
    metrics = RecordingMetrics()
    b = make(fake, metrics=metrics)
    first = b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    late = b.submit(job_inputs(100, 3), 0.01)
    # its timer has not fired yet when the worker looks (a busy loop): only the worker's own
    # deadline check can fail it now
    late.timer.cancel()
    loop = asyncio.get_running_loop()
    await wait_until(lambda: loop.time() > late.deadline, "the deadline to pass")
    fake.release()
    np.testing.assert_array_equal(await b.result(first), expected(0, 1))
    await wait_until(late.future.done, "the worker to fail the expired job")
    with pytest.raises(DeadlineExceeded):
        await b.result(late)
    assert fake.sizes == [1]
    assert b.rows_run == 1 and b.queued_rows == 0
    assert metrics.totals()["timed_out"] == 3  # counted once


# -- cancellation --

async def test_cancelled_client_drops_queued_rows(make):
    fake = FakeModel(block=(0,))
    metrics = RecordingMetrics()
    b = make(fake, metrics=metrics)
    first = b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    gone = b.submit(job_inputs(100, 3), LONG)
    task = asyncio.create_task(b.result(gone))
    await asyncio.sleep(0.01)
    assert not task.done()
    assert b.queued_rows == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone.dropped and gone.future.cancelled()
    assert b.queued_rows == 0
    assert metrics.totals()["cancelled"] == 3
    fake.release()
    np.testing.assert_array_equal(await b.result(first), expected(0, 1))
    np.testing.assert_array_equal(await b.run(job_inputs(200, 2), LONG), expected(200, 2))
    assert fake.sizes == [1, 2]
    assert fake.ids == [0, 200, 201]
    assert b.rows_run == 3


async def test_cancelled_client_drops_rest_of_split_job(make):
    fake = FakeModel(block=(0,))
    metrics = RecordingMetrics()
    b = make(fake, max_batch_rows=2, metrics=metrics)
    job = b.submit(job_inputs(100, 6), LONG)
    task = asyncio.create_task(b.result(job))
    await wait_until(fake.entered.is_set, "the first forward pass")
    assert b.queued_rows == 4 and job.taken == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.queued_rows == 0
    fake.release()
    np.testing.assert_array_equal(await b.run(job_inputs(200, 1), LONG), expected(200, 1))
    assert fake.sizes == [2, 1]
    assert fake.ids == [100, 101, 200]
    assert metrics.totals()["cancelled"] == 4
    assert job.done == 0 and job.result is None  # the finished pass was not copied into a dead job


# -- failures --

async def test_failed_batch_fails_only_its_jobs(make, caplog):
    fake = FakeModel(block=(0,), fail=(1,))
    metrics = RecordingMetrics()
    b = make(fake, max_batch_rows=4, metrics=metrics)
    first = b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    a = b.submit(job_inputs(100, 3), LONG)  # all in the failing pass
    bb = b.submit(job_inputs(200, 3), LONG)  # one row in the failing pass, two after
    c = b.submit(job_inputs(300, 2), LONG)
    fake.release()
    np.testing.assert_array_equal(await b.result(first), expected(0, 1))
    for job in (a, bb):
        with pytest.raises(BatchFailed, match="the forward pass failed on model m"):
            await b.result(job)
    np.testing.assert_array_equal(await b.result(c), expected(300, 2))
    assert fake.sizes == [1, 4, 2]
    assert fake.ids == [0, 100, 101, 102, 200, 300, 301]  # bb's last two rows never ran
    assert b.running
    np.testing.assert_array_equal(await b.run(job_inputs(400, 3), LONG), expected(400, 3))
    assert (b.batches_run, b.rows_run, b.queued_rows) == (3, 6, 0)
    totals = metrics.totals()
    assert totals["failed"] == 6 and totals["computed"] == 6
    assert any("boom in call 1" in r.getMessage() or (r.exc_info and "boom" in str(r.exc_info[1]))
               for r in caplog.records if r.name == "latentserve.batching")


# -- top-up wait --

async def _job_queued_during_a_pass(make, rows: int, **kw):
    """A worker just back from a 1-row pass (ids 0), with a job of ``rows`` rows (ids from 100)
    submitted while that pass ran. Returns the batcher, the model, the job and the first result."""
    fake = FakeModel(block=(0,))
    b = make(fake, **kw)
    first = b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    job = b.submit(job_inputs(100, rows), LONG)
    fake.release()
    return b, fake, job, await b.result(first)


async def _top_up_scenario(make, max_wait_s: float) -> FakeModel:
    b, fake, a, first = await _job_queued_during_a_pass(make, 2, max_batch_rows=8, max_wait_s=max_wait_s)
    np.testing.assert_array_equal(first, expected(0, 1))
    # the worker came straight from a batch and found 2 rows: with max_wait_s it is now waiting
    late = b.submit(job_inputs(200, 3), LONG)
    outs = await asyncio.gather(b.result(a), b.result(late))
    np.testing.assert_array_equal(outs[0], expected(100, 2))
    np.testing.assert_array_equal(outs[1], expected(200, 3))
    return fake


async def test_max_wait_tops_up_batch_when_busy(make):
    fake = await _top_up_scenario(make, max_wait_s=0.3)
    assert fake.sizes == [1, 5]
    assert fake.ids[1:] == [100, 101, 200, 201, 202]


async def test_no_top_up_without_max_wait(make):
    fake = await _top_up_scenario(make, max_wait_s=0.0)
    assert fake.sizes == [1, 2, 3]


async def test_top_up_never_exceeds_max_batch_rows(make):
    b, fake, a, _ = await _job_queued_during_a_pass(make, 3, max_batch_rows=4, max_wait_s=0.2)
    late = b.submit(job_inputs(200, 3), LONG)
    outs = await asyncio.gather(b.result(a), b.result(late))
    np.testing.assert_array_equal(outs[0], expected(100, 3))
    np.testing.assert_array_equal(outs[1], expected(200, 3))
    assert fake.sizes == [1, 4, 2]
    assert max(fake.sizes) <= 4


# -- lifecycle --

async def test_submit_before_start_and_after_stop_is_not_ready(make):
    fake = FakeModel()
    b = make(fake, start=False)
    with pytest.raises(NotReady, match="model m is not accepting work"):
        b.submit(job_inputs(0, 1), LONG)
    b.start()
    np.testing.assert_array_equal(await b.run(job_inputs(0, 1), LONG), expected(0, 1))
    b.stop_accepting()
    with pytest.raises(NotReady):
        b.submit(job_inputs(1, 1), LONG)
    await b.stop()
    assert not b.running
    with pytest.raises(NotReady):
        b.submit(job_inputs(2, 1), LONG)
    assert fake.ids == [0]


async def test_stop_fails_queued_jobs_with_not_ready(make):
    fake = FakeModel(block=(0,))
    metrics = RecordingMetrics()
    b = make(fake, metrics=metrics)
    b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    queued = b.submit(job_inputs(100, 3), LONG)
    await b.stop()
    with pytest.raises(NotReady, match="shutting down"):
        await b.result(queued)
    assert b.queued_rows == 0
    # the 3 queued rows, and the 1 row of the pass that was running: its answer reaches nobody
    # (that row was counted under no outcome before; fourth review)
    assert metrics.totals() == {"failed": 4}
    assert 100 not in fake.ids


async def test_drain_finishes_queued_jobs(make):
    fake = FakeModel(block=(0,))
    b = make(fake, max_batch_rows=4)
    jobs = [b.submit(job_inputs(0, 1), LONG)]
    await wait_until(fake.entered.is_set, "the first forward pass")
    jobs += [b.submit(job_inputs(100 * k, 3), LONG) for k in (1, 2, 3)]
    drain = asyncio.create_task(b.drain(10.0))
    await asyncio.sleep(0.01)
    assert not drain.done()
    with pytest.raises(NotReady):
        b.submit(job_inputs(900, 1), LONG)  # drain stops taking work at once
    fake.release()
    assert await drain is True
    assert not b.running
    for job, (s, n) in zip(jobs, [(0, 1), (100, 3), (200, 3), (300, 3)]):
        assert job.future.done()
        np.testing.assert_array_equal(job.future.result(), expected(s, n))
    assert fake.sizes == [1, 4, 4, 1]
    assert 900 not in fake.ids


async def _worker_topping_up(make, **kw):
    """A worker that has taken a 2-row job off the queue and sleeps max_wait_s to top it up."""
    b, fake, taken, _ = await _job_queued_during_a_pass(make, 2, max_batch_rows=8, max_wait_s=0.5, **kw)
    await wait_until(lambda: b.queued_rows == 0, "the worker taking the job")
    assert fake.sizes == [1] and not taken.future.done()
    return b, fake, taken


async def test_drain_waits_for_rows_taken_while_topping_up(make):
    b, fake, taken = await _worker_topping_up(make)
    assert await b.drain(5.0) is True
    assert taken.future.done()
    np.testing.assert_array_equal(taken.future.result(), expected(100, 2))
    assert fake.sizes == [1, 2]


async def test_stop_while_topping_up_fails_the_taken_job(make):
    metrics = RecordingMetrics()
    b, fake, taken = await _worker_topping_up(make, metrics=metrics)
    before = metrics.totals()
    await b.stop()
    with pytest.raises(NotReady, match="shutting down"):
        await asyncio.wait_for(b.result(taken), 1.0)
    assert fake.sizes == [1]
    assert metrics.totals() - before == {"failed": 2}  # the taken job's 2 rows, counted once


async def test_drain_timeout_returns_false(make):
    fake = FakeModel(block=(0,))
    b = make(fake)
    b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    queued = b.submit(job_inputs(100, 2), LONG)
    assert await b.drain(0.05) is False
    assert not b.running
    with pytest.raises(NotReady):
        await b.result(queued)
    fake.release()


# -- metrics --

async def test_metrics_hooks_count_every_outcome(make):
    fake = FakeModel(block=(0,), fail=(2,))
    metrics = RecordingMetrics()
    b = make(fake, max_batch_rows=4, max_queue_rows=8, metrics=metrics)

    first = b.submit(job_inputs(0, 1), LONG)  # computed: 1
    await wait_until(fake.entered.is_set, "the first forward pass")

    gone = b.submit(job_inputs(100, 2), LONG)  # cancelled: 2
    task = asyncio.create_task(b.result(gone))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    late = b.submit(job_inputs(200, 3), 0.02)  # timed out: 3
    with pytest.raises(DeadlineExceeded):
        await b.result(late)

    a = b.submit(job_inputs(300, 4), LONG)  # computed: 4
    with pytest.raises(QueueFull):
        b.submit(job_inputs(400, 5), LONG)  # rejected: 5 (4 + 5 > 8)

    fake.release()
    await b.result(first)
    await b.result(a)
    with pytest.raises(BatchFailed):
        await b.run(job_inputs(500, 2), LONG)  # failed: 2
    await b.run(job_inputs(600, 1), LONG)  # computed: 1

    assert {m for m, _, _ in metrics.row_events} == {"m"}
    assert metrics.totals() == Counter(computed=6, rejected=5, cancelled=2, timed_out=3, failed=2)
    assert metrics.batches == [("m", 1), ("m", 4), ("m", 1)]  # the failed pass is not a batch
    assert ("m", "computed", 4) in metrics.row_events
    assert {m for m, _ in metrics.queue} == {"m"}
    depths = [r for _, r in metrics.queue]
    assert [r for r in depths if r] == [1, 2, 3, 4, 2, 1]  # after each accepted submit
    assert depths[-1] == 0
    assert (b.batches_run, b.rows_run, b.queued_rows) == (3, 6, 0)


# -- regressions: shutdown with a pass in flight, errors outside the forward pass --

async def test_stop_fails_the_in_flight_job_at_once(make):
    fake = FakeModel(block=(0,))
    b = make(fake)
    inflight = b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    assert await b.drain(0.05) is False
    with pytest.raises(NotReady):  # not a 504 after the deadline
        await asyncio.wait_for(b.result(inflight), 2.0)
    fake.release()


async def test_worker_survives_an_error_outside_the_forward_pass(make):
    fake = FakeModel(block=(0,))
    b = make(fake)
    b.submit(job_inputs(0, 1), LONG)
    await wait_until(fake.entered.is_set, "the first forward pass")
    bad_a = b.submit((torch.zeros(1, 3), torch.zeros(1, dtype=torch.long)), LONG)
    bad_b = b.submit((torch.zeros(1, 5), torch.zeros(1, dtype=torch.long)), LONG)  # cannot be concatenated
    fake.release()
    for job in (bad_a, bad_b):
        with pytest.raises(BatchFailed):
            await asyncio.wait_for(b.result(job), 2.0)
    assert b.running
    good = b.submit(job_inputs(500, 2), LONG)
    np.testing.assert_array_equal(await b.result(good), expected(500, 2))
