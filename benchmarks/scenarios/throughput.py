"""Scenarios 1-3: no-op throughput through submit, map (best chunksize) and map (default)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from benchmarks import _jobs
from benchmarks.config import Config
from benchmarks.peers import Adapter
from benchmarks.runner import Contestant, Metrics, Row, Runner
from benchmarks.scenarios._base import (
    Metric,
    Scenario,
    ScenarioResult,
    check_equal,
    pooled,
)


class SubmitThroughput(Scenario):
    key = "submit"
    title = "No-op submit throughput"
    description = "Submit every no-op job, then wait for all of them."
    metrics = (Metric("jobs_per_s", "jobs/s", True),)
    notes: ClassVar[dict[str, str]] = {
        "mp_pool": "apply_async",
        "mpire": "apply_async",
        "pebble": "schedule",
        "joblib": "Parallel over delayed calls",
    }

    def params(self, cfg: Config) -> dict[str, Any]:
        return {"jobs": cfg.sizes.submit_jobs}

    def contestants(self, cfg: Config) -> list[Contestant]:
        n = cfg.sizes.submit_jobs

        def body(adapter: Adapter, warm: bool) -> Metrics:
            args = list(range(max(10, n // 20) if warm else n))
            start = time.perf_counter()
            results = adapter.run_all(_jobs.noop, args)
            wall = time.perf_counter() - start
            check_equal(results, args, "submit")
            return {"jobs_per_s": len(args) / wall}

        return [pooled(self, cls, cfg, body) for cls in self.adapters(cfg)]


def _map_body(items: list[int], chunksize: int | None) -> Any:
    def body(adapter: Adapter, warm: bool) -> Metrics:
        data = items[: max(1000, len(items) // 20)] if warm else items
        start = time.perf_counter()
        results = list(adapter.map(_jobs.noop, data, chunksize))
        wall = time.perf_counter() - start
        check_equal(results, data, "map")
        return {"items_per_s": len(data) / wall}

    return body


class MapBestChunksize(Scenario):
    key = "map_best"
    title = "No-op map, best chunksize"
    description = (
        "map over a list of no-op items; every implementation is first tried once with each "
        "chunksize of the set, then measured with its best one."
    )
    metrics = (Metric("items_per_s", "items/s", True),)

    def params(self, cfg: Config) -> dict[str, Any]:
        return {"items": cfg.sizes.map_items, "chunksizes": list(cfg.sizes.map_chunksizes)}

    def _contestants(self, cfg: Config, pick: dict[str, int] | None) -> list[Contestant]:
        items = list(range(cfg.sizes.map_items))
        out = []
        for cls in self.adapters(cfg):
            if pick is not None and cls.key not in pick:
                continue  # every chunksize failed: reported from the first pass
            for cs in [pick[cls.key]] if pick is not None else cfg.sizes.map_chunksizes:
                c = pooled(self, cls, cfg, _map_body(items, cs))
                c.extra["chunksize"] = cs
                if pick is None:
                    c.label = f"{cls.label} (chunksize={cs})"
                else:
                    c.note = "; ".join(p for p in (f"chunksize={cs}", c.note) if p)
                out.append(c)
        return out

    def run(self, cfg: Config, runner: Runner) -> ScenarioResult:
        start = time.perf_counter()
        runner.log("    choosing each implementation's best chunksize (one pass)")
        tried = Runner(1, runner.budget, runner.log).run(self._contestants(cfg, None))
        pick = self._best_chunksizes(tried)
        rows = runner.run(self._contestants(cfg, pick))
        rows += [r for r in tried if r.status != "ok" and r.adapter_key not in pick]
        rows += self.static_rows(cfg)
        for row in rows:
            row.extra["tried"] = {
                str(r.extra["chunksize"]): r.median("items_per_s")
                for r in tried
                if r.adapter_key == row.adapter_key
            }
        return self.result(cfg, rows, start)

    @staticmethod
    def _best_chunksizes(tried: list[Row]) -> dict[str, int]:
        best: dict[str, tuple[float, int]] = {}
        for row in tried:
            value = row.median("items_per_s")
            if row.status != "ok" or value is None:
                continue
            if row.adapter_key not in best or value > best[row.adapter_key][0]:
                best[row.adapter_key] = (value, int(row.extra["chunksize"]))
        return {key: cs for key, (_, cs) in best.items()}


class MapDefaultChunksize(Scenario):
    key = "map_default"
    title = "No-op map, chunksize 1 (the Executor default)"
    description = (
        "map over a list of no-op items with chunksize=1, the default of Executor.map, "
        "i.e. what a user gets without tuning (taskq: pool.map(f, items), whose chunksize=1 "
        "lets it group short items adaptively). Peers get fewer items; all report items/s."
    )
    metrics = (Metric("items_per_s", "items/s", True),)
    slow_defaults: ClassVar[frozenset[str]] = frozenset(
        {"ppe", "loky", "pebble", "mp_pool", "mpire", "joblib"}
    )
    notes: ClassVar[dict[str, str]] = {
        "mp_pool": "Pool.map(chunksize=1)",
        "mpire": "chunk_size=1",
        "joblib": "batch_size=1",
    }

    def params(self, cfg: Config) -> dict[str, Any]:
        return {
            "items": cfg.sizes.default_map_items,
            "items_for_chunksize_1_peers": cfg.sizes.slow_default_map_items,
        }

    def contestants(self, cfg: Config) -> list[Contestant]:
        out = []
        for cls in self.adapters(cfg):
            slow = cls.key in self.slow_defaults
            n = cfg.sizes.slow_default_map_items if slow else cfg.sizes.default_map_items
            c = pooled(self, cls, cfg, _map_body(list(range(n)), 1 if slow else None))
            if slow:
                c.note = "; ".join(p for p in (c.note, f"chunksize=1, {n:,} items") if p)
            out.append(c)
        return out
