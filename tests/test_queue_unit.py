"""JobQueue and JobRecord, without processes: order, ties, release, cancel, bounds."""

from __future__ import annotations

import pickle
import threading

import pytest

import taskq
from taskq._job import JobFuture, JobRecord, State, WorkItem
from taskq._queue import JobQueue, QueueClosed, QueueSnapshot


def record(job_id: int, priority: float = 0) -> JobRecord:
    return JobRecord(job_id, b"call", f"job{job_id}", priority, None, 0, 0.1, None)


def ids(records: list[JobRecord]) -> list[int]:
    return [r.job_id for r in records]


def claim_all(queue: JobQueue[JobRecord]) -> list[int]:
    out: list[int] = []
    while batch := queue.claim(1000):
        out += ids(batch)
    return out


def test_smaller_priority_first_and_ties_in_submission_order():
    queue: JobQueue[JobRecord] = JobQueue()
    for job_id, priority in [(1, 5), (2, 0), (3, 5), (4, -1.5), (5, 0)]:
        queue.put(record(job_id, priority))
    assert claim_all(queue) == [4, 2, 5, 1, 3]


def test_fifo_and_lifo_ignore_priorities():
    for order, expected in [("fifo", [1, 2, 3]), ("lifo", [3, 2, 1])]:
        queue: JobQueue[JobRecord] = JobQueue(order)
        for job_id, priority in [(1, 9), (2, 0), (3, 5)]:
            queue.put(record(job_id, priority))
        assert claim_all(queue) == expected


def test_claim_takes_one_priority_at_a_time_and_a_share_of_it():
    queue: JobQueue[JobRecord] = JobQueue()
    for job_id in range(1, 9):
        queue.put(record(job_id, 0))
    queue.put(record(9, 1))
    assert ids(queue.claim(100, share=2)) == [1, 2, 3, 4]  # half of the 8 equals
    assert ids(queue.claim(100, share=2)) == [5, 6]
    assert ids(queue.claim(100)) == [7, 8]  # never mixed with the next priority
    assert ids(queue.claim(100)) == [9]


def test_a_released_job_keeps_its_place_and_a_retry_goes_behind_its_equals():
    queue: JobQueue[JobRecord] = JobQueue()
    records = [record(i) for i in range(1, 5)]
    for r in records:
        queue.put(r)
    first, second = queue.claim(2)
    queue.release(second, keep_place=True)
    queue.release(first, keep_place=False)
    assert claim_all(queue) == [2, 3, 4, 1]
    assert all(r.state is State.CLAIMED for r in records)


@pytest.mark.parametrize("order, aging", [("priority", None), ("fifo", None), ("priority", 5.0)])
def test_jobs_taken_back_keep_their_places_whatever_order_they_come_back_in(order, aging):
    # A worker's unstarted jobs go back newest first (each then lands in front); the
    # queue's order must not depend on it, whatever was queued meanwhile.
    results = []
    for back in (lambda taken: taken, lambda taken: taken[::-1]):
        queue: JobQueue[JobRecord] = JobQueue(order, aging=aging)
        for job_id in range(1, 7):
            queue.put(record(job_id, priority=job_id % 2))
        taken = [*queue.claim(2), *queue.claim(2)]  # two priorities: 2, 4 then 1, 3
        queue.put(record(7, priority=0))
        queue.put(record(8, priority=1))
        for item in back(taken):
            queue.release(item, keep_place=True)
        results.append(claim_all(queue))
    expected = [1, 2, 3, 4, 5, 6, 7, 8] if order == "fifo" else [2, 4, 6, 7, 1, 3, 5, 8]
    assert results == [expected, expected]


def test_cancel_wins_or_claim_wins_never_both():
    queue: JobQueue[JobRecord] = JobQueue()
    a, b = record(1), record(2)
    queue.put(a)
    queue.put(b)
    assert queue.cancel(a) is True and a.state is State.REMOVED
    assert ids(queue.claim(10)) == [2]
    assert queue.cancel(b) is False  # claimed first: the claimer owns it
    assert queue.cancel(a) is False  # only once


def test_concurrent_cancel_and_claim_each_job_goes_to_exactly_one_side():
    queue: JobQueue[JobRecord] = JobQueue()
    records = [record(i) for i in range(5000)]
    for r in records:
        queue.put(r)
    cancelled: list[int] = []
    claimed: list[int] = []

    def cancel_all():
        cancelled.extend(r.job_id for r in reversed(records) if queue.cancel(r))

    thread = threading.Thread(target=cancel_all)
    thread.start()
    while batch := queue.claim(7):
        claimed += ids(batch)
    thread.join(30)
    claimed += claim_all(queue)
    assert sorted(cancelled + claimed) == list(range(5000))
    assert not set(cancelled) & set(claimed)


