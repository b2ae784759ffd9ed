"""Jobs for the shared-memory tests (importable by every start method)."""

from __future__ import annotations

import os
import pickle
import signal
import time

from taskq import _segments, _shm

BIG = 256 * 1024  # above the threshold: travels through shared memory


def echo(value):
    return value


def describe(value):
    """(type name, bytes of the value) as the worker sees it."""
    return type(value).__name__, bytes(value)


def scribble(buffer):
    """Modify the argument in place (copy-on-write: the parent's copy stays as it was)."""
    buffer[:4] = b"XXXX"
    return bytes(buffer[:8])


def fail_once_after_scribbling(buffer, marker):
    """Modify the argument, then fail the first attempt: the retry must see the original."""
    first = not os.path.exists(marker)
    seen = bytes(buffer[:4])
    buffer[:4] = b"XXXX"
    if first:
        open(marker, "w").close()
        raise ValueError("first attempt")
    return seen


def pickle_buffer(size):
    return pickle.PickleBuffer(bytearray(b"p" * size))


def sleep_holding(buffer, seconds):
    """Hold the argument's mapping while sleeping."""
    view = memoryview(buffer)
    time.sleep(seconds)
    return len(view)


def die_holding(buffer):
    """SIGKILL this worker while it has the argument's segment mapped."""
    assert len(buffer) >= BIG
    os.kill(os.getpid(), signal.SIGKILL)


def die_after_writing_a_result(size):
    """Write a result segment as a reply would, then die before replying."""
    assert _shm.worker_results is not None
    _, name = _shm.worker_results.dump(bytearray(size))
    assert name is not None and os.path.exists(os.path.join(_segments.SHM_DIR, name))
    os.kill(os.getpid(), signal.SIGKILL)


def write_a_result_then_wait(size, started_path, limit=60.0):
    """Write a result segment that no reply names yet, say so, then wait (for the parent
    to be killed)."""
    assert _shm.worker_results is not None
    _, name = _shm.worker_results.dump(bytearray(size))
    with open(started_path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {name}")
    os.replace(started_path + ".tmp", started_path)
    time.sleep(limit)


def numpy_add_one(array):
    return array + 1


_kept_views: list[memoryview] = []


def keep_argument(buffer):
    """Keep a view of the argument in the worker after the job (its segment stays mapped)."""
    _kept_views.append(memoryview(buffer))
    return bytes(buffer[:8])


def kept_argument():
    """The first 8 bytes of the view ``keep_argument`` kept, as the worker sees them now."""
    return bytes(_kept_views[-1][:8])


class UnloadableInParent:
    """A large result whose rebuilding fails: it can only be unpickled in the parent, so
    it fails there (on the copier's thread), after its buffer crossed shared memory."""

    def __init__(self, size):
        self.data = bytearray(b"u" * size)

    def __reduce_ex__(self, protocol):
        return _refuse_to_load, (pickle.PickleBuffer(self.data),)


def _refuse_to_load(buffer):
    raise ValueError(f"refusing to load {len(memoryview(buffer))} bytes")


def unloadable_in_parent(size):
    return UnloadableInParent(size)


def big_bytes_with_pid(size):
    """One large ``bytes`` (the parent reads it on the first ``result()``) starting with
    the worker's pid, after 50 ms."""
    time.sleep(0.05)
    return os.getpid().to_bytes(8, "little") + bytes(size)
