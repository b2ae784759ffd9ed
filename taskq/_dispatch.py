"""How many jobs a worker may hold at once: the batching policy.

Handing a worker several jobs at once saves a round trip per job, but a job
handed over can no longer be overtaken: a more urgent job submitted later waits
behind everything the workers already hold. So the policy bounds the *time*
a worker holds, not the number of jobs:

    limit = HOLD_BUDGET / (recent average seconds per job), between 1 and MAX_BATCH

With 100 µs jobs a worker holds about 20 of them (2 ms of work); with jobs of
a second or more it holds just the one it runs. An urgent job therefore starts
within about ``HOLD_BUDGET`` (plus one round trip) once a worker frees a slot,
unless a job runs much longer than the recent average.

The limit only grows after jobs have been measured: a fresh pool hands out one
job at a time.
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
