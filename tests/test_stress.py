"""A seeded randomized stress test: thousands of jobs mixing successes, exceptions, retries,
rare crashes and timeouts, cancellations of queued jobs and kills of running ones."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import random
import sys
import threading
import time
import traceback

import pytest

import taskq
from tests import jobs
from tests.jobs import assert_all_gone, read_runs, wait_until


@dataclasses.dataclass
class Planned:
    job_id: int
    kind: str  # ok | error | flaky | flaky_fail | crash | crash_once | timeout | hold
    param: float = 0
    retries: int = 0
    timeout: float | None = None
    priority: float = 0
    cancel: bool = False  # try to cancel right after submitting (ok jobs only)


def taskq_thread_stacks():
    """Where taskq's own threads are (diagnostics for a stall)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in sys._current_frames().items():
        name = names.get(ident, "?")
        if name.startswith("taskq"):
            out.append(f"--- thread {name}\n" + "".join(traceback.format_stack(frame)[-6:]))
    return "\n".join(out)


def make_plan(rng, n, holds):
    plan = []
    hold_at = set(rng.sample(range(100, n - 100), holds))
    for job_id in range(n):
        priority = rng.choice([-1, 0, 0, 1, 2.5])
        r = rng.random()
        if job_id in hold_at:
            p = Planned(job_id, "hold", param=20, priority=-100)
        elif r < 0.76:
            p = Planned(job_id, "ok", priority=priority, cancel=rng.random() < 0.04)
        elif r < 0.86:
            p = Planned(job_id, "error", priority=priority)
        elif r < 0.92:
            failures = rng.randint(1, 2)
            p = Planned(
                job_id, "flaky", param=failures, retries=rng.randint(failures, 3), priority=priority
            )
        elif r < 0.95:
            retries = rng.randint(0, 2)
            p = Planned(job_id, "flaky_fail", param=retries + 1, retries=retries, priority=priority)
        elif r < 0.9535:
            p = Planned(job_id, "crash", priority=priority)
        elif r < 0.9555:
            p = Planned(job_id, "crash_once", param=1, retries=1, priority=priority)
        elif r < 0.9575:
            p = Planned(job_id, "timeout", param=10, timeout=0.3, priority=priority)
        else:
            p = Planned(job_id, "ok", priority=priority)
        plan.append(p)
    return plan


def submit(pool, log_dir, p):
    # flaky_fail runs the "flaky" job body with more failures than attempts
    kind = "flaky" if p.kind == "flaky_fail" else p.kind
    return pool.schedule(
        jobs.stress_job,
        (log_dir, p.job_id, kind, p.param),
        priority=p.priority,
        retries=p.retries,
        timeout=p.timeout,
    )


