"""The routing-store contract on the in-memory twin, and the degraded-mode back-off of both stores
(the Redis store on a fake, failing client and a fake clock)."""
from __future__ import annotations

import asyncio
import hashlib
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Sequence

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from pipeline.engine.cache import CachePolicy
from pipeline.stack.ports import free_port
from pipeline.stores.base import DegradedMode, StoreUnavailable
from pipeline.stores.memory_store import MemoryRoutingStore
from pipeline.stores.keys import RedisKeys
from pipeline.stores.redis_store import RedisRoutingStore
from tests.store_contract import StoreContract, sample_table


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryHarness:
    def __init__(self, ttl_s: float, layers: int = 1) -> None:
        self.clock = FakeClock()
        self.ttl_s, self.grace_s, self.backoff_s, self.margin_s = ttl_s, 300.0, 0.05, 0.001
        self.store = MemoryRoutingStore(CachePolicy(ttl_s=ttl_s), clock=self.clock, grace_s=self.grace_s,
                                        min_backoff_s=self.backoff_s, layers=layers)

    async def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    async def version_ttl(self, version: int, layer: int = 0) -> float | None:
        return self.store.ttl_s(version, layer)

    async def put_raw_table(self, version: int, raw: bytes, layer: int = 0) -> None:
        self.store.tables[(version, layer)] = raw

    async def drop_table(self, version: int, layer: int) -> None:
        del self.store.tables[(version, layer)]

    async def go_down(self) -> None:
        self.store.set_available(False)

    async def come_back(self) -> None:
        self.store.set_available(True)


class TestMemoryStoreContract(StoreContract):
    @asynccontextmanager
    async def harness(self, ttl_s: float | None = None, layers: int = 1) -> AsyncIterator[MemoryHarness]:
        yield MemoryHarness(ttl_s or 60.0, layers)


class FakeConnection:
    """A pooled connection taking packed commands (the store's hand-packed MGET)."""

    def __init__(self, redis: "FakeRedis") -> None:
        self.redis, self.replies, self.disconnects = redis, [], 0

    async def send_packed_command(self, command: bytes, check_health: bool = True) -> None:
        count, name = command.split(b"\r\n")[0], command.split(b"\r\n")[2]
        assert count.startswith(b"*") and name in (b"MGET", b"EVALSHA"), command[:40]
        self.redis._reach(name.decode().lower())
        self.replies.append([None] * (int(count[1:]) - 1) if name == b"MGET" else 0)

    async def read_response(self) -> object:
        return self.replies.pop(0)

    async def disconnect(self) -> None:
        self.disconnects += 1
        self.replies.clear()


class FakePool:
    def __init__(self, redis: "FakeRedis") -> None:
        self.connection, self.in_use = FakeConnection(redis), 0

    async def get_connection(self, command_name: str | None = None) -> FakeConnection:
        self.in_use += 1
        return self.connection

    async def release(self, connection: FakeConnection) -> None:
        self.in_use -= 1


