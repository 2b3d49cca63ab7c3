"""The Redis-backed routing store (shared decision cache + versioned fast-path table sets).

Batching, whatever the number of layers: ``fetch`` is one MGET (table pointer + every unique
cache key of every layer of the batch), ``write`` one EVALSHA of a small script that does
``SET key value PX ttl`` for every key, ``load_tables`` one MGET of every layer's table. Every published set is also archived under
its own keys for ``archive_ttl_s`` (:mod:`pipeline.stores.archive` reads them back).
Publishing a table set is two server-side scripts (see :meth:`RedisRoutingStore.publish_tables`);
readers follow the pointer, so they never see a half-written set, and the pointer never moves
backwards.

Degraded mode (:class:`~pipeline.stores.base.DegradedMode`): if Redis is unreachable or slow
(socket timeout), ``fetch`` returns all misses and no version (the worker keeps its last
in-memory table and the learned router covers the rest, under the budget governor), ``write``
drops the batch and ``load_tables`` raises :class:`~pipeline.stores.base.StoreUnavailable`;
``degraded`` counts the failed calls. After a failure the store does not touch Redis again
until a back-off delay has passed (doubling up to ``max_backoff_s``, measured on ``clock``);
the first successful call ends the outage.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from pipeline.engine.cache import Clock
from pipeline.engine.table import RoutingTable

from .base import DegradedMode, LayersMixin, StoreUnavailable, layer_slices, parse_tables
from .keys import RedisKeys
from .resp import evalsha_command, hex_suffixes, mget_command
from .redis_access import RedisAccess, redis_access

__all__ = ["RedisRoutingStore", "StoreUnavailable"]
log = logging.getLogger(__name__)
_SET_MANY_PX = """
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
end
return #KEYS
"""
# KEYS: sequence, pointer. Returns a version never allocated before and above the pointer now
# (INCR, lifted past the pointer should the sequence key ever be lost).
_ALLOCATE_VERSION = """
local n = redis.call('INCR', KEYS[1])
local current = tonumber(redis.call('GET', KEYS[2]))
if current and n <= current then
  n = current + 1
  redis.call('SET', KEYS[1], n)
end
return n
"""
# KEYS: pointer, then the new version's table key of every layer. ARGV: version, grace (ms),
# version key prefix, layers, then the blob of every layer. Writes every layer or none.
# Returns 1 if the pointer moved to the version, 0 if a newer version is already current.
_COMMIT_VERSION = """
local v = tonumber(ARGV[1])
local layers = tonumber(ARGV[4])
local current = tonumber(redis.call('GET', KEYS[1]))
if current == nil or v > current then
  for i = 1, layers do
    redis.call('SET', KEYS[i + 1], ARGV[i + 4])
  end
  redis.call('SET', KEYS[1], v)
  if current ~= nil then
    for l = 0, layers - 1 do
      redis.call('PEXPIRE', ARGV[3] .. current .. ':l' .. l, ARGV[2])
    end
  end
  return 1
end
if v < current then
  for i = 1, layers do
    redis.call('SET', KEYS[i + 1], ARGV[i + 4], 'PX', ARGV[2])
  end
