"""The routing-store contract on a real Redis server, and concurrent publishers.

Each test gets a fresh namespace. Outages are real socket timeouts: the store talks to Redis
through a small TCP proxy that, when switched off, swallows every byte in both directions.
Waits are real sleeps, so the TTLs and delays here are short.
"""
from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager, suppress
from typing import AsyncIterator
from urllib.parse import urlparse

import pytest
import redis.asyncio as aioredis

from pipeline.stores.keys import RedisKeys
from pipeline.stores.redis_store import RedisRoutingStore
from tests.store_contract import StoreContract, sample_table

pytestmark = pytest.mark.integration


class SwitchableProxy:
    """TCP proxy to Redis; while ``up`` is False nothing gets through (clients time out)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.up = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        try:
            await asyncio.gather(self._pump(reader, upstream_writer), self._pump(upstream_reader, writer))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, upstream_writer):
                w.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.up:
                writer.write(data)
                await writer.drain()
        writer.close()


class RedisHarness:
    def __init__(self, redis_url: str, proxy: SwitchableProxy, ttl_s: float, layers: int = 1) -> None:
        self.ttl_s, self.grace_s, self.backoff_s, self.margin_s = ttl_s, 0.5, 0.5, 0.25
        self.proxy = proxy
        self.keys = RedisKeys(f"contract-{uuid.uuid4().hex[:10]}", "r-contract")
        self.direct = aioredis.Redis.from_url(redis_url)
        self.store = RedisRoutingStore(f"redis://127.0.0.1:{proxy.port}/{_db(redis_url)}", self.keys, ttl_s,
                                       layers, timeout_s=0.2, grace_s=self.grace_s, min_backoff_s=self.backoff_s)

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def version_ttl(self, version: int, layer: int = 0) -> float | None:
        ms = await self.direct.pttl(self.keys.table(version, layer))
        return ms / 1000 if ms >= 0 else None

    async def put_raw_table(self, version: int, raw: bytes, layer: int = 0) -> None:
        await self.direct.set(self.keys.table(version, layer), raw)

    async def drop_table(self, version: int, layer: int) -> None:
        await self.direct.delete(self.keys.table(version, layer))

    async def go_down(self) -> None:
        self.proxy.up = False

    async def come_back(self) -> None:
        self.proxy.up = True

    async def close(self) -> None:
        await self.store.close()
        await self.direct.aclose()


def _db(redis_url: str) -> str:
    return urlparse(redis_url).path.lstrip("/") or "0"


@asynccontextmanager
async def redis_harness(redis_url: str, ttl_s: float, layers: int = 1) -> AsyncIterator[RedisHarness]:
    url = urlparse(redis_url)
    proxy = SwitchableProxy(url.hostname or "127.0.0.1", url.port or 6379)
    await proxy.start()
    harness = RedisHarness(redis_url, proxy, ttl_s, layers)
    try:
        yield harness
    finally:
        with suppress(Exception):
            await harness.close()
        await proxy.stop()


class TestRedisStoreContract(StoreContract):
    @pytest.fixture(autouse=True)
    def _redis(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def harness(self, ttl_s: float | None = None, layers: int = 1):  # type: ignore[override]
        return redis_harness(self.redis_url, ttl_s or 0.5, layers)


def test_concurrent_publishers_never_move_the_pointer_back_and_superseded_versions_expire(redis_url: str):
    keys = RedisKeys(f"contract-{uuid.uuid4().hex[:10]}", "r-contract")

    async def scenario() -> None:
        publishers = [RedisRoutingStore(redis_url, keys, 60.0, timeout_s=5.0, grace_s=60.0) for _ in range(2)]
        direct = aioredis.Redis.from_url(redis_url)
        try:
            table = sample_table()
            versions = await asyncio.gather(*(p.publish_table(table) for p in publishers for _ in range(50)))
            assert sorted(versions) == list(range(1, 101))
            assert int(await direct.get(keys.table_pointer)) == 100
            ttls = {v: await direct.pttl(keys.table(v)) for v in versions}
            assert ttls[100] == -1  # current: no expiry
            no_ttl = [v for v, ttl in ttls.items() if v != 100 and not 0 < ttl <= 60_000]
            assert not no_ttl, f"superseded versions without a grace TTL: {no_ttl}"
            current = await publishers[0].load_table(100)
            assert current is not None and current.version == 100
        finally:
            for p in publishers:
                await p.close()
            await direct.aclose()

    asyncio.run(scenario())


def test_a_lost_sequence_never_reuses_or_hides_a_version(redis_url: str):
    keys = RedisKeys(f"contract-{uuid.uuid4().hex[:10]}", "r-contract")

    async def scenario() -> None:
        store = RedisRoutingStore(redis_url, keys, 60.0, timeout_s=5.0, grace_s=60.0)
        try:
            for _ in range(3):
                await store.publish_table(sample_table())
            await store.client.delete(keys.table_sequence)
            assert await store.publish_table(sample_table()) == 4  # lifted above the pointer
            assert int(await store.client.get(keys.table_pointer)) == 4
            assert 0 < await store.client.pttl(keys.table(3)) <= 60_000
        finally:
            await store.close()

    asyncio.run(scenario())


def test_writes_survive_a_flushed_script_cache(redis_url: str):
    """A restarted Redis has no scripts: the packed EVALSHA gets NOSCRIPT, the store loads the
    script and sends the write again (no degraded mode, nothing lost)."""
    keys = RedisKeys(f"contract-{uuid.uuid4().hex[:10]}", "r-contract")

    async def scenario() -> None:
        store = RedisRoutingStore(redis_url, keys, 60.0, timeout_s=5.0)
        direct = aioredis.Redis.from_url(redis_url)
        try:
            await store.write([1, 2], [b"a" * 20, b"b" * 20])
            await direct.script_flush()
            await store.write([3], [b"c" * 20])
            values, _ = await store.fetch([1, 2, 3, 4])
            assert values == [b"a" * 20, b"b" * 20, b"c" * 20, None]
            assert store.degraded == 0 and not store.in_outage
            assert 0 < await direct.pttl(keys.decision(3)) <= 60_000
        finally:
            await store.close()
            await direct.aclose()

    asyncio.run(scenario())
