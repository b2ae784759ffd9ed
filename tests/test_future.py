"""JobFuture builds its state by hand (a lighter condition): it must stay a faithful Future."""

import asyncio
import concurrent.futures
import threading
import time
from concurrent.futures import Future

import pytest

from taskq import JobFuture


def test_a_job_future_has_every_field_a_future_has():
    assert set(vars(Future())) <= set(vars(JobFuture()))


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
