"""Scenarios 5-6: useful work with 1 ms jobs, and 1 MB payload throughput."""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

from benchmarks import _jobs
from benchmarks.config import Config
from benchmarks.peers import Adapter
from benchmarks.runner import Contestant, Metrics, VerificationError, check
from benchmarks.scenarios._base import Metric, Scenario, calibrate_spin, check_equal, pooled

MIB = 1 << 20


class CpuJobs(Scenario):
    key = "cpu_1ms"
    title = "1 ms CPU jobs: useful work"
    description = (
        "Submit every 1 ms busy-loop job, then wait for all. Useful work is the CPU time the "
        "jobs report (thread_time inside the job); efficiency = useful / (wall * workers). "
        "Parent CPU: the benchmark process (the pools' parent) during the run, 100 = one core."
    )
    metrics = (
        Metric("efficiency_pct", "useful work %", True, 1),
        Metric("job_ms", "mean job CPU ms", True, 3, ratio=False, plot=False),
        Metric("parent_cpu_pct", "parent CPU % of a core", False, 0, ratio=False, plot=False),
    )
    notes: ClassVar[dict[str, str]] = {"joblib": "Parallel over delayed calls"}

    def params(self, cfg: Config) -> dict[str, Any]:
        return {"jobs": cfg.sizes.cpu_jobs, "job_seconds": 0.001}

    def contestants(self, cfg: Config) -> list[Contestant]:
        n = cfg.sizes.cpu_jobs

        def body(adapter: Adapter, warm: bool) -> Metrics:
            # Calibrated for each measurement: this machine's speed drifts by a third
            # over minutes, and jobs sized at a slow moment ran 0.65 ms, not 1.
            loops = calibrate_spin(0.001)
            args = [loops] * (max(4, n // 10) if warm else n)
            cpu_start = time.process_time()
            start = time.perf_counter()
            results = adapter.run_all(_jobs.spin, args)
            wall = time.perf_counter() - start
            parent_cpu = time.process_time() - cpu_start
            check(len(results) == len(args), f"{len(results)} results for {len(args)} jobs")
            for i, (done, _) in enumerate(results):
                check(done == loops, f"job #{i} ran {done} loops, expected {loops}")
            useful = sum(cpu for _, cpu in results)
            return {
                "efficiency_pct": 100.0 * useful / (wall * adapter.workers),
                "job_ms": 1000.0 * useful / len(results),
                "parent_cpu_pct": 100.0 * parent_cpu / wall,
            }

        return [pooled(self, cls, cfg, body) for cls in self.adapters(cfg)]


class Payloads:
    """Distinct 1 MiB payloads (an 8-byte index followed by shared random bytes)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.items: list[bytes] = []

    def get(self) -> list[bytes]:
        if not self.items:
            tail = os.urandom(MIB - 8)
            self.items = [i.to_bytes(8, "little") + tail for i in range(self.count)]
        return self.items


class OsPipeSink:
    """Reference: a child reading raw bytes from an OS pipe as fast as it can."""

    def __init__(self, cfg: Config, total: int) -> None:
        self.ctx = cfg.context()
        self.total = total

    def run(self, warm: bool) -> Metrics:
        total = self.total // 10 if warm else self.total
        reader, writer = self.ctx.Pipe(duplex=False)
        done_r, done_w = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_jobs.pipe_sink_child, args=(reader, total, done_w))
        proc.start()
        reader.close()
        done_w.close()
        chunk = memoryview(os.urandom(MIB))
        fd = writer.fileno()
        check(done_r.recv() == 0, "pipe sink did not start")
        start = time.perf_counter()
        sent = 0
        while sent < total:
            sent += os.write(fd, chunk[: min(MIB, total - sent)])
        got = done_r.recv()
        wall = time.perf_counter() - start
        writer.close()
        done_r.close()
        proc.join(10)
        check(got == total, f"pipe sink read {got} bytes, expected {total}")
        return {"mib_per_s": total / MIB / wall}


class BigPayloads(Scenario):
    key = "payload_1mb"
    title = "1 MB argument + 1 MB result per job"
    description = (
        "Submit every job (1 MiB bytes argument, returned unchanged), then wait for all; "
        "MiB/s counts argument and result."
    )
    metrics = (Metric("mib_per_s", "MiB/s", True),)
    notes: ClassVar[dict[str, str]] = {"joblib": "Parallel over delayed calls"}

    def params(self, cfg: Config) -> dict[str, Any]:
        return {"jobs": cfg.sizes.payload_jobs, "payload_bytes": MIB}

    def contestants(self, cfg: Config) -> list[Contestant]:
        payloads = Payloads(cfg.sizes.payload_jobs)

        def body(adapter: Adapter, warm: bool) -> Metrics:
            args = payloads.get()[: adapter.workers * 2] if warm else payloads.get()
            start = time.perf_counter()
            results = adapter.run_all(_jobs.echo_bytes, args)
            wall = time.perf_counter() - start
            try:
                check_equal(results, args, "payload")
            except VerificationError as exc:  # don't print 1 MB reprs
                raise VerificationError(str(exc)[:200]) from None
            return {"mib_per_s": 2 * len(args) * MIB / MIB / wall}

        return [pooled(self, cls, cfg, body) for cls in self.adapters(cfg)]

    def references(self, cfg: Config) -> list[Contestant]:
        sink = OsPipeSink(cfg, 2 * cfg.sizes.payload_jobs * MIB)
        return [
            Contestant(
                label="raw OS pipe",
                run=sink.run,
                reference=True,
                note="one-way os.write/os.read of the same total volume, no pickling",
            )
        ]
