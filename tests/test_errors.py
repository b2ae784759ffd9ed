"""How errors reach the caller: job exceptions, unpicklable calls/results/exceptions, and
cloudpickle-powered lambdas and closures."""

from __future__ import annotations

import concurrent.futures
import re
import threading

import pytest

import taskq
from tests import jobs
from tests.jobs import error_text

T = 30


def test_a_job_exception_keeps_its_type_message_and_worker_traceback(pool_factory):
    pool = pool_factory(1)
    with pytest.raises(TypeError, match="wrong type here") as info:
        pool.submit(jobs.raise_type_error, "wrong type here").result(timeout=T)
    cause = info.value.__cause__
    assert cause is not None
    text = str(cause)
    assert "raise_type_error" in text
    assert "Traceback" in text or "line" in text


def test_a_custom_picklable_exception_is_reraised_as_itself(pool_factory):
    pool = pool_factory(1)
    with pytest.raises(jobs.InjectedFault) as info:
        pool.submit(jobs.fault_job, "raise", "/dev/null").result(timeout=T)
    assert "trigger_fault" in str(info.value.__cause__)


def test_a_worker_survives_a_job_exception(pool_factory):
    pool = pool_factory(1)
    pid = pool.submit(jobs.getpid).result(timeout=T)
    for _ in range(5):
        with pytest.raises(ValueError):
            pool.submit(jobs.raise_value_error).result(timeout=T)
    assert pool.submit(jobs.getpid).result(timeout=T) == pid
    assert pool.stats().worker_restarts == 0


# --------------------------------------------------------------------------------------------
# unpicklable calls
# --------------------------------------------------------------------------------------------


def _fails_naming_the_problem(pool, fn, *args, words=("pickl", "serializ")):
    """The job fails at submit or on its future (never hangs) with an error naming the problem."""
    try:
        fut = pool.submit(fn, *args)
    except Exception as exc:  # failing at submit is allowed
        err = exc
    else:
        with pytest.raises(Exception) as info:
            fut.result(timeout=T)
        err = info.value
    assert not isinstance(err, concurrent.futures.TimeoutError) or isinstance(
        err, taskq.JobTimeout
    ), "the job hung"
    text = error_text(err).lower()
    assert any(w in text for w in words), f"error does not name the problem: {text!r}"
    return err


@pytest.mark.timeout(60)
def test_an_unpicklable_argument_fails_that_job_and_never_hangs(pool_factory):
    pool = pool_factory(1)
    _fails_naming_the_problem(pool, jobs.identity, threading.Lock(), words=("pickl", "lock"))
    # the pool serves on
    assert pool.submit(jobs.add, 1, 2).result(timeout=T) == 3


@pytest.mark.timeout(60)
def test_an_unpicklable_generator_argument_fails_that_job(pool_factory):
    pool = pool_factory(1)
    gen = (i for i in range(3))
    _fails_naming_the_problem(pool, jobs.identity, gen, words=("pickl", "generator"))
    assert pool.submit(jobs.add, 1, 2).result(timeout=T) == 3


@pytest.mark.timeout(60)
def test_an_unpicklable_argument_in_a_batch_fails_only_its_own_job(pool_factory):
    pool = pool_factory(2)
    before = [pool.submit(jobs.square, i) for i in range(20)]
    try:
        bad = pool.submit(jobs.identity, threading.Lock())
    except Exception:
        bad = None
    after = [pool.submit(jobs.square, i) for i in range(20)]
    assert [f.result(timeout=T) for f in before + after] == [i * i for i in range(20)] * 2
    if bad is not None:
        with pytest.raises(Exception, match=r"(?i)pickl|lock"):
            bad.result(timeout=T)


@pytest.mark.timeout(60)
def test_an_unpicklable_item_in_map_raises_when_its_result_is_reached(pool_factory):
    pool = pool_factory(2)
    items = [1, 2, threading.Lock(), 4]
    it = pool.map(jobs.identity, items, timeout=T)
    with pytest.raises(Exception, match=r"(?i)pickl|lock"):
        list(it)
    assert pool.submit(jobs.add, 1, 2).result(timeout=T) == 3


