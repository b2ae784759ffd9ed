"""Resilience: crashes, timeouts, retries, cancellation and kill, huge payloads, no orphan
workers, failing initializers, max_tasks_per_child."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

import taskq
from tests import jobs
from tests.jobs import assert_all_gone, error_text, read_pids, wait_until

T = 30
REPO = str(Path(__file__).resolve().parent.parent)


def wait_for_full_strength(pool, workers, timeout=10):
    wait_until(lambda: pool.stats().workers == workers, timeout, f"{workers} live workers")


# --------------------------------------------------------------------------------------------
# 1. worker death: one table, (where the fault happens) x (what the fault is)
# --------------------------------------------------------------------------------------------

WHERE = ["unpickle_argument", "run_job", "pickle_result"]
FAULTS = ["raise", "exit", "kill", "segv"]
EXITCODES = {"exit": 3, "kill": -signal.SIGKILL, "segv": -signal.SIGSEGV}
LIKELY_CAUSE = {
    "kill": r"(?i)SIGKILL|signal 9\b|killed",
    "segv": r"(?i)SIGSEGV|segmentation|signal 11\b",
    "exit": r"(?<!\d)3(?!\d)",  # the exit code
}


def submit_fault(pool, where, kind, pidfile):
    if where == "unpickle_argument":
        return pool.submit(jobs.identity, jobs.FaultOnUnpickle(kind, pidfile))
    if where == "run_job":
        return pool.submit(jobs.fault_job, kind, pidfile)
    return pool.submit(jobs.return_fault_on_pickle, kind, pidfile)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", FAULTS)
@pytest.mark.parametrize("where", WHERE)
def test_a_fault_fails_only_its_own_job_and_the_pool_serves_on(pool_factory, tmp_path, where, kind):
    pool = pool_factory(2)
    pidfile = str(tmp_path / "fault-pid")
    pool.submit(jobs.noop).result(timeout=T)
    running = pool.submit(jobs.sleep_then, 0.6, "running")
    fut = submit_fault(pool, where, kind, pidfile)
    queued = [pool.submit(jobs.square, i) for i in range(20)]

    with pytest.raises(Exception) as info:
        fut.result(timeout=T)
    err = info.value

    if kind == "raise":
        if where == "run_job":
            assert type(err) is jobs.InjectedFault
            assert "trigger_fault" in str(err.__cause__)
        else:
            # What ProcessPoolExecutor code catches: a BrokenProcessPool for a call
            # that cannot be unpickled, a PicklingError for a result that cannot be
            # pickled; and yet only this job failed.
            assert isinstance(err, taskq.SerializationError), repr(err)
            expected = BrokenProcessPool if where == "unpickle_argument" else pickle.PicklingError
            assert isinstance(err, expected), repr(err)
            assert "injected fault" in error_text(err), error_text(err)
        assert pool.stats().crashed == 0, "an exception must not cost a worker"
    else:
        pid = int(Path(pidfile).read_text())
        assert isinstance(err, taskq.WorkerCrashed), repr(err)
        assert isinstance(err, BrokenProcessPool)
        assert err.pid == pid
        assert err.exitcode == EXITCODES[kind]
        assert hasattr(err, "job_id")
        message = str(err)
        assert str(pid) in message, message
        assert re.search(LIKELY_CAUSE[kind], message.replace(str(pid), "")), message
        wait_for_full_strength(pool, 2)
        s = pool.stats()
        assert s.crashed >= 1
        assert s.worker_restarts >= 1
        assert_all_gone([pid], timeout=5, what="crashed worker")

    # every other running and queued job completes normally
    assert running.result(timeout=T) == "running"
    assert [f.result(timeout=T) for f in queued] == [i * i for i in range(20)]
    # and the pool serves the next jobs
    assert list(pool.map(jobs.square, range(10), timeout=T)) == [i * i for i in range(10)]
    wait_until(lambda: pool.stats().running == 0, 10, "idle")
    s = pool.stats()
    assert s.submitted == s.succeeded + s.failed + s.cancelled
    assert s.failed == 1


@pytest.mark.timeout(60)
def test_a_crash_under_every_start_method_raises_worker_crashed(pool_factory, ctx):
    pool = pool_factory(1, ctx)
    pid = pool.submit(jobs.getpid).result(timeout=T)
    with pytest.raises(taskq.WorkerCrashed) as info:
        pool.submit(jobs.kill_self).result(timeout=T)
    assert info.value.pid == pid
    assert info.value.exitcode == -signal.SIGKILL
    assert pool.submit(jobs.add, 1, 2).result(timeout=T) == 3
    assert pool.submit(jobs.getpid).result(timeout=T) != pid


@pytest.mark.timeout(60)
def test_many_crashes_in_a_row_do_not_break_the_pool(pool_factory):
    pool = pool_factory(2)
    crashes = [pool.submit(jobs.exit_with, 3) for _ in range(6)]
    oks = [pool.submit(jobs.square, i) for i in range(20)]
    for f in crashes:
        with pytest.raises(taskq.WorkerCrashed):
            f.result(timeout=T)
    assert [f.result(timeout=T) for f in oks] == [i * i for i in range(20)]
    wait_for_full_strength(pool, 2)
    s = pool.stats()
    assert s.crashed == 6
    assert s.worker_restarts >= 6
    assert s.failed == 6


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("chunksize", "results_before_crash"), [(1, None), (5, 50), (7, 49)])
def test_a_crash_inside_map_raises_worker_crashed_at_its_place(
    pool_factory, chunksize, results_before_crash
):
    """Item 50 kills its worker: map yields a correct prefix, then raises WorkerCrashed.

    With an explicit chunksize the whole chunk holding item 50 fails (like
    ProcessPoolExecutor), so exactly the items of the earlier chunks come back. With the
    default (adaptive) chunking the prefix may be shorter, but never wrong.
    """
    pool = pool_factory(2)
    it = pool.map(jobs.exit_at, range(100), [50] * 100, chunksize=chunksize, timeout=T)
    got = []
    with pytest.raises(taskq.WorkerCrashed):
        for value in it:
            got.append(value)
    assert got == list(range(len(got)))
    if results_before_crash is None:
        assert len(got) <= 50
    else:
        assert len(got) == results_before_crash
    assert list(pool.map(jobs.square, range(10), timeout=T)) == [i * i for i in range(10)]


# --------------------------------------------------------------------------------------------
# 2. per-job timeouts
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_job_past_its_timeout_raises_job_timeout_and_its_worker_is_replaced(pool_factory):
    pool = pool_factory(1)
    old_pid = pool.submit(jobs.getpid).result(timeout=T)
    t0 = time.monotonic()
    fut = pool.schedule(jobs.sleep_then, (20, "late"), timeout=0.5)
    with pytest.raises(taskq.JobTimeout) as info:
        fut.result(timeout=T)
    assert time.monotonic() - t0 >= 0.45  # never early (late is the machine's business)
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.5
    assert pool.submit(jobs.add, 1, 2).result(timeout=T) == 3
    assert pool.submit(jobs.getpid).result(timeout=T) != old_pid
    assert_all_gone([old_pid], timeout=5)
    wait_for_full_strength(pool, 1)
    s = pool.stats()
    assert s.timed_out == 1
    assert s.failed == 1
    assert s.worker_restarts >= 1


@pytest.mark.timeout(60)
def test_time_waiting_in_the_queue_does_not_count_against_the_timeout(pool_factory):
    pool = pool_factory(1)
    pool.submit(jobs.noop).result(timeout=T)
    first = pool.submit(jobs.sleep_then, 1.0, "first")
    second = pool.schedule(jobs.sleep_then, (0.2, "second"), timeout=0.5)
    assert first.result(timeout=T) == "first"
    assert second.result(timeout=T) == "second"
    assert pool.stats().timed_out == 0


@pytest.mark.timeout(60)
def test_the_pool_job_timeout_is_the_default_for_every_job(pool_factory):
    pool = pool_factory(1, job_timeout=0.5)
    with pytest.raises(taskq.JobTimeout) as info:
        pool.submit(jobs.sleep_then, 20).result(timeout=T)
    assert info.value.timeout == 0.5
    with pytest.raises(taskq.JobTimeout):
        list(pool.map(jobs.sleep_then, [20], timeout=T))
    assert pool.submit(jobs.sleep_then, 0.05, "quick").result(timeout=T) == "quick"
    # a per-job timeout overrides the default
    assert pool.schedule(jobs.sleep_then, (1.0, "slow"), timeout=3).result(timeout=T) == "slow"


@pytest.mark.timeout(60)
def test_a_timeout_does_not_disturb_jobs_on_other_workers(pool_factory):
    pool = pool_factory(2)
    pool.submit(jobs.noop).result(timeout=T)
    other = pool.submit(jobs.sleep_then, 1.2, "other")
    fut = pool.schedule(jobs.sleep_then, (20,), timeout=0.3)
    with pytest.raises(taskq.JobTimeout):
        fut.result(timeout=T)
    assert other.result(timeout=T) == "other"


# --------------------------------------------------------------------------------------------
# 3. retries
# --------------------------------------------------------------------------------------------


def count_callbacks(fut):
    calls = []
    fut.add_done_callback(calls.append)
    return calls


@pytest.mark.timeout(60)
def test_a_job_failing_twice_then_succeeding_returns_its_result_on_the_third_attempt(
    pool_factory,
):
    pool = pool_factory(1, counters=("attempts",), retry_delay=0.01)
    fut = pool.schedule(jobs.flaky, ("attempts", 2), retries=3)
    calls = count_callbacks(fut)
    assert fut.result(timeout=T) == 3
    assert fut.attempts == 3
    assert pool.counter("attempts").value == 3
    time.sleep(0.1)
    assert len(calls) == 1
    s = pool.stats()
    assert (s.succeeded, s.failed, s.retried) == (1, 0, 2)


@pytest.mark.timeout(60)
def test_a_job_that_always_fails_resolves_once_with_the_last_error(pool_factory):
    pool = pool_factory(1, counters=("attempts",), retry_delay=0.01)
    fut = pool.schedule(jobs.flaky, ("attempts", 1000), retries=2)
    calls = count_callbacks(fut)
    with pytest.raises(ValueError, match="attempt 3 failed"):
        fut.result(timeout=T)
    assert fut.attempts == 3
    assert pool.counter("attempts").value == 3
    time.sleep(0.3)
    assert len(calls) == 1
    assert pool.counter("attempts").value == 3, "no attempt after the last one"
    s = pool.stats()
    assert (s.succeeded, s.failed, s.retried) == (0, 1, 2)


@pytest.mark.timeout(60)
def test_retry_on_limits_which_exceptions_are_retried(pool_factory):
    pool = pool_factory(1, counters=("a", "b"), retry_delay=0.01)
    not_retried = pool.schedule(
        jobs.flaky, ("a", 1000, "TypeError"), retries=3, retry_on=(ValueError,)
    )
    with pytest.raises(TypeError):
        not_retried.result(timeout=T)
    assert not_retried.attempts == 1
    assert pool.counter("a").value == 1
    retried = pool.schedule(jobs.flaky, ("b", 2, "ValueError"), retries=3, retry_on=(ValueError,))
    assert retried.result(timeout=T) == 3
    assert retried.attempts == 3


@pytest.mark.timeout(60)
def test_crashes_are_retried_by_default(pool_factory):
    pool = pool_factory(1, counters=("attempts",), retry_delay=0.01)
    fut = pool.schedule(jobs.crash_on_first_attempts, ("attempts", 1), retries=1)
    assert fut.result(timeout=T) == 2
    assert fut.attempts == 2
    s = pool.stats()
    assert (s.crashed, s.retried, s.succeeded, s.failed) == (1, 1, 1, 0)


@pytest.mark.timeout(60)
def test_a_job_crashing_on_every_attempt_fails_with_worker_crashed(pool_factory):
    pool = pool_factory(1, counters=("attempts",), retry_delay=0.01)
    fut = pool.schedule(jobs.crash_on_first_attempts, ("attempts", 1000), retries=2)
    with pytest.raises(taskq.WorkerCrashed):
        fut.result(timeout=T)
    assert fut.attempts == 3
    assert pool.counter("attempts").value == 3
    assert pool.stats().crashed == 3


@pytest.mark.timeout(60)
def test_timeouts_are_retried_by_default(pool_factory):
    pool = pool_factory(1, counters=("attempts",), retry_delay=0.01)
    fut = pool.schedule(jobs.sleep_on_first_attempts, ("attempts", 1, 20), timeout=0.5, retries=1)
    assert fut.result(timeout=T) == 2
    assert fut.attempts == 2
    s = pool.stats()
    assert (s.timed_out, s.retried, s.succeeded) == (1, 1, 1)


@pytest.mark.timeout(60)
def test_retries_wait_for_the_retry_delay(pool_factory):
    pool = pool_factory(1, counters=("attempts",))
    t0 = time.monotonic()
    fut = pool.schedule(jobs.flaky, ("attempts", 1), retries=1, retry_delay=0.5)
    assert fut.result(timeout=T) == 2
    # jittered: allow a wide band, but some backoff must happen and it must be bounded
    assert 0.1 <= time.monotonic() - t0 <= 30


# --------------------------------------------------------------------------------------------
# 4. cancellation and kill
# --------------------------------------------------------------------------------------------


def test_cancelling_a_queued_job_means_it_never_runs(pool_factory, gate):
    pool = pool_factory(1, counters=("ran",))
    fn, args = gate.job()
    blocker = pool.submit(fn, *args)
    gate.wait_started()
    doomed = pool.submit(jobs.counter_add, "ran")
    calls = count_callbacks(doomed)
    assert doomed.cancel() is True
    assert doomed.cancelled()
    assert len(calls) == 1
    gate.open()
    blocker.result(timeout=T)
    assert pool.submit(jobs.counter_value, "ran").result(timeout=T) == 0
    with pytest.raises(concurrent.futures.CancelledError):
        doomed.result(timeout=0)
    s = pool.stats()
    assert s.cancelled == 1
    assert s.submitted == s.succeeded + s.failed + s.cancelled == 3
    assert doomed.attempts == 0


def test_cancelling_a_queued_job_frees_its_maxsize_slot(pool_factory, gate):
    pool = pool_factory(1, maxsize=1)
    fn, args = gate.job()
    pool.submit(fn, *args)
    gate.wait_started()
    waiting = pool.schedule(jobs.add, (1, 1), block=False)
    with pytest.raises(taskq.Full):
        pool.schedule(jobs.add, (2, 2), block=False)
    assert waiting.cancel()
    replacement = pool.schedule(jobs.add, (3, 3), block=False)
    gate.open()
    assert replacement.result(timeout=T) == 6


def test_cancel_on_a_running_job_returns_false(pool_factory, gate):
    pool = pool_factory(1)
    fn, args = gate.job(value="done")
    running = pool.submit(fn, *args)
    gate.wait_started()
    assert running.cancel() is False
    assert not running.cancelled()
    gate.open()
    assert running.result(timeout=T) == "done"


@pytest.mark.timeout(60)
def test_kill_stops_a_running_job_and_the_pool_serves_on(pool_factory, tmp_path):
    pool = pool_factory(2)
    other = pool.submit(jobs.sleep_then, 1.0, "other")
    started = str(tmp_path / "started")
    fut = pool.submit(jobs.mark_started_then_sleep, started, 30, "never")
    wait_until(lambda: os.path.exists(started), 10, "the job to start")
    pid = int(Path(started).read_text())
    assert pool.kill(fut) is True
    with pytest.raises(concurrent.futures.CancelledError):
        fut.result(timeout=T)  # the job itself would sleep 30 s
    assert_all_gone([pid], timeout=5, what="killed worker")
    assert other.result(timeout=T) == "other", "kill must not disturb other workers"
    assert pool.submit(jobs.add, 2, 3).result(timeout=T) == 5
    wait_for_full_strength(pool, 2)
    s = pool.stats()
    assert s.worker_restarts >= 1
    assert s.cancelled == 1
    assert s.submitted == s.succeeded + s.failed + s.cancelled


@pytest.mark.timeout(60)
def test_kill_on_a_finished_job_returns_false_and_changes_nothing(pool_factory):
    pool = pool_factory(1)
    fut = pool.submit(jobs.add, 1, 1)
    assert fut.result(timeout=T) == 2
    assert pool.kill(fut) is False
    assert fut.result(timeout=0) == 2
    assert pool.stats().worker_restarts == 0


@pytest.mark.timeout(60)
def test_a_killed_job_is_not_retried(pool_factory, tmp_path):
    pool = pool_factory(1)
    started = str(tmp_path / "started")
    fut = pool.schedule(jobs.mark_started_then_sleep, (started, 30), retries=3)
    wait_until(lambda: os.path.exists(started), 10, "the job to start")
    assert pool.kill(fut) is True
    with pytest.raises(concurrent.futures.CancelledError):
        fut.result(timeout=5)
    time.sleep(0.5)
    assert fut.attempts == 1
    assert pool.stats().retried == 0
    assert pool.submit(jobs.add, 1, 1).result(timeout=T) == 2


# --------------------------------------------------------------------------------------------
# 6. huge payloads
# --------------------------------------------------------------------------------------------

HUGE = 100 * 1024 * 1024


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_100_mb_argument_and_a_100_mb_result_both_work(pool_factory):
    pool = pool_factory(1)
    payload = b"x" * HUGE
    assert pool.submit(jobs.length, payload).result(timeout=90) == HUGE
    del payload
    result = pool.submit(jobs.make_bytes, HUGE).result(timeout=90)
    assert len(result) == HUGE
    del result
    assert pool.submit(jobs.add, 1, 1).result(timeout=T) == 2


# --------------------------------------------------------------------------------------------
# 7. no orphans
# --------------------------------------------------------------------------------------------

KILLED_PARENT_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys, time
    import taskq
    from tests import jobs

    pid_file, method = sys.argv[1], sys.argv[2]
    pool = taskq.Pool(2, multiprocessing.get_context(method),
                      jobs.record_pid_initializer, (pid_file,))
    futs = [pool.submit(jobs.sleep_then, 60) for _ in range(4)]
    print("ready", flush=True)
    time.sleep(120)
    """
)

