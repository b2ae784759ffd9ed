"""What every scenario shares: metric descriptions, result container, contestant helpers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from benchmarks import _jobs
from benchmarks.config import Config
from benchmarks.peers import Adapter, adapter_class
from benchmarks.runner import (
    Contestant,
    Metrics,
    Row,
    Runner,
    VerificationError,
    log_to_stderr,
    time_budget,
)

ABORT_BUDGET_S = 30.0
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
        return self.result(cfg, rows, start)

    def result(self, cfg: Config, rows: list[Row], start: float) -> ScenarioResult:
        """The scenario's result from its rows, timed from ``start`` (perf_counter)."""
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


@contextlib.contextmanager
def abort_on_error(adapter: Adapter) -> Iterator[None]:
    """On any failure (a hang caught by the time budget included), stop the pool hard.

    The abort gets its own short budget: a pool wedged by the failure must not hang the run.
    """
    try:
        yield
    except BaseException:
        try:
            with time_budget(ABORT_BUDGET_S):
                adapter.terminate()
        except Exception as exc:  # the original failure is what gets reported
            log_to_stderr(f"    {adapter.label}: could not stop the pool: {exc!r}")
        raise


def pooled(
    scenario: Scenario, cls: type[Adapter], cfg: Config, body: Body, workers: int | None = None
) -> Contestant:
    """A contestant measured on a warmed-up pool.

    By default (``cfg.shared_pools`` false) each repetition opens its own pool, warms it
    (workers started, one small run of the scenario so adaptive policies have learnt),
    measures, and closes it: only the measured pool is alive, so the background threads
    of the other libraries' pools cannot disturb it. With shared pools, each pool is opened
    and warmed once and lives for the whole scenario.
    """
    if not cfg.shared_pools:

        def run(warm: bool) -> Metrics:
            adapter = cfg.new(cls, workers)
            adapter.open()
            with abort_on_error(adapter):
                warm_workers(adapter)
                body(adapter, True)
                metrics = body(adapter, False)
            adapter.close()
            return metrics

        return Contestant(
            cls.label, run, adapter_key=cls.key, note=scenario.note(cls, cfg), warmup=False
        )

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


def fresh(
    scenario: Scenario, cls: type[Adapter], cfg: Config, body: Body, note: str = ""
) -> Contestant:
    """A contestant that opens a new pool for every repetition (start-up not timed by body)."""

    def run(warm: bool) -> Metrics:
        adapter = cfg.new(cls)
        adapter.open()
        with abort_on_error(adapter):
            warm_workers(adapter)
            metrics = body(adapter, warm)
        adapter.abort()
        return metrics

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
    """Busy-loop iterations of :func:`benchmarks._jobs.spin` that take ``seconds`` of CPU.

    The fastest of many short runs (~10 ms in all): a run slowed by a neighbour on
    this shared machine only counts if every run was.
    """
    loops = 20_000
    best = float("inf")
    for _ in range(25):
        _, cpu = _jobs.spin(loops)
        best = min(best, cpu / loops)
    return max(1, round(seconds / best))
