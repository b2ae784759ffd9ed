"""Dispatch: which workers get which queued jobs, and how many a worker may hold at once.

Handing a worker several jobs at once saves a round trip per job, but a job
handed over can no longer be overtaken: a more urgent job submitted later waits
behind everything the workers already hold. So:

* Batches are bounded in *time*, not count: a worker holds at most about
  ``HOLD_BUDGET`` seconds of work, judged by the recent average time per job,

      limit = HOLD_BUDGET / average seconds per job, between 1 and MAX_BATCH

  With 100 µs jobs a worker holds about 100 (10 ms of work). A ready worker holds
  two at least (the next job is there when it finishes one), except after jobs of
  ``SOLO_SECONDS`` or more: then just the one it runs, so jobs of equal priority
  start in submission order, none stuck behind a long one while a later one starts.
* and in *bytes*: jobs whose arguments or results go through shared memory are
  held about ``HOLD_BYTES`` at a time. The parent's copies, not the worker, set
  their pace, so holding more gains nothing; and each job held pins a segment,
  so that beyond the few kept for reuse every job would fill fresh pages.
  For the same reason nothing is handed out while ``COPY_AHEAD`` results per
  worker wait to be copied out of shared memory (``_copier.py``): the copier is
  then the bottleneck, and more jobs would only queue up behind it.
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

from collections.abc import Callable, Collection, Iterable, Iterator

from taskq._job import WorkItem
from taskq._process import WorkerHandle
from taskq._protocol import Frame, Kind
from taskq._queue import WorkQueue
from taskq._shm import SharedCall, shared_size

_OK_SHARED = int(Kind.OK_SHARED)

# Raising it batches more (fewer wake-ups, more throughput for tiny jobs);
# lowering it lets urgent jobs overtake sooner. 10 ms: it lets the manager pause
# up to PACE_MAX (below), so with 1 ms jobs it wakes every ~3.5 ms instead of ~2.5;
# useful work 92.8 -> 94.4 % (medians of 5 alternated runs, 2 cores), and an
# urgent job behind 100 µs jobs starts within ~1.6 ms at p50 (~1.2 at 6 ms),
# p99 3-4 ms (quick suite; target 5 ms).
HOLD_BUDGET = 0.010
MAX_BATCH = 512
SMOOTHING = 0.2  # weight of the newest measurement in the moving average
# Shared-memory bytes (argument + result) a worker holds. 4 MiB: 1 MiB echo jobs are
# held two at a time (segments in flight stay within what is kept for reuse), and
# move ~50 % more per second than when held by time alone (benchmarks/README.md).
HOLD_BYTES = 4 * 1024 * 1024
# Results per worker that may wait to be copied before dispatch stops (1: the copier
# idles while workers refill, ~15 % fewer MiB/s with 1 MiB echo jobs; 3: no better).
COPY_AHEAD = 2


# Jobs this long on average are handed out one at a time, even from a backlog of equals:
# a second job held behind one would start after a later job another worker took, while
# the round trip it saves (~0.1 ms) is under 0.5 % of such a job.
SOLO_SECONDS = 0.05


class BatchPolicy:
    """Tracks the average time a job takes in a worker, and the bytes it moves through
    shared memory, and turns them into a hold limit."""

    def __init__(self) -> None:
        self.average: float | None = None
        self.moved = 0.0  # average shared-memory bytes per job

    def observe(self, seconds: float) -> None:
        if self.average is None:
            self.average = seconds
        else:
            self.average += SMOOTHING * (seconds - self.average)

    def observe_all(self, replies: list[tuple[WorkItem, Frame]]) -> None:
        """``observe`` each reply, in order (one call per batch of replies)."""
        if not replies:
            return
        average, moved = self.average, self.moved
        for item, frame in replies:
            seconds = frame.seconds
            average = seconds if average is None else average + SMOOTHING * (seconds - average)
            if moved:
                moved += SMOOTHING * (_moved(item, frame) - moved)
            elif frame.kind == _OK_SHARED or type(item.call) is SharedCall:
                moved = _moved(item, frame)  # at once: the next batches are already planned
        self.average, self.moved = average, moved

    @property
    def moves_data(self) -> bool:
        """Whether recent jobs move data through shared memory (an average decaying
        towards 0 never quite reaches it: below one byte counts as none)."""
        return self.moved >= 1.0

    @property
    def solo(self) -> bool:
        """Whether recent jobs are long enough to hand out one at a time."""
        return self.average is not None and self.average >= SOLO_SECONDS

    def limit(self) -> int:
        if self.average is None:
            return 1
        if self.average <= HOLD_BUDGET / MAX_BATCH:
            by_time = MAX_BATCH
        else:
            by_time = max(1, int(HOLD_BUDGET / self.average))
        if not self.moves_data:
            return by_time
        return max(1, min(by_time, int(HOLD_BYTES / self.moved)))


def _moved(item: WorkItem, frame: Frame) -> int:
    """Bytes a finished job moved through shared memory."""
    moved = item.call.segment.size if type(item.call) is SharedCall else 0
    if frame.kind == _OK_SHARED:
        moved += shared_size(frame.payload)
    return moved


# A worker is "stuck" when its job has run this long (and at least STALL_FACTOR times
# the recent average): the jobs queued behind it move to an idle worker. Lower values
# rebalance sooner at the cost of more take-backs of jobs that would have run soon.
STALL_MIN = 0.005
STALL_FACTOR = 4.0
NOT_STARTED_RECHECK = 0.005  # look again at a job its worker has not begun yet


# While every busy worker holds enough short jobs to keep running, the manager looks at
# replies only now and then instead of waking at each one: one wake-up then handles
# several replies (1 ms jobs: the manager's CPU per job halves from a 1 ms pause to
# 3 ms; at 5 ms, with HOLD_BUDGET 10 ms, the parent's CPU per job falls another
# sixth). The pause is as long as the shortest-fed worker's work beyond its current
# job allows, halved for headroom (PACE_HEADROOM), at most PACE_MAX; below PACE it
# is not worth taking. A result may reach its caller up to PACE_MAX later; a job
# alone in its worker (latency) is never paced.
PACE = 0.001
PACE_MAX = 0.005
PACE_HEADROOM = 2.0  # a worker must hold this many pauses of work beyond its current job
PACED_JOBS = 0.005  # longer jobs: replies are rare anyway, no need to pace them
# Jobs that move data through shared memory are not paced: the parent's copies set
# their pace (the manager writes arguments), and a pause would only idle it. That is
# decided from the bytes the recent jobs moved (``BatchPolicy.moves_data``), not from how
# long a step took: a plain step of 1 ms jobs takes 100 µs of CPU on one VM and 220 on
# another 2.3 times slower, where a 200 µs bound once turned pacing off for good
# (manager steps per 2,000 jobs: ~470 with that bound, ~300 without). A step longer
# than PACE_BUSY still ends pacing, whatever slowed it: the manager is then behind.
PACE_BUSY = 0.001
PACED_HELD = 3  # fewer jobs in a worker (a map's large chunks): its replies are few anyway


def pause(
    workers: Iterable[WorkerHandle],
    average: float | None,
    queued: int,
    busy: float = 0.0,
    moves_data: bool = False,
) -> float:
    """How long the manager may leave replies unread now (0: not at all), with ``queued``
    jobs waiting, after a step that kept it busy for ``busy`` seconds, and whether
    recent jobs move data through shared memory. Only a backlog is paced: the last
    results of a batch (nothing queued) are never held back."""
    if not queued or average is None or average > PACED_JOBS:
        return 0.0
    if moves_data or busy > PACE_BUSY:
        return 0.0
    longest = PACE_MAX
    paced = False
    for worker in workers:
        held = len(worker.outstanding)
        if not held:
            continue  # idle: a submit reaches it from the caller's thread (dispatch_now)
        if held < PACED_HELD:
            return 0.0  # its replies are few anyway
        longest = min(longest, (held - 1) * average / PACE_HEADROOM)
        paced = True
    return longest if paced and longest >= PACE else 0.0  # else: it could run dry first


# With no backlog and short jobs (one job in flight at a time, say), the manager polls
# for this long after a step before it sleeps in select: a reply that arrives meanwhile
# costs no wake-up, which on a VM costs tens of microseconds when a CPU must be woken
# (one-job latency p50 63-72 -> 47-48 µs, 3 alternated runs, 2 cores; on a VM 2.3x
# slower at Python it made no difference either way: 190 µs). Workers do the
# same for their next call (``_worker.SPIN_SECONDS``). It gives the CPU away between
# polls (``sched_yield``); not with a backlog (replies are then paced) nor with
# longer jobs, whose replies would come too late to catch.
SPIN = 0.0002


def spin(average: float | None, queued: int) -> float:
    """How long the manager may poll for events before it sleeps (0: not at all)."""
    if average is None or average > SPIN or queued:
        return 0.0
    return SPIN


def _held(worker: WorkerHandle) -> int:
    return len(worker.outstanding)


class Dispatcher:
    """The dispatch decisions: which workers get which queued jobs (see above).

    It claims jobs from the queue and says where they go; the manager sends
    them, and takes back jobs when told to. It reads what it needs of each
    worker (the jobs it holds, whether it is ready and accepting, its slot)
    and writes nothing but the queue, so a step can be driven with stand-in
    workers and no processes.
    """

    def __init__(
        self,
        queue: WorkQueue[WorkItem],
        policy: BatchPolicy,
        max_tasks: int | None,
        uncopied: Callable[[], int] = lambda: 0,
    ):
        self.queue = queue
        self.policy = policy
        self.max_tasks = max_tasks
        self.uncopied = uncopied  # results not yet copied out of shared memory

    def make_way(self, workers: Iterable[WorkerHandle], urgent: float | None) -> list[WorkerHandle]:
        """Workers holding unstarted jobs less urgent than ``urgent``: take those back."""
        if urgent is None:
            return []
        return [
            worker
            for worker in workers
            if len(worker.outstanding) > 1
            and worker.outstanding[-1].priority > urgent
            and worker.accepting
        ]

    def plan(
        self, workers: Collection[WorkerHandle], idle_only: bool = False
    ) -> Iterator[tuple[WorkerHandle, list[WorkItem]]]:
        """Claim queued jobs for workers with room, most urgent first, idle workers first.

        A worker busy with jobs is topped up only right after it replied (never
        because a job was merely queued): jobs queued while every worker is busy
        stay in the queue, in priority order, until a worker frees up.

        Yields one worker's batch at a time, claiming it only when asked: the
        caller hands each batch over before the next is claimed, so jobs leave
        the queue (and its ``maxsize`` count) no earlier than they are sent.
        """
        depth, _, mixed = self.queue.snapshot()
        if not depth or self.uncopied() >= COPY_AHEAD * len(workers):
            return
        # With several priorities waiting, workers take one job at a time, when idle:
        # jobs a worker held would otherwise start after more urgent ones taken by
        # other workers. Batching is for a backlog of equals.
        limit = 1 if mixed else self.policy.limit()
        solo = self.policy.solo
        idle_only = idle_only or mixed or solo
        for worker in sorted(workers, key=_held):
            if idle_only and worker.outstanding:
                continue
            room = self.room(worker, limit, solo)
            if room <= 0:
                continue
            items = self.queue.claim(room, len(workers))
            if not items:
                return
            yield worker, items

    def room(self, worker: WorkerHandle, limit: int, solo: bool = False) -> int:
        """How many more jobs ``worker`` may hold now (``solo``: one, the one it runs)."""
        if not worker.accepting or worker.predecessor is not None:
            return 0
        held = len(worker.outstanding)
        if held and not worker.reported:
            return 0
        # Two at least: the next job is already there when the worker finishes one.
        cap = max(2, limit) if worker.ready and not solo else 1
        # Top up only once it ran down to half: one write then carries many jobs,
        # instead of one write per reply.
        if held > cap // 2:
            return 0
        room = cap - held
        if self.max_tasks is not None:
            room = min(room, self.max_tasks - (worker.sent - worker.revoked))
        return room

    def stuck(
        self, workers: Collection[WorkerHandle], now: float
    ) -> tuple[list[WorkerHandle], float | None]:
        """Workers stuck on a long job while another worker sits idle, whose waiting
        jobs should move; and when to look again (None: no need).

        Batching hands a worker jobs that then wait behind the one it runs; if that
        one turns out long, they would wait for it while another worker has nothing
        to do. Such jobs return to the queue (in their place) for the idle worker.
        """
        if self.queue.snapshot().depth or not any(
            w.accepting and w.ready and not w.outstanding for w in workers
        ):
            return [], None
        patience = max(STALL_MIN, STALL_FACTOR * (self.policy.average or 0.0))
        stuck: list[WorkerHandle] = []
        recheck: float | None = None
        for worker in workers:
            if len(worker.outstanding) < 2 or not worker.accepting:
                continue
            job_id, started_ns = worker.running_job()
            if job_id and job_id == worker.outstanding[0].job_id:
                stuck_at = started_ns / 1e9 + patience
            else:  # between two jobs: look again in a moment
                stuck_at = now + NOT_STARTED_RECHECK
            if now >= stuck_at:
                stuck.append(worker)
            else:
                recheck = stuck_at if recheck is None else min(recheck, stuck_at)
        return stuck, recheck
