"""Run configuration: sizes per mode, chosen peers, start method, worker count."""

from __future__ import annotations

import multiprocessing
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.peers import Adapter


@dataclass(frozen=True)
class Sizes:
    """Workload sizes of one mode (``full``, ``quick`` or ``smoke``)."""

    repeat: int
    submit_jobs: int
    map_items: int
    map_chunksizes: tuple[int, ...]
    default_map_items: int
    slow_default_map_items: int  # for peers whose default chunksize is 1
    latency_calls: int
    cpu_jobs: int
    payload_jobs: int
    array_jobs: int  # numpy_64mb: jobs per measurement
    array_mib: int  # numpy_64mb: size of the array argument (and result)
    backlog_100us: int
    backlog_1ms: int
    backlog_noop: int
    peer_backlog_fraction: float  # FIFO peers get this share of taskq's backlog
    urgent_probes: int
    probe_window_s: float
    stream_items: int
    trial_budget_s: float  # one measurement longer than this is reported as a hang


SIZES: dict[str, Sizes] = {
    "full": Sizes(
        repeat=5,
        submit_jobs=20_000,
        map_items=2_000_000,
        map_chunksizes=(1000, 5000, 20_000),
        default_map_items=200_000,
        slow_default_map_items=20_000,
        latency_calls=2000,
        cpu_jobs=2000,
        payload_jobs=200,
        array_jobs=8,
        array_mib=64,
        backlog_100us=100_000,
        backlog_1ms=10_000,
        backlog_noop=100_000,
        peer_backlog_fraction=0.1,
        urgent_probes=20,
        probe_window_s=2.0,
        stream_items=10_000_000,
        trial_budget_s=300.0,
    ),
    "quick": Sizes(
        repeat=3,
        submit_jobs=5000,
        map_items=300_000,
        map_chunksizes=(1000, 5000, 20_000),
        default_map_items=50_000,
        slow_default_map_items=5000,
        latency_calls=500,
        cpu_jobs=500,
        payload_jobs=50,
        array_jobs=4,
        array_mib=64,
        backlog_100us=20_000,
        backlog_1ms=2000,
        backlog_noop=20_000,
        peer_backlog_fraction=0.1,
        urgent_probes=20,
        probe_window_s=0.3,
        stream_items=1_000_000,
        trial_budget_s=120.0,
    ),
    "smoke": Sizes(
        repeat=1,
        submit_jobs=200,
        map_items=2000,
        map_chunksizes=(100, 1000),
        default_map_items=2000,
        slow_default_map_items=200,
        latency_calls=50,
        cpu_jobs=20,
        payload_jobs=4,
        array_jobs=1,
        array_mib=4,
        backlog_100us=500,
        backlog_1ms=50,
        backlog_noop=500,
        peer_backlog_fraction=0.5,
        urgent_probes=3,
        probe_window_s=0.1,
        stream_items=20_000,
        trial_budget_s=30.0,
    ),
}


@dataclass
class Config:
    mode: str
    sizes: Sizes
    workers: int
    start_method: str
    repeat: int
    adapters: list[type[Adapter]]  # available ones, taskq first
    missing: dict[str, str] = field(default_factory=dict)  # peer key -> why it is skipped
    seed: int = 12345
    shared_pools: bool = False  # keep every pool open for a whole scenario (faster, noisier)

    def context(self) -> Any:
        """The multiprocessing context (typed Any: BaseContext lacks Process/Pipe in typeshed)."""
        return multiprocessing.get_context(self.start_method)

    def new(self, cls: type[Adapter], workers: int | None = None) -> Adapter:
        return cls(workers or self.workers, self.start_method)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "workers": self.workers,
            "start_method": self.start_method,
            "repeat": self.repeat,
            "peers": [a.key for a in self.adapters],
            "skipped_peers": dict(self.missing),
            "seed": self.seed,
            "shared_pools": self.shared_pools,
            "sizes": asdict(self.sizes),
        }
