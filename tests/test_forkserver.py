"""Under fork, workers come from a single-threaded fork server, never from the parent.

- every worker, initial or replacement (crash, timeout, kill, recycling), is a child of
  one fork server that runs one thread, and inherits the parent as it was at pool creation;
- the server: exit codes, pids kept until reaped, SIGINT ignored, gone with its workers
  on close() and when the pool's parent is SIGKILLed;
- a server that dies is replaced by its standby (a fork of the server, never of the
  parent), which makes the next standby: the pool survives each death; OSError only
  once both are gone;
- workers reset the signal handlers an application installed (a timeout's SIGTERM must
  stop the job, not run the application's handler);
- a closed worker handle uses none of its descriptor numbers again.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

import taskq
from taskq._forkserver import RPC_TIMEOUT, ForkServer
from tests import jobs
from tests.jobs import assert_all_gone, wait_until

T = 30
FORK = multiprocessing.get_context("fork")
REPO = str(Path(__file__).resolve().parent.parent)


def worker_views(pool, n):
    """(pid, parent pid, jobs.CREATION_STATE) from ``n`` jobs."""
    return [pool.submit(jobs.creation_state).result(timeout=T) for _ in range(n)]


def crash_one(pool):
    with pytest.raises(taskq.WorkerCrashed):
        pool.submit(jobs.exit_with, 3).result(timeout=T)


# --------------------------------------------------------------------------------------------
# workers come from the fork server
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_every_fork_worker_is_a_child_of_one_single_threaded_server(pool_factory, tmp_path):
    pool = pool_factory(2, FORK)
    first = worker_views(pool, 2)
    servers = {ppid for _, ppid, _ in first}
    assert len(servers) == 1
    server = servers.pop()
    assert server != os.getpid()
    assert jobs.thread_count(server) == 1
    crash_one(pool)
    with pytest.raises(taskq.JobTimeout):
        pool.schedule(jobs.sleep_then, (30,), timeout=0.3).result(timeout=T)
    started = tmp_path / "started"
    killed = pool.submit(jobs.mark_started_then_sleep, str(started), 30)
    wait_until(started.exists, T, "the job to start")
    assert pool.kill(killed)
    with pytest.raises(CancelledError):
        killed.result(timeout=T)
    later = worker_views(pool, 4)
    assert pool.stats().worker_restarts >= 3
    assert {ppid for _, ppid, _ in later} == {server}
    assert jobs.thread_count(server) == 1


@pytest.mark.timeout(60)
def test_recycled_fork_workers_come_from_the_server_too(pool_factory):
    pool = pool_factory(1, FORK, max_tasks_per_child=1)
    views = worker_views(pool, 4)
    assert len({pid for pid, _, _ in views}) == 4  # one worker per job
    assert len({ppid for _, ppid, _ in views}) == 1
    assert os.getpid() not in {ppid for _, ppid, _ in views}


@pytest.mark.timeout(60)
def test_replacing_fork_workers_never_forks_the_multithreaded_parent(pool_factory):
    # Python 3.12+ warns at each fork() of a process that runs threads; earlier versions
    # don't, and the test above checks the same promise through the workers' parent.
    pool = pool_factory(1, FORK)
    pool.submit(jobs.noop).result(timeout=T)
    assert threading.active_count() > 1  # the pool's manager thread, at least
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            crash_one(pool)
        pool.submit(jobs.noop).result(timeout=T)
    assert not [w for w in caught if "multi-threaded" in str(w.message)]


@pytest.mark.timeout(60)
def test_workers_inherit_the_parent_as_it_was_when_the_pool_was_created(pool_factory, monkeypatch):
    monkeypatch.setattr(jobs, "CREATION_STATE", "as the pool was created")
    pool = pool_factory(1, FORK)
    monkeypatch.setattr(jobs, "CREATION_STATE", "changed afterwards")
    (first,) = worker_views(pool, 1)
    crash_one(pool)
    (replacement,) = worker_views(pool, 1)
    assert first[0] != replacement[0]
    assert first[2] == replacement[2] == "as the pool was created"


@pytest.mark.timeout(120)
def test_a_pool_keeps_serving_after_its_fork_server_is_killed_twice(pool_factory):
    pool = pool_factory(2, FORK)
    server = pool._manager._workforce._launcher._server  # the parent's end (_forkserver.py)
    before = {ppid for _, ppid, _ in worker_views(pool, 2)}
    assert before == {server.pid}
    for _ in range(2):
        dead, standby = server.pid, server.standby_pid
        os.kill(dead, signal.SIGKILL)
        # Its workers exit as they see their parent change (within a second): the jobs
        # they run fail as crashed, or run again when retries allow it.
        futures = [pool.schedule(jobs.square, (i,), retries=3) for i in range(40)]
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(40)]
        wait_until(lambda d=dead: server.pid != d, T, "the standby to take over")
        assert server.pid == standby
        views = worker_views(pool, 4)
        wait_until(
            lambda s=standby: {ppid for _, ppid, _ in worker_views(pool, 2)} == {s},
            T,
            "every worker to come from the standby",
        )
        assert jobs.thread_count(standby) == 1
        assert all(ppid in (dead, standby) for _, ppid, _ in views)
    assert pool.stats().worker_restarts >= 4


# --------------------------------------------------------------------------------------------
# the server itself
# --------------------------------------------------------------------------------------------

SLEEPER = 99  # a child started with this index sleeps; any other exits with its index


def child_exits_with_its_index(index, fds, server):
    if index == SLEEPER:
        time.sleep(60)
    os._exit(index)


@contextlib.contextmanager
def fork_server():
    server = ForkServer(child_exits_with_its_index, name="taskq-test")
    try:
        yield server
    finally:
        server.close()
    servers = [pid for pid in (server.pid, server.standby_pid) if pid is not None]
    assert_all_gone(servers, timeout=10, what="fork server")


def process_state(pid):
    """(state letter, parent pid) from /proc, or None if the pid is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


