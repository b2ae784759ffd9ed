"""The fault matrix of the core's second pass: each fault fails one job, and the pool serves on.

Each test names the fault it guards. They assert what happened (error types,
counts, runs), never how fast: a noisy 2-core machine may delay anything.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import multiprocessing
import os
import pickle
import random
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool

import pytest

import taskq
from tests import fault_jobs as fj
from tests import jobs
from tests.conftest import TEST_BROKER

T = 60  # generous result() timeout: a hang fails, a slow machine does not
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_in_thread(fn, timeout=T):
    """Run ``fn`` in a thread; a hang becomes a test failure instead of a stalled suite."""
    box: dict[str, object] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{fn} hung for {timeout}s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def run_script(script, *args):
    """Run ``script`` with ``python -c`` in the repository, bounded in time."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=100,
        env=dict(os.environ, PYTHONPATH=REPO),
    )


def assert_serves(pool):
    assert pool.submit(jobs.square, 7).result(timeout=T) == 49


# -- 1. cancel() racing dispatch ------------------------------------------------------------


def queued_job():
    """A queue holding one job whose future's cancel() withdraws it, as a pool's does."""
    from taskq._job import JobFuture, WorkItem
    from taskq._queue import JobQueue

    queue: JobQueue[WorkItem] = JobQueue()
    future = JobFuture()
    item = WorkItem(1, future, b"", "job", 0, None, 0, 0.1, None)
    future._work, future._on_cancel = item, queue.cancel
    queue.put(item)
    return queue, item, future


def test_cancel_of_a_job_the_pool_just_took_returns_true_and_never_raises():
    # The interleaving, step by step and without processes: the dispatcher takes the
    # job from the queue, the caller cancels, then the dispatcher starts the future.
    queue, item, future = queued_job()
    assert queue.claim(1) == [item]  # the dispatcher owns it now
    assert future.cancel() is True
    # The dispatcher's one call: it learns of the cancellation instead of raising.
    assert future.set_running_or_notify_cancel() is False
    assert future.cancelled() and future.done()


def test_cancel_before_the_pool_takes_the_job_withdraws_it():
    queue, _, future = queued_job()
    assert future.cancel() is True
    assert queue.snapshot().depth == 0 and queue.claim(1) == []
    done, _ = cf.wait([future], timeout=0)
    assert done == {future}  # counted as done at once


@pytest.mark.timeout(120)
def test_cancelling_the_rest_after_first_completed_never_breaks_the_pool(pool_factory):
    pool = pool_factory(2)
    for _ in range(150):
        futures = [pool.submit(jobs.identity, i) for i in range(12)]
        done, pending = cf.wait(futures, timeout=T, return_when=cf.FIRST_COMPLETED)
        assert done
        for future in pending:
            assert future.cancel() in (True, False)  # never raises
        _, unfinished = cf.wait(futures, timeout=T)
        assert not unfinished
        for future in futures:
            assert future.cancelled() or future.result(timeout=T) in range(12)
    assert_serves(pool)
    stats = pool.stats()
    assert stats.submitted == stats.succeeded + stats.failed + stats.cancelled + stats.running


@pytest.mark.timeout(120)
def test_cancel_from_another_thread_while_jobs_are_dispatched(pool_factory):
    pool = pool_factory(2)
    for _ in range(40):
        futures = [pool.submit(jobs.identity, i) for i in range(50)]
        canceller = threading.Thread(target=lambda fs=futures: [f.cancel() for f in fs[::-1]])
        canceller.start()
        canceller.join(T)
        _, unfinished = cf.wait(futures, timeout=T)
        assert not unfinished
    assert_serves(pool)


@pytest.mark.timeout(120)
def test_leaving_map_loops_early_under_load_never_breaks_the_pool(pool_factory):
    pool = pool_factory(2)
    for _ in range(60):
        for value in pool.map(jobs.identity, range(200)):
            if value == 3:
                break
    assert list(pool.map(jobs.square, range(20))) == [i * i for i in range(20)]


# -- 2. a worker that dies before it is ready --------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "initializer", [fj.exit_initializer, fj.sigkill_initializer, fj.segfault_initializer]
)
def test_an_initializer_that_kills_its_process_fails_the_job_then_breaks_the_pool(
    pool_factory, initializer
):
    pool = pool_factory(1, initializer=initializer)
    future = pool.submit(jobs.square, 3)
    with pytest.raises(taskq.InitializerError, match="before it was ready"):
        future.result(timeout=T)

    def keeps_failing():
        for _ in range(20):
            try:
                pool.submit(jobs.square, 3).result(timeout=T)
            except taskq.PoolBroken:
                return True
            except taskq.InitializerError:
                continue
        return False

    assert run_in_thread(keeps_failing, timeout=110), "the pool never gave up"
    with pytest.raises(taskq.PoolBroken):
        pool.submit(jobs.square, 3).result(timeout=T)


