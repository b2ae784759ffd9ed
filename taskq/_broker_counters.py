"""A pool's named counters kept in its broker's store, exact across processes and machines.

Each ``add`` is one atomic update in the store, so counters stay exact under
contention from every process serving or submitting to it. The object holds
only the URL and names: each process (a worker included) opens the store itself.
"""

from __future__ import annotations

from typing import Any

from taskq._broker import Broker, open_broker
from taskq._counters import unknown_counter


class StoreCounters:
    """The ``CounterStore`` of a pool with a broker (see ``_counters.Counter``)."""

    def __init__(self, url: str, queue: str, names: tuple[str, ...], secret: str | None = None):
        self.url, self.queue, self.names = url, queue, names
        self._secret = secret
        self._index = {name: i for i, name in enumerate(names)}
        self._broker: Broker | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "queue": self.queue, "names": self.names, "secret": self._secret}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["queue"], state["names"], state["secret"])  # type: ignore[misc]

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise unknown_counter(name, self.names) from None

    def add(self, index: int, amount: int) -> int:
        return self._store().counter_add(self.names[index], amount)

    def get(self, index: int) -> int:
        name = self.names[index]
        return self._store().counter_values([name])[name]

    def snapshot(self) -> tuple[int, ...]:
        values = self._store().counter_values(self.names)
        return tuple(values[name] for name in self.names)

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    def _store(self) -> Broker:
        if self._broker is None:
            self._broker = open_broker(self.url, self.queue, secret=self._secret)
        return self._broker
