"""Scenario 8: map over an endless generator, parent memory growth."""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, ClassVar

from benchmarks import _jobs
from benchmarks.config import Config
from benchmarks.peers import Adapter
from benchmarks.runner import Contestant, Metrics, VerificationError
from benchmarks.scenarios._base import Metric, Scenario, fresh

MB = 1_000_000


def current_rss() -> int:
    """Resident set size of this process in bytes (psutil when present, else /proc)."""
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


class RssSampler:
    """Samples the parent's RSS in a background thread and keeps the peak."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.baseline = current_rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())


class EndlessMap(Scenario):
    key = "endless_map"
    title = "map over an endless generator"
    description = (
        "Consume N results of a no-op from map(f, itertools.count()), then stop; peak growth "
        "of the parent's RSS over its value before the map (sampled every 5 ms)."
    )
    metrics = (
        Metric("growth_mb", "RSS growth MB", False, 1, ratio=False),
        Metric("items_per_s", "items/s", True, plot=False),
    )
    not_run: ClassVar[dict[str, str]] = {
        "ppe": "cannot: Executor.map reads all of its input first (before Python 3.14)",
        "loky": "cannot: Executor.map reads all of its input first",
        "pebble": "cannot: ProcessPool.map schedules all of its input first",
        "joblib": "cannot: Parallel(return_as='generator') pre-dispatches ever larger batches "
        "(RSS grew ~100 MB after 300k items in a trial run)",
    }
    notes: ClassVar[dict[str, str]] = {
        "mp_pool": "Pool.imap, chunksize=1000",
        "mpire": "WorkerPool.imap, chunk_size=1000",
    }
    # Peers that stream correctly but slowly consume fewer items (the rate is still reported).
    slow: ClassVar[dict[str, int]] = {"mpire": 10}

    def params(self, cfg: Config) -> dict[str, Any]:
        return {"items": cfg.sizes.stream_items}

    def contestants(self, cfg: Config) -> list[Contestant]:
        out = []
        for cls in self.adapters(cfg):
            n = cfg.sizes.stream_items // self.slow.get(cls.key, 1)
            note = f"{n:,} items" if n != cfg.sizes.stream_items else ""
            out.append(fresh(self, cls, cfg, self._body(n), note))
        return out

    @staticmethod
    def _body(n: int) -> Any:
        def body(adapter: Adapter, warm: bool) -> Metrics:
            count = min(n, 10_000) if warm else n
            with RssSampler() as rss:
                start = time.perf_counter()
                results = adapter.stream(_jobs.noop, itertools.count())
                got = _consume(results, count)
                wall = time.perf_counter() - start
                close = getattr(results, "close", None)
                if close is not None:
                    close()
            if got != count:
                raise VerificationError(f"map ended after {got} of {count} results")
            return {"growth_mb": (rss.peak - rss.baseline) / MB, "items_per_s": count / wall}

        return body


def _consume(results: Any, count: int) -> int:
    """Take ``count`` results, checking each is its own index; return how many arrived."""
    got = 0
    for expected, value in zip(range(count), results, strict=False):
        if value != expected:
            raise VerificationError(f"result #{expected} is {value!r}")
        got += 1
    return got
