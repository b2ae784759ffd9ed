"""The fork server: a single-threaded copy of the pool's parent that forks its workers.

Forking a process that runs threads is hazardous: the child gets a copy of every
lock another thread held at that instant, but not the thread that would release
it (Python 3.12+ warns about it). A pool's parent always runs threads (the
manager, the application's own), yet under fork it needs new workers all through
its life: after a crash, a timeout, ``pool.kill()``, ``max_tasks_per_child``.

So the launcher forks this server once, when the pool is created and before the
pool starts any thread, and the server forks every worker. All workers, initial
and replacements, inherit the parent's state as it was when the pool was created.

    parent (threads)                  server (one thread)          worker
    start(index, fds) ──START + fds─▶ fork ──────────────────────▶ run_child(index, fds)
                      ◀─pid─────────
    sentinel          ◀──────────────── end of file when it exits ─┘
    reap(pid)         ──REAP────────▶ waitpid
                      ◀─exit code───

The parent talks to the server over a socket pair, one request and one reply at
a time; descriptors travel with SCM_RIGHTS. A worker is reaped only when the
parent asks (``join``), after the worker's sentinel said it exited: until then
its pid stays reserved (a zombie), so ``os.kill(pid)`` from the parent can never
reach a recycled pid, as with a ``multiprocessing.Process``.

The server exits when the parent's end of the socket closes (``close()``, or the
parent died), killing and reaping any worker left: no orphans, no zombies. It
ignores SIGINT (Ctrl-C reaches the whole process group; the parent decides) and
ends with ``os._exit``: no atexit hooks, no second flush of inherited stdio buffers.

A server can die too (SIGKILL, the OOM killer). Its workers then exit (their
parent changed), and the pool would have nothing left to start replacements
from. So the server forks a *standby* of itself as soon as it starts: a copy of
the parent as it was at pool creation, idle, on a socket of its own. When a
request finds the server gone, the standby takes over and forks the next
standby at once, so the pool survives any number of server deaths, one at a
time. The server's side is in ``_forkserver_process.py``.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Sequence

from taskq._forkserver_process import (
    BUSY,
    FAILED,
    MESSAGE,
    REAP,
    RECEIVE_SIZE,
    SPARE,
    START,
    RunChild,
    become_server,
)
from taskq._log import log

RPC_TIMEOUT = 30.0  # a fork of a large parent takes a while, but a hung server must not hang us
CLOSE_PATIENCE = 5.0  # for the server to exit once told to, before it is killed
# A worker closes its sentinel a moment before it can be reaped (or, if a job closed
# every descriptor, long before): ask again after a pause that grows up to a cap.
REAP_RETRY, REAP_RETRY_CAP = 0.001, 0.05


class ForkServer:
    """The parent's end: asks the server to start a worker, and later to reap it;
    turns to the standby when the server is gone."""

    def __init__(self, run_child: RunChild, *, name: str, parent_only: Sequence[int] = ()):
        """Fork the server now. ``run_child(index, fds)`` runs in each worker it starts;
        ``parent_only`` are descriptors the server and its workers must not keep."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        _flush_stdio()  # else the server's children would write the parent's output again
        parent = os.getpid()
        try:
            pid = os.fork()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            become_server(theirs, ours, run_child, name, parent_only, parent)
        theirs.close()
        self._lock = threading.Lock()  # who is the server, who the standby
        self._server = _Link(ours, pid)
        self._closed = False
        self._standby: _Link | None = self._new_standby()

    @property
    def pid(self) -> int:
        """The pid of the server that starts workers now."""
        return self._server.pid

    @property
    def standby_pid(self) -> int | None:
        standby = self._standby
        return None if standby is None else standby.pid

    def start(self, index: int, fds: Sequence[int]) -> ForkedProcess:
        """Start worker ``index`` with ``fds`` (the server keeps no copy of them).
        Raises ``OSError`` if no server is left or it could not fork."""
        while True:
            server = self._server
            sentinel, sentinel_end = os.pipe()
            try:
                pid = server.call(START, index, [*fds, sentinel_end])
            except ConnectionError:
                os.close(sentinel)
                if not self._take_over(server):
                    raise
                continue
            except BaseException:
                os.close(sentinel)
                raise
            finally:
                os.close(sentinel_end)  # the worker holds the only copy now
            assert pid is not None  # START is never answered BUSY
            self._check_standby()
            return ForkedProcess(server, pid, sentinel)

    def close(self) -> None:
        """Stop the server (it kills and reaps any worker left) and the standby."""
        with self._lock:
            self._closed = True
            links = [link for link in (self._server, self._standby) if link is not None]
        # Both told first, then waited for: they exit side by side (a copy of a large
        # parent takes milliseconds to tear down).
        for link in links:
            link.hang_up()
        for link in links:
            link.close()

    def _take_over(self, dead: _Link) -> bool:
        """The server ``dead`` is gone: make the standby the server; False if none is left."""
        with self._lock:
            if self._closed:
                return False
            if self._server is not dead:  # another thread did it already
                return True
            standby, self._standby = self._standby, None
            if standby is None:
                return False
            self._server = standby
        log.warning(
            "taskq's fork server (pid %d) is gone; its standby (pid %d) takes over",
            dead.pid,
            standby.pid,
        )
        dead.close()  # reaps it; its workers exit as they see their parent change
        self._add_standby()
        return True

    def _check_standby(self) -> None:
        """Replace a standby that died while idle (or make the one that could not be made):
        found now, not when the server dies too."""
        with self._lock:
            standby = self._standby
            if self._closed or (standby is not None and not standby.hung_up()):
                return
            self._standby = None
        if standby is not None:
            log.warning("taskq's standby fork server (pid %d) is gone; starting another",
                        standby.pid)  # fmt: skip
            standby.close()
        self._add_standby()

    def _add_standby(self) -> None:
        new: _Link | None = self._new_standby()
        with self._lock:
            if self._closed or self._standby is not None:
                stale, new = new, None
            else:
                self._standby, stale = new, None
        if stale is not None:
            stale.close()

    def _new_standby(self) -> _Link | None:
        """Ask the server to fork a standby of itself; None (logged) if it cannot."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = self._server.call(SPARE, 0, [theirs.fileno()])
        except OSError as exc:
            ours.close()
            log.warning("taskq's fork server could not start a standby (%s)", exc)
            return None
        finally:
            theirs.close()
        assert pid is not None
        return _Link(ours, pid)


class _Link:
    """The parent's socket to one server process: one request and its reply at a time."""

    def __init__(self, sock: socket.socket, pid: int):
        sock.settimeout(RPC_TIMEOUT)
        self.pid = pid
        self._sock = sock
        self._lock = threading.Lock()
        self._lost = False  # the server is gone (or closed): no more workers, no exit codes
        self._owner = os.getpid()
        self._stop = weakref.finalize(self, _stop_server, sock, pid, self._owner)
        self._stop.atexit = False  # at exit, the manager or our death stops it

    def reap(self, pid: int) -> int | None:
        """Reap worker ``pid`` and return its exit code; None if it is still running."""
        return self.call(REAP, pid)

    def hung_up(self) -> bool:
        """Whether the server closed its end (it exited), seen without a request: an idle
        server writes nothing unasked, so a readable socket means end of file."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        return bool(poller.poll(0))

    def hang_up(self) -> None:
        """Tell the server to exit (end of file on its socket) without waiting for it:
        ``close`` waits."""
        with self._lock:
            if self._stop.alive and os.getpid() == self._owner:
                _hang_up(self._sock)

    def close(self) -> None:
        with self._lock:
            self._lost = True
            self._stop()

    def call(self, kind: int, value: int, fds: Sequence[int] = ()) -> int | None:
        """Send one request, return the reply's number (None: BUSY). Raises
        ``ConnectionError`` if the server is gone, ``OSError`` if it failed."""
        with self._lock:
            if self._lost:
                raise ConnectionError(errno.ECONNRESET, "taskq's fork server has exited")
            try:
                socket.send_fds(self._sock, [MESSAGE.pack(kind, value)], fds, socket.MSG_NOSIGNAL)
                reply = self._sock.recv(RECEIVE_SIZE)
            except OSError as exc:  # a timeout too: a late reply would answer the wrong request
                self._lost = True
                raise ConnectionError(
                    errno.ECONNRESET, f"taskq's fork server (pid {self.pid}) failed: {exc!r}"
                ) from exc
            except BaseException:  # interrupted between request and reply: out of step now
                self._lost = True
                raise
            if not reply:
                self._lost = True
                raise ConnectionError(
                    errno.ECONNRESET, f"taskq's fork server (pid {self.pid}) has exited"
                )
        answer, number = MESSAGE.unpack_from(reply)
        if answer == FAILED:
            raise OSError(number, reply[MESSAGE.size :].decode(errors="replace"))
        return None if answer == BUSY else number


class ForkedProcess:
    """A worker the fork server started, as the parent sees it: the part of
    ``multiprocessing.Process`` that taskq uses."""

    def __init__(self, server: _Link, pid: int, sentinel: int):
        self.pid = pid
        self.sentinel = sentinel  # readable (end of file) once the worker has exited
        self._server = server
        self._exitcode: int | None = None
        self._settled = False  # reaped, or the server died: nothing more to learn
        self._reaping = threading.Lock()  # the manager, and an exit hook as a last resort
        self._close_sentinel = weakref.finalize(self, os.close, sentinel)
        self._close_sentinel.atexit = False

    @property
    def exitcode(self) -> int | None:
        """None while it runs (or if the server died before reaping it); minus the
        signal number if a signal killed it, as with multiprocessing."""
        if not self._settled and _readable(self.sentinel, 0):
            self._reap()
        return self._exitcode

    def is_alive(self) -> bool:
        return not self._settled and not _readable(self.sentinel, 0)

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = REAP_RETRY
        while not self._settled:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not _readable(self.sentinel, left):
                return
            self._reap()
            if not self._settled:
                if left == 0:
                    return
                time.sleep(pause if left is None else min(pause, left))
                pause = min(2 * pause, REAP_RETRY_CAP)

    def _reap(self) -> None:
        with self._reaping:
            if self._settled:
                return
            try:
                self._exitcode = self._server.reap(self.pid)
            except OSError:  # the server is gone, and its workers with it: the code is lost
                self._exitcode = None
                self._settled = True
            else:
                self._settled = self._exitcode is not None
            if self._settled:
                self._close_sentinel()  # its job is done; no descriptor kept for nothing

    def __repr__(self) -> str:
        return f"<ForkedProcess pid={self.pid} exitcode={self._exitcode}>"


def _readable(fd: int, timeout: float | None) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):  # None, closed, or broken
            pass


def _stop_server(sock: socket.socket, pid: int, owner: int) -> None:
    if os.getpid() != owner:  # a fork of the parent: the server is not ours to stop
        sock.close()
        return
    try:
        _hang_up(sock)
        sock.settimeout(CLOSE_PATIENCE)
        while sock.recv(RECEIVE_SIZE):  # end of file: the server has exited
            pass
    except OSError:  # it did not exit in time
        _kill_quietly(pid)
    finally:
        sock.close()
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # a standby that took over: the first server's child
        pass


def _hang_up(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)  # end of file for the server, whoever shares our end
    except OSError:  # told already; or the socket is gone, which the wait for its exit finds
        pass


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
