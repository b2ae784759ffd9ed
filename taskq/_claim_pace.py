"""How many jobs a serving process claims from its store at once (``ClaimPace``).

A decision with no processes in it: ``_serve.py`` asks it before every claim, and
``tests/test_claim_pace.py`` drives it with plain numbers.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_EXTRA_PER_WORKER = 32  # claimed ahead per worker when jobs are tiny
CLAIM_BUDGET = 0.002  # seconds of work a server holds per worker when jobs are tiny


class ClaimPace:
    """How many jobs a serving process holds at once.

    One per worker by default: a job claimed is a job no other server can run,
    and an urgent job submitted later cannot overtake it anywhere but here. When
    jobs are so short that a worker would sit idle while the next claim makes its
    round trip, it holds a little more: about ``CLAIM_BUDGET`` of work per worker,
    judged by the local pool's recent average job time (the same rule as the local
    dispatcher's batches, ``_dispatch.py``).
    """

    def __init__(self, workers: int, average: Callable[[], float | None]):
        self.workers = workers
        self._average = average

    def room(self, held: int, stalled: bool = False) -> int:
        """How many jobs to claim now (0: none). With extra jobs held, claims wait until
        half of them have run, so a stream of tiny jobs costs one claim per batch, not
        one per job; a worker with nothing to do is always given work at once.
        ``stalled``: no job has ended for a while (one runs long): hold no extra."""
        average = self._average()
        extra = 0
        if average is not None and average < CLAIM_BUDGET and not stalled:
            extra = self.workers * min(MAX_EXTRA_PER_WORKER, int(CLAIM_BUDGET / max(average, 1e-6)))
        room = self.workers + extra - held
        if extra and held >= self.workers and room < (self.workers + extra) // 2:
            return 0
        return max(room, 0)
