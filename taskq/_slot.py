"""Each worker's slot in shared memory: the job it is on, since when, and the jobs it must skip.

The worker writes its slot as it starts each job; the parent reads it to know
which job a dead worker was running (only that job is to blame) and when a job
really started (timeouts count from there, not from when it was queued).

The parent may also *revoke* jobs it handed to a worker that has not started
them yet: when a worker is stuck on a long job while another sits idle, the
jobs waiting behind the long one are taken back and given to the idle worker.
Starting a job and revoking it are decided under the slot's lock, so a job is
either started by the worker or taken back by the parent, never both.

The lock is a ``RecordLock`` (``_counters.py``): a worker killed while it holds
the lock (a timeout's SIGKILL can come at any instant) releases it as it dies,
so the parent can always wait for it.

Jobs are numbered per worker in the order it receives them (``seq``).
"""

from __future__ import annotations

import time
from typing import Any

from taskq._counters import LockFile, RecordLock

JOB, STARTED_NS, STARTED_SEQ, REVOKED_UPTO = range(4)
WIDTH = 4


def slot_locks(count: int) -> list[RecordLock]:
    """One lock per slot, bytes of one file: made once per pool, inherited by its workers."""
    file = LockFile()
    return [RecordLock(file, index) for index in range(count)]


class WorkerSlot:
    def __init__(self, array: Any, index: int, lock: RecordLock):
        self._array = array
        self._base = index * WIDTH
        self._lock = lock

    def clear(self) -> None:
        """Zero the slot for a new worker (the parent, before the worker starts)."""
        for field in range(WIDTH):
            self._array[self._base + field] = 0

    # -- worker side -----------------------------------------------------------------

    def begin(self, seq: int, job_id: int) -> bool:
        """Claim job number ``seq`` before running it; False if the parent took it back."""
        array, base = self._array, self._base
        if seq <= array[base + REVOKED_UPTO]:
            # Taken back already (the mark only grows, and the parent decided under the
            # lock): a worker skipping a long batch of taken-back jobs takes no lock.
            return False
        with self._lock:
            if seq <= array[base + REVOKED_UPTO]:
                return False
            array[base + STARTED_SEQ] = seq
            array[base + STARTED_NS] = time.monotonic_ns()
            array[base + JOB] = job_id
        return True

    def end(self) -> None:
        self._array[self._base + JOB] = 0

    # -- parent side -----------------------------------------------------------------

    def running(self) -> tuple[int, int]:
        """(job id, start time in monotonic ns) of the job the worker is on; id 0 if none."""
        with self._lock:
            return self._array[self._base + JOB], self._array[self._base + STARTED_NS]

    def revoke(self, sent: int) -> int:
        """Take back every job numbered up to ``sent`` not yet started; return the number
        of the last started job. (A dead worker's lock is released by the kernel, so
        this never waits for long.)"""
        with self._lock:
            self._array[self._base + REVOKED_UPTO] = sent
            started: int = self._array[self._base + STARTED_SEQ]
            return started
