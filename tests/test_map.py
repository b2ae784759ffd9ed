"""map() and imap_unordered(): order, zipping, timeouts, errors, laziness, chunksize."""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import jobs

T = 30


def test_map_returns_results_in_input_order(pool_factory):
    pool = pool_factory(2)
    # later items finish first: the order must still be the input order
    delays = [0.05 * ((7 - i) % 4) for i in range(12)]
    assert list(pool.map(jobs.sleep_then, delays, range(12), timeout=T)) == list(range(12))


def test_map_zips_several_iterables_like_builtin_map(pool_factory):
    pool = pool_factory(2)
    a, b, c = range(10), range(100, 107), [1000] * 20
    expected = list(map(lambda x, y, z: x + y + z, a, b, c))
    assert list(pool.map(jobs.add3, a, b, c, timeout=T)) == expected


def test_map_over_nothing_yields_nothing(pool_factory):
    pool = pool_factory(1)
    assert list(pool.map(jobs.square, [])) == []
    assert list(pool.imap_unordered(jobs.square, [])) == []


def test_map_timeout_is_measured_from_the_call(pool_factory):
    pool = pool_factory(2)
    it = pool.map(jobs.sleep_then, [0.0, 30, 0.0], ["a", "b", "c"], timeout=5.0)
    time.sleep(5.5)  # past the timeout before iterating: that time counts
    t0 = time.monotonic()
    assert next(it) == "a"
    with pytest.raises(concurrent.futures.TimeoutError):
        next(it)
    # Counted from the first next(), it would have waited 5 s more.
    assert time.monotonic() - t0 < 4.5


def test_map_reraises_the_first_exception_when_its_result_is_reached(pool_factory):
    pool = pool_factory(2)
    it = pool.map(jobs.square_or_fail_at, range(10), [4] * 10, timeout=T)
    got = [next(it) for _ in range(4)]
    assert got == [0, 1, 4, 9]
    with pytest.raises(ZeroDivisionError, match="bad item 4"):
        next(it)


@pytest.mark.timeout(60)
def test_map_streams_an_infinite_iterable(pool_factory):
    pool = pool_factory(2)
    it = pool.map(jobs.square, itertools.count())
    first = list(itertools.islice(it, 1000))
    assert first == [i * i for i in range(1000)]
    # the pool still works afterwards, with the abandoned map still open ...
    assert pool.submit(jobs.add, 1, 1).result(timeout=T) == 2
    # ... and once it is closed
    it.close()
    assert pool.submit(jobs.add, 2, 2).result(timeout=T) == 4
    assert list(pool.map(jobs.square, range(5), timeout=T)) == [0, 1, 4, 9, 16]


@pytest.mark.timeout(60)
def test_imap_unordered_streams_an_infinite_iterable(pool_factory):
    pool = pool_factory(2)
    it = pool.imap_unordered(jobs.square, itertools.count())
    got = list(itertools.islice(it, 500))
    assert len(set(got)) == 500
    it.close()
    assert pool.submit(jobs.add, 1, 1).result(timeout=T) == 2


# bounded read-ahead: a few chunks per worker in flight, and adaptive chunks of tiny items can
# hold thousands of items each; the bound must not depend on the source's length
MAX_READ_AHEAD = 200_000


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["map", "imap_unordered"])
def test_the_input_is_not_consumed_far_ahead_of_the_results(pool_factory, method):
    """After reading k results only a bounded number of items has been pulled."""
    pool = pool_factory(2)
    pulled = 0
    lock = threading.Lock()

    def source():
        nonlocal pulled
        for i in range(10_000_000):
            with lock:
                pulled += 1
            yield i

    if method == "map":
        it = pool.map(jobs.square, source())
    else:
        it = pool.imap_unordered(jobs.square, source())
    read = 0
    for k in (10, 2000, 60_000):
        got = list(itertools.islice(it, k - read))
        assert len(got) == k - read
        read = k
        time.sleep(0.3)  # give a greedy implementation the chance to run ahead
        with lock:
            first_look = pulled
        time.sleep(0.3)
        with lock:
            second_look = pulled
        # while the caller reads nothing, reading ahead stops (at a bound)
        assert second_look == first_look, "the input keeps being read while nobody reads"
        ahead = second_look - k
        assert ahead <= MAX_READ_AHEAD, f"pulled {second_look} items after reading {k} results"
    it.close()