@pytest.mark.timeout(60)
def test_the_server_reports_exit_codes_and_keeps_each_pid_until_it_is_reaped():
    with fork_server() as server:
        done = server.start(3, [])
        done.join(T)
        assert (done.exitcode, done.is_alive()) == (3, False)
        sleeper = server.start(SLEEPER, [])
        assert sleeper.is_alive()
        assert sleeper.exitcode is None
        os.kill(sleeper.pid, signal.SIGKILL)
        # Dead but not reaped: the pid stays reserved until the parent joins it, so a
        # late os.kill(pid) from the pool can never reach another process.
        wait_until(lambda: process_state(sleeper.pid) == ("Z", server.pid), T, "a zombie")
        assert not sleeper.is_alive()
        sleeper.join(T)
        assert sleeper.exitcode == -signal.SIGKILL
        assert process_state(sleeper.pid) is None


@pytest.mark.timeout(60)
def test_a_dead_server_is_replaced_by_its_standby_which_makes_the_next_one():
    with fork_server() as server:
        seen = set()
        for _ in range(3):
            dead, standby = server.pid, server.standby_pid
            assert standby is not None and standby not in seen | {dead}
            assert process_state(standby)[1] == dead  # a fork of the server, not of us
            assert jobs.thread_count(standby) == 1
            seen |= {dead, standby}
            os.kill(dead, signal.SIGKILL)
            child = server.start(7, [])
            assert server.pid == standby
            assert process_state(child.pid) in (None, ("Z", standby), ("R", standby))
            child.join(T)
            assert child.exitcode == 7
            # Reaped by the takeover if it was our child (a standby is its server's child).
            assert process_state(dead) in (None, ("Z", 1)) or process_state(dead)[1] != os.getpid()
    assert_all_gone(list(seen), timeout=10, what="fork server or standby")


@pytest.mark.timeout(60)
def test_a_standby_that_died_idle_is_replaced_at_the_next_start():
    with fork_server() as server:
        first = server.standby_pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: process_state(first) in (None, ("Z", server.pid)), T, "it to die")
        server.start(1, []).join(T)
        second = server.standby_pid
        assert second not in (None, first)
        assert process_state(second)[1] == server.pid
        os.kill(server.pid, signal.SIGKILL)  # and it does take over
        child = server.start(4, [])
        assert server.pid == second
        child.join(T)
        assert child.exitcode == 4


