"""Awaiting taskq futures from asyncio: CPU work in worker processes, the event loop stays free.

``asyncio.wrap_future()`` turns a taskq future (a ``concurrent.futures.Future``) into an
awaitable.  While four CPU-bound jobs run in the pool, a heartbeat task keeps ticking: the
event loop is never blocked.

Run it:  python examples/asyncio_demo.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

try:
    import taskq
except ImportError:  # run from a source checkout without installing taskq
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import taskq


def count_primes(limit: int) -> int:
    """CPU-bound work: the number of primes below ``limit``, the slow way."""
    return sum(1 for n in range(2, limit) if all(n % d for d in range(2, int(n**0.5) + 1)))


async def heartbeat(stop: asyncio.Event) -> int:
    beats = 0
    while not stop.is_set():
        beats += 1
        print(f"  heartbeat {beats}: the event loop is free")
        await asyncio.sleep(0.1)
    return beats


async def main() -> None:
    stop = asyncio.Event()
    beating = asyncio.create_task(heartbeat(stop))
    started = time.monotonic()
    with taskq.Pool(2) as pool:
        limits = [60_000, 70_000, 80_000, 90_000]
        jobs = [asyncio.wrap_future(pool.submit(count_primes, limit)) for limit in limits]
        counts = await asyncio.gather(*jobs)
        slow = pool.submit(time.sleep, 30)
        try:
            await asyncio.wait_for(asyncio.wrap_future(slow), timeout=0.3)
        except asyncio.TimeoutError:
            print("wait_for() gave up on a 30 s job after 0.3 s; pool.kill() stops the job too")
            pool.kill(slow)
    stop.set()
    beats = await beating
    for limit, count in zip(limits, counts, strict=True):
        print(f"primes below {limit}: {count}")
    print(
        f"{beats} heartbeats in {time.monotonic() - started:.1f}s while the jobs ran: "
        "awaiting taskq futures never blocked the loop"
    )


if __name__ == "__main__":
    asyncio.run(main())
