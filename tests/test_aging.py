"""Priority aging: ``Pool(aging=seconds)`` orders jobs by ``priority + queued_at / aging``.

The queue's order is checked with a clock the test controls; the pool's promise
(a stream of urgent jobs cannot starve a less urgent one) with real workers.
"""

from __future__ import annotations

import threading
import time

import pytest

import taskq
from taskq._job import JobRecord
from taskq._queue import JobQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(job_id: int, priority: float) -> JobRecord:
    return JobRecord(job_id, b"call", f"job{job_id}", priority, None, 0, 0.1, None)


def claim_all(queue: JobQueue[JobRecord], limit: int = 1) -> list[int]:
    out: list[int] = []
    while batch := queue.claim(limit):
        out += [r.job_id for r in batch]
    return out


def queue_at(clock: FakeClock, aging: float | None, jobs: list[tuple[float, int, float]]):
    """A queue holding ``(time, job_id, priority)`` jobs, each put at its time."""
    queue: JobQueue[JobRecord] = JobQueue(aging=aging, clock=clock)
    for at, job_id, priority in jobs:
        clock.now = at
        queue.put(record(job_id, priority))
    return queue


# The docstring's worked example, aging=10: the priority-5 job queued at t=0 has key 5.
DOCSTRING_EXAMPLE = [(0, 1, 5), (30, 2, 0), (50, 3, 0), (60, 4, 0)]


def test_the_worked_example_of_the_docstring():
    queue = queue_at(FakeClock(), 10, DOCSTRING_EXAMPLE)
    # keys: 1 -> 5.0, 2 -> 3.0, 3 -> 5.0 (ties with 1, submitted later), 4 -> 6.0
    assert claim_all(queue) == [2, 1, 3, 4]


def test_without_aging_the_order_is_plain_priority_order():
    queue = queue_at(FakeClock(), None, DOCSTRING_EXAMPLE)
    assert claim_all(queue) == [2, 3, 4, 1]


def test_equal_keys_run_in_submission_order():
    # aging=1: priority 2 at t=0 and priority 0 at t=2 both have key 2; so has 1 at t=1.
    queue = queue_at(FakeClock(), 1, [(0, 1, 2), (1, 2, 1), (2, 3, 0), (2, 4, 2)])
    assert claim_all(queue) == [1, 2, 3, 4]


def test_a_batch_stops_where_another_priority_catches_up():
    # Priority 0 jobs at t=0..9 (keys 0..9); one priority-3 job at t=0 (key 3).
    jobs = [(float(t), t + 1, 0) for t in range(10)] + [(0.0, 99, 3)]
    jobs.sort(key=lambda job: job[0])
    queue = queue_at(FakeClock(), 1, jobs)
    # keys 0, 1, 2; job 4 (key 3) ties with job 99, which was submitted earlier
    assert [r.job_id for r in queue.claim(100)] == [1, 2, 3]
    assert claim_all(queue, limit=100) == [99, 4, 5, 6, 7, 8, 9, 10]


def test_cancelled_and_released_jobs_keep_the_aged_order():
    clock = FakeClock()
    queue: JobQueue[JobRecord] = JobQueue(aging=1, clock=clock)
    first, second, late = record(1, 2), record(2, 2), record(3, 0)
    queue.put(first)
    queue.put(second)
    clock.now = 5.0
    queue.put(late)  # key 5: after both priority-2 jobs (keys 2)
    assert queue.cancel(first)
    [taken] = queue.claim(1)
    assert taken is second
    queue.release(second, keep_place=True)  # a worker died before starting it
    assert claim_all(queue) == [2, 3]
    queue.put(record(4, 0))  # key 5, after job 3... which is gone: alone
    clock.now = 10.0
    retry = record(5, 1)
    queue.put(retry)  # key 11
    [again] = queue.claim(1)
    assert again.job_id == 4
    queue.release(again, keep_place=False)  # a retry: queued again now, key 10
    assert claim_all(queue) == [4, 5]


def test_drain_returns_jobs_in_aged_order():
    queue = queue_at(FakeClock(), 10, DOCSTRING_EXAMPLE)
    assert [r.job_id for r in queue.drain()] == [2, 1, 3, 4]
    assert queue.snapshot().depth == 0


