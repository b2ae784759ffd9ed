"""A private event loop for the asyncio peers (arq, SAQ), driven from synchronous code."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()
