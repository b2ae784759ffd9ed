"""Pool as a concurrent.futures.Executor: submit, results, futures interop, shutdown,
initializer, thread safety, stats and start methods."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import threading
import time

import pytest

import taskq
from tests import jobs
from tests.jobs import assert_all_gone, read_pids, wait_until

T = 30  # generous per-result timeout


# --------------------------------------------------------------------------------------------
# submit / futures
# --------------------------------------------------------------------------------------------


def test_submit_returns_a_job_future_with_the_result(pool_factory):
    pool = pool_factory(2)
    fut = pool.submit(jobs.add, 2, 3)
    assert isinstance(fut, taskq.JobFuture)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=T) == 5
    assert fut.attempts == 1


def test_submit_passes_positional_and_keyword_arguments(pool_factory):
    pool = pool_factory(1)
    fut = pool.submit(jobs.echo, 1, "two", three=3)
    assert fut.result(timeout=T) == ((1, "two"), {"three": 3})


def test_schedule_passes_args_and_kwargs(pool_factory):
    pool = pool_factory(1)
    fut = pool.schedule(jobs.echo, (1, "two"), {"three": 3, "priority": "mine"}, priority=-1)
    assert isinstance(fut, taskq.JobFuture)
    assert fut.result(timeout=T) == ((1, "two"), {"three": 3, "priority": "mine"})
    assert pool.schedule(jobs.noop).result(timeout=T) is None
    assert pool.schedule(jobs.add, [1, 2]).result(timeout=T) == 3


def test_submit_reserves_no_keyword_for_itself(pool_factory):
    pool = pool_factory(1)
    kwargs = {
        "fn": "f",
        "priority": 5,
        "timeout": 0.001,
        "block": False,
        "args": (1, 2),
        "kwargs": {"x": 1},
        "retries": 3,
        "self": "me",
    }
    fut = pool.submit(jobs.echo_kwargs, **kwargs)
    assert fut.result(timeout=T) == kwargs


def test_a_pool_is_an_executor_instance(pool_factory):
    pool = pool_factory(1)
    assert isinstance(pool, concurrent.futures.Executor)


def test_the_constructor_accepts_process_pool_executor_params_positionally(pool_factory, pid_file):
    import multiprocessing

    pool = pool_factory(
        1,
        multiprocessing.get_context("fork"),
        jobs.record_pid_initializer,
        (pid_file, "positional"),
        5,
    )
    pid, calls, value = pool.submit(jobs.init_state).result(timeout=T)
    assert (calls, value) == (1, "positional")
    assert read_pids(pid_file) == [pid]


def test_many_futures_resolve_with_their_own_results(pool_factory):
    pool = pool_factory(2)
    futs = [pool.submit(jobs.square, i) for i in range(300)]
    assert [f.result(timeout=T) for f in futs] == [i * i for i in range(300)]


def test_a_job_exception_is_reraised_with_its_type_and_the_worker_traceback_as_cause(
    pool_factory,
):
    pool = pool_factory(1)
    fut = pool.submit(jobs.raise_value_error, "bad value 42")
    with pytest.raises(ValueError, match="bad value 42") as info:
        fut.result(timeout=T)
    assert type(info.value) is ValueError
    cause = info.value.__cause__
    assert cause is not None, "the worker traceback should be chained as __cause__"
    assert "raise_value_error" in str(cause)
    assert isinstance(fut.exception(timeout=T), ValueError)


def test_add_done_callback_runs_once_with_the_done_future(pool_factory):
    pool = pool_factory(1)
    seen = []
    done = threading.Event()

    def callback(f):
        seen.append(f.result())
        done.set()

    fut = pool.submit(jobs.sleep_then, 0.05, "hello")
    fut.add_done_callback(callback)
    assert done.wait(T)
    time.sleep(0.05)
    assert seen == ["hello"]
    # a callback added to a done future runs at once
    late = []
    fut.add_done_callback(lambda f: late.append(f.result()))
    assert late == ["hello"]


def test_concurrent_futures_wait_and_as_completed_work(pool_factory):
    pool = pool_factory(2)
    futs = [pool.submit(jobs.sleep_then, 0.01 * (i % 3), i) for i in range(10)]
    done, not_done = concurrent.futures.wait(futs, timeout=T)
    assert not not_done
    assert {f.result() for f in done} == set(range(10))

    futs = [pool.submit(jobs.sleep_then, 0.3, "slow"), pool.submit(jobs.identity, "fast")]
    first = concurrent.futures.wait(futs, timeout=T, return_when="FIRST_COMPLETED")[0]
    assert [f.result() for f in first] == ["fast"]

    futs = [pool.submit(jobs.square, i) for i in range(20)]
    got = [f.result() for f in concurrent.futures.as_completed(futs, timeout=T)]
    assert sorted(got) == [i * i for i in range(20)]


@pytest.mark.timeout(60)
def test_wait_and_as_completed_see_a_cancelled_queued_job(pool_factory, gate):
    """Like ProcessPoolExecutor: a cancelled job counts as done for wait()/as_completed()
    at the latest once the queue has moved past it."""
    pool = pool_factory(1)
    fn, args = gate.job()
    blocker = pool.submit(fn, *args)
    gate.wait_started()
    doomed = pool.submit(jobs.noop)
    later = pool.submit(jobs.add, 1, 2)
    assert doomed.cancel()
    gate.open()
    assert later.result(timeout=T) == 3
    _, not_done = concurrent.futures.wait([blocker, doomed, later], timeout=5)
    assert not not_done, f"wait() still waits for {not_done}"
    got = set(concurrent.futures.as_completed([doomed, later], timeout=5))
    assert got == {doomed, later}


def test_wait_first_exception_returns_on_the_failure(pool_factory):
    pool = pool_factory(2)
    futs = [pool.submit(jobs.sleep_then, 2, "slow"), pool.submit(jobs.raise_value_error)]
    done, _ = concurrent.futures.wait(futs, timeout=T, return_when="FIRST_EXCEPTION")
    assert futs[1] in done


def test_asyncio_wrap_future_awaits_a_job(pool_factory):
    pool = pool_factory(1)

    async def main():
        ok = await asyncio.wrap_future(pool.submit(jobs.add, 20, 22))
        with pytest.raises(ValueError, match="async boom"):
            await asyncio.wrap_future(pool.submit(jobs.raise_value_error, "async boom"))
        loop = asyncio.get_running_loop()
        gathered = await asyncio.wait_for(
            asyncio.gather(
                *(asyncio.wrap_future(pool.submit(jobs.square, i), loop=loop) for i in range(5))
            ),
            T,
        )
        return ok, gathered

    assert asyncio.run(main()) == (42, [0, 1, 4, 9, 16])


def test_run_in_executor_uses_the_pool(pool_factory):
    pool = pool_factory(1)

    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(pool, jobs.square, 9), T)

    assert asyncio.run(main()) == 81


# --------------------------------------------------------------------------------------------
# shutdown
# --------------------------------------------------------------------------------------------


def test_the_context_manager_waits_for_every_job(pid_file):
    with taskq.Pool(2, initializer=jobs.record_pid_initializer, initargs=(pid_file,)) as pool:
        futs = [pool.submit(jobs.sleep_then, 0.05, i) for i in range(8)]
    assert all(f.done() for f in futs)
    assert [f.result(timeout=0) for f in futs] == list(range(8))
    pids = read_pids(pid_file)
    assert pids
    assert_all_gone(pids)


def test_submit_after_shutdown_raises_runtime_error(pool_factory):
    pool = pool_factory(1)
    pool.submit(jobs.noop).result(timeout=T)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(jobs.noop)
    with pytest.raises(RuntimeError):
        pool.schedule(jobs.noop)
    with pytest.raises(RuntimeError):
        list(pool.map(jobs.square, range(3)))


def test_shutdown_is_idempotent(pool_factory):
    pool = pool_factory(1)
    pool.submit(jobs.noop).result(timeout=T)
    pool.shutdown()
    pool.shutdown()
    pool.shutdown(wait=False)


@pytest.mark.timeout(60)
def test_no_worker_is_alive_after_shutdown_returns(pool_factory, pid_file, start_method):
    import multiprocessing

    pool = pool_factory(
        2,
        multiprocessing.get_context(start_method),
        jobs.record_pid_initializer,
        (pid_file,),
    )
    seen = {f.result(timeout=T) for f in [pool.submit(jobs.sleep_then_pid, 0.2) for _ in range(4)]}
    pool.shutdown(wait=True)
    pids = set(read_pids(pid_file)) | seen
    assert len(pids) >= 2
    assert_all_gone(pids)


def test_shutdown_waits_for_queued_jobs_by_default(pool_factory):
    pool = pool_factory(1)
    futs = [pool.submit(jobs.sleep_then, 0.05, i) for i in range(6)]
    pool.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futs] == list(range(6))


def test_shutdown_cancel_futures_cancels_the_queued_jobs(pool_factory, gate):
    pool = pool_factory(1, counters=("ran",))
    fn, args = gate.job()
    blocker = pool.submit(fn, *args)
    gate.wait_started()
    queued = [pool.submit(jobs.counter_add, "ran") for _ in range(5)]
    threading.Timer(0.5, gate.open).start()
    pool.shutdown(wait=True, cancel_futures=True)
    assert blocker.done() and isinstance(blocker.result(timeout=0), int)
    assert all(f.cancelled() for f in queued)
    for f in queued:
        with pytest.raises(concurrent.futures.CancelledError):
            f.result(timeout=0)
    assert pool.counter("ran").value == 0


@pytest.mark.timeout(30)
def test_shutdown_without_wait_returns_at_once_and_workers_are_reaped_later(pool_factory, pid_file):
    pool = pool_factory(2, initializer=jobs.record_pid_initializer, initargs=(pid_file,))
    futs = [pool.submit(jobs.sleep_then, 5.0, i) for i in range(2)]
    wait_until(lambda: len(read_pids(pid_file)) == 2, 10, "both workers to start")
    pool.shutdown(wait=False)
    assert not all(f.done() for f in futs)  # it returned while the jobs still ran
    assert [f.result(timeout=T) for f in futs] == [0, 1]
    assert_all_gone(read_pids(pid_file), timeout=10)


@pytest.mark.timeout(60)
def test_shutdown_returns_while_an_abandoned_map_is_still_open(pool_factory):
    import itertools

    pool = pool_factory(2)
    it = pool.map(jobs.square, itertools.count())
    assert list(itertools.islice(it, 100)) == [i * i for i in range(100)]
    t0 = time.monotonic()
    pool.shutdown(wait=True)
    assert time.monotonic() - t0 < 60  # it does not read the endless input
    it.close()


def test_the_context_manager_waits_and_lets_an_error_propagate(pid_file):
    futs = []
    with (
        pytest.raises(LookupError, match="inside the block"),
        taskq.Pool(2, initializer=jobs.record_pid_initializer, initargs=(pid_file,)) as pool,
    ):
        futs = [pool.submit(jobs.sleep_then, 0.1, i) for i in range(4)]
        raise LookupError("inside the block")
    assert [f.result(timeout=0) for f in futs] == [0, 1, 2, 3]
    assert_all_gone(read_pids(pid_file))


@pytest.mark.timeout(60)
def test_a_done_callback_can_submit_the_next_job(pool_factory):
    pool = pool_factory(2)
    results = []
    finished = threading.Event()
    errors = []

    def chain(fut):
        try:
            value = fut.result()
            results.append(value)
            if value < 20:
                pool.submit(jobs.add, value, 1).add_done_callback(chain)
            else:
                finished.set()
        except Exception as exc:
            errors.append(exc)
            finished.set()

    pool.submit(jobs.add, 0, 1).add_done_callback(chain)
    assert finished.wait(T), f"the chain stalled after {results}"
    assert not errors, errors
    assert results == list(range(1, 21))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_workers": 0},
        {"max_workers": -1},
        {"maxsize": -1},
        {"max_tasks_per_child": 0},
        {"retry_delay": float("nan")},  # a NaN backoff would never come due
        {"retry_delay": float("inf")},
        {"job_timeout": float("nan")},
        {"maxsize": True},  # a bool is never meant as a number
        {"max_tasks_per_child": True},
        {"job_timeout": True},
    ],
)
def test_invalid_constructor_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        taskq.Pool(**kwargs)


@pytest.mark.timeout(60)
def test_very_long_or_infinite_timeouts_leave_the_pool_serving(pool_factory):
    # epoll sleeps at most ~24.8 days: the manager must not pass it a longer wait.
    pool = pool_factory(1, job_timeout=float("inf"))
    assert pool.submit(jobs.add, 1, 2).result(timeout=T) == 3
    year = 365 * 24 * 3600.0
    assert pool.schedule(jobs.add, (2, 3), timeout=year).result(timeout=T) == 5
    assert pool.schedule(jobs.add, (3, 4), timeout=float("inf")).result(timeout=T) == 7
    assert pool.schedule(jobs.add, (4, 5), retries=1, retry_delay=year).result(timeout=T) == 9


def test_a_nan_retry_delay_is_refused_when_scheduled(pool_factory):
    pool = pool_factory(1)
    with pytest.raises(ValueError, match="retry_delay"):
        pool.schedule(jobs.add, (1, 2), retries=1, retry_delay=float("nan"))


def test_arguments_that_are_easy_to_get_wrong_are_refused_clearly(pool_factory):
    with pytest.raises(TypeError, match="mp_context must be a multiprocessing context"):
        taskq.Pool(1, mp_context="spawn")
    pool = pool_factory(1)
    with pytest.raises(TypeError, match="args must be a tuple or list"):
        pool.schedule(len, "ab")  # would run len("a", "b")
    with pytest.raises(ValueError, match="retries"):
        pool.schedule(len, ("ab",), retries=True)
    with pytest.raises(TypeError, match="kill\\(\\) takes a future this pool returned"):
        pool.kill(concurrent.futures.Future())
    assert pool.schedule(len, ["ab"]).result(timeout=T) == 2


# --------------------------------------------------------------------------------------------
# initializer
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_initializer_runs_once_in_each_worker_before_its_first_job(pool_factory, ctx, pid_file):
    pool = pool_factory(2, ctx, jobs.record_pid_initializer, (pid_file, "init-value"))
    states = [f.result(timeout=T) for f in [pool.submit(jobs.init_state) for _ in range(40)]]
    for pid, calls, value in states:
        assert calls == 1, f"initializer ran {calls} times in worker {pid}"
        assert value == "init-value"
    recorded = read_pids(pid_file)
    assert len(recorded) == len(set(recorded)), "an initializer ran twice in one process"
    assert {pid for pid, _, _ in states} <= set(recorded)


# --------------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_submit_is_safe_from_many_threads_at_once(pool_factory):
    pool = pool_factory(2)
    n_threads, per_thread = 8, 200
    results = {}
    errors = []
    barrier = threading.Barrier(n_threads)

    def worker(t):
        try:
            barrier.wait()
            futs = [(t, i, pool.submit(jobs.add, t * 1000, i)) for i in range(per_thread)]
            for tt, i, f in futs:
                results[(tt, i)] = f.result(timeout=60)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(90)
    assert not errors, errors
    assert len(results) == n_threads * per_thread
    assert all(v == t * 1000 + i for (t, i), v in results.items())
    wait_until(lambda: pool.stats().running == 0, 10, "the pool to go idle")
    s = pool.stats()
    assert s.submitted == s.succeeded == n_threads * per_thread


@pytest.mark.timeout(90)
def test_schedule_and_map_are_safe_from_many_threads_at_once(pool_factory):
    pool = pool_factory(2)
    errors = []
    out = {}
    barrier = threading.Barrier(6)

    def scheduler(t):
        try:
            barrier.wait()
            futs = [pool.schedule(jobs.add, (t, i), priority=(i % 5) - 2) for i in range(150)]
            out[("schedule", t)] = [f.result(timeout=60) for f in futs]
        except Exception as exc:
            errors.append(exc)

    def mapper(t):
        try:
            barrier.wait()
            out[("map", t)] = list(pool.map(jobs.add, [t] * 150, range(150), timeout=60))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=scheduler, args=(t,)) for t in range(3)]
    threads += [threading.Thread(target=mapper, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(90)
    assert not errors, errors
    for (_kind, t), values in out.items():
        assert values == [t + i for i in range(150)]
    assert len(out) == 6


# --------------------------------------------------------------------------------------------
# start methods
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_submit_map_and_errors_work_under_every_start_method(pool_factory, ctx):
    pool = pool_factory(2, mp_context=ctx)
    assert pool.submit(jobs.add, 1, 2).result(timeout=T) == 3
    assert list(pool.map(jobs.square, range(20), timeout=T)) == [i * i for i in range(20)]
    assert sorted(pool.imap_unordered(jobs.square, range(20))) == sorted(i * i for i in range(20))
    with pytest.raises(ValueError, match="boom"):
        pool.submit(jobs.raise_value_error).result(timeout=T)
    pids = {f.result(timeout=T) for f in [pool.submit(jobs.sleep_then_pid, 0.1) for _ in range(6)]}
    assert os.getpid() not in pids


# --------------------------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------------------------


def test_stats_is_a_frozen_snapshot(pool_factory):
    pool = pool_factory(2)
    pool.submit(jobs.noop).result(timeout=T)
    s = pool.stats()
    assert isinstance(s, taskq.PoolStats)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.submitted = 99
    pool.submit(jobs.noop).result(timeout=T)
    assert s.submitted == 1, "a snapshot must not change afterwards"


def test_stats_add_up_when_the_pool_is_idle(pool_factory, gate):
    pool = pool_factory(2)
    ok = [pool.submit(jobs.square, i) for i in range(10)]
    bad = [pool.submit(jobs.raise_value_error) for _ in range(3)]
    concurrent.futures.wait(ok + bad, timeout=T)  # so that only the blockers run below
    fn, args = gate.job("a")
    blockers = [pool.submit(fn, *args)]
    fn, args = gate.job("b")
    blockers.append(pool.submit(fn, *args))
    gate.wait_started("a")
    gate.wait_started("b")
    queued = [pool.submit(jobs.noop) for _ in range(4)]
    wait_until(lambda: pool.stats().queued == 4, 10, "four queued jobs")
    busy = pool.stats()
    assert busy.running == 2
    assert busy.queued == 4
    assert queued[0].cancel() and queued[1].cancel()
    gate.open()
    for f in ok + bad + blockers + queued:
        with contextlib.suppress(Exception, concurrent.futures.CancelledError):
            f.result(timeout=T)
    wait_until(lambda: pool.stats().running == 0, 10, "the pool to go idle")
    s = pool.stats()
    assert s.submitted == 10 + 3 + 2 + 4
    assert s.succeeded == 10 + 2 + 2
    assert s.failed == 3
    assert s.cancelled == 2
    assert s.submitted == s.succeeded + s.failed + s.cancelled
    assert s.queued == s.running == 0
    assert s.retried == s.timed_out == s.crashed == s.worker_restarts == 0
    assert s.workers == 2
