"""The durable guarantees with real processes, over SQLite and Redis: SIGKILLed submitters
and servers, several submitters and servers on one store, `taskq worker`, `taskq status`."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import taskq
from tests.broker_jobs import ROOT, kill_my_server, record, run_python, runs, start_worker, stop
from tests.jobs import wait_until

LEASE = 1.0  # short leases keep these tests quick; recovery takes about a lease


@pytest.fixture
def client(store):
    """A submit-only pool of the store, shut down (without waiting) after the test."""
    pool = taskq.Pool(0, **store.kw)
    yield pool
    pool.shutdown(wait=False)


@pytest.fixture
def workers():
    started = []

    def start(store, *args):
        proc = start_worker(*store.cli, *args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc)


SUBMIT_THEN_DIE = """
import os, signal, sys
import taskq
from tests.broker_jobs import record
pool = taskq.Pool(0, broker=sys.argv[1], queue=sys.argv[2])
ids = [pool.schedule(record, (sys.argv[3], f"job{i}"), priority=-i).job_id for i in range(5)]
print(" ".join(ids), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_jobs_survive_a_sigkill_of_the_submitter_right_after_schedule(store, tmp_path):
    log = str(tmp_path / "runs")
    done = run_python(SUBMIT_THEN_DIE, store.url, store.queue, log)
    assert done.returncode == -signal.SIGKILL
    ids = done.stdout.split()
    assert len(ids) == 5
    with taskq.Pool(1, **store.kw) as pool:
        futures, unknown = [], []
        for position, job_id in enumerate(ids):
            try:
                futures.append(pool.job(job_id))
            except KeyError:  # a failure names every missing job, not just the first
                unknown.append(position)
        assert not unknown, (
            f"jobs {unknown} of 5 (0 = first scheduled) are unknown to the store after the "
            f"submitter's SIGKILL; its stderr: {done.stderr[-2000:]!r}"
        )
        results = [future.result(timeout=60) for future in futures]
    assert results == [f"job{i}" for i in range(5)]
    assert runs(log) == [f"job{i}" for i in reversed(range(5))]  # priority order kept


def test_a_sigkilled_taskq_worker_s_job_completes_on_another(store, tmp_path, workers):
    log = str(tmp_path / "runs")
    first = workers(store, "--workers", "1", "--lease", str(LEASE))
    client = taskq.Pool(0, **store.kw)
    try:
        future = client.schedule(record, (log, "victim", 3.0))
        wait_until(lambda: runs(log) == ["victim"], 60, "the job to start on the first worker")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        killed_at = time.monotonic()
        workers(store, "--workers", "1", "--lease", str(LEASE))
        assert future.result(timeout=60) == "victim"
        recovered_after = time.monotonic() - killed_at
        assert runs(log) == ["victim", "victim"]  # ran at least once more, elsewhere
        assert client.job(future.job_id).result(timeout=5) == "victim"  # one outcome
        # The lease, the look for expired leases and a 3 s job, with a wide margin for a
        # noisy machine: a job left for a 60 s lease or a sweep of minutes would fail this.
        assert recovered_after < LEASE + 3.0 + 20
    finally:
        client.shutdown(wait=False)


SUBMITTER = """
import sys
import taskq
from tests.broker_jobs import record
pool = taskq.Pool(0, broker=sys.argv[1], queue=sys.argv[2])
who, log = sys.argv[3], sys.argv[4]
for i in range(30):
    pool.schedule(record, (log, f"{who}-p{i % 3}-{i}", 0.02), priority=i % 3)
pool.shutdown(wait=False)
print("ok")
"""


def test_several_submitters_and_two_workers_keep_exact_priority_order(store, tmp_path, workers):
    log = str(tmp_path / "runs")
    submitters = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, store.url, store.queue, who, log],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
        for who in ("a", "b", "c")
    ]
    for proc in submitters:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "locked" not in err, err
    servers = [workers(store, "--workers", "1") for _ in range(2)]
    wait_until(lambda: len(runs(log)) == 90, 120, "every job to run")
    order = [int(tag.split("-")[1][1]) for tag in runs(log)]
    # Two servers start jobs concurrently, so at most one job of each may start before a
    # job of a more urgent priority that the other one took at the same moment.
    inversions = sum(1 for a, b in itertools.pairwise(order) if a > b)
    assert inversions <= 2, order
    assert sorted(order) == [0] * 30 + [1] * 30 + [2] * 30
    for server in servers:
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert "database is locked" not in stop(server)


def test_taskq_worker_stops_on_sigterm_leaving_queued_jobs_in_the_store(store, tmp_path, workers):
    log = str(tmp_path / "runs")
    client = taskq.Pool(0, **store.kw)
    try:
        running = client.schedule(record, (log, "running", 1.0))
        server = workers(store, "--workers", "1", "--grace", "30")
        wait_until(lambda: runs(log) == ["running"], 60, "the first job to start")
        queued = client.schedule(record, (log, "queued"), priority=5)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert running.result(timeout=10) == "running"  # finished within the grace period
        assert "stopping" in server.stderr.read()
        assert client.stats().queued == 1 and not queued.done()
    finally:
        client.shutdown(wait=False)


