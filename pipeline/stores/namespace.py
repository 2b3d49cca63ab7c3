"""Removing a finished run's Redis namespace (every key under ``var:{namespace}:``)."""
from __future__ import annotations

import re

from .redis_access import RedisAccess, redis_access

UNLINK_CHUNK = 1000  # keys per UNLINK


def namespace_pattern(namespace: str) -> str:
    """The SCAN pattern of exactly the keys of ``namespace`` (glob characters in it escaped)."""
    return "var:" + re.sub(r"([\\*?\[\]])", r"\\\1", namespace) + ":*"


async def drop_namespace(target: RedisAccess | str, namespace: str) -> int:
    """Unlink every key of ``namespace``; returns how many. For run-scoped namespaces only (a
    bench case): a deployment's namespace holds its tables and statistics."""
    client = redis_access(target).client()
    try:
        dropped, chunk = 0, []
        async for key in client.scan_iter(match=namespace_pattern(namespace), count=UNLINK_CHUNK):
            chunk.append(key)
            if len(chunk) == UNLINK_CHUNK:
                dropped += await client.unlink(*chunk)
                chunk = []
        if chunk:
            dropped += await client.unlink(*chunk)
        return dropped
    finally:
        await client.aclose()