def check_job(p, fut, got_runs, cancel_ok, kill_results, n_callbacks, problems, expected):
    """Compare one job's outcome with the plan; tally the expected pool stats."""
    exc = concurrent.futures.CancelledError() if fut.cancelled() else fut.exception(timeout=0)

    def check(cond, what):
        if not cond:
            problems.append(
                f"job {p.job_id} ({p.kind}, retries={p.retries}): {what}; "
                f"exc={exc!r}, attempts={fut.attempts}, runs={got_runs}"
            )

    check(n_callbacks == 1, f"done callback ran {n_callbacks} times")
    if p.kind == "ok" and cancel_ok.get(p.job_id):
        check(fut.cancelled(), "a cancelled future must stay cancelled")
        check(got_runs == 0, "a cancelled queued job must never run")
        check(fut.attempts == 0, "a cancelled queued job has no attempts")
        expected["cancelled"] += 1
        return
    attempts = {
        "ok": 1,
        "flaky": int(p.param) + 1,
        "crash_once": 2,
        "flaky_fail": p.retries + 1,
    }.get(p.kind, 1)
    if p.kind in ("ok", "flaky", "crash_once"):
        check(exc is None, "should succeed")
        check(exc is not None or fut.result(timeout=0) == p.job_id * 2, "wrong result")
        expected["succeeded"] += 1
    elif p.kind in ("error", "flaky_fail"):
        check(type(exc) is ValueError, "should fail with ValueError")
        expected["failed"] += 1
    elif p.kind == "crash":
        check(isinstance(exc, taskq.WorkerCrashed), "should fail with WorkerCrashed")
        check(getattr(exc, "exitcode", None) == 5, "exit code 5 expected")
        expected["failed"] += 1
    elif p.kind == "timeout":
        check(isinstance(exc, taskq.JobTimeout), "should fail with JobTimeout")
        expected["failed"] += 1
    else:
        assert p.kind == "hold", p.kind
        check(kill_results[p.job_id] is True, "pool.kill() on the running job returned False")
        check(isinstance(exc, concurrent.futures.CancelledError), "killed: CancelledError")
        expected["cancelled"] += 1
    check(got_runs == attempts, f"expected exactly {attempts} run(s)")
    check(fut.attempts == attempts, f"expected attempts == {attempts}")
    expected["retried"] += attempts - 1
    expected["crashed"] += p.kind in ("crash", "crash_once")
    expected["timed_out"] += p.kind == "timeout"


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [20261126, 7])
def test_a_randomized_mix_of_thousands_of_jobs_resolves_exactly_as_expected(
    pool_factory, tmp_path, seed
):
    n, holds, workers = 5000, 5, 3
    rng = random.Random(seed)
    plan = make_plan(rng, n, holds)
    log_dir = str(tmp_path / "runs")
    os.makedirs(log_dir)

    pool = pool_factory(workers, retry_delay=0.01)
    futures = {}
    cancel_ok = {}
    callbacks = collections.Counter()
    cb_lock = threading.Lock()
    kill_results = {}
    hold_queue = []
    hold_ready = threading.Condition()

    def on_done(job_id):
        def cb(_f):
            with cb_lock:
                callbacks[job_id] += 1

        return cb

    def killer():
        for k in range(holds):
            with hold_ready:
                hold_ready.wait_for(lambda k=k: len(hold_queue) > k, timeout=60)
                job_id, fut = hold_queue[k]
            marker = os.path.join(log_dir, f"holding-{job_id}")
            wait_until(lambda m=marker: os.path.exists(m), 60, f"hold job {job_id} to start")
            kill_results[job_id] = pool.kill(fut)

    killer_thread = threading.Thread(target=killer, name="killer", daemon=True)
    killer_thread.start()

    for p in plan:
        fut = submit(pool, log_dir, p)
        fut.add_done_callback(on_done(p.job_id))
        futures[p.job_id] = fut
        if p.cancel:
            cancel_ok[p.job_id] = fut.cancel()
        if p.kind == "hold":
            with hold_ready:
                hold_queue.append((p.job_id, fut))
                hold_ready.notify_all()

    # poll done() rather than concurrent.futures.wait(): that one has its own test
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not all(f.done() for f in futures.values()):
        time.sleep(0.1)
    not_done = [f for f in futures.values() if not f.done()]
    killer_thread.join(10)
    assert not not_done, (
        f"{len(not_done)} futures never resolved; {pool.stats()}\n{taskq_thread_stacks()}"
    )
    assert not killer_thread.is_alive()
    assert len(kill_results) == holds
    time.sleep(0.2)  # let late (buggy) duplicate resolutions show up

    runs = read_runs(log_dir)
    problems = []
    expected = collections.Counter()
    for p in plan:
        check_job(
            p,
            futures[p.job_id],
            runs.get(p.job_id, 0),
            cancel_ok,
            kill_results,
            callbacks[p.job_id],
            problems,
            expected,
        )

    assert not problems, f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:15])

    wait_until(lambda: pool.stats().running == 0 and pool.stats().queued == 0, 10, "idle")
    wait_until(lambda: pool.stats().workers == workers, 10, "full strength")
    s = pool.stats()
    assert s.submitted == n
    assert s.submitted == s.succeeded + s.failed + s.cancelled
    got = {
        k: getattr(s, k)
        for k in ("succeeded", "failed", "cancelled", "retried", "crashed", "timed_out")
    }
    assert got == {k: expected[k] for k in got}, (got, dict(expected))
    assert s.worker_restarts >= expected["crashed"] + expected["timed_out"] + holds

    pids = {
        int(name[len("runs-") : -len(".log")])
        for name in os.listdir(log_dir)
        if name.startswith("runs-")
    }
    pool.shutdown(wait=True)
    assert_all_gone(pids, timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_many_threads_hammering_a_small_bounded_pool_lose_nothing(pool_factory):
    """Producers, mappers and cancellers in parallel against maxsize and priorities."""
    pool = pool_factory(2, maxsize=16, counters=("ran",), retry_delay=0.01)
    rng = random.Random(42)
    errors = []
    outcomes = collections.Counter()
    lock = threading.Lock()

    def producer(seed):
        r = random.Random(seed)
        futs = []
        try:
            for _ in range(400):
                f = pool.schedule(jobs.counter_add, ("ran",), priority=r.choice([0, 1, -1]))
                if r.random() < 0.1 and f.cancel():
                    with lock:
                        outcomes["cancelled"] += 1
                    continue
                futs.append(f)
            for f in futs:
                f.result(timeout=60)
            with lock:
                outcomes["ran"] += len(futs)
        except Exception as exc:
            errors.append(exc)

    def mapper():
        try:
            got = list(pool.map(jobs.square, range(1500), timeout=60))
            assert got == [i * i for i in range(1500)]
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(rng.random(),)) for _ in range(4)]
    threads += [threading.Thread(target=mapper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(80)
    assert not errors, errors[:3]
    assert pool.counter("ran").value == outcomes["ran"]
    wait_until(lambda: pool.stats().running == 0, 10, "idle")
    s = pool.stats()
    assert s.cancelled == outcomes["cancelled"]
    assert s.submitted == s.succeeded + s.failed + s.cancelled
    assert s.queued == 0
