"""Scenario 7: an urgent job scheduled behind a large backlog (taskq's headline).

Two workers chew through a backlog of busy-loop jobs queued at priority 10; at random
moments one job is scheduled at priority 0.  That job records ``time.monotonic()`` when it
starts (CLOCK_MONOTONIC is system-wide on Linux) and the parent compares it with its own
reading taken just before ``schedule()``.  FIFO peers get the same probe submitted the same
way: it waits behind their (smaller, capped) backlog.
"""

from __future__ import annotations

import random
import time
from typing import Any, ClassVar

from benchmarks import _jobs
from benchmarks.config import Config
from benchmarks.peers import Adapter, Fn
from benchmarks.runner import Contestant, Metrics, check, percentile
from benchmarks.scenarios._base import Metric, Scenario, calibrate_spin, fresh

BACKLOG_PRIORITY = 10
URGENT_PRIORITY = 0


class UrgentJob(Scenario):
    metrics = (
        Metric("p50_ms", "p50 delay ms", False, 2),
        Metric("p99_ms", "p99 delay ms", False, 2),
        Metric("backlog_start_pct", "backlog left at 1st probe %", True, 0, False, False),
        Metric("backlog_end_pct", "backlog left after last probe %", True, 0, False, False),
    )
    not_run: ClassVar[dict[str, str]] = {
        "joblib": "no asynchronous submit: a probe cannot be sent while a backlog runs",
    }
    job_seconds: ClassVar[float] = 0.0
    size_field: ClassVar[str] = ""

    def backlog(self, cfg: Config) -> int:
        return int(getattr(cfg.sizes, self.size_field))

    def peer_backlog(self, cfg: Config) -> int:
        return max(1, int(self.backlog(cfg) * cfg.sizes.peer_backlog_fraction))

    def params(self, cfg: Config) -> dict[str, Any]:
        return {
            "backlog": self.backlog(cfg),
            "peer_backlog": self.peer_backlog(cfg),
            "job_seconds": self.job_seconds,
            "probes": cfg.sizes.urgent_probes,
            "probe_window_s": cfg.sizes.probe_window_s,
        }

    def _job(self) -> tuple[Fn, int]:
        if self.job_seconds <= 0:
            return _jobs.noop, 0
        return _jobs.spin, calibrate_spin(self.job_seconds)

    def contestants(self, cfg: Config) -> list[Contestant]:
        fn, arg = self._job()
        out = []
        for cls in self.adapters(cfg):
            size = self.backlog(cfg) if cls.key == "taskq" else self.peer_backlog(cfg)
            # A smaller backlog gets a proportionally shorter probe window, so the probes
            # land at the same relative moments of the backlog's life as taskq's do.
            window = cfg.sizes.probe_window_s * size / self.backlog(cfg)
            note = "" if cls.key == "taskq" else f"FIFO; backlog {size:,}, window {window:.2g} s"
            body = _UrgentBody(fn, arg, size, cfg.sizes.urgent_probes, window, cfg.seed)
            out.append(fresh(self, cls, cfg, body, note))
        return out


class _UrgentBody:
    """One repetition: queue the backlog, fire the probes, measure their start delay."""

    def __init__(
        self, fn: Fn, arg: int, backlog: int, probes: int, window: float, seed: int
    ) -> None:
        self.fn = fn
        self.arg = arg
        self.backlog = backlog
        self.probes = probes
        self.window = window
        self.rng = random.Random(seed)  # same moments (relative to the window) for everyone

    def __call__(self, adapter: Adapter, warm: bool) -> Metrics:
        size = min(self.backlog, 200) if warm else self.backlog
        queued = [adapter.schedule(self.fn, (self.arg,), BACKLOG_PRIORITY) for _ in range(size)]
        left_at_start = sum(1 for h in queued if not adapter.done(h))
        fired = self._fire(adapter, 2 if warm else self.probes)
        delays = []
        for t_before, handle in fired:
            started = adapter.result(handle, timeout=600)
            check(isinstance(started, float), f"probe returned {started!r}")
            delays.append(started - t_before)
            check(delays[-1] > -0.001, f"probe started {-delays[-1]:.6f} s before schedule()")
        left_at_end = sum(1 for h in queued if not adapter.done(h))
        return {
            "p50_ms": percentile(delays, 50) * 1000,
            "p99_ms": percentile(delays, 99) * 1000,
            "backlog_start_pct": 100.0 * left_at_start / max(1, size),
            "backlog_end_pct": 100.0 * left_at_end / max(1, size),
        }

    def _fire(self, adapter: Adapter, count: int) -> list[tuple[float, Any]]:
        moments = sorted(self.rng.uniform(0, self.window) for _ in range(count))
        base = time.monotonic()
        fired = []
        for moment in moments:
            pause = base + moment - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            t_before = time.monotonic()
            fired.append((t_before, adapter.schedule(_jobs.spin_probe, (0,), URGENT_PRIORITY)))
        return fired


class UrgentBehind100us(UrgentJob):
    key = "urgent_100us"
    title = "Urgent job behind a backlog of 100 µs jobs"
    description = (
        "A backlog of 100 µs busy-loop jobs at priority 10 on two workers; at random moments "
        "one job at priority 0. Delay = its start (time.monotonic() in the worker) minus the "
        "parent's time.monotonic() just before schedule(). FIFO peers: the same probe behind a "
        "smaller backlog, probed within a proportionally shorter window (so their delays are "
        "roughly that factor smaller than they would be behind taskq's backlog)."
    )
    job_seconds = 0.0001
    size_field = "backlog_100us"


class UrgentBehind1ms(UrgentJob):
    key = "urgent_1ms"
    title = "Urgent job behind a backlog of 1 ms jobs"
    description = "As above, with a backlog of 1 ms busy-loop jobs."
    job_seconds = 0.001
    size_field = "backlog_1ms"


class UrgentBehindNoop(UrgentJob):
    key = "urgent_noop"
    title = "Urgent job behind a backlog of no-op jobs"
    description = "As above, with a backlog of no-op jobs."
    job_seconds = 0.0
    size_field = "backlog_noop"