@pytest.mark.timeout(120)
def test_a_spawn_child_that_cannot_bootstrap_fails_the_job_instead_of_hanging(tmp_path):
    # Under `python -c`, a spawn child cannot import an initializer defined in __main__.
    script = textwrap.dedent(
        """
        import multiprocessing, sys
        import taskq

        def init():
            pass

        pool = taskq.Pool(1, multiprocessing.get_context("spawn"), initializer=init)
        try:
            pool.submit(abs, -1).result(timeout=100)
        except taskq.InitializerError as exc:
            print("InitializerError", "before it was ready" in str(exc))
        pool.shutdown(wait=True, cancel_futures=True)
        """
    )
    result = run_script(script)
    assert result.stdout.strip() == "InitializerError True", result.stderr[-2000:]


# -- 3. max_tasks_per_child keeps per-job timeouts ---------------------------------------------


@pytest.mark.timeout(120)
def test_a_job_of_a_worker_retiring_after_one_task_still_times_out(pool_factory):
    pool = pool_factory(1, max_tasks_per_child=1)
    future = pool.schedule(fj.sleep_for, (60,), timeout=0.3)
    with pytest.raises(taskq.JobTimeout):
        future.result(timeout=T)
    assert_serves(pool)


@pytest.mark.timeout(120)
def test_the_last_job_before_a_worker_retires_still_times_out(pool_factory):
    pool = pool_factory(1, max_tasks_per_child=3)
    quick = [pool.submit(jobs.identity, i) for i in range(2)]
    slow = pool.schedule(fj.sleep_for, (60,), timeout=0.3)
    assert [f.result(timeout=T) for f in quick] == [0, 1]
    with pytest.raises(taskq.JobTimeout):
        slow.result(timeout=T)
    assert_serves(pool)


# -- 4. kill() or a timeout racing the job's completion ---------------------------------------


def test_a_dead_workers_started_job_is_blamed_whatever_it_was_stopped_for():
    # No processes: the worker was stopped to kill A, but A had finished and B had begun
    # (the slot says so). B started: it must be blamed, never put back as unstarted.
    from collections import deque
    from types import SimpleNamespace

    from taskq._collect import Collector
    from taskq._dispatch import BatchPolicy

    collector = Collector(BatchPolicy())
    a, b, c = (SimpleNamespace(job_id=i) for i in (1, 2, 3))
    for reason in ("kill", "timeout", None):
        worker = SimpleNamespace(
            stop_reason=reason, stop_job=a, ready=True, init_error=None, pid=1,
            outstanding=deque([b, c]),
        )  # fmt: skip
        plan = collector.exit_plan(worker, running_id=2, exitcode=-15)  # type: ignore[arg-type]
        assert plan.blamed is b and plan.release == [c] and plan.init_failure is None
        worker.outstanding = deque([b, c])
        plan = collector.exit_plan(worker, running_id=0, exitcode=-15)  # type: ignore[arg-type]
        assert plan.blamed is None and plan.release == [b, c]


@pytest.mark.timeout(180)
def test_kill_racing_completion_never_runs_the_next_job_twice(pool_factory, tmp_path):
    pool = pool_factory(1)
    runs = str(tmp_path / "runs")
    rng = random.Random(1234)
    for round_ in range(40):
        first = pool.submit(fj.sleep_for, rng.uniform(0, 0.01))
        second = pool.submit(fj.record_run, runs, f"b{round_}", 0.02)
        time.sleep(rng.uniform(0, 0.012))
        pool.kill(first)
        assert second.result(timeout=T) == f"b{round_}"
        assert fj.count_lines(runs, f"b{round_}") == second.attempts == 1
        cf.wait([first], timeout=T)
    assert_serves(pool)


@pytest.mark.timeout(180)
def test_a_timeout_racing_completion_never_runs_the_next_job_twice(pool_factory, tmp_path):
    pool = pool_factory(1)
    runs = str(tmp_path / "runs")
    for round_ in range(15):
        first = pool.schedule(fj.sleep_for, (0.2,), timeout=0.2)  # finishes near its deadline
        second = pool.submit(fj.record_run, runs, f"b{round_}", 0.01)
        assert second.result(timeout=T) == f"b{round_}"
        assert fj.count_lines(runs, f"b{round_}") == second.attempts == 1
        cf.wait([first], timeout=T)


