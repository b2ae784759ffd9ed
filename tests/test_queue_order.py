"""Queue discipline: priorities (the core guarantee), fifo/lifo orders, and maxsize."""

from __future__ import annotations

import contextlib
import queue
import random
import threading
import time

import pytest

import taskq
from tests import jobs
from tests.jobs import wait_until

T = 30


def random_priorities(rng, n):
    """Ints, floats and negatives, with plenty of ties."""
    prios = []
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            prios.append(rng.choice([-2, -1, 0, 1, 2]))  # many ties
        elif r < 0.6:
            prios.append(rng.choice([-1.5, 0.5, 2.0, 1.0, -0.25]))  # float ties (1.0 == 1)
        elif r < 0.8:
            prios.append(round(rng.uniform(-10, 10), 2))
        else:
            prios.append(rng.randint(-1000, 1000))
    return prios


def start_order(ranks):
    """Job indices sorted by the rank at which they started."""
    return sorted(range(len(ranks)), key=lambda i: ranks[i])


def expected_order(prios):
    return sorted(range(len(prios)), key=lambda i: (prios[i], i))


def describe_first_mismatch(actual, expected, prios):
    for pos, (a, e) in enumerate(zip(actual, expected, strict=True)):
        if a != e:
            return (
                f"start #{pos + 1}: job {a} (priority {prios[a]!r}) started where job {e} "
                f"(priority {prios[e]!r}) was expected"
            )
    return "orders are equal"


def queue_behind_busy_worker(pool, gate, prios, counter="order"):
    """One worker busy on the gate; queue one start_rank job per priority; release; ranks."""
    fn, args = gate.job()
    blocker = pool.submit(fn, *args)
    gate.wait_started()
    base = pool.counter(counter).value
    futs = [pool.schedule(jobs.start_rank, (counter,), priority=p) for p in prios]
    wait_until(lambda: pool.stats().queued == len(prios), 10, "every job to be queued")
    gate.open()
    blocker.result(timeout=T)
    return [f.result(timeout=T) - base for f in futs]


# --------------------------------------------------------------------------------------------
# priorities
# --------------------------------------------------------------------------------------------


def test_a_smaller_priority_number_runs_first(pool_factory, gate):
    pool = pool_factory(1, counters=("order",))
    prios = [3, -1, 2.5, -1.5, 0, 10**6, -(10**6), 0.001]
    ranks = queue_behind_busy_worker(pool, gate, prios)
    assert [prios[i] for i in start_order(ranks)] == sorted(prios)


def test_equal_priorities_run_in_submission_order(pool_factory, gate):
    pool = pool_factory(1, counters=("order",))
    ranks = queue_behind_busy_worker(pool, gate, [0] * 60)
    assert ranks == list(range(1, 61))


def test_submit_uses_priority_zero(pool_factory, gate):
    pool = pool_factory(1, counters=("order",))
    fn, args = gate.job()
    pool.submit(fn, *args)
    gate.wait_started()
    late = pool.schedule(jobs.start_rank, ("order",), priority=1)
    plain = pool.submit(jobs.start_rank, "order")
    early = pool.schedule(jobs.start_rank, ("order",), priority=-1)
    tie = pool.schedule(jobs.start_rank, ("order",), priority=0)
    gate.open()
    ranks = [f.result(timeout=T) for f in (early, plain, tie, late)]
    assert ranks == [1, 2, 3, 4]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [1, 2])
def test_jobs_start_exactly_in_priority_then_submission_order(pool_factory, gate, seed):
    """THE guarantee: one busy worker, a few hundred queued jobs, start order == sorted order."""
    rng = random.Random(seed)
    prios = random_priorities(rng, 300)
    pool = pool_factory(1, counters=("order",))
    ranks = queue_behind_busy_worker(pool, gate, prios)
    assert sorted(ranks) == list(range(1, 301)), "each job must start exactly once"
    actual, expected = start_order(ranks), expected_order(prios)
    assert actual == expected, describe_first_mismatch(actual, expected, prios)


@pytest.mark.timeout(90)
def test_priority_order_holds_after_warming_up_adaptive_batching(pool_factory, gate):
    rng = random.Random(99)
    prios = random_priorities(rng, 300)
    pool = pool_factory(1, counters=("order",))
    # warm up: thousands of tiny jobs through submit and map
    warm = [pool.submit(jobs.noop) for _ in range(2000)]
    for f in warm:
        f.result(timeout=T)
    assert sum(1 for _ in pool.map(jobs.identity, range(3000))) == 3000
    ranks = queue_behind_busy_worker(pool, gate, prios)
    actual, expected = start_order(ranks), expected_order(prios)
    assert actual == expected, describe_first_mismatch(actual, expected, prios)


