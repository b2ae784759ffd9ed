"""Job functions and initializers for the fault matrix (tests/test_faults.py).

Module-level so that every start method can pickle them by reference.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time


def exit_initializer(code: int = 3) -> None:
    os._exit(code)


def sigkill_initializer() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault_initializer() -> None:
    ctypes.string_at(0)


def append_line(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")
        f.flush()


def record_run(path: str, tag: str, seconds: float = 0.0) -> str:
    """Append ``tag`` to ``path`` (one line per run), then sleep: runs can be counted."""
    append_line(path, tag)
    time.sleep(seconds)
    return tag


def count_lines(path: str, tag: str) -> int:
    try:
        with open(path) as f:
            return sum(1 for line in f if line.strip() == tag)
    except FileNotFoundError:
        return 0


def _raise_system_exit() -> None:
    raise SystemExit(7)


class ExplodesWhenUnpickled:
    """Pickles fine; unpickling it raises SystemExit (user code in ``__reduce__``)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_raise_system_exit, ())


class ExplodesWhenPickled:
    """Pickling it raises SystemExit."""

    def __reduce__(self) -> tuple[object, ...]:
        raise SystemExit(8)


class CannotUnpickle:
    """Pickles fine; unpickling raises an ordinary error (like a type missing on the other side)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_refuse, ())


def _refuse() -> None:
    raise ImportError("this type does not exist on this side")


def return_exploding_result() -> ExplodesWhenUnpickled:
    return ExplodesWhenUnpickled()


def return_unloadable_result() -> CannotUnpickle:
    return CannotUnpickle()


def return_unpicklable_result() -> object:
    return lambda: None  # plain pickle refuses a lambda


def take_argument(value: object) -> str:
    return "ran"


def raise_exploding_exception() -> None:
    raise _ExplodingError("boom")


class _ExplodingError(Exception):
    def __reduce__(self) -> tuple[object, ...]:
        return (_raise_system_exit, ())


def sleep_for(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


class Payload:
    """An argument or result the tests hold weak references to."""

    def __init__(self, size: int = 10) -> None:
        self.data = list(range(size))

    def method(self, extra: Payload) -> Payload:
        return Payload(len(self.data) + len(extra.data))


def return_instance_of(cls: type) -> object:
    return cls()