# --------------------------------------------------------------------------------------------
# unpicklable results
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_unpicklable_result_fails_that_job_with_serialization_error(pool_factory):
    pool = pool_factory(1)
    pid = pool.submit(jobs.getpid).result(timeout=T)
    with pytest.raises(taskq.SerializationError) as info:
        pool.submit(jobs.return_lock).result(timeout=T)
    assert re.search(r"(?i)pickl|lock", error_text(info.value))
    # the same worker keeps serving
    assert pool.submit(jobs.getpid).result(timeout=T) == pid
    s = pool.stats()
    assert s.crashed == 0
    assert s.worker_restarts == 0


@pytest.mark.timeout(60)
def test_an_unpicklable_result_inside_map_fails_at_its_position(pool_factory):
    pool = pool_factory(2)
    it = pool.map(jobs.return_lock_if, [False, False, True, False], timeout=T)
    assert next(it) is None
    assert next(it) is None
    with pytest.raises(taskq.SerializationError):
        next(it)
    assert pool.submit(jobs.add, 1, 2).result(timeout=T) == 3


# --------------------------------------------------------------------------------------------
# exceptions that cannot travel
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_unpicklable_exception_reaches_the_caller_as_remote_error(pool_factory):
    pool = pool_factory(1)
    with pytest.raises(taskq.RemoteError) as info:
        pool.submit(jobs.raise_locked_error, "the lock is held").result(timeout=T)
    err = info.value
    assert "LockedError" in err.type_name
    assert "the lock is held" in err.message
    assert "raise_locked_error" in err.traceback_text
    assert "LockedError" in str(err)
    assert "the lock is held" in str(err)
    assert pool.submit(jobs.add, 1, 2).result(timeout=T) == 3
    assert pool.stats().crashed == 0


@pytest.mark.timeout(60)
def test_an_exception_that_cannot_be_unpickled_reaches_the_caller_as_remote_error(
    pool_factory,
):
    pool = pool_factory(1)
    with pytest.raises(taskq.RemoteError) as info:
        pool.submit(jobs.raise_two_arg_error, 17, "disk on fire").result(timeout=T)
    err = info.value
    assert "TwoArgError" in err.type_name
    assert "code 17: disk on fire" in err.message
    assert "raise_two_arg_error" in err.traceback_text
    assert pool.submit(jobs.add, 1, 2).result(timeout=T) == 3
    assert pool.stats().crashed == 0


@pytest.mark.timeout(60)
def test_a_remote_error_is_counted_as_a_failure(pool_factory):
    pool = pool_factory(1)
    for fut in [
        pool.submit(jobs.raise_locked_error, "x"),
        pool.submit(jobs.raise_two_arg_error, 1, "y"),
    ]:
        with pytest.raises(taskq.RemoteError):
            fut.result(timeout=T)
    s = pool.stats()
    assert (s.failed, s.succeeded, s.crashed) == (2, 0, 0)


# --------------------------------------------------------------------------------------------
# cloudpickle: lambdas and closures as job functions
# --------------------------------------------------------------------------------------------


def make_adder(n):
    def adder(x):
        return x + n

    return adder


@pytest.mark.timeout(60)
def test_lambdas_and_closures_work_as_job_functions(pool_factory, ctx):
    pytest.importorskip("cloudpickle")
    pool = pool_factory(1, ctx)
    offset = 100
    assert pool.submit(lambda x: x * 2, 21).result(timeout=T) == 42
    assert pool.submit(make_adder(5), 10).result(timeout=T) == 15
    assert pool.submit(lambda: offset + 1).result(timeout=T) == 101
    assert list(pool.map(lambda x: x - offset, range(3), timeout=T)) == [-100, -99, -98]
    assert sorted(pool.imap_unordered(make_adder(1), range(3))) == [1, 2, 3]
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(timeout=T)


@pytest.mark.timeout(60)
def test_lambdas_work_as_arguments(pool_factory):
    pytest.importorskip("cloudpickle")
    pool = pool_factory(1)
    # with cloudpickle available, a lambda argument travels too (or fails cleanly naming pickling)
    try:
        fut = pool.submit(jobs.identity, lambda: 7)
        result = fut.result(timeout=T)
    except Exception as exc:
        assert re.search(r"(?i)pickl", error_text(exc)), exc
    else:
        assert result() == 7