# -- 6. timeouts do not keep finished jobs alive -----------------------------------------------


@pytest.mark.timeout(120)
def test_finished_jobs_with_a_long_timeout_are_not_kept_alive(pool_factory):
    pool = pool_factory(2, job_timeout=600)
    refs = []
    for _ in range(20):
        batch = [pool.submit(jobs.identity, i) for i in range(100)]
        assert [f.result(timeout=T) for f in batch] == list(range(100))
        refs.extend(weakref.ref(f) for f in batch)
        del batch
    gc.collect()
    alive = sum(1 for ref in refs if ref() is not None)
    assert alive <= 4, f"{alive} of {len(refs)} finished futures still alive"


# -- 10. wait(FIRST_EXCEPTION) on a failed future ---------------------------------------------


@pytest.mark.timeout(60)
def test_wait_first_exception_with_a_failed_future_returns_at_once(pool_factory, gate):
    pool = pool_factory(1)
    failed = pool.submit(jobs.raise_value_error)
    cf.wait([failed], timeout=T)
    blocked = pool.submit(jobs.block_until, gate.release_path)
    done, not_done = run_in_thread(
        lambda: cf.wait([failed, blocked], timeout=T, return_when=cf.FIRST_EXCEPTION), 30
    )
    assert done == {failed} and not_done == {blocked}
    gate.open()
    blocked.result(timeout=T)


# -- 11. BaseException from user code on the manager thread -----------------------------------


@pytest.mark.timeout(60)
def test_a_done_callback_raising_system_exit_fails_nothing(pool_factory):
    pool = pool_factory(1)
    later = []
    future = pool.submit(jobs.square, 2)
    future.add_done_callback(lambda f: fj._raise_system_exit())
    future.add_done_callback(lambda f: later.append(f.result()))
    assert future.result(timeout=T) == 4
    assert_serves(pool)
    assert later == [4]  # the next callback still ran


@pytest.mark.timeout(60)
def test_a_job_submitted_from_a_callback_with_an_unpicklable_argument_fails_alone(pool_factory):
    pool = pool_factory(1)
    inner: list[cf.Future] = []
    first = pool.submit(jobs.square, 2)
    first.add_done_callback(
        lambda f: inner.append(pool.submit(fj.take_argument, fj.ExplodesWhenPickled()))
    )
    assert first.result(timeout=T) == 4
    jobs.wait_until(lambda: inner, 30, "the callback to submit")
    with pytest.raises(taskq.SerializationError) as caught:
        inner[0].result(timeout=T)
    assert isinstance(caught.value, pickle.PicklingError)
    assert_serves(pool)


@pytest.mark.timeout(60)
def test_a_result_whose_unpickling_raises_system_exit_fails_only_its_job(pool_factory):
    pool = pool_factory(1)
    with pytest.raises(taskq.SerializationError) as caught:
        pool.submit(fj.return_exploding_result).result(timeout=T)
    assert isinstance(caught.value, BrokenProcessPool)
    if TEST_BROKER:  # the serving process unpickled it: the cause comes as its traceback
        assert "SystemExit: 7" in caught.value.__cause__.tb
    else:
        assert isinstance(caught.value.__cause__, SystemExit)
    assert_serves(pool)


@pytest.mark.timeout(60)
def test_an_exception_whose_unpickling_raises_system_exit_fails_only_its_job(pool_factory):
    pool = pool_factory(1)
    with pytest.raises(taskq.RemoteError, match="_ExplodingError"):
        pool.submit(fj.raise_exploding_exception).result(timeout=T)
    assert_serves(pool)


# -- 12. the exception types ProcessPoolExecutor code catches ----------------------------------


@pytest.mark.timeout(60)
def test_an_unpicklable_call_is_a_pickling_error(pool_factory):
    pool = pool_factory(1)
    future = pool.submit(fj.take_argument, threading.Lock())
    with pytest.raises(pickle.PicklingError):
        future.result(timeout=T)
    assert isinstance(future.exception(), taskq.SerializationError)


