"""Shared user counters: taskq.counter() in jobs, pool.counter() / pool.counters() in the parent."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import CancelledError

import pytest

import taskq
from tests import jobs
from tests.jobs import wait_until

T = 30


def test_a_job_adds_to_a_counter_and_gets_the_new_value(pool_factory):
    pool = pool_factory(1, counters=("processed", "bytes"))
    assert pool.submit(jobs.counter_add, "processed").result(timeout=T) == 1
    assert pool.submit(jobs.counter_add, "processed", 5).result(timeout=T) == 6
    assert pool.submit(jobs.counter_add, "bytes", 1024).result(timeout=T) == 1024
    assert pool.submit(jobs.counter_value, "processed").result(timeout=T) == 6


def test_the_parent_reads_and_adds_to_the_same_counters(pool_factory):
    pool = pool_factory(2, counters=("processed", "bytes"))
    c = pool.counter("processed")
    assert isinstance(c, taskq.Counter)
    assert c.value == 0
    assert c.add(10) == 10
    assert c.add(-3) == 7
    futs = [pool.submit(jobs.counter_add, "processed") for _ in range(50)]
    for f in futs:
        f.result(timeout=T)
    assert c.value == 57
    assert pool.counter("processed").value == 57
    assert pool.submit(jobs.counter_value, "processed").result(timeout=T) == 57
    assert pool.counters() == {"processed": 57, "bytes": 0}


def test_an_add_past_64_bits_raises_and_leaves_the_value(pool_factory):
    pool = pool_factory(1, counters=("big",))
    c = pool.counter("big")
    assert c.add(2**63 - 1) == 2**63 - 1
    with pytest.raises(OverflowError, match=r"'big'.*64-bit"):
        c.add(1)  # the cell would wrap to -2**63
    assert c.value == 2**63 - 1
    with pytest.raises(OverflowError):
        pool.submit(jobs.counter_add, "big", 5).result(timeout=T)
    assert c.add(-(2**63 - 1)) == 0


def test_counters_start_at_zero_and_snapshot_is_a_plain_dict(pool_factory):
    pool = pool_factory(1, counters=("a", "b", "c"))
    snap = pool.counters()
    assert snap == {"a": 0, "b": 0, "c": 0}
    assert type(snap) is dict
    snap["a"] = 100  # a copy: mutating it changes nothing
    assert pool.counter("a").value == 0


def test_the_values_returned_by_add_are_all_distinct_under_contention(pool_factory):
    pool = pool_factory(2, counters=("ticket",))
    got = [
        f.result(timeout=T) for f in [pool.submit(jobs.counter_add, "ticket") for _ in range(400)]
    ]
    assert sorted(got) == list(range(1, 401))


@pytest.mark.timeout(90)
def test_deposits_and_withdrawals_racing_on_one_counter_cancel_out(pool_factory, ctx):
    pool = pool_factory(2, ctx, counters=("balance",))
    start = pool.counter("balance").add(1_000)
    deposits = pool.submit(jobs.counter_loop, "balance", +1, 10_000)
    withdrawals = pool.submit(jobs.counter_loop, "balance", -1, 10_000)
    # the parent joins the race too
    parent_adds = 0
    while not (deposits.done() and withdrawals.done()) and parent_adds < 5_000:
        pool.counter("balance").add(1)
        pool.counter("balance").add(-1)
        parent_adds += 1
    assert deposits.result(timeout=60) == 10_000
    assert withdrawals.result(timeout=60) == 10_000
    assert pool.counter("balance").value == start == 1_000
    assert pool.counters() == {"balance": 1_000}


def test_parent_threads_adding_concurrently_lose_nothing(pool_factory):
    pool = pool_factory(1, counters=("hits",))
    c = pool.counter("hits")

    def spam():
        for _ in range(2_000):
            c.add(1)

    threads = [threading.Thread(target=spam) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert c.value == 8_000


def test_an_unknown_counter_in_the_parent_raises_key_error_naming_the_declared_ones(
    pool_factory,
):
    pool = pool_factory(1, counters=("processed", "bytes"))
    with pytest.raises(KeyError) as info:
        pool.counter("nope")
    text = str(info.value)
    assert "nope" in text
    assert "processed" in text
    assert "bytes" in text


def test_an_unknown_counter_in_a_job_raises_key_error_naming_the_declared_ones(pool_factory):
    pool = pool_factory(1, counters=("processed", "bytes"))
    with pytest.raises(KeyError) as info:
        pool.submit(jobs.counter_add, "nope").result(timeout=T)
    text = str(info.value)
    assert "nope" in text
    assert "processed" in text
    assert "bytes" in text
    # the worker is fine afterwards
    assert pool.submit(jobs.counter_add, "processed").result(timeout=T) == 1


def test_a_pool_without_counters_has_an_empty_snapshot(pool_factory):
    pool = pool_factory(1)
    assert pool.counters() == {}
    with pytest.raises(KeyError):
        pool.counter("anything")


def test_counters_of_two_pools_are_independent(pool_factory):
    # Not fork: creating a fork pool while another pool's threads run forks a
    # multi-threaded process (Python 3.12+ warns), which is not what this test is about.
    ctx = multiprocessing.get_context("forkserver")
    a = pool_factory(1, ctx, counters=("n",))
    b = pool_factory(1, ctx, counters=("n",))
    a.submit(jobs.counter_add, "n", 5).result(timeout=T)
    b.submit(jobs.counter_add, "n", 7).result(timeout=T)
    assert a.counter("n").value == 5
    assert b.counter("n").value == 7


@pytest.mark.timeout(60)
def test_counters_survive_a_worker_crash(pool_factory):
    pool = pool_factory(1, counters=("n",))
    pool.submit(jobs.counter_add, "n", 3).result(timeout=T)
    with pytest.raises(taskq.WorkerCrashed):
        pool.submit(jobs.exit_with, 3).result(timeout=T)
    assert pool.submit(jobs.counter_add, "n", 1).result(timeout=T) == 4
    assert pool.counter("n").value == 4


# --------------------------------------------------------------------------------------------
# a process that dies inside add() (timeout, pool.kill(), SIGKILL) never leaves counters locked
# (jobs.add_holding_the_lock is stopped while it holds the lock, every time)
# --------------------------------------------------------------------------------------------


def assert_counter_still_works(pool, name="n"):
    """The parent and new jobs can use the counter, and every add that completed counts once.
    Returns the value found before the checks.

    The parent's side runs in a thread: on a lock left held it would block for ever, and the
    test must fail, not hang.
    """
    seen = []

    def parent_side():
        c = pool.counter(name)
        before = c.value
        seen.append((before, c.add(1)))

    t = threading.Thread(target=parent_side, name="counter-check", daemon=True)
    t.start()
    t.join(T)
    assert not t.is_alive(), "pool.counter().add() blocks: the stopped job left the lock held"
    before, after = seen[0]
    assert after == before + 1
    futures = [pool.submit(jobs.counter_add, name) for _ in range(20)]
    got = sorted(f.result(timeout=T) for f in futures)
    assert got == list(range(after + 1, after + 21))
    assert pool.counters() == {name: after + 20}
    return before


@pytest.mark.timeout(90)
def test_a_job_stopped_by_its_timeout_while_adding_leaves_the_counter_usable(
    pool_factory, tmp_path
):
    pool = pool_factory(1, counters=("n",))
    started = str(tmp_path / "started")
    future = pool.schedule(jobs.add_holding_the_lock, ("n", started), timeout=0.3)
    with pytest.raises(taskq.JobTimeout):
        future.result(timeout=T)
    assert_counter_still_works(pool)


@pytest.mark.timeout(90)
def test_a_job_stopped_by_pool_kill_while_adding_leaves_the_counter_usable(pool_factory, tmp_path):
    pool = pool_factory(1, counters=("n",))
    started = str(tmp_path / "started")
    future = pool.submit(jobs.add_holding_the_lock, "n", started)
    wait_until(lambda: os.path.exists(started), T, "the job to hold the lock")
    assert pool.kill(future)
    with pytest.raises(CancelledError):
        future.result(timeout=T)
    assert assert_counter_still_works(pool) == 1  # its first add counts, the one it was in not


@pytest.mark.timeout(120)
def test_a_worker_sigkilled_while_adding_leaves_the_counter_usable(pool_factory, ctx, tmp_path):
    pool = pool_factory(1, ctx, counters=("n",))
    started = tmp_path / "started"
    future = pool.submit(jobs.add_holding_the_lock, "n", str(started))
    wait_until(started.exists, T, "the job to hold the lock")
    os.kill(int(started.read_text()), signal.SIGKILL)
    with pytest.raises(taskq.WorkerCrashed):
        future.result(timeout=T)
    assert assert_counter_still_works(pool) == 1  # its first add counts, the one it was in not


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_counter_lock_another_thread_holds_at_a_fork_does_not_block_the_child():
    # The lock's threading.Lock is copied locked into the child, without the thread
    # that would release it: the child must renew it (the record lock is the parent's
    # until its thread releases it, then the child's turn comes).
    from taskq._counters import LockFile, RecordLock

    lock = RecordLock(LockFile(), 0)
    holding, release = threading.Event(), threading.Event()

    def hold():
        with lock:
            holding.set()
            release.wait(T)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(T)
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            lock.acquire()
            lock.release()
            code = 0
        finally:
            os._exit(code)
    time.sleep(0.2)
    release.set()
    holder.join(T)
    assert wait_for_exit(pid, timeout=T) == 0
    with lock:  # and the parent still can
        pass


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_deadlock_the_kernel_sees_between_processes_but_not_threads_is_waited_out():
    # Record locks belong to processes. Here the child holds `second` and waits for
    # `first`, which a thread of the parent holds; when another parent thread asks for
    # `second`, the kernel sees "parent waits for child, child waits for parent" and
    # refuses (EDEADLK), although the holding thread is about to release `first`.
    from taskq._counters import LockFile, RecordLock

    file = LockFile()
    first, second = RecordLock(file, 0), RecordLock(file, 1)
    holding, release = threading.Event(), threading.Event()

    def hold_first():
        with first:
            holding.set()
            release.wait(T)

    holder = threading.Thread(target=hold_first)
    holder.start()
    assert holding.wait(T)
    ready, ready_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            second.acquire()
            os.write(ready_end, b"!")
            first.acquire()
            first.release()
            second.release()
            code = 0
        finally:
            os._exit(code)
    os.read(ready, 1)
    os.close(ready)
    os.close(ready_end)
    wait_until(lambda: blocked_on_a_lock(pid), T, "the child to wait for the lock")
    got = []

    def take_second():
        with second:
            got.append("second")

    taker = threading.Thread(target=take_second)
    taker.start()
    time.sleep(0.1)  # let it meet the refusal (not a measured window: it passes either way)
    release.set()
    holder.join(T)
    taker.join(T)
    assert got == ["second"]
    assert wait_for_exit(pid, timeout=T) == 0


def blocked_on_a_lock(pid):
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    try:
        with open(f"/proc/{pid}/wchan") as f:
            where = f.read()
    except OSError:
        where = ""
    return state == "S" and (where in ("", "0") or "lk" in where or "lock" in where)


def wait_for_exit(pid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"process {pid} still blocked after {timeout}s")
        time.sleep(0.01)