@pytest.mark.timeout(60)
def test_priority_order_holds_for_jobs_queued_while_a_map_is_warm(pool_factory, gate):
    """Jobs queued behind a busy worker right after a hot map are still taken in order."""
    rng = random.Random(7)
    prios = random_priorities(rng, 200)
    pool = pool_factory(1, counters=("order",))
    assert sum(pool.map(jobs.square, range(4000))) == sum(i * i for i in range(4000))
    ranks = queue_behind_busy_worker(pool, gate, prios)
    actual, expected = start_order(ranks), expected_order(prios)
    assert actual == expected, describe_first_mismatch(actual, expected, prios)


@pytest.mark.timeout(60)
def test_with_several_workers_jobs_leave_the_queue_in_priority_order(pool_factory, make_gate):
    workers = 2
    rng = random.Random(5)
    n = 300
    prios = random_priorities(rng, n)
    pool = pool_factory(workers, counters=("order",))
    gate = make_gate()
    blockers = []
    for w in range(workers):
        fn, args = gate.job(f"w{w}")
        blockers.append(pool.submit(fn, *args))
    for w in range(workers):
        gate.wait_started(f"w{w}")
    futs = [pool.schedule(jobs.start_rank, ("order",), priority=p) for p in prios]
    wait_until(lambda: pool.stats().queued == n, 10, "every job to be queued")
    gate.open()
    ranks = [f.result(timeout=T) for f in futs]
    assert sorted(ranks) == list(range(1, n + 1))
    position = {job: pos for pos, job in enumerate(expected_order(prios), start=1)}
    # the jobs that started among the first k must be among the first k + workers in
    # (priority, submission) order: only jobs in flight on other workers can be "skipped"
    by_rank = start_order(ranks)
    worst = 0
    for k in range(1, n + 1):
        worst = max(worst, position[by_rank[k - 1]])
        assert worst <= k + workers, (
            f"among the first {k} starts is job {by_rank[k - 1]} at priority position {worst}"
        )


# --------------------------------------------------------------------------------------------
# fifo / lifo
# --------------------------------------------------------------------------------------------


def test_order_fifo_behaves_like_queue_queue(pool_factory, gate):
    pool = pool_factory(1, counters=("order",), order="fifo")
    ranks = queue_behind_busy_worker(pool, gate, [0] * 50)
    assert ranks == list(range(1, 51))


def test_order_lifo_behaves_like_lifo_queue(pool_factory, gate):
    pool = pool_factory(1, counters=("order",), order="lifo")
    ranks = queue_behind_busy_worker(pool, gate, [0] * 50)
    assert ranks == list(range(50, 0, -1))


def test_order_lifo_takes_the_newest_job_at_each_step(pool_factory, gate):
    """Like LifoQueue: jobs added while others wait go on top of the stack."""
    pool = pool_factory(1, counters=("order",), order="lifo")
    fn, args = gate.job()
    pool.submit(fn, *args)
    gate.wait_started()
    first = [pool.submit(jobs.start_rank, "order") for _ in range(3)]
    second = [pool.submit(jobs.start_rank, "order") for _ in range(3)]
    gate.open()
    assert [f.result(timeout=T) for f in second] == [3, 2, 1]
    assert [f.result(timeout=T) for f in first] == [6, 5, 4]


def test_an_unknown_order_is_rejected():
    with pytest.raises(ValueError):
        taskq.Pool(1, order="random")


# --------------------------------------------------------------------------------------------
# maxsize
# --------------------------------------------------------------------------------------------


def fill_queue(pool, gate, n):
    fn, args = gate.job()
    blocker = pool.submit(fn, *args)
    gate.wait_started()
    queued = [pool.schedule(jobs.counter_add, ("ran",), block=False) for _ in range(n)]
    return blocker, queued


def test_maxsize_bounds_the_waiting_jobs_not_the_running_ones(pool_factory, gate):
    pool = pool_factory(1, maxsize=3, counters=("ran",))
    blocker, queued = fill_queue(pool, gate, 3)  # the running blocker does not count
    before = pool.stats()
    assert before.queued == 3
    assert before.running == 1
    with pytest.raises(taskq.Full) as info:
        pool.schedule(jobs.counter_add, ("ran",), block=False)
    assert isinstance(info.value, queue.Full)
    after = pool.stats()
    assert after.submitted == before.submitted, "a rejected job must not count as submitted"
    assert after.queued == 3
    gate.open()
    assert sorted(f.result(timeout=T) for f in queued) == [1, 2, 3]
    blocker.result(timeout=T)
    time.sleep(0.1)
    assert pool.counter("ran").value == 3, "the rejected job must never run"


