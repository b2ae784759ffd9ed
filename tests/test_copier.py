"""Large results are copied out of shared memory on the copier's thread, then settled on
the manager's: each job gets its own result or error, and none is lost or settled twice,
whatever stops first."""

from __future__ import annotations

import os
import threading
from concurrent.futures import wait
from typing import Any

import pytest

from taskq import WorkerCrashed, _segments, _shm
from taskq._copier import Copier
from taskq._errors import UnpicklingFailed
from taskq._job import JobFuture
from taskq._protocol import Frame, Kind
from tests import shm_jobs
from tests.jobs import kill_self, wait_until
from tests.test_shm import no_leak, payload  # noqa: F401  (a fixture)

T = 30


class _Job:
    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.future: JobFuture[Any] = JobFuture()


def _frame(kind: Kind, job_id: int, plain: bool = False) -> Frame:
    payload = _shm.SHARED_HEAD.pack(1 << 20, plain) if kind == Kind.OK_SHARED else b""
    return Frame(int(kind), job_id, 0.0, payload)


class _Loop:
    """Stands in for the manager's loop: posted commands run when the test says."""

    def __init__(self) -> None:
        self.backlog = True  # jobs wait in the queue
        self.commands: list[Any] = []
        self.posted = threading.Event()

    def post(self, command: Any) -> None:
        self.commands.append(command)
        self.posted.set()

    def run_posted(self, count: int) -> None:
        while len(self.commands) < count:
            assert self.posted.wait(T), "the copier never posted its outcomes"
            self.posted.clear()
        for command in self.commands:
            command()


def _copier(loop: _Loop, settled: list[Any]) -> Copier:
    decoded_on: list[str] = []

    def decode(item: Any, frame: Frame) -> tuple[bool, Any]:
        decoded_on.append(threading.current_thread().name)
        return True, f"result {frame.job_id}"

    copier = Copier(decode, loop.post, settled.extend, backlog=lambda: loop.backlog)
    copier.decoded_on = decoded_on  # type: ignore[attr-defined]
    return copier


def test_only_replies_with_a_shared_result_go_to_the_copier_and_are_settled_once():
    loop, settled = _Loop(), []
    copier = _copier(loop, settled)
    small, large = _Job(1), _Job(2)
    failed = _Job(3)
    done = [
        (small, _frame(Kind.OK, 1)),
        (large, _frame(Kind.OK_SHARED, 2)),
        (failed, _frame(Kind.ERROR, 3)),
    ]
    loop.backlog = False
    assert copier.take_shared(done) == done  # nothing to overlap: all decoded here
    assert not copier
    loop.backlog = True
    inline = copier.take_shared(done)
    assert [item for item, _ in inline] == [small, failed]
    assert copier  # the large one is pending until the manager settles it
    loop.run_posted(1)
    assert settled == [(large, (True, "result 2"))]
    assert copier.decoded_on == ["taskq-copier"]  # type: ignore[attr-defined]
    assert not copier
    assert copier.close() == []


def test_a_plain_large_result_is_left_to_its_reader_unless_a_callback_waits_for_it():
    loop, settled = _Loop(), []
    copier = _copier(loop, settled)
    plain, watched, other = _Job(1), _Job(2), _Job(3)
    watched.future.add_done_callback(lambda f: None)
    done = [
        (plain, _frame(Kind.OK_SHARED, 1, plain=True)),  # one large bytes: its reader reads it
        (watched, _frame(Kind.OK_SHARED, 2, plain=True)),  # the callback would read it here
        (other, _frame(Kind.OK_SHARED, 3)),  # anything else: the copier reads it
    ]
    inline = copier.take_shared(done)
    assert [item for item, _ in inline] == [plain]
    loop.run_posted(1)
    assert [item for item, _ in settled] == [watched, other]
    copier.close()


def test_close_hands_back_the_jobs_not_settled_and_drops_their_late_outcomes():
    loop, settled = _Loop(), []
    copier = _copier(loop, settled)
    items = [_Job(i) for i in range(3)]
    copier.put([(item, _frame(Kind.OK_SHARED, item.job_id)) for item in items])
    left = copier.close()
    assert sorted(item.job_id for item in left) == [0, 1, 2]
    loop.run_posted(1)  # the thread may still post what it decoded: ignored
    assert settled == []
    with pytest.raises(RuntimeError, match="closed"):
        copier.put([(items[0], _frame(Kind.OK_SHARED, 0))])


