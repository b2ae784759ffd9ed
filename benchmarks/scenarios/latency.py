"""Scenario 4: latency of one job in flight, with the raw Pipe round trip as reference."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from benchmarks import _jobs
from benchmarks.config import Config
from benchmarks.peers import Adapter
from benchmarks.runner import Contestant, Metrics, VerificationError, check, percentile
from benchmarks.scenarios._base import Metric, Scenario, pooled


def _latency_metrics(samples: list[float]) -> Metrics:
    return {
        "p50_us": percentile(samples, 50) * 1e6,
        "p99_us": percentile(samples, 99) * 1e6,
    }


class PipeEcho:
    """A child process echoing bytes over multiprocessing.Pipe: the floor for any pool."""

    def __init__(self, cfg: Config, calls: int) -> None:
        self.ctx = cfg.context()
        self.calls = calls

    def setup(self) -> None:
        self.conn, child_conn = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_jobs.pipe_echo_child, args=(child_conn,))
        self.proc.start()
        child_conn.close()

    def run(self, warm: bool) -> Metrics:
        samples = []
        for i in range(self.calls // 10 if warm else self.calls):
            msg = i.to_bytes(8, "little")
            start = time.perf_counter()
            self.conn.send_bytes(msg)
            back = self.conn.recv_bytes()
            samples.append(time.perf_counter() - start)
            check(back == msg, f"pipe echo #{i} returned {back!r}")
        return _latency_metrics(samples)

    def teardown(self) -> None:
        self.conn.send_bytes(b"")
        self.proc.join(10)
        self.conn.close()


class Latency(Scenario):
    key = "latency"
    title = "Latency of one job in flight"
    description = "Submit one no-op job, wait for its result, repeat; per-call percentiles."
    metrics = (
        Metric("p50_us", "p50 µs", False),
        Metric("p99_us", "p99 µs", False),
    )
    notes: ClassVar[dict[str, str]] = {
        "mp_pool": "apply_async + get",
        "mpire": "apply_async + get",
        "joblib": "Parallel of one delayed call",
    }

    def params(self, cfg: Config) -> dict[str, Any]:
        return {"calls": cfg.sizes.latency_calls}

    def contestants(self, cfg: Config) -> list[Contestant]:
        out = []
        for cls in self.adapters(cfg):
            calls = cfg.sizes.latency_calls
            if cls.key == "joblib":  # ~ms per Parallel call: fewer calls
                calls = max(10, calls // 5)
            c = pooled(self, cls, cfg, self._body(calls))
            if calls != cfg.sizes.latency_calls:
                c.note = f"{c.note}; {calls} calls"
            out.append(c)
        return out

    @staticmethod
    def _body(calls: int) -> Any:
        def body(adapter: Adapter, warm: bool) -> Metrics:
            samples = []
            for i in range(max(5, calls // 10) if warm else calls):
                start = time.perf_counter()
                result = adapter.call(_jobs.noop, i)
                samples.append(time.perf_counter() - start)
                if result != i:
                    raise VerificationError(f"call #{i} returned {result!r}")
            return _latency_metrics(samples)

        return body

    def references(self, cfg: Config) -> list[Contestant]:
        echo = PipeEcho(cfg, cfg.sizes.latency_calls)
        return [
            Contestant(
                label="raw Pipe round trip",
                run=echo.run,
                setup=echo.setup,
                teardown=echo.teardown,
                reference=True,
                note="multiprocessing.Pipe, 8-byte message echoed by a child",
            )
        ]