end
return 0
"""


class RedisRoutingStore(LayersMixin, DegradedMode):
    """Routing store of ``layers`` layers on one Redis database (see module docstring)."""

    outage_errors = (RedisError, OSError, TimeoutError)
    store_name = "redis"

    def __init__(self, url: RedisAccess | str, keys: RedisKeys, ttl_s: float, layers: int = 1, timeout_s: float = 0.5,
                 grace_s: float = 300.0, max_backoff_s: float = 5.0, client: aioredis.Redis | None = None,
                 clock: Clock = time.monotonic, min_backoff_s: float = 0.05,
                 archive_ttl_s: float = 7 * 86400.0) -> None:
        super().__init__(clock, max_backoff_s, min_backoff_s)
        if layers < 1:
            raise ValueError("a routing store serves at least one layer")
        self.keys = keys
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.layers = layers
        self.grace_s = grace_s
        self.archive_ttl_ms = max(1, int(archive_ttl_s * 1000))
        self.client = client or redis_access(url).client(timeout_s, health_check_interval=0)
        self._set_many = self.client.register_script(_SET_MANY_PX)
        self._allocate = self.client.register_script(_ALLOCATE_VERSION)
        self._commit = self.client.register_script(_COMMIT_VERSION)

    @property
    def grace_ms(self) -> int:
        return max(1, round(self.grace_s * 1000))

    async def close(self) -> None:
        await self.client.aclose()

    def _blocks(self, keys: Sequence[int], per_layer: Sequence[int] | None) -> list[tuple[bytes, np.ndarray]]:
        """The decision keys as (layer's key prefix, hex suffixes) blocks, for :mod:`.resp`."""
        return [(self.keys.decision_prefix(layer).encode(), hex_suffixes(keys[rows]))
                for layer, rows in layer_slices(len(keys), per_layer, self.layers)]

    async def fetch(self, keys: Sequence[int], per_layer: Sequence[int] | None = None
                    ) -> tuple[list[bytes | None], int | None]:
        """One MGET of the table pointer and every decision key, packed in one numpy pass
        (:mod:`.resp`) and sent on a connection of the client's pool."""
        command = mget_command([self.keys.table_pointer.encode()], self._blocks(keys, per_layer))
        values: list[Any] = await self._call("fetch", lambda: self._packed(command), [None] * (len(keys) + 1))
        pointer = values[0]
        return list(values[1:]), int(pointer) if pointer is not None else None

    async def _packed(self, command: bytes) -> Any:
        """Send a packed command on a pooled connection and read its reply (redis-py's parser;
        the connection is dropped on any error or cancellation, as redis-py does, so a reply
        left unread never reaches the next command)."""
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(command, check_health=False)
            return await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def write(self, keys: Sequence[int], values: Sequence[bytes], per_layer: Sequence[int] | None = None) -> None:
        """One command for the whole batch: a server-side script SETs every key with the TTL
        (a pipeline of N SETs costs ~40 us per key in the client; the script ~2 us), its EVALSHA
        packed like the fetch."""
        if not keys:
            return
        args = [b"%d" % self.ttl_ms, *values]
        command = evalsha_command(self._set_many.sha, self._blocks(keys, per_layer), args)
        await self._call("write", lambda: self._script(command), None)

    async def _script(self, command: bytes) -> Any:
        """The packed EVALSHA of the write script; loads the script first when Redis has lost it
        (a restarted Redis has an empty script cache)."""
        try:
            return await self._packed(command)
        except NoScriptError:
            await self.client.script_load(_SET_MANY_PX)
            return await self._packed(command)

    async def load_tables(self, version: int) -> list[RoutingTable] | None:
        """Every layer's table of ``version`` (one MGET); None if one is missing (or unreadable,
        logged); raises :class:`StoreUnavailable` on an outage or timeout, or while backing off."""
        names = self.keys.tables(version, self.layers)
        raws: list[Any] = await self._attempt("load_tables", lambda: self.client.mget(names))  # bytes | None
        return parse_tables(raws, version)

    async def publish_tables(self, tables: Sequence[RoutingTable]) -> int:
        """Write one table per layer as a new version and make the set current unless a newer
        one already is.

        Two atomic server-side steps (two round trips):

        1. ``_ALLOCATE_VERSION``: INCR the sequence (lifted above the pointer if the sequence
           key was ever lost) -- a version number nobody else gets.
        2. ``_COMMIT_VERSION``: SET every layer's blob; if the version is newer than the
           pointer, move the pointer and PEXPIRE every layer of the previously current version
           by the grace period; otherwise (a concurrent publisher already made a newer one
           current) SET them with the grace TTL. All layers or none, in one script.

        Why not one script: the blobs embed their version (``with_version(n).to_bytes()``), so
        they can only be serialized once the number is known. Building them inside Lua would
        mean re-encoding the JSON there (cjson loses float precision) or splicing bytes into
        the serializer's output (coupling to its layout). Splitting is safe because step 2 does
        the compare: the pointer only ever moves forward, and every version that is not current
        has a TTL -- it either was written not-newer (own TTL) or was current until a later
        step 2 replaced it and gave it the TTL in the same atomic step. A publisher dying
        between the steps leaves only an unused version number. (Step 2 derives the previous
        version's keys from ``table_prefix``: fine on one Redis; a cluster would need one hash
        slot per table set.)

        Unlike the hot-path calls this raises on Redis errors (a publisher must know) and is not
        part of the degraded-mode accounting. Returns the version written.
        """
        self._check_tables(tables)
        pointer = self.keys.table_pointer
        version = int(await self._allocate(keys=[self.keys.table_sequence, pointer]))
        blobs = [table.with_version(version).to_bytes() for table in tables]
        moved = await self._commit(keys=[pointer, *self.keys.tables(version, self.layers)],
                                   args=[version, self.grace_ms, self.keys.table_prefix, self.layers, *blobs])
        if not int(moved):
            log.info("fast-path table set v%s published but superseded by a newer version already", version)
        await self._archive(version, blobs)
        return version

    async def _archive(self, version: int, blobs: Sequence[bytes]) -> None:
        """Keep a copy of every layer's blob for ``archive_ttl_s`` (``var verify`` reads old
        versions long after readers stopped using them); one pipelined round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for layer, blob in enumerate(blobs):
                pipe.set(self.keys.archived_table(version, layer), blob, px=self.archive_ttl_ms)
            await pipe.execute()