def test_many_cancellations_are_compacted_without_losing_order():
    clock = FakeClock()
    queue: JobQueue[JobRecord] = JobQueue(aging=1, clock=clock)
    records = []
    for i in range(200):
        clock.now = float(i)
        records.append(record(i, i % 3))
        queue.put(records[-1])
    for r in records:
        if r.job_id % 5:
            queue.cancel(r)
    expected = sorted(
        (r for r in records if r.job_id % 5 == 0), key=lambda r: (r.priority + r.job_id, r.job_id)
    )
    assert claim_all(queue) == [r.job_id for r in expected]


@pytest.mark.parametrize("bad", [0, -1.5, "1", True])
def test_aging_must_be_a_positive_number_of_seconds(bad):
    with pytest.raises(ValueError, match="aging"):
        taskq.Pool(1, aging=bad)


def test_aging_needs_priority_order():
    with pytest.raises(ValueError, match="aging"):
        taskq.Pool(1, order="fifo", aging=1.0)


# -- with workers -------------------------------------------------------------------------

JOB_SECONDS = 0.02
WORKERS = 2
BACKLOG = 20  # priority-0 jobs queued or running at any time while the stream flows
AGING = 0.05
LOW = 5
# The priority-5 job's key is 5 + t5/AGING: every priority-0 job queued more than
# LOW * AGING = 0.25 s after it has a larger key. At that moment at most BACKLOG
# priority-0 jobs are ahead of it, which the workers finish in BACKLOG * JOB_SECONDS /
# WORKERS = 0.2 s. So it starts within 0.45 s of being queued, plus dispatch latency;
# SLACK absorbs a noisy machine, and is still far below the stream's length.
BOUND = LOW * AGING + BACKLOG * JOB_SECONDS / WORKERS
SLACK = 2.0
STREAM_SECONDS = 8.0  # with aging the stream stops as soon as the low job is done


def started_at() -> float:
    """Sleep for JOB_SECONDS; return when the job started (CLOCK_MONOTONIC is system-wide)."""
    start = time.monotonic()
    time.sleep(JOB_SECONDS)
    return start


class Stream:
    """Keeps BACKLOG priority-0 jobs queued or running: each one that ends queues the next,
    from its done-callback, until ``stop`` is set (or ``until`` passes)."""

    def __init__(self, pool: taskq.Pool, until: float):
        self.pool, self.until = pool, until
        self.stop = threading.Event()
        self.futures: list[taskq.JobFuture[float]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        for _ in range(BACKLOG):
            self._add()

    def _add(self) -> None:
        future = self.pool.submit(started_at)
        with self._lock:
            self.futures.append(future)
        future.add_done_callback(self._next)

    def _next(self, _: object) -> None:
        if not self.stop.is_set() and time.monotonic() < self.until:
            self._add()

    def starts(self) -> list[float]:
        with self._lock:
            futures = list(self.futures)
        return [f.result(timeout=60) for f in futures]


def run_stream(aging: float | None, stream_seconds: float) -> tuple[float, float, list[float]]:
    """(when the low job was queued, when it started, when each stream job started)."""
    with taskq.Pool(WORKERS, aging=aging) as pool:
        stream = Stream(pool, until=time.monotonic() + stream_seconds)
        stream.start()
        time.sleep(0.2)  # the stream is flowing: every worker busy, BACKLOG queued
        queued = time.monotonic()
        low = pool.schedule(started_at, priority=LOW)
        low.add_done_callback(lambda _: stream.stop.set())
        low_start = low.result(timeout=60)
        stream.stop.set()
        starts = stream.starts()
    return queued, low_start, starts


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_with_aging_a_low_priority_job_starts_within_the_bound_while_the_stream_flows():
    queued, low_start, starts = run_stream(AGING, STREAM_SECONDS)
    assert low_start - queued < BOUND + SLACK
    # It overtook the stream: priority-0 jobs still started after it.
    assert any(start > low_start for start in starts)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_without_aging_a_low_priority_job_waits_until_the_stream_stops():
    queued, low_start, starts = run_stream(None, stream_seconds=1.0)
    assert low_start > max(starts)
    assert low_start - queued > 0.5  # the stream ran ~0.8 s more after it was queued
