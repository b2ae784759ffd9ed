"""The thread of a broker pool: serve, learn outcomes, and decide when the pool is done.

One thread (``taskq-broker``) steps the server (``_serve.py``) and, for a store that
cannot wake readers (SQLite), polls it for outcomes; it sleeps on an event that
submits and local outcomes set, and otherwise looks at the store at least every
``MAX_POLL`` seconds. A store that can wake readers (Redis) gets a second thread,
``taskq-outcomes``, blocked on the store until an outcome arrives.

How it ends, decided in ``finished()``:

* ``shutdown()``: once this process's own jobs have outcomes; its server stops
  claiming then, and finishes what it holds.
* ``stop_serving(grace)`` (``taskq worker`` on SIGTERM): the server claims no more,
  gives back what it has not started, and gives running jobs ``grace`` seconds
  before stopping them and giving them back too.
* A failure (the local pool broke, the store failed for good): ``on_broken``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from taskq._broker import Broker, JobState, Outcome
from taskq._broker_client import Waiters
from taskq._errors import BrokerUnavailable, PoolBroken
from taskq._log import log
from taskq._pool import Pool
from taskq._serve import Server

MIN_POLL = 0.001  # seconds between looks at the store right after something happened
MAX_POLL = 0.02  # ... and at most this long when nothing did (an idle store: 50 reads/s)
COALESCE = 0.0005  # seconds a busy loop pauses so outcomes and claims come in batches
MAX_BACKOFF = 2.0  # seconds between attempts while the store cannot be reached
TERMINATE_PATIENCE = 10.0  # seconds terminate() waits for stopped jobs' outcomes to store
LISTEN_BLOCK = 0.25  # seconds a listener's blocking read lasts (how soon it sees a close)


class BrokerLoop:
    """Runs a broker pool's server and outcome polling until the pool is done (see above)."""

    def __init__(
        self,
        broker: Broker,
        waiters: Waiters,
        server: Server | None,
        local: Pool | None,
        wake: threading.Event,
        on_broken: Callable[[BaseException], None],
    ):
        self._broker, self._waiters = broker, waiters
        self._server, self._local = server, local
        self._on_broken = on_broken
        self.wake = wake  # set by submits and by the server's local outcomes
        self._shutting_down = False
        self._stop_serving = False
        self._grace_deadline = 0.0
        self._terminated_by = 0.0  # terminate(): until then, wait for stopped jobs' outcomes
        self._closed = False
        self._exiting = False
        self._next_exit_check = 0.0
        self._left_here = 0
        self.on_close: list[Callable[[], None]] = []  # more to close with the store
        self._next_poll = 0.0
        self.thread = threading.Thread(target=self._run, name="taskq-broker", daemon=True)
        self._listener: threading.Thread | None = None
        if broker.can_block:  # outcomes wake a listener instead of being polled
            if server is not None:  # ... and so does a put while this server had no job
                broker.on_new_jobs = server.notice_new_jobs
            self._listener = threading.Thread(
                target=self._listen, name="taskq-outcomes", daemon=True
            )
            self._listener.start()
        self.thread.start()

    # -- requests from the pool (any thread) ---------------------------------------

    def shut_down(self) -> None:
        self._shutting_down = True
        self.wake.set()

    def stop_serving(self, grace: float) -> None:
        self._grace_deadline = time.monotonic() + grace
        self._stop_serving = self._shutting_down = True
        self.wake.set()

    def terminate(self) -> None:
        # The local pool's terminate stops the running jobs: their outcomes (cancelled)
        # are on their way, and are stored, unless they take longer than this.
        self._terminated_by = time.monotonic() + TERMINATE_PATIENCE
        self._stop_serving = self._shutting_down = True
        self._stop_local()
        self.wake.set()

    def join(self) -> None:
        if threading.current_thread() is self.thread:  # from a done-callback: serve in place
            while not self.finished():
                self.step()
            self.close(release=self._stop_serving)
        else:
            self.thread.join()

    # -- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        delay = MIN_POLL
        try:
            while not self.finished():
                try:
                    busy = self.step()
                except BrokerUnavailable as exc:  # reconnect with backoff; leases may lapse
                    _unavailable(exc, delay)
                    delay = min(max(delay, 0.05) * 2, MAX_BACKOFF)
                    continue
                delay = MIN_POLL if busy else min(delay * 2, MAX_POLL)
                if busy and self._server is not None and self._server.saturated:
                    # A backlog: let a little more gather, one transaction for several
                    # jobs (never with a job or two in flight: that would be latency).
                    time.sleep(COALESCE)
                self.wake.wait(delay)
                self.wake.clear()
        except BaseException as exc:  # the store or the local pool failed
            self._break(exc)
            return
        self.close(release=self._stop_serving)

    def _listen(self) -> None:
        """Resolve futures as outcomes are stored (a blocking read of the store)."""
        delay = 0.05
        while not self._closed:
            try:
                self._waiters.poll(block=LISTEN_BLOCK)
                delay = 0.05
            except BrokerUnavailable as exc:
                _unavailable(exc, delay)
                delay = min(delay * 2, MAX_BACKOFF)
            except BaseException:  # never let a listener die silently
                log.exception("taskq outcome listener failed; retrying")
                time.sleep(1.0)

    def step(self) -> bool:
        self._broker.sync()  # replies to this process's puts: their futures learn they are in
        busy = self._server.step() if self._server is not None else False
        now = time.monotonic()
        if not self._broker.can_block and now >= self._next_poll:
            # Outcomes from other processes: not on every step (own outcomes come at once).
            self._next_poll = now + MIN_POLL
            busy = bool(self._waiters.poll()) or busy
        self._waiters.reconcile()
        return busy

    def finished(self) -> bool:
        server = self._server
        if self._stop_serving:
            return self._server_drained()
        if not self._shutting_down:
            return False
        own = self._own_to_wait_for()
        if server is not None:
            if own == 0:
                server.stop_claiming()
            return own == 0 and server.held == 0
        return own == 0

    def at_exit(self) -> None:
        """Interpreter exit: finish this process's jobs that it can run itself, and no
        more; jobs that another process runs (or none will) stay in the store."""
        self._exiting = self._shutting_down = True
        self.wake.set()

    def _own_to_wait_for(self) -> int:
        if not self._exiting:
            return len(self._waiters)
        if self._server is None:
            return 0
        now = time.monotonic()
        if now >= self._next_exit_check:  # a read of the store, at most every 0.1 s
            self._next_exit_check = now + 0.1
            pending = self._waiters.pending_ids()
            states = self._broker.outcomes(pending)
            self._left_here = sum(
                1
                for job_id, status in states.items()
                if status.state is JobState.QUEUED or self._server.holds(job_id)
            )
        return self._left_here

    def _server_drained(self) -> bool:
        server = self._server
        if server is None:
            return True
        server.stop_claiming()
        server.release_unstarted()
        if server.held == 0:
            return True
        now = time.monotonic()
        if now < self._terminated_by:
            return False  # stopped by terminate(): their cancelled outcomes are coming
        if now >= self._grace_deadline:
            log.warning(
                "grace period over: stopping %d running jobs, back to the store", server.held
            )
            server.release_all_after(self._stop_local)
            return True
        return False

    def _break(self, exc: BaseException) -> None:
        """No more serving or waiting here: the jobs this process holds go back to the
        store (they did not run here), its own queued jobs are withdrawn, and its
        futures fail with ``exc``."""
        if not isinstance(exc, PoolBroken):
            log.error("taskq broker thread failed", exc_info=exc)
        self._on_broken(exc)
        pending = self._waiters.pending_ids()
        self._waiters.fail_all(exc)  # first: the store's "cancelled" must not win the race
        with contextlib.suppress(BaseException):
            for job_id in pending:
                self._broker.cancel(job_id)
        with contextlib.suppress(BaseException):
            self.close(release=True)

    def _stop_local(self) -> None:
        if self._local is not None:
            self._local.terminate()

    def close(self, release: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            if release:
                self._server.release_all_after(self._stop_local)
            self._server.flush()
            if self._local is not None:
                self._local.shutdown(wait=True)
            self._server.close()
        if self._terminated_by:
            self._cancel_pending()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=LISTEN_BLOCK + 5)  # its blocking read ends within LISTEN_BLOCK
        for close in self.on_close:
            close()
        try:
            self._broker.sync()
        except BaseException as exc:  # never acknowledged: they may not be in the store
            log.error("jobs sent to %s may not have been stored: %s", self._broker.url, exc)
        self._broker.close()

    def _cancel_pending(self) -> None:
        """After terminate(): no future of this process is left waiting. A job still
        queued is withdrawn; one that went back to the store, or runs elsewhere, is no
        longer waited for here."""
        for job_id in self._waiters.pending_ids():
            with contextlib.suppress(BaseException):
                self._broker.cancel(job_id)
            self._waiters.resolve(job_id, Outcome.cancelled("stopped by pool.terminate()"))


def _unavailable(exc: BrokerUnavailable, delay: float) -> None:
    if delay < 0.1:
        log.warning("%s; retrying", exc)
    time.sleep(delay)
