"""JobFuture builds its state by hand (a lighter condition): it must stay a faithful Future."""

import asyncio
import concurrent.futures
import gc
import threading
import time
from concurrent.futures import Future

import pytest

from taskq import JobFuture


def test_a_job_future_has_every_field_a_future_has():
    future = JobFuture()
    for name in vars(Future()):
        assert hasattr(future, name), name
    # Stored on the future, except the list of waiters: made by the first waiter.
    assert set(vars(Future())) - set(vars(future)) == {"_waiters"}
    assert future._waiters == [] and future._waiters is future._waiters


def test_a_job_future_nobody_waits_on_costs_the_garbage_collector_two_objects():
    # A pool keeps thousands of futures alive: each tracked object is work for every
    # collection. The future and its lock; no empty list of waiters.
    gc.collect()
    before = len(gc.get_objects())
    futures = [JobFuture() for _ in range(1000)]
    for i, future in enumerate(futures):
        future.set_running_or_notify_cancel()
        future.set_result(i)
    assert len(gc.get_objects()) - before <= 2 * len(futures) + 10
    assert [future.result() for future in futures] == list(range(1000))


def test_setting_an_outcome_twice_is_refused_as_for_a_future():
    for future in (Future(), JobFuture()):
        future.set_running_or_notify_cancel()
        future.set_result(1)
        with pytest.raises(concurrent.futures.InvalidStateError):
            future.set_result(2)
        with pytest.raises(concurrent.futures.InvalidStateError):
            future.set_exception(ValueError())
        assert future.result() == 1


def resolve_later(future: Future, value: object, delay: float = 0.05) -> None:
    def run() -> None:
        time.sleep(delay)
        future.set_running_or_notify_cancel()
        future.set_result(value)

    threading.Thread(target=run).start()


@pytest.mark.timeout(10)
def test_result_waits_for_a_value_set_from_another_thread():
    future = JobFuture()
    resolve_later(future, 42)
    assert future.result(timeout=5) == 42


@pytest.mark.timeout(10)
def test_result_times_out_while_pending():
    with pytest.raises(concurrent.futures.TimeoutError):
        JobFuture().result(timeout=0.05)


@pytest.mark.timeout(10)
def test_wait_and_as_completed_see_job_futures_finish():
    futures = [JobFuture() for _ in range(5)]
    for i, future in enumerate(futures):
        resolve_later(future, i, delay=0.01 * (5 - i))
    done, not_done = concurrent.futures.wait(futures, timeout=5)
    assert not not_done and done == set(futures)
    more = [JobFuture() for _ in range(3)]
    for future in more:
        resolve_later(future, "x")
    assert set(concurrent.futures.as_completed(more, timeout=5)) == set(more)
    assert all(future._waiters == [] for future in futures + more)  # each waiter removed


@pytest.mark.timeout(10)
def test_wait_sees_a_failure_and_a_cancellation_of_job_futures():
    failing, cancelled, pending = JobFuture(), JobFuture(), JobFuture()
    # What the pool does with a cancelled job: Future's cancellation path tells the waiters.
    threading.Timer(0.05, lambda: cancelled.cancel()
                    and cancelled.set_running_or_notify_cancel()).start()  # fmt: skip
    done, _ = concurrent.futures.wait(
        [cancelled, pending], timeout=5, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert done == {cancelled}

    def fail() -> None:
        failing.set_running_or_notify_cancel()
        failing.set_exception(KeyError("k"))

    threading.Timer(0.05, fail).start()
    done, not_done = concurrent.futures.wait(
        [failing, pending], timeout=5, return_when=concurrent.futures.FIRST_EXCEPTION
    )
    assert done == {failing} and not_done == {pending}
    assert isinstance(failing.exception(), KeyError)


@pytest.mark.timeout(10)
def test_callbacks_exceptions_and_cancellation_behave_as_for_a_future():
    seen = []
    failing = JobFuture()
    failing.add_done_callback(lambda f: seen.append(type(f.exception())))
    failing.set_running_or_notify_cancel()
    failing.set_exception(ValueError("boom"))
    assert seen == [ValueError]
    with pytest.raises(ValueError, match="boom"):
        failing.result(timeout=1)
    pending = JobFuture()
    assert pending.cancel() and pending.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        pending.result(timeout=1)


@pytest.mark.timeout(10)
def test_asyncio_can_await_a_job_future():
    future = JobFuture()
    resolve_later(future, "async")

    async def main() -> object:
        return await asyncio.wrap_future(future)

    assert asyncio.run(main()) == "async"