@pytest.mark.timeout(60)
def test_a_result_that_cannot_be_unpickled_here_is_a_broken_process_pool_error(pool_factory):
    pool = pool_factory(1)
    future = pool.submit(fj.return_unloadable_result)
    with pytest.raises(BrokenProcessPool):
        future.result(timeout=T)
    assert isinstance(future.exception(), taskq.SerializationError)
    assert_serves(pool)  # unlike ProcessPoolExecutor, the pool is not broken


@pytest.mark.timeout(60)
def test_a_finished_jobs_function_arguments_and_result_are_not_kept(pool_factory):
    pool = pool_factory(1)
    owner, argument = fj.Payload(3), fj.Payload(4)
    future = pool.submit(owner.method, argument)
    result = future.result(timeout=T)
    assert len(result.data) == 7
    refs = [weakref.ref(owner), weakref.ref(argument), weakref.ref(result)]
    del owner, argument, result, future
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]


@pytest.mark.parametrize("workers", [0, -1])
def test_max_workers_below_one_is_refused_with_executors_message(workers):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        taskq.Pool(workers)


# -- 9. commands from done-callbacks ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_kill_from_a_done_callback_resolves_the_killed_job(pool_factory, gate):
    pool = pool_factory(2)
    victim = pool.submit(jobs.block_until, gate.release_path)
    trigger = pool.submit(jobs.square, 2)
    answers = []
    trigger.add_done_callback(lambda f: answers.append(pool.kill(victim)))
    assert trigger.result(timeout=T) == 4
    with pytest.raises(cf.CancelledError):
        victim.result(timeout=T)
    assert answers == [True]
    assert_serves(pool)


@pytest.mark.timeout(60)
def test_shutdown_wait_from_a_done_callback_returns_once_the_workers_exited(pool_factory):
    pool = pool_factory(2)
    seen = []

    def stop(_):
        pool.shutdown(wait=True)
        seen.append(pool.stats().workers)

    future = pool.submit(jobs.square, 2)
    queued = [pool.submit(fj.sleep_for, 0.05, i) for i in range(4)]
    future.add_done_callback(stop)
    assert [f.result(timeout=T) for f in queued] == [0, 1, 2, 3]
    jobs.wait_until(lambda: seen, 30, "the callback's shutdown to return")
    assert seen == [0]


@pytest.mark.timeout(60)
def test_kill_of_another_pools_future_is_refused(pool_factory, gate):
    # The second pool under forkserver: forking it while the first pool's thread
    # runs is the hazard the fork server exists to avoid.
    first = pool_factory(1)
    second = pool_factory(1, multiprocessing.get_context("forkserver"))
    future = first.submit(jobs.block_until, gate.release_path)
    with pytest.raises(ValueError, match="another pool"):
        second.kill(future)
    gate.open()
    future.result(timeout=T)


@pytest.mark.timeout(60)
def test_shutdown_cancelling_futures_then_terminate_leaves_nothing_pending(pool_factory, gate):
    pool = pool_factory(1)
    running = pool.submit(jobs.block_until, gate.release_path)
    queued = [pool.submit(jobs.square, i) for i in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)
    run_in_thread(pool.terminate, 30)
    _, not_done = cf.wait([running, *queued], timeout=T)
    assert not not_done
    assert all(f.cancelled() for f in queued)
    with pytest.raises(cf.CancelledError):
        running.result(timeout=T)


# -- 7. drop-in gaps: map that nobody reads, interpreter exit ----------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["map", "imap_unordered"])
def test_a_map_nobody_reads_runs_every_item_by_shutdown(pool_factory, method):
    pool = pool_factory(2, counters=("n",))
    getattr(pool, method)(jobs.counter_add, ["n"] * 100)
    pool.shutdown(wait=True)
    assert pool.counter("n").value == 100


@pytest.mark.timeout(120)
def test_a_map_read_after_shutdown_still_yields_every_result(pool_factory):
    pool = pool_factory(2)
    results = pool.map(jobs.square, range(50))
    pool.shutdown(wait=True)
    assert list(results) == [i * i for i in range(50)]


@pytest.mark.timeout(120)
def test_an_abandoned_map_cancels_the_rest(pool_factory):
    pool = pool_factory(2, counters=("n",))
    for _ in pool.map(jobs.counter_add, ["n"] * 5000):
        break
    pool.shutdown(wait=True)
    assert 1 <= pool.counter("n").value < 5000  # the rest was never queued or was cancelled


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    import taskq
    from tests import fault_jobs

    path, how = sys.argv[1], sys.argv[2]
    pool = taskq.Pool(2)
    for i in range(6):
        pool.submit(fault_jobs.record_run, path, f"job{i}", 0.2)
    if how == "shutdown-nowait":
        pool.shutdown(wait=False)
    print("exiting", flush=True)
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["shutdown-nowait", "no-shutdown"])
def test_interpreter_exit_lets_submitted_jobs_finish(tmp_path, how):
    path = str(tmp_path / "runs")
    result = run_script(EXIT_SCRIPT, path, how)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "exiting" in result.stdout
    assert sorted(fj.count_lines(path, f"job{i}") for i in range(6)) == [1] * 6


