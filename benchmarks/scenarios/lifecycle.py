"""Scenarios 9-11: pool start-up/shutdown, killed-worker replacement, timeout accuracy."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, ClassVar

from benchmarks import _jobs
from benchmarks.config import Config
from benchmarks.peers import Adapter
from benchmarks.runner import Contestant, Metrics, Runner, VerificationError, check
from benchmarks.scenarios._base import Metric, Scenario, ScenarioResult, abort_on_error, pooled


class Startup(Scenario):
    key = "startup"
    title = "Pool start-up + shutdown"
    description = "Create the pool, run one no-op job, shut the pool down (waiting)."
    metrics = (Metric("ms", "ms", False, 1),)
    notes: ClassVar[dict[str, str]] = {
        "joblib": "Parallel + one call, then the reusable loky executor is shut down",
    }

    def contestants(self, cfg: Config) -> list[Contestant]:
        def make(cls: type[Adapter]) -> Contestant:
            def run(warm: bool) -> Metrics:
                adapter = cfg.new(cls)
                start = time.perf_counter()
                adapter.open()
                with abort_on_error(adapter):
                    result = adapter.call(_jobs.noop, 7)
                adapter.close()
                elapsed = time.perf_counter() - start
                check(result == 7, f"job returned {result!r}")
                return {"ms": elapsed * 1000}

            return Contestant(cls.label, run, adapter_key=cls.key, note=self.note(cls, cfg))

        return [make(cls) for cls in self.adapters(cfg)]


class KilledWorker(Scenario):
    key = "killed_worker"
    title = "Killed worker: time until a replacement serves a job"
    description = (
        "A job SIGKILLs its own worker after writing time.monotonic() to a file; once its "
        "future reports the crash, a probe job is submitted. Time = probe start - kill. "
        "Pools run with one worker so the probe must go to the replacement."
    )
    metrics = (Metric("ms", "ms", False, 1),)
    not_run: ClassVar[dict[str, str]] = {
        "ppe": "pool broken: BrokenProcessPool, every later submit fails",
        "mp_pool": "hangs: the killed job's result never arrives (not run)",
        "loky": "pool broken: TerminatedWorkerError for the running jobs",
        "mpire": "pool broken: RuntimeError 'Worker-0 died unexpectedly', then the next job "
        "hangs (seen in a trial; not run)",
        "joblib": "pool broken: TerminatedWorkerError aborts the Parallel call",
    }

    def run(self, cfg: Config, runner: Runner) -> ScenarioResult:
        with tempfile.TemporaryDirectory(prefix="taskq-bench-") as stamp_dir:
            self.stamp_dir = stamp_dir
            return super().run(cfg, runner)

    def contestants(self, cfg: Config) -> list[Contestant]:
        stamp_dir = self.stamp_dir
        out = []
        for cls in self.adapters(cfg):
            c = pooled(self, cls, cfg, self._body(os.path.join(stamp_dir, cls.key)), workers=1)
            c.note = "; ".join(p for p in (c.note, "1 worker") if p)
            out.append(c)
        return out

    @staticmethod
    def _body(stamp_path: str) -> Any:
        def body(adapter: Adapter, warm: bool) -> Metrics:
            handle = adapter.submit(_jobs.kill_self, stamp_path)
            try:
                adapter.result(handle, timeout=30)
            except Exception as exc:
                if not adapter.is_worker_death(exc):
                    raise
            else:
                raise VerificationError("the killing job returned normally")
            with open(stamp_path) as fh:
                killed_at = float(fh.read())
            tag, started, _pid = adapter.result(adapter.submit(_jobs.started_at, 42), timeout=30)
            check(tag == 42, f"probe returned tag {tag!r}")
            return {"ms": (started - killed_at) * 1000}

        return body


class TimeoutAccuracy(Scenario):
    key = "timeout"
    title = "Timeout accuracy: time.sleep(5) with timeout=0.5"
    description = (
        "Schedule time.sleep(5) with a 0.5 s timeout on an idle pool; time from schedule() "
        "to the future raising its timeout error (an upper bound on start → stop)."
    )
    metrics = (Metric("stopped_after_s", "stopped after s", False, 3),)
    timeout_s: ClassVar[float] = 0.5
    not_run: ClassVar[dict[str, str]] = {
        k: "no per-job timeout" for k in ("ppe", "mp_pool", "loky", "mpire", "joblib")
    }

    def contestants(self, cfg: Config) -> list[Contestant]:
        def body(adapter: Adapter, warm: bool) -> Metrics:
            if warm:
                check(adapter.call(_jobs.noop, 1) == 1, "warm-up job failed")
                return {}
            start = time.monotonic()
            handle = adapter.schedule_with_timeout(time.sleep, (5,), self.timeout_s)
            try:
                adapter.result(handle, timeout=30)
            except Exception as exc:
                if not adapter.is_timeout(exc):
                    raise
            else:
                raise VerificationError("time.sleep(5) was not stopped by its timeout")
            elapsed = time.monotonic() - start
            check(adapter.call(_jobs.noop, 3) == 3, "the pool did not recover after a timeout")
            return {"stopped_after_s": elapsed}

        return [pooled(self, cls, cfg, body) for cls in self.adapters(cfg)]
