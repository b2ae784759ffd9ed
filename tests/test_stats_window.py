"""Per-priority statistics: queue depth now, and wait/run percentiles over recent jobs.

The arithmetic is checked on the statistics block directly; the pool's numbers with
a known workload on one worker (counts exact, times within the workload's bounds).
"""

from __future__ import annotations

import time

import pytest

from taskq._stats import BUCKETS, WINDOW, StatsBlock, percentiles
from tests.jobs import raise_value_error, sleep_then

# -- the block, without processes ---------------------------------------------------------


def test_percentiles_are_nearest_rank():
    assert percentiles([]) == (None, None)
    assert percentiles([3.0]) == (3.0, 3.0)
    assert percentiles([float(v) for v in range(100, 0, -1)]) == (50.0, 99.0)
    assert percentiles([float(v) for v in range(1, 11)]) == (5.0, 10.0)


def test_the_window_keeps_the_last_WINDOW_jobs_and_the_histograms_keep_all():
    block = StatsBlock()
    # 500 old jobs at priority 1, then WINDOW newer ones at priority 2 push them out
    # (in batches of several sizes, one larger than the window).
    block.ran([(1, 0.1, 0.5)] * 500)
    block.ran([(2, 0.1, 0.002)] * 7)
    block.ran([(2, 0.1, 0.002)] * (WINDOW - 8))
    block.ran([(2, 0.1, 0.002)] * 1)
    stats = block.read()
    assert list(stats.priorities) == [2]
    assert stats.priorities[2].recent == WINDOW
    assert stats.priorities[2].run_p50 == stats.priorities[2].run_p99 == 0.002
    assert stats.run_seconds.count == stats.wait_seconds.count == 500 + WINDOW
    at = dict(zip(BUCKETS, stats.run_seconds.cumulative, strict=False))
    assert at[0.001] == 0 and at[0.0025] == WINDOW and at[0.5] == 500 + WINDOW
    assert stats.run_seconds.sum == pytest.approx(500 * 0.5 + WINDOW * 0.002)
    assert stats.wait_seconds.sum == pytest.approx(0.1 * (500 + WINDOW))
    block.ran([(3, 0.0, 7.0)] * (WINDOW + 5))  # one batch larger than the window
    stats = block.read()
    assert list(stats.priorities) == [3] and stats.priorities[3].recent == WINDOW
    assert stats.run_seconds.count == 500 + 2 * WINDOW + 5


def test_queued_depths_per_priority_add_up_and_empty_levels_disappear():
    block = StatsBlock()
    block.add_many([], [(0, 3), (5, 2), (-1, 1)])
    block.add_many([], [(5, -2)])
    stats = block.read()
    assert {p: s.queued for p, s in stats.priorities.items()} == {-1: 1, 0: 3}
    assert list(stats.priorities) == [-1, 0]  # most urgent first
    assert stats.priorities[0].recent == 0 and stats.priorities[0].wait_p50 is None


# -- a pool with a known workload ---------------------------------------------------------

FAST, SLOW = 0.05, 0.1  # run times of the priority-1 and priority-2 jobs
HELD = 0.3  # the worker is kept busy at least this long after they are queued


@pytest.mark.timeout(60)
def test_a_known_workload_gives_exact_counts_and_bounded_percentiles(pool_factory, gate):
    pool = pool_factory(1)
    fn, args = gate.job()
    blocker = pool.submit(fn, *args)
    gate.wait_started()
    queued_at = time.monotonic()
    fast = [pool.schedule(sleep_then, (FAST, i), priority=1) for i in range(10)]
    slow = [pool.schedule(sleep_then, (SLOW, i), priority=2) for i in range(5)]
    failing = pool.schedule(raise_value_error, priority=3)

    waiting = pool.stats()
    assert {p: s.queued for p, s in waiting.priorities.items()} == {1: 10, 2: 5, 3: 1}
    assert waiting.queued == 16 and waiting.running == 1

    time.sleep(HELD)
    gate.open()
    for future in [blocker, *fast, *slow]:
        future.result(timeout=30)
    with pytest.raises(ValueError):
        failing.result(timeout=30)
    total = time.monotonic() - queued_at

    stats = pool.stats()
    levels = stats.priorities
    assert {p: (s.queued, s.recent) for p, s in levels.items()} == {
        0: (0, 1),
        1: (0, 10),
        2: (0, 5),
        3: (0, 1),
    }
    assert stats.wait_seconds.count == stats.run_seconds.count == 17
    # Run times: what the jobs slept (and less than everything that happened since).
    assert FAST <= levels[1].run_p50 <= levels[1].run_p99 < total
    assert SLOW <= levels[2].run_p50 <= levels[2].run_p99 < total
    # Waits, one worker, strict priority: the 5th priority-1 job (the median of 10)
    # waited for the blocker and 4 fast jobs; the median priority-2 job (3rd of 5) for
    # the blocker, all 10 fast jobs and 2 slow ones; priority 3 for everything.
    assert HELD + 4 * FAST <= levels[1].wait_p50 < total
    assert HELD + 10 * FAST + 2 * SLOW <= levels[2].wait_p50 < total
    assert HELD + 10 * FAST + 5 * SLOW <= levels[3].wait_p50 < total
    assert levels[1].wait_p50 < levels[2].wait_p50 < levels[3].wait_p50


@pytest.mark.timeout(60)
def test_per_priority_depths_return_to_zero_after_retries_cancels_and_kills(pool_factory, gate):
    pool = pool_factory(2)
    blockers = []
    for name in ("first", "second"):  # both workers busy before anything else is queued
        fn, args = gate.job(name)
        blockers.append(pool.submit(fn, *args))
    for name in ("first", "second"):
        gate.wait_started(name)
    retried = [
        pool.schedule(raise_value_error, priority=p, retries=2, retry_delay=0.01) for p in (1, 2)
    ]
    cancelled = [pool.schedule(sleep_then, (0,), priority=p) for p in (3, 3, 4)]
    killed = pool.schedule(sleep_then, (0,), priority=5)
    assert all(future.cancel() for future in cancelled[:2])
    assert pool.kill(killed)
    assert {p: s.queued for p, s in pool.stats().priorities.items()} == {1: 1, 2: 1, 4: 1}
    gate.open()
    for future in [*blockers, cancelled[2]]:
        future.result(timeout=30)
    for future in retried:
        with pytest.raises(ValueError):
            future.result(timeout=30)

    stats = pool.stats()
    assert stats.queued == 0 and stats.retried == 4 and stats.cancelled == 3
    assert all(level.queued == 0 for level in stats.priorities.values())
    # Every attempt that replied is in the window: 2 blockers, 3 attempts x 2, 1 sleeper.
    assert {p: s.recent for p, s in stats.priorities.items()} == {0: 2, 1: 3, 2: 3, 4: 1}
