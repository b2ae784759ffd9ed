"""``taskq status URL``: what a durable store holds, for people (a table) or scripts (--json)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from taskq._broker import open_broker
from taskq._cli_exit import EXIT_FAILED, EXIT_OK
from taskq._errors import StoreError
from taskq._redis_url import safe_url
from taskq._sqlite_file import path_of

NAME = "status"


def add_parser(commands: Any) -> None:
    """Add ``taskq status`` to ``commands`` (the top-level parser's subparsers)."""
    parser = commands.add_parser(
        NAME,
        help="show the jobs and servers of a durable store",
        description="Show a store's queued jobs (per priority), running jobs, finished "
        "counts, and the worker processes serving it with their last heartbeat.",
    )
    parser.set_defaults(handler=run)
    parser.add_argument("url", metavar="URL", help="the store, e.g. sqlite:///jobs.db")
    parser.add_argument("-q", "--queue", default="default", help="queue (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    try:
        _check_store_exists(args.url)
        broker = open_broker(args.url, args.queue)
        try:
            report = collect(broker)
        finally:
            broker.close()
    except (StoreError, ValueError) as exc:
        print(f"taskq status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(render(report))
    return EXIT_OK


def _check_store_exists(url: str) -> None:
    """A status report reads a store: it must not create one for a mistyped path."""
    if not url.startswith("sqlite:"):
        return
    path, _ = path_of(url)
    if not os.path.exists(path):
        raise StoreError(
            f"there is no store at {path}: check the path (sqlite:///relative.db is relative "
            "to the current directory, sqlite:////absolute.db absolute)"
        )


def collect(broker: Any) -> dict[str, Any]:
    """The report as plain data (what --json prints)."""
    status = broker.status()
    now = time.time()
    return {
        "url": safe_url(broker.url),
        "queue": broker.queue,
        "queued": sum(status.queued_by_priority.values()),
        "queued_by_priority": {_key(p): n for p, n in status.queued_by_priority.items()},
        "running": [
            {
                "id": job_id,
                "name": name,
                "server": owner,
                "since": since,
                "seconds": None if since is None else round(now - since, 3),
            }
            for job_id, name, owner, since in status.running
        ],
        "succeeded": status.succeeded,
        "failed": status.failed,
        "cancelled": status.cancelled,
        "dead": status.dead,
        "refused": status.refused,
        "workers": [
            {**server, "heartbeat_age": round(now - server["heartbeat"], 3)}
            for server in status.workers
        ],
    }


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['url']}  queue {report['queue']!r}", f"queued     {report['queued']}"]
    for priority, count in report["queued_by_priority"].items():
        lines.append(f"  priority {priority:>8}: {count}")
    lines.append(f"running    {len(report['running'])}")
    for job in report["running"]:
        lines.append(f"  {job['id']}  {job['name']}  on {job['server']}  for {job['seconds']} s")
    for key in ("succeeded", "failed", "cancelled", "dead", "refused"):
        lines.append(f"{key:<10} {report[key]}")
    lines.append(f"workers    {len(report['workers'])}")
    for server in report["workers"]:
        lines.append(
            f"  {server['owner']}  {server['processes']} processes  "
            f"last heartbeat {server['heartbeat_age']} s ago"
        )
    return "\n".join(lines)


def _key(priority: float) -> str:
    return str(int(priority)) if float(priority).is_integer() else str(priority)
