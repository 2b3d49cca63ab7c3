"""Where ``var verify`` finds old table sets: the Redis archive or a directory of exports.

Router workers drop a superseded table set after the grace period, but a verifier may check
outcomes days later. Every publisher therefore also writes each set under archive keys that
live ``table_archive_ttl_s`` (:meth:`~pipeline.stores.redis_store.RedisRoutingStore.publish_tables`),
and ``var outcomes export`` writes the sets the exported outcomes name into files
``tables/v<version>.l<layer>.bin`` beside them. Version 0 is the empty cold-start set every
worker begins with; it is rebuilt, never stored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import redis.asyncio as aioredis

from pipeline.engine.table import RoutingTable

from .base import parse_tables
from .keys import RedisKeys


class TableArchive(Protocol):
    async def load(self, version: int) -> list[RoutingTable] | None:
        """Every layer's table of ``version``, or None when it is not (or no longer) held."""
        ...


class RedisTableArchive:
    """The archive keys of one table set id, falling back to the live keys (one MGET each)."""

    def __init__(self, client: aioredis.Redis, keys: RedisKeys, layers: int) -> None:
        self.client, self.keys, self.layers = client, keys, layers

    async def raw(self, version: int) -> list[bytes | None]:
        names = [self.keys.archived_table(version, layer) for layer in range(self.layers)]
        raws: list[Any] = await self.client.mget(names)  # bytes | None (the client does not decode)
        if any(r is None for r in raws):
            raws = await self.client.mget(self.keys.tables(version, self.layers))
        return list(raws)

    async def load(self, version: int) -> list[RoutingTable] | None:
        return parse_tables(await self.raw(version), version)


class DirectoryTableArchive:
    """Table sets exported as files ``<dir>/v<version>.l<layer>.bin``."""

    def __init__(self, path: Path, layers: int) -> None:
        self.path, self.layers = Path(path), layers

    def file(self, version: int, layer: int) -> Path:
        return self.path / f"v{version}.l{layer}.bin"

    def write(self, version: int, raws: Sequence[bytes]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for layer, raw in enumerate(raws):
            self.file(version, layer).write_bytes(raw)

    async def load(self, version: int) -> list[RoutingTable] | None:
        files = [self.file(version, layer) for layer in range(self.layers)]
        if not all(f.exists() for f in files):
            return None
        return parse_tables([f.read_bytes() for f in files], version)
