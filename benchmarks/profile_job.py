"""Where the time of one job goes: a reproducible account for benchmarks/README.md.

    python -m benchmarks.profile_job [--jobs 20000] [--latency 2000] [--payloads 200]

Two views, both with two fork workers and no-op jobs, and a third for large payloads:

1. *One job in flight* (latency): the wall time of each stage of a job's round
   trip, from timestamps taken at the stage boundaries (medians):
   submit() -> call written to the pipe -> job starts in the worker ->
   reply read by the manager -> caller wakes with the result.
2. *Many jobs in flight* (throughput): microseconds per job in each stage in
   the parent's two threads (cProfile's inclusive wall-clock times, so a
   profiled run is about twice as slow as a plain one, whose wall time per job
   is shown last), and the worker's own time per job (as each reply reports it).

3. *1 MiB payloads* (shared memory): CPU µs per job of each step a ``bytes``
   argument and its ``bytes`` result go through, run one after the other in this
   process (``thread_time``), with distinct payloads and every result kept, as in
   the ``payload_1mb`` scenario.

It patches a few of taskq's internals to take timestamps, so it belongs to the
benchmark suite, not to the library.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import taskq
from benchmarks import _jobs
from taskq import _channel, _loop

STAGES = ("submit -> write", "write -> started", "started -> reply read", "read -> caller")


def _stamp_stages() -> dict[str, float]:
    marks: dict[str, float] = {}
    flush, read = _channel.Outbox.flush, _channel.FrameReader.read

    def timed_flush(self: Any) -> bool:
        marks["written"] = time.monotonic()  # the write begins
        done: bool = flush(self)
        return done

    def timed_read(self: Any) -> Any:
        frames = read(self)
        if frames:
            marks["read"] = time.monotonic()
        return frames

    _channel.Outbox.flush = timed_flush  # type: ignore[method-assign]
    _channel.FrameReader.read = timed_read  # type: ignore[method-assign]
    return marks


def latency_stages(n: int) -> dict[str, float]:
    """Median µs of each stage of a lone job's round trip."""
    marks = _stamp_stages()
    rows: list[tuple[float, ...]] = []
    with taskq.Pool(2, mp_context=multiprocessing.get_context("fork")) as pool:
        for _ in range(200):
            pool.submit(_jobs.noop, 0).result()
        for _ in range(n):
            t0 = time.monotonic()
            started = pool.submit(_jobs.started_at, 0).result()[1]
            t1 = time.monotonic()
            written, read = marks["written"], marks["read"]
            rows.append((written - t0, started - written, read - started, t1 - read))
    return {stage: statistics.median(r[i] for r in rows) * 1e6 for i, stage in enumerate(STAGES)}


def _profile_manager() -> cProfile.Profile:
    profile = cProfile.Profile()
    run: Callable[[Any], None] = _loop.EventLoop._run

    def profiled_run(self: Any) -> None:
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()

    _loop.EventLoop._run = profiled_run  # type: ignore[method-assign]
    return profile


