"""What every scenario shares: metric descriptions, result container, contestant helpers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from benchmarks import _jobs
from benchmarks.config import Config
from benchmarks.peers import Adapter
from benchmarks.runner import Contestant, Metrics, Row, Runner, VerificationError

Body = Callable[[Adapter, bool], Metrics]  # body(adapter, warmup) -> metrics


@dataclass(frozen=True)
class Metric:
    key: str
    label: str  # column header, with unit
    higher_is_better: bool
    digits: int = 0  # decimals shown
    ratio: bool = True  # show peer / taskq for this metric
    plot: bool = True  # draw it in the PNG chart


@dataclass
class ScenarioResult:
    key: str
    title: str
    description: str
    metrics: tuple[Metric, ...]
    rows: list[Row]
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Scenario:
    """A workload measured on taskq and on every peer that can express it."""

    key: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]] = ()
    # Peers that are listed here are reported with the reason instead of being run.
    not_run: ClassVar[dict[str, str]] = {}
    # Short per-peer remarks shown in the table (which API was used, ...).
    notes: ClassVar[dict[str, str]] = {}

    def params(self, cfg: Config) -> dict[str, Any]:
        return {}

    def contestants(self, cfg: Config) -> list[Contestant]:
        raise NotImplementedError

    def references(self, cfg: Config) -> list[Contestant]:
        return []

    def adapters(self, cfg: Config) -> list[type[Adapter]]:
        return [a for a in cfg.adapters if a.key not in self.not_run]

    def run(self, cfg: Config, runner: Runner) -> ScenarioResult:
        start = time.perf_counter()
        rows = runner.run([*self.contestants(cfg), *self.references(cfg)])
        rows.extend(self.static_rows(cfg))
        return ScenarioResult(
            self.key,
            self.title,
            self.description,
            self.metrics,
            rows,
            self.params(cfg),
            time.perf_counter() - start,
        )

    def static_rows(self, cfg: Config) -> list[Row]:
        rows = [
            Row(a.label, "not run", a.key, self.not_run[a.key])
            for a in cfg.adapters
            if a.key in self.not_run
        ]
        from benchmarks.peers import adapter_class

        rows += [
            Row(adapter_class(k).label, "skipped", k, reason) for k, reason in cfg.missing.items()
        ]
        return rows

    def note(self, cls: type[Adapter], cfg: Config) -> str:
        parts = [self.notes.get(cls.key, "")]
        if not cls.honours_start_method and cfg.start_method != "loky":
            parts.append("start method: loky")
        return "; ".join(p for p in parts if p)


def warm_workers(adapter: Adapter) -> None:
    """Make sure every worker has started and imported the job module."""
    count = adapter.workers * 2
    check_equal(adapter.warm(count), list(range(count)), "warm-up")


def pooled(
    scenario: Scenario, cls: type[Adapter], cfg: Config, body: Body, workers: int | None = None
) -> Contestant:
    """A contestant whose pool lives for the whole scenario (opened once, warmed once)."""
    adapter = cfg.new(cls, workers)

    def setup() -> None:
        adapter.open()
        warm_workers(adapter)

    return Contestant(
        label=cls.label,
        run=lambda warm: body(adapter, warm),
        setup=setup,
        teardown=adapter.close,
        adapter_key=cls.key,
        note=scenario.note(cls, cfg),
    )


def open_pools(
    scenario: Scenario, cfg: Config, runner: Runner
) -> tuple[dict[str, Adapter], list[Row]]:
    """Open and warm one pool per adapter; the ones that fail come back as error rows."""
    pools: dict[str, Adapter] = {}
    failed: list[Row] = []
    for cls in scenario.adapters(cfg):
        adapter = cfg.new(cls)
        row = Row(cls.label, "ok", cls.key, scenario.note(cls, cfg))

        def start(adapter: Adapter = adapter) -> None:
            adapter.open()
            warm_workers(adapter)

        runner.attempt(row, start, "setup")
        if row.status == "ok":
            pools[cls.key] = adapter
        else:
            failed.append(row)
    return pools, failed


def close_pools(pools: dict[str, Adapter], runner: Runner) -> None:
    for key, adapter in pools.items():
        runner.attempt(Row(key, "ok", key), adapter.close, "shutdown")


def fresh(
    scenario: Scenario, cls: type[Adapter], cfg: Config, body: Body, note: str = ""
) -> Contestant:
    """A contestant that opens a new pool for every repetition (start-up not timed by body)."""

    def run(warm: bool) -> Metrics:
        adapter = cfg.new(cls)
        adapter.open()
        try:
            warm_workers(adapter)
            return body(adapter, warm)
        finally:
            adapter.abort()

    extra = "; ".join(p for p in (scenario.note(cls, cfg), note) if p)
    # No unmeasured warm-up run: its pool would be thrown away anyway.
    return Contestant(label=cls.label, run=run, adapter_key=cls.key, note=extra, warmup=False)


def check_equal(results: Sequence[Any], expected: Sequence[Any], what: str) -> None:
    """Every result present and equal to the expected one, in order."""
    if len(results) != len(expected):
        raise VerificationError(f"{what}: {len(results)} results for {len(expected)} jobs")
    if results != expected:
        bad = next(i for i, (r, e) in enumerate(zip(results, expected, strict=True)) if r != e)
        raise VerificationError(
            f"{what}: result #{bad} is {results[bad]!r:.60}, expected {expected[bad]!r:.60}"
        )


def calibrate_spin(seconds: float) -> int:
    """Busy-loop iterations of :func:`benchmarks._jobs.spin` that take ``seconds`` of CPU."""
    loops = 20_000
    best = float("inf")
    for _ in range(7):
        _, cpu = _jobs.spin(loops)
        best = min(best, cpu / loops)
    return max(1, round(seconds / best))
