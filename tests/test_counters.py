"""Shared user counters: taskq.counter() in jobs, pool.counter() / pool.counters() in the parent."""

from __future__ import annotations

import threading

import pytest

import taskq
from tests import jobs

T = 30


def test_a_job_adds_to_a_counter_and_gets_the_new_value(pool_factory):
    pool = pool_factory(1, counters=("processed", "bytes"))
    assert pool.submit(jobs.counter_add, "processed").result(timeout=T) == 1
    assert pool.submit(jobs.counter_add, "processed", 5).result(timeout=T) == 6
    assert pool.submit(jobs.counter_add, "bytes", 1024).result(timeout=T) == 1024
    assert pool.submit(jobs.counter_value, "processed").result(timeout=T) == 6


def test_the_parent_reads_and_adds_to_the_same_counters(pool_factory):
    pool = pool_factory(2, counters=("processed", "bytes"))
    c = pool.counter("processed")
    assert isinstance(c, taskq.Counter)
    assert c.value == 0
    assert c.add(10) == 10
    assert c.add(-3) == 7
    futs = [pool.submit(jobs.counter_add, "processed") for _ in range(50)]
    for f in futs:
        f.result(timeout=T)
    assert c.value == 57
    assert pool.counter("processed").value == 57
    assert pool.submit(jobs.counter_value, "processed").result(timeout=T) == 57
    assert pool.counters() == {"processed": 57, "bytes": 0}


def test_counters_start_at_zero_and_snapshot_is_a_plain_dict(pool_factory):
    pool = pool_factory(1, counters=("a", "b", "c"))
    snap = pool.counters()
    assert snap == {"a": 0, "b": 0, "c": 0}
    assert type(snap) is dict
    snap["a"] = 100  # a copy: mutating it changes nothing
    assert pool.counter("a").value == 0


def test_the_values_returned_by_add_are_all_distinct_under_contention(pool_factory):
    pool = pool_factory(2, counters=("ticket",))
    got = [
        f.result(timeout=T) for f in [pool.submit(jobs.counter_add, "ticket") for _ in range(400)]
    ]
    assert sorted(got) == list(range(1, 401))


@pytest.mark.timeout(90)
def test_deposits_and_withdrawals_racing_on_one_counter_cancel_out(pool_factory, ctx):
    pool = pool_factory(2, ctx, counters=("balance",))
    start = pool.counter("balance").add(1_000)
    deposits = pool.submit(jobs.counter_loop, "balance", +1, 10_000)
    withdrawals = pool.submit(jobs.counter_loop, "balance", -1, 10_000)
    # the parent joins the race too
    parent_adds = 0
    while not (deposits.done() and withdrawals.done()) and parent_adds < 5_000:
        pool.counter("balance").add(1)
        pool.counter("balance").add(-1)
        parent_adds += 1
    assert deposits.result(timeout=60) == 10_000
    assert withdrawals.result(timeout=60) == 10_000
    assert pool.counter("balance").value == start == 1_000
    assert pool.counters() == {"balance": 1_000}


def test_parent_threads_adding_concurrently_lose_nothing(pool_factory):
    pool = pool_factory(1, counters=("hits",))
    c = pool.counter("hits")

    def spam():
        for _ in range(2_000):
            c.add(1)

    threads = [threading.Thread(target=spam) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert c.value == 8_000


def test_an_unknown_counter_in_the_parent_raises_key_error_naming_the_declared_ones(
    pool_factory,
):
    pool = pool_factory(1, counters=("processed", "bytes"))
    with pytest.raises(KeyError) as info:
        pool.counter("nope")
    text = str(info.value)
    assert "nope" in text
    assert "processed" in text
    assert "bytes" in text


def test_an_unknown_counter_in_a_job_raises_key_error_naming_the_declared_ones(pool_factory):
    pool = pool_factory(1, counters=("processed", "bytes"))
    with pytest.raises(KeyError) as info:
        pool.submit(jobs.counter_add, "nope").result(timeout=T)
    text = str(info.value)
    assert "nope" in text
    assert "processed" in text
    assert "bytes" in text
    # the worker is fine afterwards
    assert pool.submit(jobs.counter_add, "processed").result(timeout=T) == 1


def test_a_pool_without_counters_has_an_empty_snapshot(pool_factory):
    pool = pool_factory(1)
    assert pool.counters() == {}
    with pytest.raises(KeyError):
        pool.counter("anything")


def test_counters_of_two_pools_are_independent(pool_factory):
    a = pool_factory(1, counters=("n",))
    b = pool_factory(1, counters=("n",))
    a.submit(jobs.counter_add, "n", 5).result(timeout=T)
    b.submit(jobs.counter_add, "n", 7).result(timeout=T)
    assert a.counter("n").value == 5
    assert b.counter("n").value == 7


@pytest.mark.timeout(60)
def test_counters_survive_a_worker_crash(pool_factory):
    pool = pool_factory(1, counters=("n",))
    pool.submit(jobs.counter_add, "n", 3).result(timeout=T)
    with pytest.raises(taskq.WorkerCrashed):
        pool.submit(jobs.exit_with, 3).result(timeout=T)
    assert pool.submit(jobs.counter_add, "n", 1).result(timeout=T) == 4
    assert pool.counter("n").value == 4
