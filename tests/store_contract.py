"""The routing-store contract, one suite for every store (see ``pipeline/stores/base.py``).

A backend test module subclasses :class:`StoreContract` (as ``Test...``) and implements
:meth:`StoreContract.harness`: an async context manager yielding a :class:`Harness` on a fresh,
empty store. Time-dependent checks go through ``Harness.advance`` (a fake clock for the memory
store, real sleeps for Redis), so the same scenarios run on both.
"""
from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any, Awaitable, Callable, Protocol

import pytest

from pipeline.engine.table import RoutingTable
from pipeline.stores.base import StoreUnavailable

VALUE_A, VALUE_B = b"\x01" * 20, b"\x02" * 20
LAYERS = 3  # the multi-layer scenarios' table sets


def sample_table(router_id: str = "r-contract") -> RoutingTable:
    return RoutingTable.empty(vocab_size=32, num_experts=4, top_k=2, router_id=router_id)


def sample_tables(layers: int = LAYERS) -> list[RoutingTable]:
    """One table per layer, told apart by their router ids (``r-contract-l0``, ...)."""
    return [sample_table(f"r-contract-l{layer}") for layer in range(layers)]


class Harness(Protocol):
    """A fresh store plus the backend-specific knobs the contract needs."""

    store: Any  # a RoutingStore with the degraded-mode counters (round_trips, degraded, ...)
    ttl_s: float  # the decision TTL the store was built with
    grace_s: float  # the superseded-table grace period
    backoff_s: float  # the first back-off delay after a failure (min_backoff_s)
    margin_s: float  # slack added to waits (real time needs some)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the store's clock."""
        ...

    async def version_ttl(self, version: int, layer: int = 0) -> float | None:
        """Seconds until ``layer``'s table of ``version`` expires; None if it has no expiry (or is missing)."""
        ...

    async def put_raw_table(self, version: int, raw: bytes, layer: int = 0) -> None:
        """Store ``raw`` as ``layer``'s table of ``version`` behind the store's back (no pointer move)."""
        ...

    async def drop_table(self, version: int, layer: int) -> None:
        """Lose ``layer``'s table of ``version`` behind the store's back (eviction, an operator)."""
        ...

    async def go_down(self) -> None:
        """Start an outage: the store's next round trip fails like a timeout."""
        ...

    async def come_back(self) -> None:
        """End the outage (the store notices at its next attempt after the back-off)."""
        ...


Scenario = Callable[[Harness], Awaitable[None]]


