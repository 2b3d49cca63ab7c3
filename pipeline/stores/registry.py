"""Which router workers are running, and with which router: a TTL key per worker in Redis.

Each router worker refreshes ``var:{ns}:workers:{topic}:{incarnation}`` (JSON: router id,
vocabulary size, worker) every few seconds with a TTL of three periods, so a dead worker
disappears by itself. A replay attaching to running workers reads them first and refuses to
start when their router differs from its own -- otherwise every token outside the workers'
vocabulary would only show up in the dead-letter topic.
"""
from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from .keys import worker_key, worker_pattern
from .redis_access import RedisAccess, redis_access

REFRESH_S = 5.0


async def register(client: aioredis.Redis, namespace: str, topic: str, incarnation: str, router_id: str,
                   vocab_size: int) -> None:
    """Announce (or refresh) one worker; raises redis errors (callers in degraded mode ignore them)."""
    info = {"router_id": router_id, "vocab_size": vocab_size, "worker": incarnation, "topic": topic}
    await client.set(worker_key(namespace, topic, incarnation), orjson.dumps(info), px=int(3 * REFRESH_S * 1000))


async def running_workers(url: RedisAccess | str, namespace: str, topic: str) -> list[dict[str, Any]]:
    """The registrations of every live router worker of ``topic`` (empty if none)."""
    client = redis_access(url).client(5.0)
    try:
        keys = [k async for k in client.scan_iter(match=worker_pattern(namespace, topic), count=1000)]
        values = await client.mget(keys) if keys else []
    finally:
        await client.aclose()
    return [orjson.loads(v) for v in values if v is not None]


def router_mismatch(workers: list[dict[str, Any]], router_id: str) -> str | None:
    """A one-line explanation when the running workers do not use ``router_id`` (None if they do)."""
    if not workers:
        return "no router worker is running for this topic (start them, e.g. var stack up --workers 2)"
    theirs = sorted({w["router_id"] for w in workers})
    if theirs == [router_id]:
        return None
    vocab = sorted({int(w.get("vocab_size", 0)) for w in workers})
    return (f"the running workers use router {', '.join(theirs)} (vocabulary {', '.join(map(str, vocab))}); "
            f"this replay expects {router_id}: start the workers with the replay's settings")