def test_taskq_worker_stops_gracefully_when_its_whole_process_group_gets_sigterm(
    store, tmp_path, client
):
    # What `kill -TERM -- -PGID` and GNU timeout do: the running job must still finish
    # within the grace period (the workers live in process groups of their own).
    log = str(tmp_path / "runs")
    server = start_worker(*store.cli, "--workers", "2", "--grace", "30", new_session=True)
    try:
        running = client.schedule(record, (log, "running", 1.5))
        wait_until(lambda: runs(log) == ["running"], 60, "the job to start")
        os.killpg(server.pid, signal.SIGTERM)
        assert server.wait(60) == 0
        assert running.result(timeout=10) == "running"
        err = stop(server)
        assert "died" not in err and "exited with" not in err, err
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        stop(server)


def test_a_kill_outlives_the_server_that_could_not_act_on_it(store, tmp_path, workers, client):
    # The holder hangs, so the kill request waits in the store; its lease lapses, and
    # the next server to claim the job must stop it, not run it to completion.
    log = str(tmp_path / "runs")
    future = client.schedule(record, (log, "long", 20.0))
    first = workers(store, "--workers", "1", "--lease", str(LEASE))
    wait_until(lambda: runs(log) == ["long"], 60, "the job to start")
    first.send_signal(signal.SIGSTOP)  # hung: it renews no lease, reads no request
    assert client.kill(future)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    workers(store, "--workers", "1", "--lease", str(LEASE))
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(timeout=60)


def test_taskq_worker_result_ttl_sets_how_long_its_outcomes_are_kept(
    store, tmp_path, workers, client
):
    log = str(tmp_path / "runs")
    workers(store, "--workers", "1", "--result-ttl", "0.5")
    future = client.schedule(record, (log, "short"))
    assert future.result(timeout=60) == "short"
    assert client.job(future.job_id).result(timeout=10) == "short"
    time.sleep(1.5)
    with pytest.raises(KeyError, match="expired"):
        client.job(future.job_id)


def test_a_job_stopped_at_the_end_of_the_grace_period_keeps_its_start_counted(
    store, tmp_path, workers, client
):
    log = str(tmp_path / "runs")
    future = client.schedule(record, (log, "slow", 2.0))
    first = workers(store, "--workers", "1", "--grace", "0.2")
    wait_until(lambda: runs(log) == ["slow"], 60, "the job to start")
    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0  # the job was stopped and put back
    workers(store, "--workers", "1")
    assert future.result(timeout=60) == "slow"
    assert runs(log) == ["slow", "slow"]
    assert future.attempts == 2  # both starts count (a retry budget does not restart)