class StoreContract:
    """The contract's test methods; subclasses provide :meth:`harness`."""

    def harness(self, ttl_s: float | None = None, layers: int = 1) -> AbstractAsyncContextManager[Harness]:
        """A fresh store of ``layers`` layers; ``ttl_s`` overrides the backend's (short) decision TTL."""
        raise NotImplementedError

    def run(self, scenario: Scenario, ttl_s: float | None = None, layers: int = 1) -> None:
        async def main() -> None:
            async with self.harness(ttl_s, layers) as h:
                await scenario(h)

        asyncio.run(main())

    def test_fetch_of_unknown_keys_is_all_misses_and_no_version(self) -> None:
        async def scenario(h: Harness) -> None:
            assert await h.store.fetch([1, 2, 3]) == ([None, None, None], None)
            assert await h.store.fetch([]) == ([], None)

        self.run(scenario)

    def test_written_decisions_are_hits_until_their_ttl_expires(self) -> None:
        async def scenario(h: Harness) -> None:
            await h.store.write([1, 2], [VALUE_A, VALUE_B])
            await h.store.write([], [])  # a no-op, not a round trip
            assert await h.store.fetch([2, 3, 1]) == ([VALUE_B, None, VALUE_A], None)
            await h.advance(h.ttl_s + h.margin_s)
            assert await h.store.fetch([1, 2]) == ([None, None], None)

        self.run(scenario)

    def test_round_trips_one_per_call_and_none_for_an_empty_write(self) -> None:
        async def scenario(h: Harness) -> None:
            await h.store.fetch([1])
            await h.store.write([], [])
            await h.store.write([1], [VALUE_A])
            assert await h.store.load_table(1) is None
            assert h.store.round_trips == 3 and h.store.degraded == 0 and not h.store.in_outage

        self.run(scenario)

    def test_publish_allocates_increasing_versions_and_moves_the_pointer(self) -> None:
        async def scenario(h: Harness) -> None:
            versions = [await h.store.publish_table(sample_table()) for _ in range(3)]
            assert versions == [1, 2, 3]
            _, pointer = await h.store.fetch([7])
            assert pointer == 3
            current = await h.store.load_table(3)
            assert current is not None and current.version == 3 and current.router_id == "r-contract"
            assert await h.version_ttl(3) is None  # the current version never expires

        self.run(scenario)

    def test_a_superseded_version_loads_within_its_grace_then_disappears(self) -> None:
        async def scenario(h: Harness) -> None:
            old = await h.store.publish_table(sample_table())
            new = await h.store.publish_table(sample_table())
            ttl = await h.version_ttl(old)
            assert ttl is not None and 0 < ttl <= h.grace_s
            superseded = await h.store.load_table(old)
            assert superseded is not None and superseded.version == old
            await h.advance(h.grace_s + h.margin_s)
            assert await h.store.load_table(old) is None
            current = await h.store.load_table(new)
            assert current is not None and current.version == new

        self.run(scenario)

    def test_a_missing_or_unreadable_version_is_none(self) -> None:
        async def scenario(h: Harness) -> None:
            assert await h.store.load_table(42) is None
            await h.put_raw_table(43, b"not a table")
            assert await h.store.load_table(43) is None
            assert not h.store.in_outage and h.store.degraded == 0

        self.run(scenario)

    def test_an_outage_degrades_every_call_backs_off_and_ends_at_the_first_success(self) -> None:
        async def scenario(h: Harness) -> None:
            store = h.store
            version = await store.publish_table(sample_table())
            await store.write([1], [VALUE_A])
            await h.go_down()
            trips = store.round_trips
            with pytest.raises(StoreUnavailable):
                await store.load_table(version)  # a real failed round trip
            assert store.round_trips == trips + 1
            assert store.in_outage and store.degraded == 1 and store.outages == 1
            # backing off: no round trip at all, still degraded
            assert await store.fetch([1, 2]) == ([None, None], None)
            await store.write([2], [VALUE_B])  # dropped, no error
            with pytest.raises(StoreUnavailable):
                await store.load_table(version)
            assert store.round_trips == trips + 1 and store.degraded == 4
            await h.come_back()
            assert await store.fetch([1]) == ([None], None)  # back-off not over yet
            await h.advance(h.backoff_s + h.margin_s)
            assert await store.fetch([1, 2]) == ([VALUE_A, None], version)  # the dropped write is gone
            assert not store.in_outage and store.outages == 1 and store.round_trips == trips + 2
            table = await store.load_table(version)
            assert table is not None and table.version == version

        self.run(scenario, ttl_s=60.0)  # the cached decision must outlive the outage

    # --- several layers: per-layer decisions, table sets published and loaded whole ---------
    def test_each_layer_has_its_own_decisions_in_one_round_trip(self) -> None:
        async def scenario(h: Harness) -> None:
            store = h.store
            await store.write([1, 1, 2], [VALUE_A, VALUE_B, VALUE_A], per_layer=[1, 2, 0])
            trips = store.round_trips
            values, version = await store.fetch([1, 2, 1, 2, 1], per_layer=[2, 2, 1])
            assert values == [VALUE_A, None, VALUE_B, VALUE_A, None] and version is None
            assert store.round_trips == trips + 1  # every layer's keys in ONE fetch
            with pytest.raises(ValueError):
                await store.fetch([1, 2], per_layer=[1, 0, 0])  # does not add up
            with pytest.raises(ValueError):
                await store.fetch([1])  # a multi-layer store needs the split

        self.run(scenario, layers=LAYERS)

    def test_a_table_set_is_published_under_one_version_and_loaded_whole(self) -> None:
        async def scenario(h: Harness) -> None:
            store = h.store
            assert [await store.publish_tables(sample_tables()) for _ in range(2)] == [1, 2]
            _, pointer = await store.fetch([], per_layer=[0] * LAYERS)
            assert pointer == 2
            trips = store.round_trips
            tables = await store.load_tables(2)
            assert store.round_trips == trips + 1  # every layer in ONE round trip
            assert tables is not None and [t.version for t in tables] == [2] * LAYERS
            assert [t.router_id for t in tables] == [f"r-contract-l{layer}" for layer in range(LAYERS)]
            assert [await h.version_ttl(2, layer) for layer in range(LAYERS)] == [None] * LAYERS
            with pytest.raises(ValueError):
                await store.publish_tables(sample_tables(LAYERS - 1))  # a set has every layer
            with pytest.raises(ValueError):
                await store.load_table(2)  # the one-layer shorthand does not apply

        self.run(scenario, layers=LAYERS)

    def test_every_layer_of_a_superseded_set_expires_together(self) -> None:
        async def scenario(h: Harness) -> None:
            old = await h.store.publish_tables(sample_tables())
            new = await h.store.publish_tables(sample_tables())
            ttls = [await h.version_ttl(old, layer) for layer in range(LAYERS)]
            assert all(t is not None and 0 < t <= h.grace_s for t in ttls), ttls
            assert await h.store.load_tables(old) is not None
            await h.advance(h.grace_s + h.margin_s)
            assert await h.store.load_tables(old) is None
            current = await h.store.load_tables(new)
            assert current is not None and [t.version for t in current] == [new] * LAYERS

        self.run(scenario, layers=LAYERS)

    def test_a_set_with_a_lost_or_unreadable_layer_does_not_load(self) -> None:
        async def scenario(h: Harness) -> None:
            first = await h.store.publish_tables(sample_tables())
            second = await h.store.publish_tables(sample_tables())
            await h.drop_table(second, LAYERS - 1)
            assert await h.store.load_tables(second) is None  # all layers or none
            await h.put_raw_table(first, b"not a table", 1)
            assert await h.store.load_tables(first) is None
            assert not h.store.in_outage and h.store.degraded == 0

        self.run(scenario, layers=LAYERS)