@pytest.mark.timeout(60)
def test_starting_a_worker_raises_oserror_at_once_when_server_and_standby_are_gone():
    with fork_server() as server:
        sleeper = server.start(SLEEPER, [])  # a child must not keep the server's socket open
        try:
            standby = server.standby_pid
            os.kill(standby, signal.SIGKILL)
            os.kill(server.pid, signal.SIGKILL)
            wait_until(lambda: process_state(server.pid)[0] == "Z", T, "the server to die")
            t0 = time.monotonic()
            for _ in range(2):
                with pytest.raises(OSError):
                    server.start(1, [])
            assert time.monotonic() - t0 < RPC_TIMEOUT / 2, "it waited for a reply"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(sleeper.pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_closing_the_server_kills_and_reaps_the_workers_left():
    with fork_server() as server:
        sleepers = [server.start(SLEEPER, []) for _ in range(2)]
    assert_all_gone([s.pid for s in sleepers], timeout=10, what="worker")


@pytest.mark.timeout(60)
def test_the_server_ignores_sigint():
    with fork_server() as server:
        os.kill(server.pid, signal.SIGINT)
        child = server.start(5, [])
        child.join(T)
        assert child.exitcode == 5


@pytest.mark.timeout(60)
def test_a_closed_worker_handle_uses_no_descriptor_number_again(ctx):
    from taskq._counters import CounterBlock
    from taskq._process import CLOSED, WorkerLauncher
    from taskq._slot import WIDTH

    lifeline, lifeline_end = ctx.Pipe(duplex=False)
    launcher = WorkerLauncher(
        ctx,
        lifeline=lifeline,
        lifeline_write_fd=lifeline_end.fileno(),
        slots=ctx.RawArray("q", 2 * WIDTH),
        counters=CounterBlock((), ctx),
        initializer=None,
        initargs=(),
        max_tasks=None,
    )
    try:
        worker = launcher.spawn(0)
        worker.signal(signal.SIGKILL)
        worker.close()
        assert worker.process.exitcode == -signal.SIGKILL
        assert worker.calls_fd == worker.results_fd == CLOSED
        with pytest.raises(OSError):
            worker.reader.read()
        worker.outbox.push([b"late"])
        with pytest.raises(OSError):
            worker.outbox.flush()
    finally:
        launcher.close()
        lifeline.close()
        lifeline_end.close()


# --------------------------------------------------------------------------------------------
# in a separate parent process
# --------------------------------------------------------------------------------------------


def run_python(script, *args, timeout=60):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SIGKILLED_PARENT = """
    import multiprocessing, sys, time
    import taskq
    from tests import jobs

    pool = taskq.Pool(2, multiprocessing.get_context("fork"))
    seen = [pool.submit(jobs.creation_state).result(timeout=30) for _ in range(2)]
    try:
        pool.submit(jobs.exit_with, 3).result(timeout=30)
    except taskq.WorkerCrashed:
        pass
    seen += [pool.submit(jobs.creation_state).result(timeout=30) for _ in range(2)]
    busy = [pool.submit(jobs.sleep_then, 60) for _ in range(2)]
    pids = {pid for pid, _, _ in seen} | {ppid for _, ppid, _ in seen}
    pids.add(pool._manager._workforce._launcher._server.standby_pid)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(" ".join(map(str, sorted(pids))))
    import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(120)
"""


@pytest.mark.timeout(90)
def test_a_sigkilled_parent_leaves_no_worker_and_no_fork_server_behind(tmp_path):
    pid_file = tmp_path / "pids"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SIGKILLED_PARENT), str(pid_file)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        wait_until(lambda: pid_file.exists() or proc.poll() is not None, T, "the pool to run")
        assert proc.poll() is None, proc.communicate()
        pids = [int(p) for p in pid_file.read_text().split()]
        assert len(pids) >= 4  # two workers (one a replacement), the server, its standby
        proc.kill()
        proc.wait(10)
        assert_all_gone(pids, timeout=10, what="worker or fork server")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