class FakeRedis:
    """Just enough of ``redis.asyncio.Redis`` for the hot path; every call is recorded and fails
    with a connection error while ``down``."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.down = False
        self.connection_pool = FakePool(self)

    def _reach(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise RedisConnectionError("fake outage")

    def register_script(self, source: str) -> Callable[..., Any]:
        async def script(keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
            self._reach("evalsha")
            return len(keys)

        script.sha = hashlib.sha1(source.encode()).hexdigest()  # type: ignore[attr-defined]
        return script

    async def mget(self, names: Sequence[str]) -> list[bytes | None]:
        self._reach("mget")
        return [None] * len(names)

    async def get(self, name: str) -> bytes | None:
        self._reach("get")
        return None

    async def aclose(self) -> None:
        pass


def memory_store(clock: FakeClock, max_backoff_s: float) -> tuple[DegradedMode, Callable[[bool], None]]:
    store = MemoryRoutingStore(clock=clock, max_backoff_s=max_backoff_s, min_backoff_s=0.125)
    return store, store.set_available


def fake_redis_store(clock: FakeClock, max_backoff_s: float) -> tuple[DegradedMode, Callable[[bool], None]]:
    fake = FakeRedis()
    store = RedisRoutingStore("redis://unused", RedisKeys("ns", "r"), 60.0, client=fake,  # type: ignore[arg-type]
                              clock=clock, max_backoff_s=max_backoff_s, min_backoff_s=0.125)

    def set_available(up: bool) -> None:
        fake.down = not up

    return store, set_available


@pytest.mark.parametrize("make", [memory_store, fake_redis_store], ids=["memory", "redis-fake-client"])
def test_back_off_doubles_up_to_the_maximum_and_the_first_success_ends_the_outage(make) -> None:
    clock = FakeClock()
    store, set_available = make(clock, 1.0)

    async def scenario() -> None:
        set_available(False)
        start = clock.now
        expected_delays = [0.125, 0.25, 0.5, 1.0, 1.0]  # doubling, capped at max_backoff_s
        for attempt, delay in enumerate(expected_delays, start=1):
            assert await store.fetch([1]) == ([None], None)  # type: ignore[attr-defined]
            assert store.round_trips == attempt and store.backoff_s == delay
            assert store.retry_at == clock.now + delay
            clock.now += delay / 2  # within the back-off: nothing reaches the store
            assert await store.fetch([1]) == ([None], None)  # type: ignore[attr-defined]
            await store.write([1], [b"x"])  # type: ignore[attr-defined]
            with pytest.raises(StoreUnavailable):
                await store.load_table(1)  # type: ignore[attr-defined]
            assert store.round_trips == attempt
            clock.now += delay / 2
        assert store.outages == 1 and store.in_outage and store.degraded == 4 * len(expected_delays)
        assert clock.now == start + sum(expected_delays)  # exact binary fractions
        set_available(True)
        assert await store.fetch([1]) == ([None], None)  # type: ignore[attr-defined]
        assert not store.in_outage and store.backoff_s == 0.0 and store.round_trips == 6
        set_available(False)  # a new outage starts from the minimum delay again
        await store.fetch([1])  # type: ignore[attr-defined]
        assert store.outages == 2 and store.backoff_s == 0.125

    asyncio.run(scenario())


def test_the_redis_store_makes_no_redis_call_while_backing_off() -> None:
    clock, fake = FakeClock(), FakeRedis()
    store = RedisRoutingStore("redis://unused", RedisKeys("ns", "r"), 60.0, client=fake,  # type: ignore[arg-type]
                              clock=clock)

    async def scenario() -> None:
        fake.down = True
        with pytest.raises(StoreUnavailable, match="load_table"):
            await store.load_table(3)
        assert fake.calls == ["mget"]
        await store.fetch([1, 2])
        await store.write([1], [b"x"])
        assert fake.calls == ["mget"]
        clock.now += store.backoff_s
        fake.down = False
        await store.write([1], [b"x"])
        assert fake.calls == ["mget", "evalsha"] and not store.in_outage

    asyncio.run(scenario())


def test_publishing_raises_during_an_outage() -> None:
    fake = FakeRedis()
    redis_store = RedisRoutingStore("redis://unused", RedisKeys("ns", "r"), 60.0, client=fake)  # type: ignore[arg-type]
    memory = MemoryRoutingStore()
    fake.down = True
    memory.set_available(False)
    with pytest.raises(RedisConnectionError):
        asyncio.run(redis_store.publish_table(sample_table()))
    with pytest.raises(StoreUnavailable):
        asyncio.run(memory.publish_table(sample_table()))
    assert memory.sequence == 0 and memory.pointer is None
    assert redis_store.degraded == memory.degraded == 0  # publishing is not degraded-mode accounting


def test_an_unreachable_redis_is_an_outage_not_a_missing_table() -> None:
    async def scenario() -> None:
        store = RedisRoutingStore(f"redis://127.0.0.1:{free_port()}/0", RedisKeys("ns", "r"), 60.0, timeout_s=0.2)
        try:
            with pytest.raises(StoreUnavailable):
                await store.load_table(1)
            assert store.in_outage and store.round_trips == 1
        finally:
            await store.close()

    asyncio.run(scenario())


def test_memory_versions_come_from_a_sequence_and_every_superseded_one_expires() -> None:
    clock = FakeClock()
    store = MemoryRoutingStore(clock=clock, grace_s=10.0)

    async def scenario() -> list[int]:
        return list(await asyncio.gather(*(store.publish_table(sample_table()) for _ in range(20))))

    versions = asyncio.run(scenario())
    assert sorted(versions) == list(range(1, 21)) and store.pointer == 20
    assert store.ttl_s(20) is None and all(store.ttl_s(v) == pytest.approx(10.0) for v in range(1, 20))
    clock.now += 10.0
    assert all(asyncio.run(store.load_table(v)) is None for v in range(1, 20))
    assert asyncio.run(store.load_table(20)) is not None
    del store.tables[(20, 0)]  # versions are never reused, even when the newest table is lost
    assert asyncio.run(store.publish_table(sample_table())) == 21


def test_a_failed_fetch_drops_its_connection_and_returns_it_to_the_pool() -> None:
    """A reply that was not read (an error or a timeout mid-read) must not reach the next command."""
    fake = FakeRedis()
    store = RedisRoutingStore("redis://unused", RedisKeys("ns", "r"), 60.0, client=fake)  # type: ignore[arg-type]
    conn = fake.connection_pool.connection

    async def broken() -> list[bytes | None]:
        raise RedisConnectionError("reset mid-reply")

    async def scenario() -> None:
        conn.read_response = broken  # type: ignore[method-assign]
        assert await store.fetch([1, 2, 3]) == ([None, None, None], None)
        assert conn.disconnects == 1 and fake.connection_pool.in_use == 0 and store.in_outage

    asyncio.run(scenario())