# -- 13. failure paths: a refused process start is retried ------------------------------------

SPAWN_REFUSED_SCRIPT = textwrap.dedent(
    """
    import resource, sys, time
    import taskq
    from tests import jobs

    pool = taskq.Pool(1)
    assert pool.submit(abs, -1).result(timeout=60) == 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))  # no new descriptor: no new worker
    try:
        pool.submit(jobs.kill_self).exception(timeout=60)
        time.sleep(1.0)  # the replacement is refused (EMFILE) and retried meanwhile
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print("after", pool.submit(abs, -2).result(timeout=60), pool.stats().worker_restarts)
    pool.shutdown()
    """
)


@pytest.mark.timeout(120)
def test_a_refused_worker_start_is_retried_instead_of_breaking_the_pool():
    result = run_script(SPAWN_REFUSED_SCRIPT)
    assert result.stdout.split() == ["after", "2", "1"], result.stderr[-3000:]


# -- 12, continued: what CPython's own executor tests expect ----------------------------------


@pytest.mark.timeout(60)
def test_map_drops_each_result_as_it_hands_it_out(pool_factory):
    pool = pool_factory(2)
    for obj in pool.map(fj.Payload, range(20)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None, "the map still holds a result it handed out"


@pytest.mark.timeout(60)
def test_a_pool_shut_down_and_dropped_frees_its_initargs_at_once():
    token = fj.Payload(1)
    ref = weakref.ref(token)
    pool = taskq.Pool(1, initializer=fj.take_argument, initargs=(token,))
    assert pool.submit(jobs.square, 3).result(timeout=T) == 9
    pool.shutdown(wait=True)
    del pool, token
    assert ref() is None  # no reference cycle keeps the pool until a GC pass


@pytest.mark.timeout(60)
def test_an_initializer_failure_is_a_broken_process_pool_error(pool_factory):
    pool = pool_factory(1, initializer=jobs.failing_initializer)
    with pytest.raises(BrokenProcessPool):
        pool.submit(jobs.square, 3).result(timeout=T)


ATEXIT_SUBMIT_SCRIPT = textwrap.dedent(
    """
    import atexit
    import taskq

    @atexit.register
    def submit_late():
        try:
            pool.submit(abs, -1)
        except RuntimeError as exc:
            print("refused:", exc)

    pool = taskq.Pool(1)
    assert pool.submit(abs, -2).result(timeout=60) == 2
    """
)


@pytest.mark.timeout(120)
def test_a_submit_from_an_exit_hook_is_refused_like_executors():
    result = run_script(ATEXIT_SUBMIT_SCRIPT)
    assert "refused: cannot schedule new futures after interpreter shutdown" in result.stdout, (
        result.stdout + result.stderr[-2000:]
    )


@pytest.mark.timeout(60)
def test_a_result_that_cannot_be_pickled_is_a_pickling_error(pool_factory):
    pool = pool_factory(1)
    future = pool.submit(fj.return_unpicklable_result)
    with pytest.raises(pickle.PicklingError):
        future.result(timeout=T)
    assert isinstance(future.exception(), taskq.SerializationError)
    assert_serves(pool)


@pytest.mark.timeout(60)
def test_a_result_whose_pickling_raises_system_exit_gives_the_job_that_exit(pool_factory):
    pool = pool_factory(1)
    with pytest.raises(SystemExit):
        pool.submit(fj.return_instance_of, fj.ExplodesWhenPickled).result(timeout=T)
    assert_serves(pool)


@pytest.mark.timeout(60)
def test_a_call_that_cannot_be_unpickled_in_the_worker_is_a_broken_process_pool_error(
    pool_factory,
):
    pool = pool_factory(1)
    future = pool.submit(fj.take_argument, fj.CannotUnpickle())
    with pytest.raises(BrokenProcessPool):
        future.result(timeout=T)
    assert isinstance(future.exception(), taskq.SerializationError)
    assert_serves(pool)
