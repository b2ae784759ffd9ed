"""Pool(broker=...) through the public API, in one process, over SQLite and Redis."""

from __future__ import annotations

import concurrent.futures as cf
import operator
import threading
import time

import pytest

import taskq
from tests import jobs
from tests.broker_jobs import record, runs


def test_results_errors_and_map_come_back_through_the_store(pool_factory, store):
    pool = pool_factory(2, **store.kw)
    future = pool.submit(operator.add, 2, 3)
    assert isinstance(future.job_id, str) and len(future.job_id) == 32
    assert future.result(timeout=30) == 5
    assert list(pool.map(jobs.square, range(50))) == [x * x for x in range(50)]
    failing = pool.submit(jobs.raise_value_error, "bad input")
    with pytest.raises(ValueError, match="bad input") as info:
        failing.result(timeout=30)
    assert isinstance(info.value.__cause__, taskq._errors.RemoteTraceback)
    assert "raise_value_error" in info.value.__cause__.tb


def test_job_returns_a_future_for_a_stored_job_and_refuses_unknown_ids(pool_factory, store):
    pool = pool_factory(1, **store.kw)
    done = pool.submit(operator.mul, 6, 7)
    assert done.result(timeout=30) == 42
    assert pool.job(done.job_id).result(timeout=10) == 42
    with pytest.raises(KeyError, match=r"no job 'nope'.*unknown, or its outcome expired"):
        pool.job("nope")
    with pytest.raises(TypeError):
        pool.job(3)


def test_a_client_with_no_workers_waits_for_a_serving_pool(pool_factory, store):
    client = pool_factory(0, **store.kw)
    futures = [client.schedule(operator.add, (i, i)) for i in range(20)]
    assert client.stats().queued == 20
    pool_factory(2, **store.kw)  # serves the same store
    assert [f.result(timeout=30) for f in futures] == [2 * i for i in range(20)]
    assert client.stats().succeeded == 20


@pytest.mark.timeout(120)
def test_fifo_order_is_kept_by_the_serving_side(pool_factory, store, tmp_path):
    # Tiny jobs are claimed many at a time; the serving pool must not sort them by
    # priority when the submitter asked for order="fifo".
    log = str(tmp_path / "runs")
    client = pool_factory(0, order="fifo", **store.kw)
    tags = [f"j{i}" for i in range(120)]
    futures = [
        client.schedule(record, (log, tag), priority=(i * 7) % 5) for i, tag in enumerate(tags)
    ]
    pool_factory(1, **store.kw)  # one worker: the run order is the serving order
    assert [f.result(timeout=60) for f in futures] == tags
    assert runs(log) == tags


@pytest.mark.parametrize("options", [{"order": "fifo"}, {"aging": 0.5}])
def test_queued_jobs_are_counted_by_their_priority_whatever_the_order(pool_factory, store, options):
    # The store orders by rank (0 for every job under fifo, moved by aging): the counts
    # per priority must come from the jobs' own priorities.
    client = pool_factory(0, **options, **store.kw)
    for priority in (-1, -1, 0, 5):
        client.schedule(operator.add, (1, 2), priority=priority)
    queued = {p: level.queued for p, level in client.stats().priorities.items()}
    assert queued == {-1: 2, 0: 1, 5: 1}


def test_max_workers_zero_needs_a_broker():
    with pytest.raises(ValueError, match="greater than 0"):
        taskq.Pool(0)
    with pytest.raises(ValueError, match="pass broker="):
        taskq.Pool(1, queue="other")


def test_cancel_removes_a_queued_job_from_the_store(pool_factory, store, tmp_path):
    client = pool_factory(0, **store.kw)
    log = str(tmp_path / "runs")
    kept, dropped = (client.schedule(record, (log, tag)) for tag in ("kept", "dropped"))
    assert dropped.cancel() is True
    assert dropped.cancelled()
    assert client.stats().queued == 1
    pool_factory(1, **store.kw)
    assert kept.result(timeout=30) == "kept"
    assert runs(log) == ["kept"]
    with pytest.raises(cf.CancelledError):
        client.job(dropped.job_id).result(timeout=10)


def test_kill_stops_a_job_running_in_another_pool(pool_factory, store, gate):
    server = pool_factory(1, **store.kw)
    client = pool_factory(0, **store.kw)
    fn, args = gate.job("long")
    future = client.schedule(fn, args)
    gate.wait_started("long")
    assert client.kill(future) is True
    with pytest.raises(cf.CancelledError):
        future.result(timeout=30)
    assert server.submit(operator.add, 1, 1).result(timeout=30) == 2  # still serving


def test_timeouts_and_retries_apply_to_stored_jobs(pool_factory, store):
    pool = pool_factory(1, **store.kw, counters=("flaky",))
    slow = pool.schedule(jobs.sleep_then, (30,), timeout=0.5)
    with pytest.raises(taskq.JobTimeout):
        slow.result(timeout=60)
    flaky = pool.schedule(jobs.flaky, ("flaky", 2), retries=3, retry_delay=0.01)
    assert flaky.result(timeout=60) is not None
    assert flaky.attempts == 3


