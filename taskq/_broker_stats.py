"""A broker pool's statistics: this process's jobs, with the store's queue."""

from __future__ import annotations

import dataclasses

from taskq._broker import OutcomeKind
from taskq._stats import EMPTY_HISTOGRAM, PoolStats, PriorityStats


def broker_pool_stats(
    submitted: int,
    counts: dict[OutcomeKind, int],
    queued: dict[float, int],
    held: int,
    local: PoolStats | None,
) -> PoolStats:
    """``submitted`` and ``counts``: this process's jobs and how they ended; ``queued``:
    the store's queue per priority; ``held``: jobs this process's server holds;
    ``local``: its local pool's statistics (None for a client)."""
    return PoolStats(
        submitted=submitted,
        queued=sum(queued.values()),
        running=held,
        succeeded=counts[OutcomeKind.OK],
        failed=counts[OutcomeKind.ERROR],
        cancelled=counts[OutcomeKind.CANCELLED],
        retried=local.retried if local else 0,
        timed_out=local.timed_out if local else 0,
        crashed=local.crashed if local else 0,
        worker_restarts=local.worker_restarts if local else 0,
        workers=local.workers if local else 0,
        priorities=_by_priority(queued, local),
        wait_seconds=local.wait_seconds if local else EMPTY_HISTOGRAM,
        run_seconds=local.run_seconds if local else EMPTY_HISTOGRAM,
    )


def _by_priority(queued: dict[float, int], local: PoolStats | None) -> dict[float, PriorityStats]:
    """The store's queued counts, with this process's recent figures per priority."""
    recent = dict(local.priorities) if local else {}
    levels = sorted(set(queued) | set(recent))
    empty = PriorityStats(0, 0, None, None, None, None)
    return {
        level: dataclasses.replace(recent.get(level, empty), queued=queued.get(level, 0))
        for level in levels
    }
