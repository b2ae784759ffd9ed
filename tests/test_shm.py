"""Large arguments and results travel through shared memory, and nothing is left behind
whatever dies: a job's argument segment (a memfd the parent owns) is closed when its future
resolves; a result segment (a /dev/shm file) is adopted by the parent, or removed by whoever
outlives the other."""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from taskq import JobTimeout, WorkerCrashed, _segments, _shm
from tests import shm_jobs
from tests.jobs import pid_alive, wait_until

T = 30
BIG = shm_jobs.BIG
REPO = str(Path(__file__).resolve().parent.parent)


def shm_names():
    return {name for name in os.listdir(_segments.SHM_DIR) if name.startswith(_segments.PREFIX)}


def argument_segments():
    """The memfds of this process that hold a call's buffers."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith(f"/memfd:{_segments.PREFIX}"):
                found.append(link)
    return found


def wait_released():
    """Segments are released by a done-callback, which may run just after result() returns."""
    wait_until(lambda: argument_segments() == [], T, "the argument segments to be closed")


@pytest.fixture
def no_leak():
    """Fails the test if it leaves a result file in /dev/shm or an argument memfd open."""
    before = shm_names()
    yield
    assert shm_names() - before == set()
    assert argument_segments() == []


def payload(size=BIG, kind=bytes):
    data = bytes(range(256)) * (size // 256)
    return kind(data)


# -- what crosses ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_and_bytearrays_keep_their_type_and_content(pool_factory, no_leak, kind):
    pool = pool_factory(2)
    value = payload(kind=kind)
    assert pool.submit(shm_jobs.describe, value).result(timeout=T) == (kind.__name__, value)
    back = pool.submit(shm_jobs.echo, value).result(timeout=T)
    assert type(back) is kind and back == value
    pool.shutdown()


def test_large_values_cross_under_every_start_method(pool_factory, no_leak, ctx):
    pool = pool_factory(1, mp_context=ctx)
    value = payload(kind=bytearray)
    assert pool.submit(shm_jobs.describe, memoryview(value)).result(timeout=T) == (
        "memoryview",
        value,
    )
    assert pool.submit(shm_jobs.echo, bytes(value)).result(timeout=T) == value
    back = pool.submit(shm_jobs.pickle_buffer, BIG).result(timeout=T)
    assert isinstance(back, memoryview) and back == b"p" * BIG
    del back
    pool.shutdown()


def test_a_large_memoryview_arrives_as_a_memoryview_of_the_same_bytes(pool_factory, no_leak):
    pool = pool_factory(1)
    value = payload(kind=bytearray)
    name, seen = pool.submit(shm_jobs.describe, memoryview(value)).result(timeout=T)
    assert (name, seen) == ("memoryview", value)
    pool.shutdown()


def test_a_pickle_buffer_result_arrives_as_a_writable_memoryview(pool_factory, no_leak):
    pool = pool_factory(1)
    back = pool.submit(shm_jobs.pickle_buffer, BIG).result(timeout=T)
    assert isinstance(back, memoryview) and back == b"p" * BIG
    back[:1] = b"q"  # a private copy-on-write mapping: the caller may modify it
    assert back[:2] == b"qp"
    pool.shutdown()


def test_small_and_large_values_mix_in_one_call(pool_factory, no_leak):
    pool = pool_factory(1)
    value = (payload(), b"small", [payload(kind=bytearray)], {"k": 1})
    assert pool.submit(shm_jobs.echo, value).result(timeout=T) == value
    pool.shutdown()


def test_numpy_arrays_cross_without_pickling_their_data(pool_factory, no_leak):
    np = pytest.importorskip("numpy")
    pool = pool_factory(2)
    array = np.arange(1 << 20, dtype=np.float64)
    result = pool.submit(shm_jobs.numpy_add_one, array).result(timeout=T)
    assert result.dtype == np.float64 and result.shape == array.shape
    assert (result == array + 1).all()
    result += 1  # the caller owns a writable result
    del result
    pool.shutdown()


def test_a_job_modifying_its_argument_changes_only_its_own_copy(pool_factory, no_leak, tmp_path):
    pool = pool_factory(1)
    value = payload(kind=bytearray)
    assert pool.submit(shm_jobs.scribble, value).result(timeout=T) == b"XXXX" + value[4:8]
    assert value == payload(kind=bytearray)
    # A retry sees the argument as it was sent, not as the first attempt left it.
    fut = pool.schedule(
        shm_jobs.fail_once_after_scribbling, (value, str(tmp_path / "marker")), retries=1
    )
    assert fut.result(timeout=T) == value[:4]
    pool.shutdown()


def test_argument_segments_are_freed_or_kept_for_reuse_as_jobs_end(pool_factory, no_leak):
    pool = pool_factory(2)
    futures = [pool.submit(shm_jobs.echo, payload()) for _ in range(20)]
    assert all(f.result(timeout=T) == payload() for f in futures)
    # Released by a done-callback, which runs just after result() may return: wait for it.
    kept = _segments.KEEP_SEGMENTS
    wait_until(lambda: len(argument_segments()) <= kept, T, "the segments to be released")
    pool.shutdown()  # then none is left (no_leak)


def test_a_mapped_argument_segment_is_reused_once_the_worker_let_go_of_it(
    pool_factory, no_leak, monkeypatch
):
    monkeypatch.setattr(_segments, "KEEP_SECONDS", 3600.0)  # no trim during the test
    pool = pool_factory(1)
    value = memoryview(payload(kind=bytearray))  # mapped by the worker
    assert pool.submit(shm_jobs.describe, value).result(timeout=T)[1] == value
    wait_until(lambda: pool._segments.kept > 0, T, "the segment to be kept")
    [segment] = argument_segments()
    other = memoryview(payload(kind=bytearray)[::-1])
    assert pool.submit(shm_jobs.describe, other).result(timeout=T)[1] == other
    wait_until(lambda: pool._segments.kept > 0, T, "the segment to be kept again")
    assert argument_segments() == [segment]  # filled again, not a new one
    pool.shutdown()


def test_a_segment_the_worker_still_maps_is_never_filled_again(pool_factory, no_leak, monkeypatch):
    monkeypatch.setattr(_segments, "KEEP_SECONDS", 3600.0)
    pool = pool_factory(1)
    first = memoryview(payload(kind=bytearray))  # mapped by the worker (a bytearray is copied)
    assert pool.submit(shm_jobs.keep_argument, first).result(timeout=T) == first[:8]
    wait_released()  # closed, not kept: the worker's view still maps it
    assert pool._segments.kept == 0
    for _ in range(3):  # other arguments, through other segments
        reversed_ = memoryview(payload(kind=bytearray)[::-1])
        assert pool.submit(shm_jobs.describe, reversed_).result(timeout=T)[1] == reversed_
    assert pool.submit(shm_jobs.kept_argument).result(timeout=T) == first[:8]
    pool.shutdown()


def test_kept_segments_are_freed_after_a_while_idle(pool_factory, no_leak, monkeypatch):
    monkeypatch.setattr(_segments, "KEEP_SECONDS", 0.2)
    pool = pool_factory(1)
    futures = [pool.submit(shm_jobs.echo, payload()) for _ in range(4)]
    assert all(f.result(timeout=T) == payload() for f in futures)
    wait_until(lambda: pool._segments.kept > 0, T, "segments to be kept")
    wait_released()  # by the pool's timer, the pool still open
    assert pool._segments.kept == 0
    pool.shutdown()


def test_a_result_in_a_file_is_announced_with_its_size_and_read_back():
    from taskq._collect import decode, read
    from taskq._job import JobFuture, WorkItem
    from taskq._protocol import Frame, Kind
    from taskq._shared_result import SharedBytes

    files = _shm.ResultFiles()
    value = bytes(range(256)) * (_shm.THRESHOLD // 256 + 1)
    try:
        for _ in range(2):  # the file goes back as a spare after each read: reused
            reply, name = files.dump(value)
            assert name is not None and (Path(_segments.SHM_DIR) / name).exists()
            assert _shm.shared_size(reply) == _segments.layout([memoryview(value)], [0])[1]
            job = WorkItem(1, JobFuture(), b"", "job1", 0, None, 0, 0.1, None)
            frame = Frame(Kind.OK_SHARED, 1, 0.0, reply)
            assert read(job, frame) == (True, value)  # the pool reads it
            reply, name = files.dump(value)
            ok, handle = decode(job, Frame(Kind.OK_SHARED, 1, 0.0, reply))
            assert ok and type(handle) is SharedBytes  # left for the first reader
            assert handle.read() == value
            assert not (Path(_segments.SHM_DIR) / name).exists()
        # Each result took the spare the last read gave back: one file, four results.
        assert [p.name for p in Path(_segments.SHM_DIR).glob(f"{files.prefix}*")] == [
            f"{files.prefix}spare0"
        ]
    finally:
        _segments.sweep(files.prefix)
    small, none = files.dump(b"small")  # no file: the plain pickle, no size before it
    assert none is None and pickle.loads(small) == b"small"


def test_a_segment_is_taken_by_size_and_the_cache_trims_what_waits_too_long(monkeypatch):
    timers = []
    cache = _segments.SegmentCache(later=lambda delay, action: timers.append((delay, action)))
    try:
        small, big = cache.take(1000), cache.take(1 << 20)
        cache.give_back(*small, 1000, reuse=True)
        cache.give_back(*big, 1 << 20, reuse=True)
        assert len(timers) == 1  # one pending trim at a time
        assert cache.take(5000) == big  # the smallest that holds it
        assert cache.take(10) == small
        cache.give_back(*small, 1000, reuse=True)
        cache.give_back(*big, 1 << 20, reuse=False)  # closed at once
        assert cache.kept == 1000
        monkeypatch.setattr(_segments, "KEEP_SECONDS", 0.0)
        timers.pop()[1]()  # the trim runs: everything waited long enough
        assert cache.kept == 0 and argument_segments() == []
    finally:
        cache.close()


def shared_call(cache, value):
    call = _shm.dump_call((shm_jobs.echo, _shm.outband((value,)), {}), cache)
    assert isinstance(call, _shm.SharedCall)
    return call


def test_a_call_whose_segment_was_reused_or_closed_fails_instead_of_reading_other_data():
    cache = _segments.SegmentCache()
    first = shared_call(cache, payload())
    assert pickle.loads(_shm.payload(first)) == (shm_jobs.echo, (payload(),), {})
    first.segment.release()  # kept for reuse...
    second = shared_call(cache, payload(kind=bytearray))  # ...and reused at once
    assert second.segment.fd == first.segment.fd or second.segment.name == first.segment.name
    with pytest.raises(_shm.SegmentGone):
        pickle.loads(_shm.payload(first))
    assert pickle.loads(_shm.payload(second))[1] == (payload(kind=bytearray),)
    second.segment.release()
    cache.close()
    with pytest.raises(_shm.SegmentGone):
        pickle.loads(_shm.payload(second))
    other = os.memfd_create("not-taskq")  # takes the lowest free number: the closed one
    try:
        with pytest.raises(_shm.SegmentGone):
            pickle.loads(_shm.payload(second))
    finally:
        os.close(other)
    assert argument_segments() == []


def test_out_of_descriptors_the_calls_go_through_the_pipe_instead(pool_factory, no_leak, gate):
    pool = pool_factory(1)
    fn, args = gate.job()
    blocker = pool.submit(fn, *args)
    gate.wait_started()
    values = [payload(kind=bytearray) for _ in range(40)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 10, hard))
    try:  # each snapshot needs a memfd: the first few get one, the rest are pickled
        futures = [pool.submit(shm_jobs.describe, value) for value in values]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert 0 < len(argument_segments()) < len(values)
    gate.open()
    blocker.result(timeout=T)
    assert [f.result(timeout=T) for f in futures] == [("bytearray", v) for v in values]
    pool.shutdown()


# -- whatever dies -----------------------------------------------------------------------


def test_a_cancelled_job_frees_its_segment_at_once(pool_factory, no_leak, gate):
    pool = pool_factory(1)
    fn, args = gate.job()
    blocker = pool.submit(fn, *args)
    gate.wait_started()
    queued = pool.submit(shm_jobs.echo, memoryview(payload()))
    assert len(argument_segments()) == 1
    assert queued.cancel()
    assert argument_segments() == []
    gate.open()
    blocker.result(timeout=T)
    pool.shutdown()


def test_a_timed_out_job_leaves_nothing(pool_factory, no_leak):
    pool = pool_factory(1)
    fut = pool.schedule(shm_jobs.sleep_holding, (memoryview(payload()), 30), timeout=0.5)
    with pytest.raises(JobTimeout):
        fut.result(timeout=T)
    wait_released()
    assert pool.submit(shm_jobs.echo, payload()).result(timeout=T) == payload()
    pool.shutdown()


def test_a_killed_job_leaves_nothing(pool_factory, no_leak):
    pool = pool_factory(1)
    fut = pool.submit(shm_jobs.sleep_holding, memoryview(payload()), 30)
    wait_until(lambda: pool.stats().running == 1, T, "the job to start")
    time.sleep(0.2)  # let it map its argument
    assert pool.kill(fut)
    with pytest.raises(CancelledError):
        fut.result(timeout=T)
    wait_released()
    pool.shutdown()


def test_a_worker_killed_with_a_segment_mapped_leaves_nothing(pool_factory, no_leak):
    pool = pool_factory(1)
    with pytest.raises(WorkerCrashed):
        pool.submit(shm_jobs.die_holding, memoryview(payload())).result(timeout=T)
    wait_released()
    assert pool.submit(shm_jobs.echo, payload()).result(timeout=T) == payload()
    pool.shutdown()


def test_a_worker_killed_after_writing_a_result_segment_leaves_no_file(pool_factory, no_leak):
    pool = pool_factory(1)
    before = shm_names()
    with pytest.raises(WorkerCrashed):
        pool.submit(shm_jobs.die_after_writing_a_result, BIG).result(timeout=T)
    assert shm_names() - before == set()  # removed when the parent handled the exit
    pool.shutdown()


KILLED_PARENT_SCRIPT = """
import multiprocessing, os, sys, time
import taskq
from tests import shm_jobs