def test_a_crashed_worker_fails_its_job_and_the_pool_keeps_serving(pool_factory, store):
    pool = pool_factory(1, **store.kw)
    with pytest.raises(taskq.WorkerCrashed):
        pool.submit(jobs.kill_self).result(timeout=60)
    assert pool.submit(operator.add, 2, 2).result(timeout=60) == 4


def test_counters_live_in_the_store_and_are_exact_across_pools(pool_factory, store):
    one = pool_factory(2, **store.kw, counters=("hits",))
    two = pool_factory(2, **store.kw, counters=("hits",))
    futures = [p.submit(jobs.counter_loop, "hits", 1, 50) for p in (one, two) for _ in range(2)]
    cf.wait(futures, timeout=60)
    assert [f.exception() for f in futures] == [None] * 4
    assert one.counter("hits").value == 200
    assert two.counters() == {"hits": 200}
    with pytest.raises(KeyError, match="declared counters"):
        one.counter("misses")


def test_bounded_store_queue_raises_full_without_blocking(pool_factory, store):
    client = pool_factory(0, **store.kw, maxsize=2)
    client.submit(operator.add, 1, 1)
    client.submit(operator.add, 1, 1)
    with pytest.raises(taskq.Full):
        client.schedule(operator.add, (1, 1), block=False)


def test_an_unpicklable_call_fails_its_future_not_the_pool(pool_factory, store):
    pool = pool_factory(1, **store.kw)
    bad = pool.submit(jobs.identity, jobs.return_lock())
    with pytest.raises(taskq.SerializationError):
        bad.result(timeout=10)
    assert pool.submit(operator.add, 1, 2).result(timeout=30) == 3


def test_a_call_whose_function_is_gone_fails_with_the_job_and_store_named(store, tmp_path):
    module = tmp_path / "vanishing_mod.py"
    module.write_text("def job():\n    return 1\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        import vanishing_mod

        client = taskq.Pool(0, **store.kw)
        doomed = client.submit(vanishing_mod.job)
        other = client.submit(operator.add, 1, 1)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("vanishing_mod", None)
    module.unlink()
    with taskq.Pool(1, **store.kw) as server:
        with pytest.raises(taskq.SerializationError) as info:
            server.job(doomed.job_id).result(timeout=60)
        assert server.job(other.job_id).result(timeout=60) == 2
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert doomed.job_id in notes and store.where in notes
    client.shutdown(wait=False)


def test_stats_count_this_processs_jobs(pool_factory, store):
    pool = pool_factory(2, **store.kw)
    futures = [pool.submit(jobs.square, i) for i in range(10)]
    futures.append(pool.submit(jobs.raise_value_error))
    cf.wait(futures, timeout=60)
    stats = pool.stats()
    assert (stats.submitted, stats.succeeded, stats.failed, stats.queued) == (11, 10, 1, 0)
    assert stats.workers == 2


def test_shutdown_waits_for_own_jobs_then_leaves_the_rest_in_the_store(store, tmp_path):
    client = taskq.Pool(0, **store.kw)
    left = client.submit(operator.add, 1, 2)  # nobody serves it while the server below runs
    client.shutdown(wait=False)
    with taskq.Pool(1, **store.kw) as pool:
        mine = [pool.submit(jobs.sleep_then, 0.01, i) for i in range(5)]
    assert [f.result(timeout=0) for f in mine] == list(range(5))
    # The server ran the client's job too: it was in the store, at its place.
    with taskq.Pool(0, **store.kw) as reader:
        assert reader.job(left.job_id).result(timeout=30) == 3


def test_shutdown_waits_for_the_futures_it_handed_out_by_job_id(store):
    submitter = taskq.Pool(0, **store.kw)
    job_id = submitter.submit(operator.add, 20, 22).job_id
    submitter.shutdown(wait=False)
    looker = taskq.Pool(0, **store.kw)
    looked_up = looker.job(job_id)
    closing = threading.Thread(target=looker.shutdown, daemon=True)  # a failure must not hang exit
    closing.start()
    closing.join(0.5)
    assert closing.is_alive() and not looked_up.done()  # nobody serves the job yet
    with taskq.Pool(1, **store.kw):
        closing.join(60)
    assert not closing.is_alive()
    assert looked_up.result(timeout=0) == 42  # resolved before shutdown returned


def test_outcomes_expire_so_a_steady_load_keeps_the_store_bounded(pool_factory, store):
    pool = pool_factory(2, **store.kw, result_ttl=0.3)
    first = pool.submit(operator.add, 0, 0)
    first.result(timeout=30)
    for batch in range(4):
        futures = [pool.submit(operator.add, batch, i) for i in range(50)]
        assert [f.result(timeout=60) for f in futures] == [batch + i for i in range(50)]
        time.sleep(0.4)
    jobs.wait_until(lambda: _stored_jobs(store) <= 50, 30, "expired outcomes to be deleted")
    with pytest.raises(KeyError, match="expired"):
        pool.job(first.job_id)


def _stored_jobs(store):
    if store.kind == "sqlite":
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(store.where)) as conn:
            return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    import redis

    client = redis.Redis.from_url(store.url)
    try:
        return sum(1 for _ in client.scan_iter(match=f"taskq:{store.queue}:job:*", count=1000))
    finally:
        client.close()
