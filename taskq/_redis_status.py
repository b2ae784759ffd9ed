"""``taskq status`` on Redis: one snapshot of a queue, read from its keys."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from taskq._broker import StoreStatus

if TYPE_CHECKING:
    from taskq._redis_broker import RedisBroker


def read_status(broker: RedisBroker) -> StoreStatus:
    """Queued jobs per priority, running jobs, ended counts and servers (by the server's
    clock: a heartbeat's age does not depend on this machine's)."""
    r = broker._r
    now_ms = int(broker._link.run("HEARTBEAT", (broker.key["heartbeats"],), ("",)))
    queued = broker.queued_by_priority()
    running = []
    for raw_id in broker._link.call(r.zrange, broker.key["leases"], 0, -1):
        name, owner, started = broker._link.call(
            r.hmget, broker.job_prefix + raw_id.decode(), "name", "owner", "started_at"
        )
        running.append(
            (
                raw_id.decode(),
                (name or b"?").decode(),
                None if owner is None else owner.decode(),
                None if started is None else int(started) / 1000,
            )
        )
    ended = {
        k.decode(): int(v) for k, v in broker._link.call(r.hgetall, broker.key["stats"]).items()
    }
    beats = broker._link.call(r.hgetall, broker.key["heartbeats"])
    servers = []
    for owner, raw in broker._link.call(r.hgetall, broker.key["servers"]).items():
        info = json.loads(raw)
        beat_ms = int(beats.get(owner, 0))
        servers.append(
            {
                "owner": owner.decode(),
                **info,
                "heartbeat": time.time() - (now_ms - beat_ms) / 1000,
            }
        )
    return StoreStatus(
        queued,
        running,
        ended.get("succeeded", 0),
        ended.get("failed", 0),
        ended.get("cancelled", 0),
        ended.get("dead", 0),
        servers,
        ended.get("refused", 0),
    )
