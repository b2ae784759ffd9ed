"""Reading outcomes from Redis: a client's inbox of ended jobs, and any job's state.

Whoever ends a job (a server, or a client cancelling it) pushes one element to the
submitting client's inbox list, ``id \\n outcome signature \\n outcome``, in the
same script that stores the outcome: the client pops its inbox (blocking on it
when it waits) and needs no second read. An empty element is a put waking the
client's server instead (``on_new_jobs``). Every outcome read is checked against
its signature before it is unpickled (``_signing.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from taskq._broker import JobState, JobStatus, Outcome
from taskq._errors import StoreError
from taskq._redis_link import RedisLink
from taskq._signing import Signer

log = logging.getLogger("taskq")

MAX_POP = 10_000  # notices taken from the inbox in one round trip


class OutcomeReader:
    def __init__(self, link: RedisLink, signer: Signer, job_prefix: str, inbox: str):
        self._link = link
        self._signer = signer
        self._job_prefix = job_prefix
        self._inbox = inbox

    def ended(
        self, block: float, on_new_jobs: Callable[[], None]
    ) -> list[tuple[str, Outcome | None]]:
        """This client's jobs that ended, with their outcomes; ``block``: wait up to that
        long for the first. Jobs of other clients are not listed here: a waiter for one
        of those reads its state directly (``Waiters.reconcile``)."""
        notices: list[bytes] = []
        if block:
            first = self._link.call(self._link.blocking.blpop, [self._inbox], timeout=block)
            if first is None:
                return []
            if not first[1]:
                on_new_jobs()  # at once: the server claims while the rest is read
            else:
                notices.append(first[1])
        more = self._link.call(self._link.r.lpop, self._inbox, MAX_POP)
        notices.extend(more or ())
        ended: list[tuple[str, Outcome | None]] = []
        woken = False
        for notice in notices:
            if not notice:
                woken = True
                continue
            raw_id, osig, data = notice.split(b"\n", 2)
            job_id = raw_id.decode()
            ended.append((job_id, self.checked(job_id, data, osig)))
        if woken:
            on_new_jobs()
        return ended

    def read(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The state (and outcome, once there is one) of each job the store still has."""
        pipe = self._link.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self._job_prefix + job_id, "state", "outcome", "osig")
        found: dict[str, JobStatus] = {}
        for job_id, (state, outcome, osig) in zip(
            job_ids, self._link.call(pipe.execute), strict=True
        ):
            if state is None:
                continue
            loaded = None if outcome is None else self.checked(job_id, outcome, osig)
            state_name = state.decode()
            found[job_id] = JobStatus(
                JobState(state_name if state_name != "refused" else "dead"), loaded
            )
        return found

    def checked(self, job_id: str, data: bytes, osig: bytes | None) -> Outcome:
        """The stored outcome if its signature holds; else an error saying it was refused
        (it is never unpickled)."""
        refused = self._signer.check(job_id, (osig or b"").decode(), data)
        if refused is None:
            return Outcome.load(data)
        log.error("outcome of job %s refused: %s", job_id, refused)
        error = StoreError(
            f"the stored outcome of job {job_id} was refused and not unpickled: {refused}"
        )
        return Outcome.of_error(error, 0)
