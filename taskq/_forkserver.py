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
"""

from __future__ import annotations

import errno
import multiprocessing
import multiprocessing.process
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from typing import NoReturn

from taskq import _segments
from taskq._worker import reset_signals

RunChild = Callable[[int, list[int]], None]

START, REAP = 1, 2  # requests: (kind, worker index | pid)
DONE, BUSY, FAILED = 3, 4, 5  # replies: (kind, pid | exit code | errno), FAILED adds a message
_MESSAGE = struct.Struct("=Bq")
_RECEIVE_SIZE = 4096
_MAX_FDS = 8
RPC_TIMEOUT = 30.0  # a fork of a large parent takes a while, but a hung server must not hang us
PARENT_CHECK = 1.0  # how often the server looks whether its parent is still there
CLOSE_PATIENCE = 5.0  # for the server to exit once told to, before it is killed
# A worker closes its sentinel a moment before it can be reaped (or, if a job closed
# every descriptor, long before): ask again after a pause that grows up to a cap.
REAP_RETRY, REAP_RETRY_CAP = 0.001, 0.05


class ForkServer:
    """The parent's end: asks the server to start a worker, and later to reap it."""

    def __init__(self, run_child: RunChild, *, name: str, parent_only: Sequence[int] = ()):
        """Fork the server now. ``run_child(index, fds)`` runs in each worker it starts;
        ``parent_only`` are descriptors the server and its workers must not keep."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        _flush_stdio()  # else the server's children would write the parent's output again
        try:
            pid = os.fork()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            _become_server(theirs, ours, run_child, name, parent_only)
        theirs.close()
        ours.settimeout(RPC_TIMEOUT)
        self.pid = pid
        self._sock = ours
        self._lock = threading.Lock()  # one request and its reply at a time
        self._lost = False  # the server is gone (or closed): no more workers, no exit codes
        self._stop = weakref.finalize(self, _stop_server, ours, pid, os.getpid())
        self._stop.atexit = False  # at exit, the manager or our death stops it

    def start(self, index: int, fds: Sequence[int]) -> ForkedProcess:
        """Start worker ``index`` with ``fds`` (the server keeps no copy of them).
        Raises ``OSError`` if the server is gone or could not fork."""
        sentinel, sentinel_end = os.pipe()
        try:
            pid = self._call(START, index, [*fds, sentinel_end])
        except BaseException:
            os.close(sentinel)
            raise
        finally:
            os.close(sentinel_end)  # the worker holds the only copy now
        assert pid is not None  # START is never answered BUSY
        return ForkedProcess(self, pid, sentinel)

    def reap(self, pid: int) -> int | None:
        """Reap worker ``pid`` and return its exit code; None if it is still running."""
        return self._call(REAP, pid)

    def close(self) -> None:
        """Stop the server (it kills and reaps any worker left) and reap it."""
        with self._lock:
            self._lost = True
            self._stop()

    def _call(self, kind: int, value: int, fds: Sequence[int] = ()) -> int | None:
        with self._lock:
            if self._lost:
                raise ConnectionError(errno.ECONNRESET, "taskq's fork server has exited")
            try:
                socket.send_fds(self._sock, [_MESSAGE.pack(kind, value)], fds, socket.MSG_NOSIGNAL)
                reply = self._sock.recv(_RECEIVE_SIZE)
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
        answer, number = _MESSAGE.unpack_from(reply)
        if answer == FAILED:
            raise OSError(number, reply[_MESSAGE.size :].decode(errors="replace"))
        return None if answer == BUSY else number


class ForkedProcess:
    """A worker the fork server started, as the parent sees it: the part of
    ``multiprocessing.Process`` that taskq uses."""

    def __init__(self, server: ForkServer, pid: int, sentinel: int):
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
        sock.shutdown(socket.SHUT_WR)  # end of file for the server, whoever shares our end
        sock.settimeout(CLOSE_PATIENCE)
        while sock.recv(_RECEIVE_SIZE):  # end of file: the server has exited
            pass
    except OSError:  # it did not exit in time
        _kill_quietly(pid)
    finally:
        sock.close()
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- in the server ----------------------------------------------------------------


def _become_server(
    sock: socket.socket,
    parent_end: socket.socket,
    run_child: RunChild,
    name: str,
    parent_only: Sequence[int],
) -> NoReturn:
    code = 1
    try:
        parent_end.close()
        for fd in parent_only:
            _close_quietly(fd)
        reset_signals()
        multiprocessing.current_process().name = f"{name}-server"
        # The parent's children are not ours: multiprocessing would poll them at each
        # start (and read a forkserver child's exit status, stealing it from the parent).
        getattr(multiprocessing.process, "_children", set()).clear()
        _Server(sock, run_child, name).serve()
        code = 0
    except BaseException:
        os.write(2, f"taskq fork server failed:\n{traceback.format_exc()}".encode())
    finally:
        os._exit(code)


class _Server:
    def __init__(self, sock: socket.socket, run_child: RunChild, name: str):
        self._sock = sock
        self._run_child = run_child
        self._name = name
        self._parent = os.getppid()
        self._ctx = multiprocessing.get_context("fork")
        self._children: dict[int, BaseProcess] = {}

    def serve(self) -> None:
        self._sock.settimeout(PARENT_CHECK)
        try:
            while self._serve_one():
                pass
        finally:
            self._stop_children()

    def _serve_one(self) -> bool:
        """Answer one request; False when the parent is gone."""
        try:
            data, fds, _, _ = socket.recv_fds(self._sock, _RECEIVE_SIZE, _MAX_FDS)
        except TimeoutError:
            return os.getppid() == self._parent  # our end may be shared by a stray fork
        except OSError:
            return False
        if len(data) < _MESSAGE.size:  # end of file
            _close_all(fds)
            return False
        kind, value = _MESSAGE.unpack_from(data)
        reply = self._start(value, fds) if kind == START else self._reap(value, fds)
        try:
            self._sock.send(reply, socket.MSG_NOSIGNAL)
        except OSError:
            return False
        return True

    def _start(self, index: int, fds: list[int]) -> bytes:
        # The last descriptor is the worker's sentinel: it only has to stay open in it.
        try:
            process = self._ctx.Process(
                target=_run_child,
                args=(self._sock, self._run_child, index, fds[:-1]),
                name=f"{self._name}-{index}",
            )
            process.start()
        except Exception as exc:  # EAGAIN, ENOMEM: the parent retries later
            return _failure(exc, f"could not start worker {index}")
        finally:
            _close_all(fds)
        assert process.pid is not None
        self._children[process.pid] = process
        return _MESSAGE.pack(DONE, process.pid)

    def _reap(self, pid: int, fds: list[int]) -> bytes:
        _close_all(fds)
        process = self._children.get(pid)
        if process is None:
            return _failure(ChildProcessError(errno.ECHILD, "no such worker"), f"cannot reap {pid}")
        if process.is_alive():  # is_alive() reaps it if it has exited
            return _MESSAGE.pack(BUSY, 0)
        del self._children[pid]
        assert process.exitcode is not None
        return _MESSAGE.pack(DONE, process.exitcode)

    def _stop_children(self) -> None:
        for process in self._children.values():
            if process.is_alive():
                process.kill()
        for process in self._children.values():
            _segments.sweep_dead_worker(process.pid)  # its result files (it had no time to)
            process.join()
        self._children.clear()


def _run_child(sock: socket.socket, run_child: RunChild, index: int, fds: list[int]) -> None:
    # The server's end: kept here, it would keep the socket open after the server
    # died, and the parent would wait for a reply instead of seeing end of file.
    sock.close()
    run_child(index, fds)


def _failure(exc: Exception, doing: str) -> bytes:
    code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
    message = f"taskq's fork server {doing}: {type(exc).__name__}: {exc}"
    return _MESSAGE.pack(FAILED, code) + message.encode()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        _close_quietly(fd)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