def test_cancelled_jobs_are_compacted_away():
    queue: JobQueue[JobRecord] = JobQueue()
    records = [record(i) for i in range(1000)]
    for r in records:
        queue.put(r)
    for r in records[:900]:
        queue.cancel(r)
    assert queue.snapshot().depth == 100
    assert claim_all(queue) == list(range(900, 1000))
    assert queue.claim(10) == []


@pytest.mark.timeout(10)
@pytest.mark.parametrize("aging", [None, 0.5])
def test_a_priority_whose_jobs_were_all_cancelled_does_not_stop_claims(aging):
    # Cancelling enough jobs compacts the queue; a level left with no job must not
    # stall claims of the next one (it once made claim() loop for ever under the lock).
    queue: JobQueue[JobRecord] = JobQueue(aging=aging)
    urgent = [record(i, 0) for i in range(65)]
    for r in urgent:
        queue.put(r)
    queue.put(record(100, 1))
    for r in urgent:
        assert queue.cancel(r)
    assert queue.snapshot().depth == 1
    assert ids(queue.claim(2, share=2)) == [100]
    assert queue.claim(2, share=2) == []
    queue.put(record(101, 0))  # the emptied level can come back
    assert ids(queue.claim(2)) == [101]


def test_snapshot_reports_depth_head_and_mix():
    queue: JobQueue[JobRecord] = JobQueue()
    assert queue.snapshot() == QueueSnapshot(0, None, False)
    queue.put(record(1, 3))
    assert queue.snapshot() == QueueSnapshot(1, 3, False)
    queue.put(record(2, -2))
    assert queue.snapshot() == QueueSnapshot(2, -2, True)
    assert JobQueue("fifo").snapshot().head is None


def test_maxsize_raises_full_and_released_jobs_ignore_it():
    queue: JobQueue[JobRecord] = JobQueue(maxsize=2)
    queue.put(record(1))
    queue.put(record(2))
    with pytest.raises(taskq.Full):
        queue.put(record(3), block=False)
    with pytest.raises(taskq.Full):
        queue.put(record(3), timeout=0.01)
    queue.put(record(3), force=True)  # a job queued from the manager thread
    (taken,) = queue.claim(1)
    queue.release(taken, keep_place=True)
    assert queue.snapshot().depth == 3


def test_a_writer_blocked_on_a_full_queue_is_woken_by_a_claim_and_by_close():
    queue: JobQueue[JobRecord] = JobQueue(maxsize=1)
    queue.put(record(1))
    errors: list[BaseException] = []

    def put(job_id):
        try:
            queue.put(record(job_id))
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=put, args=(2,))
    writer.start()
    assert ids(queue.claim(1)) == [1]
    writer.join(30)
    assert not writer.is_alive() and not errors
    closer = threading.Thread(target=put, args=(3,))
    closer.start()
    queue.close()
    closer.join(30)
    assert not closer.is_alive() and isinstance(errors[0], QueueClosed)


def test_drain_returns_what_waits_in_order_and_empties_the_queue():
    queue: JobQueue[JobRecord] = JobQueue()
    records = [record(1, 2), record(2, 1), record(3, 2)]
    for r in records:
        queue.put(r)
    queue.cancel(records[0])
    assert ids(queue.drain()) == [2, 3]
    assert queue.snapshot().depth == 0 and queue.claim(10) == []


def test_a_record_round_trips_as_plain_data_and_carries_no_future():
    item = WorkItem(7, JobFuture(), b"payload", "fn", 2.5, 30.0, 3, 0.5, (ValueError,))
    item.seq, item.attempts = 11, 2
    fields = pickle.loads(pickle.dumps(item.dump()))
    copy = JobRecord.load(fields)
    assert type(copy) is JobRecord
    for name in JobRecord.__slots__:
        assert getattr(copy, name) == getattr(item, name), name
    assert not any(isinstance(value, JobFuture) for value in fields)


def test_a_work_item_starts_as_the_record_it_extends():
    # WorkItem.__init__ assigns the record's fields itself (one call fewer per submit):
    # a field added to JobRecord must be set there too, with the same first value.
    args = (7, b"call", "job7", 2.5, 1.0, 3, 0.2, (ValueError,))
    record = JobRecord(*args)
    work = WorkItem(args[0], JobFuture(), *args[1:])
    for field in JobRecord.__slots__:
        assert getattr(work, field) == getattr(record, field), field
