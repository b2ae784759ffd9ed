"""Scenario: a large NumPy array as argument and result (shared memory vs pickling)."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from benchmarks import _jobs
from benchmarks.config import Config
from benchmarks.peers import Adapter
from benchmarks.runner import Contestant, Metrics, Row, check
from benchmarks.scenarios._base import Metric, Scenario, pooled

MIB = 1 << 20


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


class Arrays:
    """One float64 array of the configured size and the expected result (array + 1)."""

    def __init__(self, mib: int) -> None:
        self.mib = mib
        self._array: Any = None
        self._expected: Any = None

    def get(self) -> tuple[Any, Any]:
        if self._array is None:
            np = _numpy()
            self._array = np.random.default_rng(7).random(self.mib * MIB // 8)
            self._expected = self._array + 1
        return self._array, self._expected


class NumpyArrays(Scenario):
    key = "numpy_64mb"
    title = "64 MiB NumPy array argument + result per job"
    description = (
        "Submit every job (a float64 array of 64 MiB; the job returns array + 1), then wait "
        "for all; every result is compared element-wise. MiB/s counts argument and result. "
        "Limit row: numpy.copyto of the same volume in one process (memory bandwidth)."
    )
    metrics = (Metric("mib_per_s", "MiB/s", True),)
    notes: ClassVar[dict[str, str]] = {"joblib": "Parallel over delayed calls (memmaps args)"}

    def params(self, cfg: Config) -> dict[str, Any]:
        return {"jobs": cfg.sizes.array_jobs, "array_mib": cfg.sizes.array_mib}

    def contestants(self, cfg: Config) -> list[Contestant]:
        if _numpy() is None:  # every pool is then reported as skipped (static_rows)
            return []
        arrays = Arrays(cfg.sizes.array_mib)
        jobs = cfg.sizes.array_jobs

        def body(adapter: Adapter, warm: bool) -> Metrics:
            array, expected = arrays.get()
            args = [array] * (1 if warm else jobs)
            start = time.perf_counter()
            results = adapter.run_all(_jobs.add_one, args)
            wall = time.perf_counter() - start
            check(len(results) == len(args), f"{len(results)} results for {len(args)} jobs")
            for i, result in enumerate(results):
                check(result.shape == expected.shape, f"result #{i} has shape {result.shape}")
                check(bool((result == expected).all()), f"result #{i} differs from array + 1")
            return {"mib_per_s": 2 * len(args) * cfg.sizes.array_mib / wall}

        return [pooled(self, cls, cfg, body) for cls in self.adapters(cfg)]

    def static_rows(self, cfg: Config) -> list[Row]:
        if _numpy() is not None:
            return super().static_rows(cfg)
        why = "numpy is not installed (pip install 'taskq[bench]')"
        return [Row(a.label, "skipped", a.key, why) for a in cfg.adapters]

    def references(self, cfg: Config) -> list[Contestant]:
        np = _numpy()
        if np is None:
            return []
        arrays = Arrays(cfg.sizes.array_mib)
        jobs = cfg.sizes.array_jobs

        def run(warm: bool) -> Metrics:
            array, _ = arrays.get()
            target = np.empty_like(array)
            np.copyto(target, array)  # the target's pages exist before the clock starts
            copies = 2 * (1 if warm else jobs)
            start = time.perf_counter()
            for _ in range(copies):
                np.copyto(target, array)
            wall = time.perf_counter() - start
            check(bool((target == array).all()), "copyto changed the data")
            return {"mib_per_s": copies * cfg.sizes.array_mib / wall}

        return [
            Contestant(
                label="numpy.copyto (limit)",
                run=run,
                reference=True,
                note="the same volume copied once in one process: memory bandwidth",
            )
        ]
