"""``taskq worker URL``: serve a broker's store with a local pool until told to stop.

SIGTERM or Ctrl-C (SIGINT): claim nothing more, put the jobs not started back
in the store, let running jobs finish within ``--grace`` seconds (then stop them
and put them back: they run again elsewhere), exit 0. A second signal stops at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from taskq._broker import DEFAULT_LEASE, DEFAULT_MAX_LOST, DEFAULT_RESULT_TTL
from taskq._broker_pool import BrokerPool
from taskq._cli_exit import EXIT_FAILED, EXIT_OK
from taskq._cli_run import positive_float, positive_int
from taskq._errors import StoreError
from taskq._redis_url import safe_url

NAME = "worker"
DEFAULT_GRACE = 30.0


def add_parser(commands: Any) -> None:
    """Add ``taskq worker`` to ``commands`` (the top-level parser's subparsers)."""
    parser = commands.add_parser(
        NAME,
        help="run the jobs of a durable store (sqlite:///jobs.db, redis://host/0) until stopped",
        description="Serve a taskq store: run its jobs on a pool of worker processes. "
        "SIGTERM or Ctrl-C stops taking jobs, lets running jobs finish within the "
        "grace period, leaves queued jobs in the store and exits 0.",
    )
    parser.set_defaults(handler=run)
    add = parser.add_argument
    add("url", metavar="URL", help="the store: sqlite:///jobs.db, redis://[user:pass@]host:6379/0")
    add(
        "--secret-env",
        default="TASKQ_SECRET",
        metavar="VAR",
        help="environment variable holding the signing secret (default: %(default)s)",
    )
    add(
        "-w",
        "--workers",
        type=positive_int,
        default=None,
        help="worker processes, 1 or more (default: CPUs)",
    )
    add("-q", "--queue", default="default", help="the queue to serve (default: %(default)s)")
    add(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        help="seconds running jobs may take to finish at stop (default: %(default)s)",
    )
    add(
        "--lease",
        type=float,
        default=DEFAULT_LEASE,
        help="seconds a job stays claimed without a heartbeat (default: %(default)s)",
    )
    add(
        "--result-ttl",
        type=positive_float,
        default=DEFAULT_RESULT_TTL,
        help="seconds the outcomes of the jobs it runs are kept (default: %(default)s)",
    )
    add(
        "--max-lost",
        type=int,
        default=DEFAULT_MAX_LOST,
        help="lost leases before a job is given up (default: %(default)s)",
    )
    add(
        "--start-method",
        choices=("fork", "spawn", "forkserver"),
        default=None,
        help="how worker processes start (default: the platform's)",
    )
    add(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on this port (needs taskq[metrics])",
    )
    add(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="the address of the metrics endpoint (default: %(default)s)",
    )
    add("-v", "--verbose", action="store_true", help="log each job event (DEBUG)")


def run(args: argparse.Namespace) -> int:
    import multiprocessing

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    if args.verbose:
        logging.getLogger("taskq").setLevel(logging.DEBUG)  # taskq's events, not its libraries'
    log = logging.getLogger("taskq.worker")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # job modules beside the store, as with `python -m`
    ctx = multiprocessing.get_context(args.start_method) if args.start_method else None
    # With forkserver (the default over SQLite) the server is a process of ours too: it
    # must not die of a SIGTERM sent to this command's whole process group.
    multiprocessing.set_forkserver_preload(["taskq._own_group"])
    stop = threading.Event()
    signals = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    for signum in (signal.SIGTERM, signal.SIGINT):
        signals[signum] = signal.signal(signum, lambda *_: _second_stops_now(stop))
    try:
        pool = BrokerPool(
            args.workers,
            ctx,
            broker=args.url,
            queue=args.queue,
            lease=args.lease,
            result_ttl=args.result_ttl,
            max_lost=args.max_lost,
            secret=None
            if args.url.startswith("sqlite:")
            else os.environ.get(args.secret_env) or None,
        )
    except (StoreError, ValueError, TypeError) as exc:
        log.error("cannot serve %s: %s", safe_url(args.url), exc)
        return EXIT_FAILED
    log.info(
        "serving %s queue %r with %d workers (pid %d)",
        safe_url(args.url),
        args.queue,
        pool._max_workers,
        os.getpid(),
    )
    metrics = _serve_metrics(pool, args, log)
    try:
        while not stop.wait(0.5):
            if pool.broken is not None:  # exit, so that a supervisor starts a new worker
                log.error("cannot serve any more: %s", pool.broken)
                return EXIT_FAILED
        log.info("stopping: no new jobs; running jobs have %.0f s to finish", args.grace)
        pool.stop_serving(args.grace)
    finally:
        if metrics is not None:
            metrics.close()
        for signum, handler in signals.items():
            signal.signal(signum, handler)
    log.info("stopped")
    return EXIT_OK


class _Served:
    """What the metrics of a worker show: the jobs it ran, the store's queue."""

    def __init__(self, pool: BrokerPool):
        self.stats = pool.served_stats


def _serve_metrics(pool: BrokerPool, args: argparse.Namespace, log: logging.Logger) -> Any:
    if args.metrics_port is None:
        return None
    from taskq.metrics import serve

    server = serve(_Served(pool), port=args.metrics_port, addr=args.metrics_addr)
    log.info("metrics at %s", server.url)
    return server


def _second_stops_now(stop: threading.Event) -> None:
    if stop.is_set():  # a second signal: do not wait for the grace period
        os._exit(EXIT_FAILED)
    stop.set()
