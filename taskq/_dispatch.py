"""How many jobs a worker may hold at once: the batching policy.

Handing a worker several jobs at once saves a round trip per job, but a job
handed over can no longer be overtaken: a more urgent job submitted later waits
behind everything the workers already hold. So:

* Batches are bounded in *time*, not count: a worker holds at most about
  ``HOLD_BUDGET`` seconds of work, judged by the recent average time per job,

      limit = HOLD_BUDGET / average seconds per job, between 1 and MAX_BATCH

  With 100 µs jobs a worker holds about 20 (2 ms of work); with jobs of a
  second or more, just the one it runs. A fresh pool hands out one job at a time.
* Only a backlog of *equal* priorities is batched. While jobs of several
  priorities wait, workers take one job at a time, when idle, so jobs start
  in queue order across all workers (give or take one per worker).
* A busy worker is topped up only when it replies, never merely because a job
  was queued: jobs queued while every worker is busy wait in the queue, in
  order, until a worker frees up.
* If a worker is stuck on a job far longer than the average while another
  worker is idle, the jobs waiting behind it are taken back (``_slot.py``).

So an urgent job starts within about ``HOLD_BUDGET`` plus a round trip of a
worker freeing up.
"""

from __future__ import annotations

# Raising it batches more (fewer wake-ups, more throughput for tiny jobs);
# lowering it lets urgent jobs overtake sooner. 2 ms keeps the urgent-job
# delay well under 5 ms while tiny jobs still travel ~hundreds per write.
HOLD_BUDGET = 0.002
MAX_BATCH = 512
SMOOTHING = 0.2  # weight of the newest measurement in the moving average


class BatchPolicy:
    """Tracks the average time a job takes in a worker and turns it into a hold limit."""

    def __init__(self) -> None:
        self.average: float | None = None

    def observe(self, seconds: float) -> None:
        if self.average is None:
            self.average = seconds
        else:
            self.average += SMOOTHING * (seconds - self.average)

    def limit(self) -> int:
        if self.average is None:
            return 1
        if self.average <= HOLD_BUDGET / MAX_BATCH:
            return MAX_BATCH
        return max(1, int(HOLD_BUDGET / self.average))
