"""The manager's thread: one ``select`` over pipes, sentinels and a wake-up pipe, plus timers.

    while keep_running():
        sleep in select(registered fds + wake-up pipe, until the first timer)
        with lock:  ready handlers -> posted commands -> due timers -> work()
        after()     (with the lock released: resolve futures, run user callbacks)
        pace(busy)  (seconds to let events gather, listening to the wake-up pipe only)
        or spin()   (seconds to poll for the next event before sleeping in select)

Other threads reach it with ``post`` (run soon) and ``call`` (run and wait for
the answer); both write one byte to the wake-up pipe, at most one pending.
Nothing here knows about jobs: the manager supplies ``work``, ``after`` and
the rest.
"""

from __future__ import annotations

import collections
import os
import select
import selectors
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

from taskq._timers import Timers

Handler = Callable[[int], None]  # called with the selector's event mask


class EventLoop:
    def __init__(
        self,
        *,
        work: Callable[[], None],
        after: Callable[[], None],
        keep_running: Callable[[], bool],
        failed: Callable[[BaseException], None],
        closing: Callable[[], None],
        pace: Callable[[float], float] = lambda busy: 0.0,
        spin: Callable[[], float] = lambda: 0.0,
    ):
        self._work, self._after, self._keep_running = work, after, keep_running
        self._failed, self._closing, self._pace, self._spin = failed, closing, pace, spin
        self.selector = selectors.DefaultSelector()
        self.timers = Timers()
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._wake_pending = False
        self._wake_lock = threading.Lock()
        self._closed = False
        self.selector.register(self._wake_read, selectors.EVENT_READ, self._on_wake)
        self._wake_poll = select.poll()  # the wake-up pipe alone, for pauses
        self._wake_poll.register(self._wake_read, select.POLLIN)
        # Held while the loop works (not while it sleeps in select). Another thread may
        # take it too, without waiting, to do a little of the loop's work itself.
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="taskq-manager", daemon=True)

    # -- from any thread ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def wake(self) -> None:
        """Make the loop look again. At most one byte waits in the pipe."""
        if not self._wake_pending:
            self._wake_pending = True
            # Under the lock, so a late wake-up (a pool collected after it finished)
            # can never write to a descriptor number that is closed and reused.
            with self._wake_lock:
                if not self._closed:
                    os.write(self._wake_write, b"!")

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args)`` on the loop at monotonic time ``when``."""
        self.timers.at(when, action, *args)
        if not self.on_loop_thread():
            self.wake()  # its select timeout was computed without this timer

    def post(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the loop soon, without waiting."""
        self._commands.append(command)
        self.wake()

    def call(self, command: Callable[[], Any]) -> Any:
        """Run ``command`` under the lock on the loop's thread and return its result.

        From the loop's own thread (a done-callback calling ``kill`` or
        ``shutdown``) it runs at once: callbacks never run with the lock held.
        After the loop has finished, it runs on the calling thread.
        """
        if self.on_loop_thread():
            with self.lock:
                result = command()
            self._after()
            return result
        answer: Future[Any] = Future()

        def run() -> None:
            try:
                answer.set_result(command())
            except BaseException as exc:
                answer.set_exception(exc)

        self.post(run)
        while True:
            try:
                return answer.result(timeout=0.1)
            except FuturesTimeout:
                pass
            if not self._thread.is_alive():  # finished before it saw the command
                try:
                    self._commands.remove(run)
                except ValueError:
                    continue  # it did take it: the answer is coming
                with self.lock:
                    run()
                self._after()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the loop has finished.

        From the loop's own thread (a done-callback) it runs the loop right
        there until then: the thread cannot wait for itself.
        """
        if self.on_loop_thread():
            while self._keep_running():
                self._step()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        # Short waits: a Ctrl-C delivered to another thread is then seen at once.
        while self._thread.is_alive():
            wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if wait <= 0:
                return
            self._thread.join(wait)

    # -- on the loop's thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._keep_running():
                self._step()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            with self.lock:
                self._failed(exc)
        finally:
            with self.lock:
                self._closing()
                self._close()
            self._after()

    def _step(self) -> None:
        delay = 0 if self._commands else self.timers.next_delay()
        events = self.selector.select(delay)
        woke = time.perf_counter()
        with self.lock:
            if len(events) == 1:  # the usual case: nothing earlier in the batch to check
                key, mask = events[0]
                key.data(mask)
            else:
                registered = self.selector.get_map()
                for key, mask in events:
                    # An earlier event of this batch may have closed this descriptor (a
                    # worker exited) and its number may already belong to a new pipe.
                    if registered.get(key.fd) is key:
                        key.data(mask)
            while self._commands:
                self._commands.popleft()()
            self.timers.run_due()
            self._work()
        self._after()  # last: the callers woken here find this thread back in select
        pause = self._pace(time.perf_counter() - woke)
        if pause > 0 and not self._commands:
            # Events gather meanwhile (the next select takes them all at once); a
            # command or a new timer still cuts the pause short through the wake-up pipe.
            next_timer = self.timers.next_delay()
            if next_timer is not None:
                pause = min(pause, next_timer)
            self._wake_poll.poll(pause * 1000)
        elif not self._commands:
            self._poll_for(self._spin())

    def _poll_for(self, window: float) -> None:
        """Poll every descriptor for up to ``window`` seconds (or until the first timer),
        giving the CPU away in between, before the next step sleeps in select: an event
        that comes meanwhile costs no wake-up. The events stay for that select."""
        next_timer = self.timers.next_delay()
        if next_timer is not None:
            window = min(window, next_timer)
        if window <= 0:
            return
        ready, clock, give_way = self.selector.select, time.perf_counter, os.sched_yield
        deadline = clock() + window
        while not ready(0) and clock() < deadline:
            give_way()

    def _on_wake(self, mask: int) -> None:
        try:
            os.read(self._wake_read, 4096)
        except BlockingIOError:
            pass
        self._wake_pending = False  # cleared after draining: a wake-up is never lost

    def _close(self) -> None:
        self.selector.close()
        with self._wake_lock:
            self._closed = True
            os.close(self._wake_read)
            os.close(self._wake_write)
