"""A large ``bytes``/``bytearray`` result is left in shared memory for its first reader
(``_shared_result.py``): the future resolves with a handle, and ``result()`` copies it out
once. Every reader sees the same object, whoever reads first and whenever: before or
after the pool shut down or the worker died, from several threads at once. Nothing is
left in /dev/shm and no descriptor stays open, whether the result is read or dropped."""

from __future__ import annotations

import gc
import os
import threading
from concurrent.futures import wait

import pytest

from taskq import WorkerCrashed, _segments, _shared_result, _shm
from taskq._errors import UnpicklingFailed
from taskq._job import JobFuture
from taskq._shared_result import SharedBytes
from tests import shm_jobs
from tests.jobs import kill_self
from tests.test_shm import no_leak, payload  # noqa: F401  (a fixture)

T = 30
pytestmark = pytest.mark.usefixtures("no_leak", "slots_back")


def held(future):
    return type(future._result) is SharedBytes


@pytest.fixture
def slots_back():
    """Fails the test if a handle was neither read nor dropped (a descriptor kept)."""
    yield
    gc.collect()
    assert _shared_result.unread.free == _shared_result.UNREAD


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_a_large_result_is_read_once_by_its_first_reader(pool_factory, kind):
    value = payload(shm_jobs.BIG * 3, kind)
    with pool_factory(1) as pool:
        future = pool.submit(shm_jobs.echo, value)
        wait([future], timeout=T)
        assert held(future)  # done, and not read yet
        assert "returned " + kind.__name__ in repr(future)
        first = future.result(timeout=0)
        assert type(first) is kind and first == value
        assert future.result(timeout=0) is first  # read once: the same object
        assert not held(future) and future.exception(timeout=0) is None


def test_results_read_after_shutdown_or_dropped_unread_leave_nothing(pool_factory):
    values = [payload(shm_jobs.BIG)[:-1] + bytes([i]) for i in range(12)]
    pool = pool_factory(2)
    futures = [pool.submit(shm_jobs.echo, value) for value in values]
    wait(futures, timeout=T)
    assert any(held(f) for f in futures)
    pool.shutdown()
    # The workers are gone and their files' names with them; the handles still read.
    assert [f.result(timeout=0) for f in futures[:6]] == values[:6]
    del futures[6:]  # never read: dropped with their futures
    gc.collect()


def test_a_result_outlives_the_worker_that_wrote_it(pool_factory):
    value = payload(shm_jobs.BIG * 2)
    with pool_factory(1) as pool:
        future = pool.submit(shm_jobs.echo, value)
        wait([future], timeout=T)
        assert held(future)
        with pytest.raises(WorkerCrashed):
            pool.submit(kill_self).result(timeout=T)  # its files are swept on its exit
        assert future.result(timeout=0) == value
        assert pool.submit(shm_jobs.echo, value).result(timeout=T) == value  # a new worker


def test_concurrent_readers_all_get_the_one_copy(pool_factory):
    value = payload(4 << 20)
    with pool_factory(1) as pool:
        future = pool.submit(shm_jobs.echo, value)
        wait([future], timeout=T)
        got: list[object] = []
        start = threading.Barrier(4)

        def reader() -> None:
            start.wait(T)
            got.append(future.result(timeout=T))

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(T)
        assert len(got) == 4 and all(result is got[0] for result in got)
        assert got[0] == value


def test_past_the_limit_of_unread_handles_results_are_read_by_the_pool(
    pool_factory,
    monkeypatch,
):
    monkeypatch.setattr(_shared_result, "unread", _shared_result._Slots(2))
    values = [payload(shm_jobs.BIG)[:-1] + bytes([i]) for i in range(8)]
    with pool_factory(2) as pool:
        futures = [pool.submit(shm_jobs.echo, value) for value in values]
        wait(futures, timeout=T)
        assert sum(held(f) for f in futures) == 2  # the others were copied out already
        assert [f.result(timeout=0) for f in futures] == values
    assert _shared_result.unread.free == 2


def test_a_result_with_a_callback_is_read_by_the_pool(pool_factory):
    value = payload(shm_jobs.BIG * 2)
    seen: list[object] = []
    with pool_factory(1) as pool:
        gate = pool.submit(shm_jobs.sleep_holding, b"x", 0.2)  # the job below is queued
        future = pool.submit(shm_jobs.echo, value)
        future.add_done_callback(lambda f: seen.append(type(f._result)))
        assert future.result(timeout=T) == value
        gate.result(timeout=T)
    assert seen == [bytes]  # a callback never meets a handle (it would copy on the pool's thread)


def test_a_result_whose_file_went_short_fails_every_reader_alike():
    files = _shm.ResultFiles()
    reply, name = files.dump(payload(shm_jobs.BIG))
    try:
        handle = _shared_result.hold(reply)
        assert handle is not None
        os.truncate(os.path.join(_segments.SHM_DIR, name), 100)
        future: JobFuture[bytes] = JobFuture()
        future.set_running_or_notify_cancel()
        future.set_result(handle)  # type: ignore[arg-type]
        with pytest.raises(UnpicklingFailed, match="could not be read from shared memory"):
            future.result(timeout=0)
        assert isinstance(future.exception(timeout=0), UnpicklingFailed)
        with pytest.raises(UnpicklingFailed):
            future.result(timeout=0)
    finally:
        _segments.sweep(files.prefix)


def test_a_file_read_after_its_workers_files_were_swept_is_not_given_back():
    # The worker died: its files' names are gone. The read must not bring one back as a
    # spare (nobody would remove it).
    files = _shm.ResultFiles()
    value = payload(shm_jobs.BIG)
    reply, _ = files.dump(value)
    handle = _shared_result.hold(reply)
    assert handle is not None
    _segments.sweep(files.prefix)
    assert handle.read() == value
    assert [n for n in os.listdir(_segments.SHM_DIR) if n.startswith(files.prefix)] == []


def test_a_handle_dropped_while_its_thread_holds_the_sweeps_lock_does_not_wait_for_it():
    # The cyclic GC may free a dropped future's handle at any allocation, in a thread
    # that holds _segments.NAMES (sweep lists the directory under it): no deadlock.
    files = _shm.ResultFiles()
    reply, name = files.dump(payload(shm_jobs.BIG))
    handle = _shared_result.hold(reply)
    assert handle is not None
    try:
        with _segments.NAMES:
            del handle  # freed here, as the GC would
        assert not os.path.exists(os.path.join(_segments.SHM_DIR, name))
    finally:
        _segments.sweep(files.prefix)
