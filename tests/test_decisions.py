"""The manager's decisions, driven step by step with stand-in workers and no processes.

Dispatcher: which worker gets which queued jobs. Collector: what replies and
exits mean for the jobs a worker held. TimeoutWatch: when a job has run too
long. Ledger: the statistics every state change moves.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import CancelledError
from typing import Any

import pytest

import taskq
from taskq import _shm
from taskq._collect import Collector, crash_message
from taskq._dispatch import (
    COPY_AHEAD,
    HOLD_BYTES,
    PACE,
    PACE_BUSY,
    PACE_HEADROOM,
    PACE_MAX,
    PACED_HELD,
    SOLO_SECONDS,
    SPIN,
    BatchPolicy,
    Dispatcher,
    pause,
    spin,
)
from taskq._job import JobFuture, State, WorkItem
from taskq._ledger import Ledger, deliver
from taskq._protocol import Frame, Kind, dumps
from taskq._queue import JobQueue
from taskq._segments import SegmentCache
from taskq._stats import STAT_FIELDS, PoolStats, StatsBlock
from taskq._timeouts import TimeoutWatch


class FakeSlot:
    def __init__(self) -> None:
        self.job, self.started_ns, self.started_seq = 0, 0, 0

    def begin(self, item: WorkItem, started: float | None = None) -> None:
        self.job, self.started_seq = item.job_id, item.wseq
        self.started_ns = int((time.monotonic() if started is None else started) * 1e9)


class FakeWorker:
    """What the decisions read of a worker: its held jobs, flags and slot."""

    def __init__(self, index: int = 0, *, ready: bool = True):
        self.index = self.pid = index
        self.outstanding: deque[WorkItem] = deque()
        self.ready, self.reported = ready, True
        self.stop_reason: str | None = None
        self.stop_job: WorkItem | None = None
        self.init_error: str | None = None
        self.predecessor = None
        self.sent = self.revoked = 0
        self.slot = FakeSlot()

    @property
    def accepting(self) -> bool:
        return self.stop_reason is None

    def running_job(self) -> tuple[int, int]:
        return self.slot.job, self.slot.started_ns

    def hold(self, *items: WorkItem) -> None:
        for item in items:
            self.sent += 1
            item.wseq = self.sent
            self.outstanding.append(item)


def item(job_id: int, priority: float = 0, timeout: float | None = None) -> WorkItem:
    return WorkItem(job_id, JobFuture(), b"", f"job{job_id}", priority, timeout, 0, 0.1, None)


def queue_of(*items: WorkItem) -> JobQueue[WorkItem]:
    queue: JobQueue[WorkItem] = JobQueue()
    for i in items:
        queue.put(i)
    return queue


def ids(items: Any) -> list[int]:
    return [i.job_id for i in items]


# -- Dispatcher ----------------------------------------------------------------------------


def test_a_cold_pool_hands_each_ready_worker_two_jobs_and_a_starting_one_one():
    # Two: the next job is already there when the worker finishes one.
    queue = queue_of(*(item(i) for i in range(1, 7)))
    workers = [FakeWorker(0), FakeWorker(1), FakeWorker(2, ready=False)]
    plan = Dispatcher(queue, BatchPolicy(), None).plan(workers)  # type: ignore[arg-type]
    assert [(w.index, ids(batch)) for w, batch in plan] == [(0, [1, 2]), (1, [3, 4]), (2, [5])]


def test_after_long_jobs_each_worker_holds_only_the_job_it_runs():
    # A second job held behind a long one would start after later jobs other workers
    # took (and the round trip it saves is nothing next to such a job).
    queue = queue_of(*(item(i) for i in range(1, 7)))
    busy, idle, other = FakeWorker(0), FakeWorker(1), FakeWorker(2)
    busy.hold(item(9))
    policy = BatchPolicy()
    policy.observe(SOLO_SECONDS)
    plan = Dispatcher(queue, policy, None).plan([busy, idle, other])  # type: ignore[list-item]
    assert [(w.index, ids(batch)) for w, batch in plan] == [(1, [1]), (2, [2])]
    policy.observe(0.001)  # shorter jobs again: the average falls below the bound
    while policy.average is not None and policy.average >= SOLO_SECONDS:
        policy.observe(0.001)
    plan = Dispatcher(queue, policy, None).plan([FakeWorker(3)])  # type: ignore[list-item]
    assert [(w.index, ids(batch)) for w, batch in plan] == [(3, [3, 4])]


def test_a_busy_worker_that_has_not_replied_gets_nothing():
    queue = queue_of(item(1), item(2))
    busy = FakeWorker(0)
    busy.hold(item(9))
    busy.reported = False
    assert list(Dispatcher(queue, BatchPolicy(), None).plan([busy])) == []  # type: ignore[list-item]


def test_with_mixed_priorities_only_idle_workers_take_one_job_each():
    queue = queue_of(item(1, 5), item(2, 0), item(3, 0))
    idle, busy = FakeWorker(0), FakeWorker(1)
    busy.hold(item(9))
    policy = BatchPolicy()
    policy.observe(1e-6)  # tiny jobs: a backlog of equals would be batched
    plan = Dispatcher(queue, policy, None).plan([busy, idle])  # type: ignore[list-item]
    assert [(w.index, ids(batch)) for w, batch in plan] == [(0, [2])]


def test_an_urgent_job_makes_way_past_held_unstarted_jobs():
    queue = queue_of(item(1, -10))
    worker = FakeWorker(0)
    worker.hold(item(8, 0), item(9, 0))
    dispatcher = Dispatcher(queue, BatchPolicy(), None)
    assert dispatcher.make_way([worker], urgent=-10) == [worker]  # type: ignore[list-item]
    assert dispatcher.make_way([worker], urgent=5) == []  # type: ignore[list-item]


def test_max_tasks_per_child_caps_what_a_worker_is_handed():
    queue = queue_of(*(item(i) for i in range(1, 10)))
    worker = FakeWorker(0)
    policy = BatchPolicy()
    policy.observe(1e-6)
    worker.sent = 2  # two of its three jobs already handed over
    plan = Dispatcher(queue, policy, max_tasks=3).plan([worker])  # type: ignore[list-item]
    assert [ids(batch) for _, batch in plan] == [[1]]


def _large_job(job_id: int, cache: SegmentCache) -> WorkItem:
    """A job whose 1 MiB argument goes through shared memory (never written here)."""
    call = _shm.dump_call((dumps, _shm.outband((bytes(1 << 20),)), {}), cache)
    assert type(call) is _shm.SharedCall
    return WorkItem(job_id, JobFuture(), call, f"job{job_id}", 0, None, 0, 0.1, None)


def _shared_reply(job: WorkItem, size: int) -> Frame:
    """An OK_SHARED reply whose result file holds ``size`` bytes, after a tiny run."""
    return Frame(Kind.OK_SHARED, job.job_id, 1e-5, _shm.SHARED_HEAD.pack(size, False) + b"ref")


def test_jobs_moving_large_buffers_are_held_by_bytes_not_by_their_short_run_time():
    cache = SegmentCache()
    policy = BatchPolicy()
    jobs = [_large_job(i, cache) for i in range(1, 21)]
    policy.observe(1e-5)
    assert not policy.moves_data
    small_limit = policy.limit()
    assert small_limit > 100  # tiny jobs moving nothing: held by the hundred
    policy.observe_all([(job, _shared_reply(job, 1 << 20)) for job in jobs])
    assert policy.moved == pytest.approx(2 << 20, rel=0.02)  # argument + result
    assert policy.limit() == max(1, int(HOLD_BYTES / policy.moved))
    assert policy.moves_data  # so the manager does not pace these jobs (``pause``)
    queue = queue_of(*(item(i) for i in range(100, 120)))
    plan = Dispatcher(queue, policy, None).plan([FakeWorker(0)])  # type: ignore[list-item]
    assert [len(batch) for _, batch in plan] == [2]  # the job it runs, and the next
    # Small jobs again: the bytes average fades, and the time limit rules once more.
    tiny = [(item(i), Frame(Kind.OK, i, 1e-5, dumps(None))) for i in range(200, 300)]
    policy.observe_all(tiny)
    assert 0 < policy.moved < 1.0 and not policy.moves_data  # faded, though never to 0
    assert policy.limit() == small_limit


def test_nothing_is_handed_out_while_results_wait_to_be_copied():
    queue = queue_of(*(item(i) for i in range(1, 10)))
    uncopied = COPY_AHEAD * 2
    dispatcher = Dispatcher(queue, BatchPolicy(), None, lambda: uncopied)
    workers = [FakeWorker(0), FakeWorker(1)]
    assert list(dispatcher.plan(workers)) == []  # type: ignore[arg-type]
    uncopied -= 1  # one result copied: idle workers get work again
    plan = dispatcher.plan(workers)  # type: ignore[arg-type]
    assert [(w.index, ids(batch)) for w, batch in plan] == [(0, [1, 2]), (1, [3, 4])]


def test_a_large_argument_or_a_large_result_alone_counts():
    cache = SegmentCache()
    argument_only, result_only = BatchPolicy(), BatchPolicy()
    for i in range(30):
        job = _large_job(i, cache)
        argument_only.observe_all([(job, Frame(Kind.OK, i, 1e-5, dumps(None)))])
        small = item(i)
        result_only.observe_all([(small, _shared_reply(small, 8 << 20))])
    assert argument_only.moved == pytest.approx(1 << 20, rel=0.02)
    assert argument_only.limit() == int(HOLD_BYTES / argument_only.moved)
    assert result_only.limit() == 1  # 8 MiB each: one at a time (plus the next, by room)


def test_a_worker_stuck_on_a_long_job_while_another_is_idle_is_reported():
    queue: JobQueue[WorkItem] = JobQueue()
    stuck, idle = FakeWorker(0), FakeWorker(1)
    long_job, waiting = item(1), item(2)
    stuck.hold(long_job, waiting)
    stuck.slot.begin(long_job, started=time.monotonic() - 10)
    dispatcher = Dispatcher(queue, BatchPolicy(), None)
    found, _ = dispatcher.stuck([stuck, idle], time.monotonic())  # type: ignore[list-item]
    assert found == [stuck]
    stuck.slot.begin(long_job)  # just started: not stuck yet, look again later
    found, recheck = dispatcher.stuck([stuck, idle], time.monotonic())  # type: ignore[list-item]
    assert found == [] and recheck is not None and recheck > time.monotonic()


def test_the_manager_paces_its_looks_only_while_every_busy_worker_has_work_to_spare():
    short = PACE / 2  # seconds a job takes on average
    enough = max(PACED_HELD, int(PACE_HEADROOM * PACE / short) + 1)  # beyond the running job
    busy, idle = FakeWorker(0), FakeWorker(1)
    busy.hold(*[item(i) for i in range(1, enough + 2)])
    expected = enough * short / PACE_HEADROOM
    assert PACE <= expected < PACE_MAX
    assert pause([busy, idle], short, queued=10) == pytest.approx(expected)  # idle: dispatch_now
    assert pause([busy], short, queued=0) == 0  # a batch's last results: never held back
    assert pause([busy], short, queued=10, moves_data=True) == 0  # the copies set the pace
    assert pause([busy], short, queued=10, busy=2 * PACE_BUSY) == 0  # the manager is behind
    # A plain step on a slow machine is no reason to stop pacing (it once was: 200 µs).
    assert pause([busy], short, queued=10, busy=0.0005) == pytest.approx(expected)
    assert pause([busy], None, queued=10) == 0  # nothing measured yet
    assert pause([busy], 1.0, queued=10) == 0  # long jobs: replies are rare anyway
    assert pause([idle], short, queued=10) == 0  # nobody busy: nothing to gather
    running_dry = FakeWorker(2)
    running_dry.hold(item(100), item(101))
    assert pause([busy, running_dry], short, queued=10) == 0  # it would finish first


def test_the_pause_grows_with_the_work_the_shortest_fed_worker_holds_up_to_a_cap():
    average = PACE / 2
    deep, shallow = FakeWorker(0), FakeWorker(1)
    deep.hold(*[item(i) for i in range(1, 200)])
    assert pause([deep], average, queued=10) == PACE_MAX  # hours of work held: capped
    # the worker with the least work to spare sets the pause: it must not run dry
    shallow.hold(*[item(i) for i in range(200, 200 + 6)])
    assert pause([deep, shallow], average, queued=10) == pytest.approx(5 * average / PACE_HEADROOM)
    # too little to spare for even the shortest pause worth taking: none
    shallow.outstanding.pop()
    shallow.outstanding.pop()
    assert 3 * average / PACE_HEADROOM < PACE
    assert pause([deep, shallow], average, queued=10) == 0


# -- Collector -----------------------------------------------------------------------------


def reply(job: WorkItem, value: Any = None, kind: Kind = Kind.OK) -> Frame:
    return Frame(kind, job.job_id, 0.001, dumps(value))


def test_replies_settle_the_jobs_they_name_in_order():
    worker = FakeWorker(0, ready=False)
    a, b, c = item(1), item(2), item(3)
    worker.hold(a, b, c)
    ready = Frame(Kind.READY, 0, 0.0, b"")
    replies = Collector(BatchPolicy()).take_replies(
        worker,  # type: ignore[arg-type]
        [ready, reply(a, "A"), reply(b, "B")],
    )
    assert replies.ready and worker.ready
    assert [(i.job_id, f.job_id) for i, f in replies.done] == [(1, 1), (2, 2)]
    assert ids(worker.outstanding) == [3] and replies.out_of_step is None


def test_a_released_frame_makes_only_the_segment_of_the_job_it_names_reusable():
    cache = SegmentCache()
    try:
        mapped = memoryview(bytearray(_shm.THRESHOLD))  # a worker maps it (not copied)
        call = _shm.dump_call((dumps, _shm.outband((mapped,)), {}), cache)
        assert type(call) is _shm.SharedCall
        _shm.payload(call)  # handed to a worker: not reusable until it says so
        assert not call.segment.reuse
        job = WorkItem(1, JobFuture(), call, "job1", 0, None, 0, 0.1, None)
        worker = FakeWorker()
        worker.hold(job, item(2))
        collector = Collector(BatchPolicy())
        collector.take_replies(worker, [Frame(Kind.RELEASED, 2, 0.0, b"")])  # type: ignore[arg-type]
        assert not call.segment.reuse  # another job's notice
        released = Frame(Kind.RELEASED, 1, 0.0, b"")
        replies = collector.take_replies(worker, [released, reply(job)])  # type: ignore[arg-type]
        assert call.segment.reuse and ids(i for i, _ in replies.done) == [1]
        _shm.payload(call)  # sent again (a retry): the new worker may keep it mapped
        assert not call.segment.reuse
        call.segment.release()
    finally:
        cache.close()


def test_a_reply_for_the_wrong_job_is_never_settled():
    worker = FakeWorker(0)
    a, b = item(1), item(2)
    worker.hold(a, b)
    replies = Collector(BatchPolicy()).take_replies(worker, [reply(b)])  # type: ignore[arg-type]
    assert replies.done == [] and replies.out_of_step is not None
    assert ids(worker.outstanding) == [1, 2]


@pytest.mark.parametrize("reason", [None, "kill", "timeout", "retire", "stop"])
def test_only_the_job_the_slot_names_is_blamed_the_rest_is_released(reason):
    worker = FakeWorker(0)
    a, b, c = item(1), item(2), item(3)
    worker.hold(a, b, c)
    worker.stop_reason, worker.stop_job = reason, a
    plan = Collector(BatchPolicy()).exit_plan(worker, running_id=2, exitcode=-9)  # type: ignore[arg-type]
    assert plan.blamed is b and ids(plan.release) == [1, 3] and plan.init_failure is None


def test_terminate_blames_nobody():
    worker = FakeWorker(0)
    worker.hold(item(1))
    worker.stop_reason = "terminate"
    plan = Collector(BatchPolicy()).exit_plan(worker, running_id=1, exitcode=-15)  # type: ignore[arg-type]
    assert plan.blamed is None and ids(plan.release) == [1]


def test_a_worker_that_dies_before_ready_is_an_initializer_failure():
    worker = FakeWorker(0, ready=False)
    worker.hold(item(1))
    plan = Collector(BatchPolicy()).exit_plan(worker, running_id=0, exitcode=3)  # type: ignore[arg-type]
    assert plan.init_failure is not None and "before it was ready" in plan.init_failure
    assert "exited with code 3" in plan.init_failure and ids(plan.release) == [1]
    stopped = FakeWorker(1, ready=False)
    stopped.stop_reason = "stop"  # shut down while starting: nothing failed
    plan = Collector(BatchPolicy()).exit_plan(stopped, running_id=0, exitcode=0)  # type: ignore[arg-type]
    assert plan.init_failure is None


def test_the_blamed_jobs_error_says_what_stopped_it():
    worker = FakeWorker(0)
    job = item(1, timeout=0.5)
    for reason, expected in [
        ("kill", CancelledError),
        ("timeout", taskq.JobTimeout),
        (None, taskq.WorkerCrashed),
    ]:
        worker.stop_reason, worker.stop_job = reason, job
        error = Collector.blamed_error(worker, job, -9)  # type: ignore[arg-type]
        assert type(error) is expected
    assert isinstance(error, taskq.WorkerCrashed) and error.exitcode == -9


def test_a_worker_whose_fork_server_died_is_not_blamed_on_its_job():
    message = crash_message(4242, None, item(7))
    assert "fork server" in message and "job 7" in message
    assert "ended the process itself" not in message and "code None" not in message


def test_retries_back_off_and_stop_when_spent():
    job = WorkItem(1, JobFuture(), b"", "j", 0, None, 2, 1.0, (ValueError,))
    job.attempts = 1
    first = Collector.retry_delay(job, ValueError())
    assert first is not None and 0.5 <= first <= 1.0
    job.attempts = 2
    second = Collector.retry_delay(job, ValueError())
    assert second is not None and 1.0 <= second <= 2.0
    assert Collector.retry_delay(job, TypeError()) is None  # not in retry_on
    job.attempts = 3
    assert Collector.retry_delay(job, ValueError()) is None  # spent


# -- TimeoutWatch --------------------------------------------------------------------------


def test_one_pending_check_per_worker_and_it_holds_no_job():
    timers: list[tuple[float, Any, tuple[Any, ...]]] = []
    expired: list[WorkItem] = []
    watch = TimeoutWatch(
        lambda when, action, *args: timers.append((when, action, args)),
        lambda worker, job: expired.append(job),
        lambda worker: True,
    )
    worker = FakeWorker(0)
    for i in range(100):  # a hundred jobs with the same timeout come and go
        job = item(i, timeout=60)
        worker.outstanding = deque([job])
        watch.head_changed(worker)
    assert len(timers) == 1
    assert all(not isinstance(arg, WorkItem) for _, _, args in timers for arg in args)
    job = worker.outstanding[0]
    worker.slot.begin(job, started=time.monotonic() - 120)  # it began long ago
    _, action, args = timers.pop()
    action(*args)
    assert expired == [job]


# -- Ledger --------------------------------------------------------------------------------


def stats_of(block: StatsBlock) -> PoolStats:
    return PoolStats(*block.snapshot())


def test_the_ledger_keeps_submitted_equal_to_what_ended():
    block = StatsBlock(len(STAT_FIELDS))
    ledger = Ledger(block)
    jobs = [item(i) for i in range(4)]
    for job in jobs:
        ledger.submitted(job.priority)
    live = ledger.started(jobs[:3])
    ledger.settled([(live[0], True, 1), (live[1], False, ValueError())], retried=[])
    ledger.released([live[2]])
    ledger.ended([live[2], jobs[3]], lambda j: CancelledError(), running=False)
    s = stats_of(block)
    assert s.submitted == s.succeeded + s.failed + s.cancelled == 4
    assert s.queued == s.running == 0
    assert block.read().priorities == {}  # no priority level left with a queued job
    deliver(ledger.take_outcomes())
    assert jobs[0].future.result(timeout=0) == 1
    assert jobs[3].future.cancelled() and jobs[3].state is State.DONE


def test_a_job_its_caller_cancelled_after_the_claim_drops_out_when_started():
    block = StatsBlock(len(STAT_FIELDS))
    ledger = Ledger(block)
    queue = queue_of(item(1), item(2))
    claimed = queue.claim(2)
    assert claimed[0].future.cancel()  # the caller loses the race, but cancel() is honoured
    assert ids(ledger.started(claimed)) == [2]
    assert claimed[0].future.cancelled() and claimed[0].state is State.DONE


def test_the_manager_polls_before_sleeping_only_without_a_backlog_and_after_short_jobs():
    assert spin(SPIN / 4, queued=0) == SPIN  # one short job at a time: its reply comes soon
    assert spin(SPIN / 4, queued=3) == 0  # a backlog: replies are paced instead
    assert spin(10 * SPIN, queued=0) == 0  # a longer job: its reply would come too late
    assert spin(None, queued=0) == 0  # nothing measured yet
