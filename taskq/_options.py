"""Argument checks for ``Pool`` and its methods: a clear error for each bad input."""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterable
from multiprocessing.context import BaseContext

from taskq._queue import ORDERS

RetryOn = tuple[type[BaseException], ...] | type[BaseException] | None


def check_callable(fn: object, method: str) -> None:
    if not callable(fn):
        raise TypeError(f"{method}() needs a callable; got {fn!r}")


def check_options(
    max_workers: int,
    initializer: Callable[..., object] | None,
    max_tasks_per_child: int | None,
    maxsize: int,
    counters: Iterable[str],
    order: str,
) -> tuple[str, ...]:
    if not isinstance(max_workers, int) or isinstance(max_workers, bool):
        raise TypeError(f"max_workers must be an int or None; got {max_workers!r}")
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be callable; got {initializer!r}")
    if max_tasks_per_child is not None and (
        not _is_int(max_tasks_per_child) or max_tasks_per_child <= 0
    ):
        raise ValueError(
            f"max_tasks_per_child must be a positive int or None; got {max_tasks_per_child!r}"
        )
    if not _is_int(maxsize) or maxsize < 0:
        raise ValueError(f"maxsize must be an int >= 0 (0: unbounded); got {maxsize!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))}; got {order!r}")
    if isinstance(counters, str):
        raise TypeError(f"counters takes a sequence of names, e.g. ({counters!r},)")
    names = tuple(counters)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"counter names must be non-empty strings; got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"counter names must be unique; got {names!r}")
    return names


def check_priority(priority: object) -> None:
    if not isinstance(priority, (int, float)) or (
        isinstance(priority, float) and math.isnan(priority)
    ):
        raise TypeError(f"priority must be an int or float (not NaN); got {priority!r}")


def check_timeout(timeout: float | None, name: str) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None; got {timeout!r}")
    return float(timeout)


def check_retries(retries: int) -> int:
    if not _is_int(retries) or retries < 0:
        raise ValueError(f"retries must be an int >= 0; got {retries!r}")
    return retries


def check_delay(delay: float) -> float:
    if not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:  # NaN fails too
        raise ValueError(f"retry_delay must be a number of seconds >= 0; got {delay!r}")
    return float(delay)


def check_retry_on(retry_on: RetryOn) -> tuple[type[BaseException], ...] | None:
    if retry_on is None:
        return None
    types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TypeError(f"retry_on takes exception types; got {t!r}")
    return types


def check_chunksize(chunksize: int) -> int:
    if not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1; got {chunksize!r}")
    return chunksize


def check_aging(aging: float | None) -> float | None:
    if aging is None:
        return None
    if isinstance(aging, bool) or not isinstance(aging, (int, float)) or not aging > 0:
        raise ValueError(f"aging must be a positive number of seconds or None; got {aging!r}")
    if math.isinf(aging):
        return None  # never improves: plain priority order
    return float(aging)


def check_client_workers(max_workers: int | None) -> int:
    """A broker pool's ``max_workers``: as for any pool, or 0 for a client of the store."""
    if max_workers is None:
        from taskq._pool import _default_workers

        return _default_workers()
    if not isinstance(max_workers, int) or isinstance(max_workers, bool):
        raise TypeError(f"max_workers must be an int or None; got {max_workers!r}")
    if max_workers < 0:
        raise ValueError("max_workers must be 0 (a client of the store) or more")
    return max_workers


def serving_context(url: str) -> BaseContext:
    """The start method of a serving pool's workers when none is given.

    A worker forked from this process inherits SQLite's in-process state for the store
    file, mutexes included: one held by another thread at that instant (another pool's
    broker thread, say) stays held for ever in the child, and the worker's next write
    to the store (``taskq.counter(...).add``) waits until the busy timeout. So with a
    SQLite store the workers start from the clean ``forkserver`` process instead of
    ``fork`` (pass ``mp_context`` to choose otherwise, at that risk).
    """
    ctx = multiprocessing.get_context()
    if url.startswith("sqlite:") and ctx.get_start_method() == "fork":
        return multiprocessing.get_context("forkserver")
    return ctx


def _is_int(value: object) -> bool:
    """An int, and not a bool (True would pass for 1: a mistake, never meant)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_context(ctx: object) -> None:
    if not isinstance(ctx, BaseContext):
        raise TypeError(
            "mp_context must be a multiprocessing context such as "
            f"multiprocessing.get_context('spawn'); got {ctx!r}"
        )
