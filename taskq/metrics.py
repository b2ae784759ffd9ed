"""Prometheus metrics for a pool: ``serve(pool, port=9100)`` exposes them over HTTP.

Needs the optional ``prometheus_client`` (``pip install 'taskq[metrics]'``).
Everything is read from ``pool.stats()`` at scrape time, nothing is recorded on
the pool's hot path, and any object with a ``stats()`` returning ``PoolStats``
can be served (a broker-backed pool too). Exposed, by Prometheus conventions:

    taskq_jobs_total{outcome="succeeded"|"failed"|"cancelled"}  counter
    taskq_job_retries_total, taskq_job_timeouts_total,
    taskq_worker_crashes_total                                 counters
    taskq_queue_depth{priority="0"}                            gauge, per priority
    taskq_jobs_running, taskq_workers                          gauges
    taskq_job_wait_seconds     histogram: queued -> started, each attempt that replied
    taskq_job_run_seconds      histogram: run time in the worker, each attempt that replied

Example::

    with taskq.Pool() as pool, taskq.metrics.serve(pool, port=9100):
        ...  # http://localhost:9100/metrics
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from taskq._stats import Histogram, PoolStats

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = ["MetricsServer", "PoolCollector", "serve"]


class HasStats(Protocol):
    def stats(self) -> PoolStats: ...


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError as exc:
        raise ImportError(
            "taskq.metrics needs prometheus_client: pip install 'taskq[metrics]'"
        ) from exc
    return prometheus_client


def priority_label(priority: float) -> str:
    """``0`` rather than ``0.0`` for a whole number; ``repr`` otherwise (exact)."""
    return str(int(priority)) if float(priority).is_integer() else repr(float(priority))


class PoolCollector:
    """A ``prometheus_client`` collector reading one ``pool.stats()`` per scrape."""

    def __init__(self, pool: HasStats):
        self._pool = pool
        self._core = _prometheus().core

    def collect(self) -> Iterator[Any]:
        core = self._core
        s = self._pool.stats()
        jobs = core.CounterMetricFamily(
            "taskq_jobs", "Jobs that ended, by outcome.", labels=["outcome"]
        )
        for outcome, value in (
            ("succeeded", s.succeeded), ("failed", s.failed), ("cancelled", s.cancelled)
        ):  # fmt: skip
            jobs.add_metric([outcome], value)
        yield jobs
        yield core.CounterMetricFamily(
            "taskq_job_retries", "Attempts that failed and were queued again.", value=s.retried
        )
        yield core.CounterMetricFamily(
            "taskq_job_timeouts", "Attempts stopped for running past their timeout.",
            value=s.timed_out,
        )  # fmt: skip
        yield core.CounterMetricFamily(
            "taskq_worker_crashes", "Workers that died while holding a job.", value=s.crashed
        )
        depth = core.GaugeMetricFamily(
            "taskq_queue_depth", "Jobs waiting for a worker, by priority.", labels=["priority"]
        )
        for priority, level in s.priorities.items():
            depth.add_metric([priority_label(priority)], level.queued)
        yield depth
        yield core.GaugeMetricFamily(
            "taskq_jobs_running", "Jobs handed to a worker and not finished.", value=s.running
        )
        yield core.GaugeMetricFamily("taskq_workers", "Worker processes alive.", value=s.workers)
        yield self._histogram(
            "taskq_job_wait_seconds", "Seconds from queued to started.", s.wait_seconds
        )
        yield self._histogram(
            "taskq_job_run_seconds", "Seconds a job ran in its worker.", s.run_seconds
        )

    def _histogram(self, name: str, documentation: str, histogram: Histogram) -> Any:
        bounds = [*(repr(bound) for bound in histogram.bounds), "+Inf"]
        return self._core.HistogramMetricFamily(
            name,
            documentation,
            buckets=list(zip(bounds, histogram.cumulative, strict=True)),
            sum_value=histogram.sum,
        )

    def describe(self) -> list[Any]:
        return []  # names are known only at collect(): don't let the registry call it early


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper must not hold up close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # wsgiref writes every request to stderr otherwise


class MetricsServer:
    """A running metrics endpoint; ``close()`` (or leaving ``with``) stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str):
        self._server = server
        self._thread = thread
        self.host: str = host
        self.port: int = server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<taskq.metrics.MetricsServer {self.url}>"


def serve(pool: HasStats, port: int = 9100, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve ``pool``'s metrics at ``http://addr:port/metrics`` (IPv4) from a daemon thread.

    ``port=0`` picks a free port (see ``.port``). Only this pool's metrics are
    served (not the process-wide default registry). Returns a ``MetricsServer``:
    call ``close()`` when done, or use it in a ``with`` block.
    """
    prometheus = _prometheus()
    registry = prometheus.CollectorRegistry(auto_describe=False)
    collector: Collector = PoolCollector(pool)
    registry.register(collector)
    app = prometheus.make_wsgi_app(registry)
    server = make_server(addr, port, app, _Server, handler_class=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, name=f"taskq-metrics-{port}", daemon=True
    )
    thread.start()
    return MetricsServer(server, thread, addr)