INTERRUPTED_PARENT_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys, time
    import taskq
    from tests import jobs

    pid_file, method = sys.argv[1], sys.argv[2]
    try:
        with taskq.Pool(2, multiprocessing.get_context(method),
                        jobs.record_pid_initializer, (pid_file,)) as pool:
            futs = [pool.submit(jobs.sleep_then, 60) for _ in range(4)]
            print("ready", flush=True)
            for f in futs:
                f.result(timeout=100)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(0)
    print("not interrupted", flush=True)
    sys.exit(1)
    """
)


def run_script(script, pid_file, method):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen(
        [sys.executable, "-c", script, pid_file, method],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_workers(proc, pid_file, n=2, timeout=30):
    def ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"script died early (rc={proc.returncode}):\n{out}\n{err}")
        return len(read_pids(pid_file)) >= n

    wait_until(ready, timeout, f"{n} workers in the script")
    time.sleep(0.3)  # let the jobs start
    return read_pids(pid_file)


@pytest.mark.timeout(60)
def test_workers_exit_when_their_parent_is_killed(tmp_path, start_method):
    pid_file = str(tmp_path / "pids")
    proc = run_script(KILLED_PARENT_SCRIPT, pid_file, start_method)
    try:
        pids = wait_for_workers(proc, pid_file)
        proc.kill()
        proc.wait(10)
        assert_all_gone(pids, timeout=3, what="orphaned worker")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        for pid in read_pids(pid_file):  # never leave anything behind, even on failure
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_ctrl_c_in_a_with_block_exits_cleanly_and_quickly(tmp_path, start_method):
    pid_file = str(tmp_path / "pids")
    proc = run_script(INTERRUPTED_PARENT_SCRIPT, pid_file, start_method)
    try:
        pids = wait_for_workers(proc, pid_file)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C: the whole foreground group
        try:
            out, err = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            pytest.fail("the script did not exit within 40 s of Ctrl-C")
        elapsed = time.monotonic() - t0
        assert proc.returncode == 0, (proc.returncode, out, err)
        assert "interrupted" in out
        assert elapsed < 30, elapsed  # its jobs sleep 60 s: they were stopped, not awaited
        assert "Traceback" not in err, err
        assert_all_gone(pids, timeout=1, what="worker")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in read_pids(pid_file):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_workers_ignore_sigint(pool_factory, pid_file):
    pool = pool_factory(1, initializer=jobs.record_pid_initializer, initargs=(pid_file,))
    fut = pool.submit(jobs.sleep_then, 0.5, "survived")
    wait_until(lambda: read_pids(pid_file), 10, "the worker to start")
    time.sleep(0.1)
    os.kill(read_pids(pid_file)[0], signal.SIGINT)
    assert fut.result(timeout=T) == "survived"
    assert pool.stats().crashed == 0


# --------------------------------------------------------------------------------------------
# 8. failing initializer
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_failing_initializer_fails_jobs_then_breaks_the_pool_without_a_restart_storm(
    pool_factory,
):
    t0 = time.monotonic()
    pool = pool_factory(2, initializer=jobs.failing_initializer, initargs=("init went wrong",))
    futs = [pool.submit(jobs.square, i) for i in range(40)]
    errors = []
    for f in futs:
        with pytest.raises((taskq.InitializerError, taskq.PoolBroken)) as info:
            f.result(timeout=T)
        errors.append(info.value)
    texts = [error_text(e) for e in errors]
    assert any("failing_initializer" in t and "init went wrong" in t for t in texts), texts[0]
    assert any(isinstance(e, taskq.PoolBroken) for e in errors), (
        "queued jobs should fail with PoolBroken once the pool gives up"
    )
    assert all(isinstance(e, BrokenProcessPool) for e in errors if isinstance(e, taskq.PoolBroken))
    remaining = 3 - (time.monotonic() - t0)
    if remaining > 0:
        time.sleep(remaining)
    assert pool.stats().worker_restarts < 20, "workers are restarted in a tight loop"

    deadline = time.monotonic() + 30
    while True:
        try:
            fut = pool.submit(jobs.square, 2)
        except taskq.PoolBroken as exc:
            assert isinstance(exc, BrokenProcessPool)
            break
        with pytest.raises((taskq.InitializerError, taskq.PoolBroken)):
            fut.result(timeout=T)
        assert time.monotonic() < deadline, "submit never started raising PoolBroken"
        time.sleep(0.2)
    with pytest.raises(taskq.PoolBroken):
        pool.schedule(jobs.square, (2,))
    assert pool.stats().worker_restarts < 20


@pytest.mark.timeout(60)
def test_an_initializer_error_carries_the_initializer_traceback(pool_factory):
    pool = pool_factory(1, initializer=jobs.failing_initializer, initargs=("bad config",))
    with pytest.raises((taskq.InitializerError, taskq.PoolBroken)) as info:
        pool.submit(jobs.noop).result(timeout=T)
    text = error_text(info.value)
    assert "failing_initializer" in text
    assert "bad config" in text


# --------------------------------------------------------------------------------------------
# 9. max_tasks_per_child
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_max_tasks_per_child_replaces_a_worker_after_n_jobs(pool_factory, ctx):
    pool = pool_factory(1, ctx, max_tasks_per_child=2)
    pids = [pool.submit(jobs.getpid).result(timeout=T) for _ in range(8)]
    per_pid = collections.Counter(pids)
    assert max(per_pid.values()) <= 2, per_pid
    assert len(per_pid) >= 4, per_pid
    # queued all at once: nothing is lost while workers are replaced
    futs = [pool.submit(jobs.sleep_then_pid, 0.01) for _ in range(8)]
    pids = [f.result(timeout=T) for f in futs]
    per_pid = collections.Counter(pids)
    assert max(per_pid.values()) <= 2, per_pid
    assert len(per_pid) >= 4
    s = pool.stats()
    assert s.succeeded == 16
    assert s.failed == s.crashed == 0


@pytest.mark.timeout(60)
def test_max_tasks_per_child_with_several_workers_loses_no_job(pool_factory, pid_file):
    pool = pool_factory(
        2, initializer=jobs.record_pid_initializer, initargs=(pid_file,), max_tasks_per_child=3
    )
    results = [f.result(timeout=T) for f in [pool.submit(jobs.square, i) for i in range(60)]]
    assert results == [i * i for i in range(60)]
    assert len(set(read_pids(pid_file))) >= 60 // 3
    pool.shutdown(wait=True)
    assert_all_gone(read_pids(pid_file))