def _inclusive_us(profile: cProfile.Profile, where: str, func: str, jobs: int) -> float:
    """Inclusive µs per job of ``func`` defined in ``taskq/<where>``; ``where`` may list
    several files separated by "|" (the code moved between versions)."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    files = tuple(where.split("|"))
    total = 0.0
    for (path, _, name), (_, _, _, cumulative, _) in stats.items():
        if name in func.split("|") and path.endswith(files):
            total += cumulative
    return total / jobs * 1e6


def _submit_rate(n: int) -> float:
    """Jobs per second, unprofiled: submit n no-op jobs, then wait for all."""
    with taskq.Pool(2, mp_context=multiprocessing.get_context("fork")) as pool:
        pool.submit(_jobs.noop, 0).result()
        start = time.perf_counter()
        futures = [pool.submit(_jobs.noop, i) for i in range(n)]
        for future in futures:
            future.result()
        return n / (time.perf_counter() - start)


def throughput_costs(n: int) -> dict[str, float]:
    """CPU µs per job in each stage, with ``n`` no-op jobs in flight at once."""
    rate = statistics.median(_submit_rate(n) for _ in range(3))
    manager_profile = _profile_manager()
    caller = cProfile.Profile()
    with taskq.Pool(2, mp_context=multiprocessing.get_context("fork")) as pool:
        pool.submit(_jobs.noop, 0).result()
        start = time.perf_counter()
        caller.enable()
        futures = [pool.submit(_jobs.noop, i) for i in range(n)]
        for future in futures:
            future.result()
        caller.disable()
        wall = time.perf_counter() - start
        worker_seconds = pool._manager._dispatcher.policy.average or 0.0
    m = manager_profile
    return {
        "submit() in the caller": _inclusive_us(caller, "_pool.py", "submit", n),
        "  pickling the call": _inclusive_us(caller, "_protocol.py", "dump_call", n),
        "  creating the future and work item": _inclusive_us(
            caller, "_job.py", "__init__", n
        ),
        "  queueing (lock, bucket, stats)": _inclusive_us(caller, "_queue.py", "put", n)
        + _inclusive_us(caller, "_counters.py|_stats.py", "add_many", n),
        "  direct hand-off to an idle worker": _inclusive_us(
            caller, "_manager.py", "dispatch_now", n
        ),
        "result() in the caller": _inclusive_us(caller, "_base.py", "result", n),
        "manager: dispatch (take, claim, frame, write)": _inclusive_us(
            m, "_dispatch.py|_manager.py|_handoff.py", "_send|send", n
        ),
        "manager: collect (read, parse, unpickle)": _inclusive_us(
            m, "_collect.py|_manager.py", "_on_results", n
        ),
        "manager: resolve futures": _inclusive_us(
            m, "_collect.py|_manager.py|_ledger.py", "deliver|_resolve", n
        ),
        "worker: one job (its own report: read, unpickle, run, pickle, write)": worker_seconds
        * 1e6,
        "wall per job under cProfile": wall / n * 1e6,
        "wall per job without profiling": 1e6 / rate,
    }


class _StageClock:
    """``with clock(stage):`` adds the block's CPU time (this thread's) to ``stage``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._stage = ""
        self._start = 0.0

    def __call__(self, stage: str) -> _StageClock:
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._start = time.thread_time()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.thread_time() - self._start
        self.totals[self._stage] = self.totals.get(self._stage, 0.0) + elapsed


def payload_stages(n: int, size: int = 1 << 20) -> dict[str, float]:
    """CPU µs per job of each shared-memory step of a ``bytes`` echo job."""
    import pickle

    from taskq import _segments, _shared_result, _shm
    from taskq._protocol import dump_call

    tail = bytes(range(256)) * ((size - 8) // 256) + bytes((size - 8) % 256)
    payloads = [i.to_bytes(8, "little") + tail for i in range(n)]
    cache, files = _segments.SegmentCache(), _shm.ResultFiles()
    clock = _StageClock()
    kept = []
    try:
        for data in payloads:
            with clock("parent: pickle the call"):
                call = dump_call(_jobs.echo_bytes, (data,), {}, cache)
            with clock("parent: write the argument's segment"):
                sent = _shm.payload(call)
            with clock("worker: read the call"):
                fn, args, kwargs = pickle.loads(sent)
            with clock("worker: write the result's segment"):
                reply, _ = files.dump(fn(*args, **kwargs))
            del fn, args, kwargs
            with clock("parent: adopt and read the result"):
                kept.append(_shared_result.adopt(reply))
            call.segment.release()  # type: ignore[attr-defined]
    finally:
        _segments.sweep(files.prefix)
        cache.close()
    assert kept == payloads
    return {stage: seconds / n * 1e6 for stage, seconds in clock.totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--latency", type=int, default=2000)
    parser.add_argument("--payloads", type=int, default=200)
    args = parser.parse_args()
    print("One job in flight, median µs per stage:")
    for stage, us in latency_stages(args.latency).items():
        print(f"  {stage:<26} {us:8.1f}")
    print(f"{args.jobs} jobs in flight, µs per job:")
    for stage, us in throughput_costs(args.jobs).items():
        print(f"  {stage:<70} {us:8.2f}")
    print(f"{args.payloads} jobs echoing 1 MiB bytes, CPU µs per job (shared memory):")
    for stage, us in payload_stages(args.payloads).items():
        print(f"  {stage:<40} {us:8.1f}")


if __name__ == "__main__":
    main()
