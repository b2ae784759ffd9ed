"""Inside a fork server (see ``_forkserver.py`` for the parent's end).

A server answers one request at a time on its socket:

    START + fds   fork a worker with those descriptors     -> DONE pid | FAILED
    REAP pid      reap that worker if it has exited        -> DONE code | BUSY | FAILED
    SPARE + sock  fork a standby server serving ``sock``   -> DONE pid | FAILED

A standby is a fork of a server, so a copy of the pool's parent as it was when
the pool was created, made without forking the parent again (which runs threads
by then). It waits, idle, until the parent turns to it because the server died.

A server exits when its socket reaches end of file, or when the pool's parent is
gone (a pidfd, polled while idle, covers a socket kept open by a stray fork of the
parent). On the way out it kills and reaps the workers it started (not a standby:
that one serves the parent on its own socket).
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
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from typing import NoReturn

from taskq import _segments
from taskq._worker import leave_process_group, reset_signals

RunChild = Callable[[int, list[int], int], None]  # (index, fds, the server's pid)

START, REAP, SPARE = 1, 2, 6  # requests: (kind, worker index | pid | 0)
DONE, BUSY, FAILED = 3, 4, 5  # replies: (kind, pid | exit code | errno), FAILED adds a message
MESSAGE = struct.Struct("=Bq")
RECEIVE_SIZE = 4096
MAX_FDS = 8
PARENT_CHECK = 1.0  # how often an idle server looks whether the pool's parent is still there


def become_server(
    sock: socket.socket,
    parent_end: socket.socket,
    run_child: RunChild,
    name: str,
    parent_only: Sequence[int],
    parent_pid: int,
) -> NoReturn:
    """Run the first server, in the child the parent just forked."""
    code = 1
    try:
        parent_end.close()
        for fd in parent_only:
            _close_quietly(fd)
        reset_signals()
        leave_process_group()  # and its standby, a fork of it
        multiprocessing.current_process().name = f"{name}-server"
        # The parent's children are not ours: multiprocessing would poll them at each
        # start (and read a forkserver child's exit status, stealing it from the parent).
        getattr(multiprocessing.process, "_children", set()).clear()
        _Server(sock, run_child, name, _ParentWatch(parent_pid)).serve()
        code = 0
    except BaseException:
        os.write(2, f"taskq fork server failed:\n{traceback.format_exc()}".encode())
    finally:
        os._exit(code)


class _ParentWatch:
    """Whether the pool's parent still runs: a pidfd where the kernel has them (no pid
    can be recycled under it), else a signal-0 probe."""

    def __init__(self, pid: int):
        self.pid = pid
        self._poll: select.poll | None = None
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # before Linux 5.3, or it has already gone
            return
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)  # readable once the process has exited

    def alive(self) -> bool:
        if self._poll is not None:
            return not self._poll.poll(0)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists (as another user): a recycled pid, rarely
            return True
        return True


class _Server:
    def __init__(self, sock: socket.socket, run_child: RunChild, name: str, parent: _ParentWatch):
        self._sock = sock
        self._run_child = run_child
        self._name = name
        self._parent = parent
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
            data, fds, _, _ = socket.recv_fds(self._sock, RECEIVE_SIZE, MAX_FDS)
        except TimeoutError:
            return self._parent.alive()  # our end may be shared by a stray fork
        except OSError:
            return False
        if len(data) < MESSAGE.size:  # end of file
            _close_all(fds)
            return False
        kind, value = MESSAGE.unpack_from(data)
        if kind == START:
            reply = self._start(value, fds)
        elif kind == SPARE:
            reply = self._spare(fds)
        else:
            reply = self._reap(value, fds)
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
                args=(self._sock, self._run_child, index, fds[:-1], os.getpid()),
                name=f"{self._name}-{index}",
            )
            process.start()
        except Exception as exc:  # EAGAIN, ENOMEM: the parent retries later
            return _failure(exc, f"could not start worker {index}")
        finally:
            _close_all(fds)
        assert process.pid is not None
        self._children[process.pid] = process
        return MESSAGE.pack(DONE, process.pid)

    def _spare(self, fds: list[int]) -> bytes:
        if len(fds) != 1:
            _close_all(fds)
            return _failure(ValueError("expected one socket"), "could not start a standby")
        try:
            pid = os.fork()
        except OSError as exc:
            _close_all(fds)
            return _failure(exc, "could not start a standby")
        if pid == 0:
            self._become_spare(fds[0])
        os.close(fds[0])
        return MESSAGE.pack(DONE, pid)

    def _become_spare(self, fd: int) -> NoReturn:
        code = 1
        try:
            self._sock.close()  # ours: the parent must see end of file when we die
            # Our workers are the server's, not ours: never killed or reaped here.
            self._children.clear()
            getattr(multiprocessing.process, "_children", set()).clear()
            sock = socket.socket(fileno=fd)
            _Server(sock, self._run_child, self._name, self._parent).serve()
            code = 0
        except BaseException:
            os.write(2, f"taskq standby fork server failed:\n{traceback.format_exc()}".encode())
        finally:
            os._exit(code)

    def _reap(self, pid: int, fds: list[int]) -> bytes:
        _close_all(fds)
        process = self._children.get(pid)
        if process is None:
            return _failure(ChildProcessError(errno.ECHILD, "no such worker"), f"cannot reap {pid}")
        if process.is_alive():  # is_alive() reaps it if it has exited
            return MESSAGE.pack(BUSY, 0)
        del self._children[pid]
        assert process.exitcode is not None
        return MESSAGE.pack(DONE, process.exitcode)

    def _stop_children(self) -> None:
        # Not is_alive(): it reaps a worker that already exited, and the sweep below must
        # know the pid is still that worker's (a zombie of ours) before it removes files.
        for process in self._children.values():
            assert process.pid is not None
            try:  # still our child, alive or a zombie (else its pid may be another's)?
                os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped already (its files were swept then)
                continue
            os.kill(process.pid, signal.SIGKILL)
        for process in self._children.values():
            _segments.sweep_dead_worker(process.pid)  # its result files (it had no time to)
            process.join()
        self._children.clear()


def _run_child(
    sock: socket.socket, run_child: RunChild, index: int, fds: list[int], server: int
) -> None:
    # The server's end: kept here, it would keep the socket open after the server
    # died, and the parent would wait for a reply instead of seeing end of file.
    sock.close()
    # The server's pid, not getppid() read later: the server may die before the
    # worker looks, and the worker must still see that its parent changed.
    run_child(index, fds, server)


def _failure(exc: Exception, doing: str) -> bytes:
    code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
    message = f"taskq's fork server {doing}: {type(exc).__name__}: {exc}"
    return MESSAGE.pack(FAILED, code) + message.encode()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        _close_quietly(fd)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