APPLICATION_HANDLERS = """
    import json, multiprocessing, os, signal
    import taskq
    from tests import jobs

    def handler(signum, frame):
        raise RuntimeError(f"the application's handler for signal {signum} ran in {os.getpid()}")

    for name in ("SIGTERM", "SIGHUP", "SIGALRM", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), handler)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    with taskq.Pool(1, multiprocessing.get_context("fork")) as pool:
        dispositions = pool.submit(jobs.signal_dispositions).result(timeout=30)
        try:
            pool.schedule(jobs.sleep_then, (30,), timeout=0.5).result(timeout=30)
            outcome = "finished"
        except taskq.JobTimeout:
            outcome = "JobTimeout"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        after = pool.submit(jobs.signal_dispositions).result(timeout=30)
    print(json.dumps({"dispositions": [dispositions, after], "outcome": outcome}))
"""


@pytest.mark.timeout(90)
def test_a_timeout_stops_the_job_even_if_the_application_handles_sigterm():
    done = run_python(APPLICATION_HANDLERS)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["outcome"] == "JobTimeout"
    expected = {n: "default" for n in ("SIGTERM", "SIGHUP", "SIGALRM", "SIGCHLD")}
    expected |= {"SIGUSR1": "default", "SIGUSR2": "default", "SIGINT": "ignore"}
    for seen in report["dispositions"]:  # the first worker and its replacement
        assert seen == expected


STDIO_AND_ATEXIT = """
    import atexit, multiprocessing, os, sys
    import taskq
    from tests import jobs

    atexit.register(lambda: print(f"atexit ran in {os.getpid()}", flush=True))
    sys.stdout.write("written once\\n")  # a pipe: block-buffered, still in the buffer
    with taskq.Pool(1, multiprocessing.get_context("fork")) as pool:
        pool.submit(jobs.noop).result(timeout=30)
        try:
            pool.submit(jobs.exit_with, 3).result(timeout=30)
        except taskq.WorkerCrashed:
            pass
        pool.submit(jobs.noop).result(timeout=30)
    print(f"parent {os.getpid()}")
"""


@pytest.mark.timeout(90)
def test_the_server_and_its_workers_neither_repeat_buffered_output_nor_run_atexit_hooks():
    done = run_python(STDIO_AND_ATEXIT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    parent = next(line.split()[1] for line in lines if line.startswith("parent "))
    assert lines.count("written once") == 1, lines
    assert [line for line in lines if line.startswith("atexit")] == [f"atexit ran in {parent}"]


GROUP_SIGTERM = """
    import multiprocessing, signal, sys, threading
    import taskq
    from tests import jobs

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())  # a graceful stop
    ctx = multiprocessing.get_context(sys.argv[2])
    with taskq.Pool(2, ctx) as pool:
        pool.submit(jobs.noop).result(timeout=30)
        future = pool.submit(jobs.mark_started_then_sleep, sys.argv[1], 1.5, "finished")
        stopping.wait(60)
        print("stopping", flush=True)
        print(future.result(timeout=30), flush=True)
        print(pool.submit(jobs.noop).result(timeout=30), flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_sigterm_to_the_whole_process_group_reaches_the_parent_only(method, tmp_path):
    # `kill -TERM -- -PGID`, GNU timeout and a terminal signal a whole process group:
    # the workers (and the fork server) live in groups of their own, so a parent that
    # stops gracefully still gets its running job's result.
    started = tmp_path / "started"
    app = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(GROUP_SIGTERM), str(started), method],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a job
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and app.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.exists(), app.communicate(timeout=30)
        os.killpg(app.pid, signal.SIGTERM)
        out, err = app.communicate(timeout=60)
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
            app.wait()
    assert app.returncode == 0, err
    assert out.split() == ["stopping", "finished", "None"], err
    assert "died" not in err and "exited" not in err, err