def test_taskq_status_json_reports_queues_running_jobs_and_workers(store, tmp_path, workers):
    log = str(tmp_path / "runs")
    client = taskq.Pool(0, **store.kw)
    try:
        client.schedule(record, (log, "long", 60.0))
        workers(store, "--workers", "1")
        wait_until(lambda: runs(log) == ["long"], 60, "the long job to start")
        for priority in (1, 1, 7):
            client.schedule(record, (log, "later"), priority=priority)
        done = subprocess.run(
            [sys.executable, "-m", "taskq", "status", *store.cli, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["queued"] == 3
        assert report["queued_by_priority"] == {"1": 2, "7": 1}
        assert [job["name"] for job in report["running"]] == ["record"]
        assert len(report["workers"]) == 1 and report["workers"][0]["processes"] == 1
        assert report["workers"][0]["heartbeat_age"] < 60
        human = subprocess.run(
            [sys.executable, "-m", "taskq", "status", *store.cli],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert "queued     3" in human.stdout and "priority        7: 1" in human.stdout
    finally:
        client.shutdown(wait=False, cancel_futures=True)


def _taskq_status(url):
    return subprocess.run(
        [sys.executable, "-m", "taskq", "status", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_taskq_status_names_a_file_that_is_not_a_store(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_text("not sqlite" * 200)
    done = _taskq_status(f"sqlite:///{bad}")
    assert done.returncode == 1
    assert f"{bad} is not a taskq store" in done.stderr


def test_taskq_status_of_a_missing_file_says_so_and_creates_nothing(tmp_path):
    missing = tmp_path / "typo.db"
    done = _taskq_status(f"sqlite:///{missing}")
    assert done.returncode == 1
    assert f"there is no store at {missing}" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_job_that_keeps_killing_its_server_is_given_up_after_max_lost(store, tmp_path):
    log = str(tmp_path / "runs")
    client = taskq.Pool(0, **store.kw)
    servers = []
    try:
        future = client.schedule(kill_my_server, (log,))
        while not future.done() and len(servers) < 6:
            # Each server in a session of its own: the job kills that group only.
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskq",
                    "worker",
                    *store.cli,
                    "--workers",
                    "1",
                    "--lease",
                    str(LEASE),
                    "--max-lost",
                    "2",
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": ROOT},
                start_new_session=True,
            )
            servers.append(proc)
            deadline = time.monotonic() + 60
            while proc.poll() is None and not future.done() and time.monotonic() < deadline:
                time.sleep(0.05)
        with pytest.raises(taskq.JobLost, match="lease expired 2 times"):
            future.result(timeout=60)
        assert runs(log) == ["killer", "killer"]  # run twice, never a third time
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
        client.shutdown(wait=False)


EXIT_WITHOUT_SHUTDOWN = """
import sys
import taskq
from tests.broker_jobs import record
pool = taskq.Pool(1, broker=sys.argv[1], queue=sys.argv[2])
for i in range(5):
    pool.schedule(record, (sys.argv[3], f"job{i}", 0.05))
print("leaving", flush=True)
"""


def test_a_serving_pool_runs_its_jobs_to_the_end_at_interpreter_exit(store, tmp_path):
    log = str(tmp_path / "runs")
    done = run_python(EXIT_WITHOUT_SHUTDOWN, store.url, store.queue, log)
    assert done.returncode == 0, done.stderr
    assert runs(log) == [f"job{i}" for i in range(5)]


def test_taskq_worker_serves_prometheus_metrics_of_the_jobs_it_ran(store, tmp_path, workers):
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    from tests.redis_server import free_port

    port = free_port()
    log = str(tmp_path / "runs")
    client = taskq.Pool(0, **store.kw)
    try:
        workers(store, "--workers", "1", "--metrics-port", str(port))
        done = [client.schedule(record, (log, f"ok{i}")) for i in range(3)]
        done.append(client.schedule(record, (log, "bad", "not seconds")))
        assert [f.exception(timeout=60) is None for f in done] == [True] * 3 + [False]
        blocker = client.schedule(record, (log, "long", 30.0))
        wait_until(lambda: "long" in runs(log), 60, "the long job to start")
        client.schedule(record, (log, "waits"), priority=4)
        text = ""

        def scraped():
            nonlocal text
            try:
                text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            except OSError:
                return False
            # the job queued behind the long one goes back to the store (not held ahead)
            return 'outcome="failed"' in text and 'taskq_queue_depth{priority="4"} 1.0' in text

        wait_until(scraped, 60, "the metrics endpoint")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("taskq_jobs_total", (("outcome", "succeeded"),))] == 3
        assert samples[("taskq_jobs_total", (("outcome", "failed"),))] == 1
        assert samples[("taskq_queue_depth", (("priority", "4"),))] == 1
        assert samples[("taskq_jobs_running", ())] == 1
        assert samples[("taskq_job_run_seconds_count", ())] == 4
        client.kill(blocker)
    finally:
        client.shutdown(wait=False, cancel_futures=True)


def test_kill_stops_a_job_running_in_a_taskq_worker_process(store, tmp_path, workers):
    log = str(tmp_path / "runs")
    client = taskq.Pool(0, **store.kw)
    try:
        workers(store, "--workers", "1")
        victim = client.schedule(record, (log, "victim", 60.0))
        wait_until(lambda: runs(log) == ["victim"], 60, "the job to start in the worker")
        assert client.kill(victim) is True
        with pytest.raises(concurrent.futures.CancelledError):
            victim.result(timeout=30)  # stopped there, well before its 60 s
        assert client.schedule(record, (log, "next")).result(timeout=60) == "next"
        assert client.kill(victim) is False  # finished (cancelled): nothing to stop
    finally:
        client.shutdown(wait=False)


def _children(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


def test_a_taskq_worker_whose_pool_breaks_exits_and_leaves_its_jobs_to_others(
    store, tmp_path, workers
):
    log = str(tmp_path / "runs")
    client = taskq.Pool(0, **store.kw)
    try:
        first = workers(store, "--workers", "1", "--start-method", "fork")
        running = client.schedule(record, (log, "running", 60.0))
        waiting = client.schedule(record, (log, "waiting"), priority=1)
        wait_until(lambda: runs(log) == ["running"], 60, "the first job to start")
        # Its fork server (the child that has children) dies with all of them, its
        # standby included: no worker can start again.
        [fork_server] = [c for c in _children(first.pid) if _children(c)]
        for pid in [*_children(fork_server), fork_server]:
            os.kill(pid, signal.SIGKILL)
        assert first.wait(120) == 1  # it says it cannot serve, so a supervisor restarts it
        assert "cannot serve any more" in stop(first)
        with pytest.raises(taskq.WorkerCrashed):  # its worker died under it, as locally
            running.result(timeout=60)
        workers(store, "--workers", "1")
        assert waiting.result(timeout=60) == "waiting"  # never claimed, or given back
    finally:
        client.shutdown(wait=False)