def test_block_false_succeeds_again_once_there_is_room(pool_factory, gate):
    pool = pool_factory(1, maxsize=2, counters=("ran",))
    _, queued = fill_queue(pool, gate, 2)
    with pytest.raises(taskq.Full):
        pool.schedule(jobs.noop, block=False)
    gate.open()
    for f in queued:
        f.result(timeout=T)
    assert pool.schedule(jobs.add, (1, 2), block=False).result(timeout=T) == 3


@pytest.mark.parametrize("how", ["schedule", "submit"])
def test_a_blocking_submission_waits_for_room(pool_factory, gate, how):
    pool = pool_factory(1, maxsize=2, counters=("ran",))
    _, queued = fill_queue(pool, gate, 2)
    submitted_before = pool.stats().submitted
    result = {}

    def producer():
        if how == "schedule":
            fut = pool.schedule(jobs.add, (20, 22), block=True)
        else:
            fut = pool.submit(jobs.add, 20, 22)
        result["fut"] = fut

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.4)
    assert t.is_alive(), f"{how} should block while the queue is full"
    assert pool.stats().queued == 2
    assert pool.stats().submitted == submitted_before
    gate.open()
    t.join(T)
    assert not t.is_alive()
    assert result["fut"].result(timeout=T) == 42
    assert all(isinstance(f.result(timeout=T), int) for f in queued)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["map", "imap_unordered"])
def test_map_never_overfills_a_bounded_queue(pool_factory, method):
    maxsize = 4
    pool = pool_factory(2, maxsize=maxsize)
    highest = 0
    stop = threading.Event()

    def watch():
        nonlocal highest
        while not stop.is_set():
            highest = max(highest, pool.stats().queued)
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        if method == "map":
            out = list(pool.map(jobs.sleep_then, [0.002] * 400, range(400), timeout=50))
            assert out == list(range(400))
        else:
            out = list(pool.imap_unordered(jobs.square, range(3000)))
            assert sorted(out) == [i * i for i in range(3000)]
    finally:
        stop.set()
        watcher.join()
    assert highest <= maxsize, f"stats().queued reached {highest} > maxsize={maxsize}"


def test_map_with_a_bounded_queue_and_other_producers_completes(pool_factory):
    pool = pool_factory(2, maxsize=3)
    futs = []

    def producer():
        for i in range(100):
            futs.append(pool.submit(jobs.square, i))

    t = threading.Thread(target=producer)
    t.start()
    assert list(pool.map(jobs.square, range(200), timeout=50)) == [i * i for i in range(200)]
    t.join(T)
    assert sorted(f.result(timeout=T) for f in futs) == [i * i for i in range(100)]


# --------------------------------------------------------------------------------------------
# no head-of-line blocking: a waiting job is never stuck behind a blocked job on one worker
# while another worker is idle
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_two_blocking_jobs_start_on_two_workers_after_a_burst_of_tiny_jobs(pool_factory, make_gate):
    """A job handed to a busy worker must not stay stuck there while another worker idles.

    The race is narrow, so the scenario runs on 25 fresh pools."""
    for trial in range(25):
        pool = pool_factory(2)
        gate = make_gate()
        tiny = [pool.submit(jobs.square, i) for i in range(10)]
        tiny += [pool.submit(jobs.raise_value_error) for _ in range(3)]
        blockers = []
        for name in ("a", "b"):
            fn, args = gate.job(name)
            blockers.append(pool.submit(fn, *args))
        deadline = time.monotonic() + 5
        while not (gate.is_started("a") and gate.is_started("b")):
            assert time.monotonic() < deadline, (
                f"trial {trial}: after 5 s only {[n for n in 'ab' if gate.is_started(n)]} of "
                f"the two blocking jobs started although the pool has 2 workers; {pool.stats()}"
            )
            time.sleep(0.005)
        gate.open()
        for f in blockers + tiny:
            with contextlib.suppress(ValueError):
                f.result(timeout=T)
        pool.shutdown()


@pytest.mark.timeout(90)
def test_a_quick_job_does_not_wait_behind_a_blocked_worker_while_another_is_idle(
    pool_factory, make_gate
):
    for _ in range(3):
        pool = pool_factory(2)
        gate = make_gate()
        for f in [pool.submit(jobs.square, i) for i in range(500)]:
            f.result(timeout=T)
        fn, args = gate.job()
        pool.submit(fn, *args)
        quick = [pool.submit(jobs.square, i) for i in range(20)]
        for f in quick:  # the blocked job would hold them for 60 s
            assert f.result(timeout=30) in range(400)
        gate.open()
        pool.shutdown(wait=True)  # before the next pool forks: no other pool's threads
