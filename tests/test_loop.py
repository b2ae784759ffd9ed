"""The manager's event loop, driven with stand-in hooks and no processes."""

from __future__ import annotations

import os
import selectors
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from taskq._loop import EventLoop

LONG = 30.0  # a spin window far longer than any wait below: only an event can end it


@contextmanager
def running_loop(spin: Callable[[], float]) -> Iterator[EventLoop]:
    stop = threading.Event()
    loop = EventLoop(
        work=lambda: None,
        after=lambda: None,
        keep_running=lambda: not stop.is_set(),
        failed=lambda exc: None,
        closing=lambda: None,
        spin=spin,
    )
    loop.start()
    try:
        yield loop
    finally:
        stop.set()
        loop.post(lambda: None)  # wakes it to see the stop
        loop.join(timeout=10)
        assert not loop.alive


def wait_for(event: threading.Event, what: str) -> None:
    assert event.wait(timeout=10), f"{what} was not handled while the loop polled"


@pytest.mark.timeout(60)
def test_while_the_loop_polls_before_sleeping_an_event_is_handled_at_once():
    spins: list[float] = []

    def spin() -> float:
        spins.append(time.monotonic())
        return LONG

    read_fd, write_fd = os.pipe()
    handled = threading.Event()

    def on_readable(mask: int) -> None:
        os.read(read_fd, 1)
        handled.set()

    try:
        with running_loop(spin) as loop:
            loop.post(lambda: loop.selector.register(read_fd, selectors.EVENT_READ, on_readable))
            while not spins:  # a step ran: the loop now polls for LONG seconds
                time.sleep(0.01)
            os.write(write_fd, b"x")
            wait_for(handled, "a readable pipe")
            command = threading.Event()
            loop.post(command.set)
            wait_for(command, "a posted command")
    finally:
        os.close(read_fd)
        os.close(write_fd)


@pytest.mark.timeout(60)
def test_polling_stops_for_a_timer_that_falls_due():
    fired = threading.Event()
    with running_loop(lambda: LONG) as loop:
        loop.post(lambda: loop.at(time.monotonic() + 0.2, fired.set))
        wait_for(fired, "a timer due during the window")