def test_large_results_come_back_whole_and_in_their_own_futures(pool_factory, no_leak):  # noqa: F811
    data = [payload(shm_jobs.BIG * 2)[:-i] + bytes([i]) for i in range(1, 25)]
    with pool_factory(2) as pool:
        futures = [pool.submit(shm_jobs.echo, value) for value in data]
        futures.append(pool.submit(shm_jobs.echo, b"small"))
        assert [f.result(timeout=T) for f in futures] == [*data, b"small"]


def test_a_large_result_that_cannot_be_unpickled_fails_only_its_job(pool_factory, no_leak):  # noqa: F811
    with pool_factory(2) as pool:
        bad = pool.submit(shm_jobs.unloadable_in_parent, shm_jobs.BIG)
        good = [pool.submit(shm_jobs.echo, payload()) for _ in range(4)]
        wait([bad, *good], timeout=T)
        with pytest.raises(UnpicklingFailed, match="could not be unpickled in the parent") as info:
            bad.result(timeout=0)
        assert "refusing to load" in repr(info.value.__cause__)
        assert all(f.result(timeout=0) == payload() for f in good)
        assert pool.submit(shm_jobs.echo, payload()).result(timeout=T) == payload()


def test_a_dead_workers_files_are_swept_only_after_the_replies_handed_over_read_theirs(tmp_path):
    loop, settled = _Loop(), []
    release = threading.Event()
    prefix = f"{_segments.PREFIX}test-{os.getpid()}-"
    path = os.path.join(_segments.SHM_DIR, f"{prefix}1")
    open(path, "wb").close()

    def decode(item: Any, frame: Frame) -> tuple[bool, Any]:
        assert release.wait(T)
        return True, os.path.exists(path)  # what the reply would find

    copier = Copier(decode, loop.post, settled.extend, backlog=lambda: True)
    try:
        copier.put([(_Job(1), _frame(Kind.OK_SHARED, 1))])
        copier.then_sweep(prefix)  # the worker died: its files go, after job 1 read its own
        assert os.path.exists(path)
        release.set()
        loop.run_posted(1)
        assert [outcome for _, outcome in settled] == [(True, True)]
        wait_until(lambda: not os.path.exists(path), T, "the file to be swept")
        copier.then_sweep(prefix)  # nothing pending: at once (nothing left to remove)
    finally:
        copier.close()
        _segments.sweep(prefix)


def test_workers_retiring_after_each_large_result_lose_none(pool_factory, no_leak):  # noqa: F811
    data = [payload(1 << 20)[:-1] + bytes([i]) for i in range(60)]  # slow to copy out
    with pool_factory(2, max_tasks_per_child=1) as pool:
        assert list(pool.map(shm_jobs.echo, data, timeout=T)) == data


@pytest.mark.parametrize(
    "big",
    [
        payload(8 << 20),  # read by the caller (_shared_result.py)
        (bytearray(payload(8 << 20)),),  # read by the pool (the copier, with a backlog)
    ],
    ids=["bytes", "tuple"],
)
def test_a_worker_dying_just_after_a_large_reply_leaves_that_reply_whole(
    pool_factory,
    no_leak,  # noqa: F811
    big,
):
    # big: slow enough to copy out that the exit is handled meanwhile
    with pool_factory(1) as pool:
        for _ in range(20):  # a known, short average: the worker is handed both jobs at once
            pool.submit(shm_jobs.echo, b"warm").result(timeout=T)
        reply = pool.submit(shm_jobs.echo, big)
        dies = pool.submit(kill_self)
        # More than a worker may hold: jobs stay queued, so the large reply goes to the copier.
        queued = [pool.submit(shm_jobs.echo, b"queued") for _ in range(600)]
        assert reply.result(timeout=T) == big
        with pytest.raises(WorkerCrashed):
            dies.result(timeout=T)
        assert all(f.result(timeout=T) == b"queued" for f in queued)


def test_a_decode_that_raises_fails_its_batch_and_the_copier_goes_on():
    loop, settled = _Loop(), []
    boom = RuntimeError("a bug in decoding")

    def decode(item: Any, frame: Frame) -> tuple[bool, Any]:
        if frame.job_id == 1:
            raise boom
        return True, frame.job_id

    copier = Copier(decode, loop.post, settled.extend, backlog=lambda: True)
    try:
        first, second = _Job(1), _Job(2)
        copier.put([(first, _frame(Kind.OK_SHARED, 1))])
        copier.put([(second, _frame(Kind.OK_SHARED, 2))])
        loop.run_posted(2)
        assert settled == [(first, (False, boom)), (second, (True, 2))]
        assert not copier
    finally:
        copier.close()