def test_the_input_of_a_slow_map_is_not_consumed_ahead(pool_factory):
    pool = pool_factory(2)
    pulled = 0

    def source():
        nonlocal pulled
        for _ in range(10_000):
            pulled += 1
            yield 0.01

    it = pool.map(jobs.sleep_then, source(), itertools.repeat(1))
    assert list(itertools.islice(it, 5)) == [1] * 5
    time.sleep(0.3)
    assert pulled < 1000, pulled
    it.close()


def test_imap_unordered_yields_each_result_exactly_once(pool_factory):
    pool = pool_factory(2)
    got = list(pool.imap_unordered(jobs.square, range(500)))
    assert collections.Counter(got) == collections.Counter(i * i for i in range(500))


def test_imap_unordered_yields_results_as_they_finish(pool_factory):
    pool = pool_factory(2)
    t0 = time.monotonic()
    it = pool.imap_unordered(jobs.sleep_then_pid, [30, 0.0, 0.0])
    next(it)
    assert time.monotonic() - t0 < 20, "the fast result waited for the slow one"
    it.close()


def test_imap_unordered_reraises_a_job_exception(pool_factory):
    pool = pool_factory(2)
    with pytest.raises(ValueError, match="odd input"):
        list(pool.imap_unordered(jobs.fail_if_odd, range(10)))


@pytest.mark.parametrize("chunksize", [1, 2, 7, 50, 1000])
def test_an_explicit_chunksize_gives_the_same_results(pool_factory, chunksize):
    pool = pool_factory(2)
    data = range(333)
    assert list(pool.map(jobs.square, data, chunksize=chunksize, timeout=T)) == [
        i * i for i in data
    ]
    assert sorted(pool.imap_unordered(jobs.square, data, chunksize=chunksize)) == [
        i * i for i in data
    ]


def test_map_with_chunksize_reraises_the_failing_item(pool_factory):
    pool = pool_factory(2)
    it = pool.map(jobs.square_or_fail_at, range(30), [17] * 30, chunksize=7, timeout=T)
    assert list(itertools.islice(it, 17)) == [i * i for i in range(17)]
    with pytest.raises(ZeroDivisionError, match="bad item 17"):
        next(it)


def test_map_and_imap_unordered_accept_a_priority(pool_factory):
    pool = pool_factory(2)
    assert list(pool.map(jobs.square, range(10), priority=-3, timeout=T)) == [
        i * i for i in range(10)
    ]
    assert sorted(pool.imap_unordered(jobs.square, range(10), priority=2.5)) == [
        i * i for i in range(10)
    ]


def test_map_priority_puts_its_items_ahead_of_queued_jobs(pool_factory, gate):
    pool = pool_factory(1, counters=("order",))
    fn, args = gate.job()
    pool.submit(fn, *args)
    gate.wait_started()
    low = [pool.schedule(jobs.start_rank, priority=5) for _ in range(5)]
    ranks = []
    consumer = threading.Thread(
        target=lambda: ranks.extend(pool.map(jobs.start_rank, ["order"] * 5, priority=-5))
    )
    consumer.start()
    jobs.wait_until(lambda: pool.stats().queued > 5, 30, "the map to queue its first items")
    gate.open()
    consumer.join(T)
    low_ranks = [f.result(timeout=T) for f in low]
    assert len(ranks) == 5
    assert ranks[0] < min(low_ranks), (ranks, low_ranks)


def test_map_results_are_right_after_warming_up_adaptive_batching(pool_factory):
    pool = pool_factory(2)
    assert sum(pool.map(jobs.square, range(5000))) == sum(i * i for i in range(5000))
    assert list(pool.map(jobs.sleep_then, [0.02] * 20, range(20), timeout=T)) == list(range(20))


def test_a_failing_map_leaves_the_pool_serving(pool_factory):
    pool = pool_factory(2)
    with pytest.raises(ValueError):
        list(pool.map(jobs.fail_if_odd, range(100)))
    assert pool.submit(jobs.add, 3, 4).result(timeout=T) == 7


# --------------------------------------------------------------------------------------------
# property: map == builtin map, imap_unordered == the same multiset, whatever the chunksize
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_pool():
    import taskq

    pool = taskq.Pool(2)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    a=st.lists(st.integers(-1000, 1000), max_size=60),
    b=st.lists(st.integers(-1000, 1000), max_size=60),
    chunksize=st.integers(1, 20),
)
def test_map_agrees_with_builtin_map_for_any_input_and_chunksize(shared_pool, a, b, chunksize):
    expected = list(map(jobs.add, a, b))
    assert list(shared_pool.map(jobs.add, a, b, chunksize=chunksize, timeout=T)) == expected
    got = list(shared_pool.imap_unordered(jobs.square, a, chunksize=chunksize))
    assert collections.Counter(got) == collections.Counter(x * x for x in a)