started, method = sys.argv[1], sys.argv[2]
pool = taskq.Pool(2, mp_context=multiprocessing.get_context(method))
pool.submit(shm_jobs.write_a_result_then_wait, shm_jobs.BIG, started)
pool.submit(shm_jobs.sleep_holding, memoryview(bytearray(shm_jobs.BIG)), 60)
time.sleep(120)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_killed_parent_leaves_nothing_in_dev_shm_and_no_warning(tmp_path, method):
    started = str(tmp_path / "started")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT_SCRIPT, started, method],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    pid = 0
    try:
        wait_until(lambda: os.path.exists(started) or proc.poll() is not None, 60, "the job")
        assert proc.poll() is None, proc.communicate()
        pid_text, name = Path(started).read_text().split()
        pid = int(pid_text)
        assert name in shm_names()
        proc.kill()
        _, err = proc.communicate(timeout=30)
        wait_until(lambda: not pid_alive(pid), 30, "the orphaned worker to exit")
        assert name not in shm_names()
        assert "resource_tracker" not in err and "leaked" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


KILLED_AFTER_RESULTS_SCRIPT = """
import multiprocessing, os, signal, sys
import taskq
from tests import shm_jobs

pool = taskq.Pool(2, mp_context=multiprocessing.get_context(sys.argv[1]))
pids = set()
for _ in range(4):  # the workers now keep spare result files, given back by the parent
    futures = [pool.submit(shm_jobs.big_bytes_with_pid, 1 << 21) for _ in range(4)]
    pids.update(int.from_bytes(f.result()[:8], "little") for f in futures)
print(" ".join(map(str, pids)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_parent_killed_between_jobs_leaves_no_result_file(method):
    # Idle workers see their pipe close and exit; whoever sees the parent gone first
    # (the worker, its lifeline thread, the fork server) must leave no file behind.
    for _ in range(5):  # a race: several rounds make a miss likely to show
        done = subprocess.run(
            [sys.executable, "-c", KILLED_AFTER_RESULTS_SCRIPT, method],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=REPO),
        )
        assert done.returncode == -signal.SIGKILL, done.stderr
        pids = [int(pid) for pid in done.stdout.split()]
        assert pids, done.stderr
        for pid in pids:
            wait_until(lambda pid=pid: not pid_alive(pid), 30, f"worker {pid} to exit")
        left = [n for n in shm_names() if any(n.startswith(f"taskq-{p}-") for p in pids)]
        assert left == [], left
        assert "Traceback" not in done.stderr, done.stderr
