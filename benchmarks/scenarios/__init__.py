"""The scenario registry, in report order."""

from __future__ import annotations

from benchmarks.scenarios._base import Metric, Scenario, ScenarioResult
from benchmarks.scenarios.arrays import NumpyArrays
from benchmarks.scenarios.latency import Latency
from benchmarks.scenarios.lifecycle import KilledWorker, Startup, TimeoutAccuracy
from benchmarks.scenarios.streaming import EndlessMap
from benchmarks.scenarios.throughput import MapBestChunksize, MapDefaultChunksize, SubmitThroughput
from benchmarks.scenarios.urgent import UrgentBehind1ms, UrgentBehind100us, UrgentBehindNoop
from benchmarks.scenarios.work import BigPayloads, CpuJobs

SCENARIOS: tuple[type[Scenario], ...] = (
    SubmitThroughput,
    MapBestChunksize,
    MapDefaultChunksize,
    Latency,
    CpuJobs,
    BigPayloads,
    NumpyArrays,
    UrgentBehind100us,
    UrgentBehind1ms,
    UrgentBehindNoop,
    EndlessMap,
    Startup,
    KilledWorker,
    TimeoutAccuracy,
)
SCENARIO_KEYS: tuple[str, ...] = tuple(s.key for s in SCENARIOS)

__all__ = ["SCENARIOS", "SCENARIO_KEYS", "Metric", "Scenario", "ScenarioResult"]
