"""taskq.metrics: a known workload, scraped over HTTP and parsed by prometheus_client."""

from __future__ import annotations

import time
import urllib.request

import pytest

prometheus_parser = pytest.importorskip("prometheus_client.parser")

import taskq.metrics  # noqa: E402  (after the skip: it needs prometheus_client)
from tests.jobs import raise_value_error, sleep_then  # noqa: E402

RUN = 0.05  # each succeeding job (but the blocker) sleeps this long
HELD = 0.2  # the blocker runs at least this long


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: {(name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in prometheus_parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


def bucket(samples, name: str, le: str) -> float:
    return samples[(f"{name}_bucket", (("le", le),))]


@pytest.mark.timeout(60)
def test_a_known_workload_is_scraped_with_exact_counts(pool_factory, gate):
    pool = pool_factory(1)
    with taskq.metrics.serve(pool, port=0) as server:
        fn, args = gate.job()
        blocker = pool.submit(fn, *args)
        gate.wait_started()
        sleepers = [pool.schedule(sleep_then, (RUN, i), priority=1) for i in range(3)]
        sleepers += [pool.schedule(sleep_then, (RUN, i), priority=2.5) for i in range(2)]
        failing = [pool.schedule(raise_value_error, priority=-1) for _ in range(2)]
        withdrawn = pool.schedule(sleep_then, (RUN,), priority=4)
        assert withdrawn.cancel()

        queued = scrape(server.url)
        assert queued[("taskq_queue_depth", (("priority", "1"),))] == 3
        assert queued[("taskq_queue_depth", (("priority", "2.5"),))] == 2
        assert queued[("taskq_queue_depth", (("priority", "-1"),))] == 2
        assert ("taskq_queue_depth", (("priority", "4"),)) not in queued  # it was cancelled
        assert queued[("taskq_jobs_running", ())] == 1
        assert queued[("taskq_jobs_total", (("outcome", "cancelled"),))] == 1

        time.sleep(HELD)
        gate.open()
        for future in [blocker, *sleepers]:
            future.result(timeout=30)
        for future in failing:
            with pytest.raises(ValueError):
                future.result(timeout=30)

        done = scrape(server.url)
    outcomes = {
        labels[0][1]: value for (name, labels), value in done.items() if name == "taskq_jobs_total"
    }
    assert outcomes == {"succeeded": 6, "failed": 2, "cancelled": 1}
    assert done[("taskq_workers", ())] == 1
    assert done[("taskq_jobs_running", ())] == 0
    assert all(value == 0 for (name, _), value in done.items() if name == "taskq_queue_depth")
    # 8 attempts replied (the cancelled job never ran).
    run, wait = "taskq_job_run_seconds", "taskq_job_wait_seconds"
    assert done[(f"{run}_count", ())] == done[(f"{wait}_count", ())] == 8
    assert bucket(done, run, "+Inf") == bucket(done, wait, "+Inf") == 8
    # Only the two failing jobs can run faster than the sleepers' RUN seconds.
    assert bucket(done, run, "0.025") <= 2
    assert done[(f"{run}_sum", ())] >= HELD + 5 * RUN
    # One worker: the failing jobs (most urgent) waited for the blocker, the
    # sleepers for it and more; the blocker itself waited less than HELD.
    assert bucket(done, wait, "0.1") <= 1
    assert done[(f"{wait}_sum", ())] >= 7 * HELD


def test_close_stops_serving_and_frees_the_port(pool_factory):
    pool = pool_factory(1)
    server = taskq.metrics.serve(pool, port=0)
    assert scrape(server.url)[("taskq_workers", ())] >= 0
    server.close()
    server.close()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=5)
    again = taskq.metrics.serve(pool, port=server.port)  # the port is free again
    again.close()


def test_priority_labels_are_exact_and_short():
    assert taskq.metrics.priority_label(0) == "0"
    assert taskq.metrics.priority_label(-3.0) == "-3"
    assert taskq.metrics.priority_label(0.1) == "0.1"
