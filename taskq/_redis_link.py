"""The connections of one Redis broker, and what their errors mean to a caller.

Every call goes through ``RedisLink.call``: a connection error becomes
``BrokerUnavailable`` (the pool retries with backoff), an out-of-memory answer a
``StoreError`` that says what to do; nothing else is translated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from taskq import _redis_scripts as lua
from taskq._errors import BrokerUnavailable, StoreError
from taskq._redis_url import check_database, safe_url

SOCKET_TIMEOUT = 5.0  # seconds; longer than a blocking read (1 s), shorter than a lease lapse
SCRIPTS = (
    "PUT",
    "STEP",
    "RENEW",
    "RELEASE",
    "KILL",
    "RECLAIM",
    "GIVE_UP",
    "HEARTBEAT",
    "QUEUED_BY_PRIORITY",
)


class RedisLink:
    """Two redis-py clients for one URL (one for blocking reads), and the scripts."""

    def __init__(self, url: str):
        try:
            import redis
        except ImportError:
            raise ImportError(
                "a redis:// broker needs redis-py: pip install 'taskq[redis]'"
            ) from None
        check_database(url)
        self.url = url
        self.errors: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)
        # Timeouts everywhere: a machine cut off from Redis must notice (and retry), not
        # wait for ever on a socket whose peer is gone.
        options: dict[str, Any] = {
            "socket_connect_timeout": SOCKET_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,
            "health_check_interval": 30,
        }
        if not url.startswith("unix:"):  # a unix socket has no TCP keepalive to set
            options["socket_keepalive"] = True
        self.r = redis.Redis.from_url(url, **options)
        self.blocking = redis.Redis.from_url(url, **options)  # its own connections: BLPOP
        self._scripts = {name: self.r.register_script(getattr(lua, name)) for name in SCRIPTS}

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self.errors as exc:
            raise self.unreachable(exc) from exc
        except Exception as exc:
            raise self.refused(exc) from exc

    def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one of ``_redis_scripts``' scripts."""
        return self.call(self._scripts[name], keys=list(keys), args=list(args))

    def unreachable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"cannot reach the Redis broker at {safe_url(self.url)}: {exc}")

    def refused(self, exc: BaseException) -> BaseException:
        """What an error answered by Redis means to the caller."""
        if "OOM" in str(exc) or "maxmemory" in str(exc):
            return StoreError(
                f"the Redis broker at {safe_url(self.url)} is out of memory (maxmemory): "
                "it refuses new writes; free memory or raise maxmemory"
            )
        if "DB index is out of range" in str(exc):
            return StoreError(
                f"the Redis server at {safe_url(self.url)} has no such database ({exc}): "
                "use a database number it has (0-15 by default)"
            )
        return exc

    def close(self) -> None:
        self.r.close()
        self.blocking.close()
