"""Interpreter exit: pools finish the work they were given, and leave no worker behind."""

from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401  (registers its exit hook first: see below)
import os
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskq._manager import Manager
    from taskq._pool import Pool

exiting = False  # the interpreter is shutting down: no pool takes new jobs
running: weakref.WeakSet[Manager] = weakref.WeakSet()
open_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def _finish_at_exit() -> None:
    """At interpreter exit, let every pool finish the work it was given, as
    ``ProcessPoolExecutor`` does (after ``shutdown(wait=False)`` too). Ctrl-C
    while waiting stops them instead.

    Registered with ``threading._register_atexit``, like CPython's executors: it
    runs when the main thread ends, before ``atexit`` hooks and before threads
    are joined.
    """
    # A worker forked from this process inherits the registry; only the pools'
    # own process may wait for them.
    pools = [pool for pool in open_pools if pool._pid == os.getpid()]
    global exiting
    exiting = True
    try:
        for pool in pools:
            pool.shutdown(wait=False)  # runs unstarted maps, refuses new jobs
        for pool in pools:
            pool._manager.join()
    except KeyboardInterrupt:
        for pool in pools:
            pool.terminate()


@atexit.register
def _terminate_at_exit() -> None:
    """Last resort at interpreter exit: stop every pool still running, so no worker
    is orphaned (a pool whose work could not finish, or an exit without threading).

    ``atexit`` runs hooks last-registered first, and ``multiprocessing.util`` is
    imported above, so this runs before multiprocessing's own hook, which would
    otherwise wait for worker processes that are still busy.
    """
    for manager in list(running):
        if manager.alive:
            manager.post(manager.terminate)
            manager.join(timeout=5)
        manager.kill_workers()  # if the manager did not finish in time


threading._register_atexit(_finish_at_exit)  # type: ignore[attr-defined]
