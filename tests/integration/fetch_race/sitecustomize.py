"""Test-only fault injection for tests/integration/test_fetch_race.py, loaded by a worker process
whose PYTHONPATH starts with this folder and whose VAR_TEST_FETCH_RACE names an arm file.

It makes one rare interleaving happen every time, once per process (the process that deletes the
arm file): a fetch issued while the flow runs is still waiting when a rebalance stops the flow;
it waits on until the table recovery has sought its changelog partitions, then drains what was
fetched from there, and the recovery's seek is reported done only after that fetch returned --
so the records reach Faust's ``getmany`` while the flow is still stopped. Without the consumer's
give-back (``pipeline.stream.faust_transport.GiveBackConsumerThread``) Faust drops them with the
position past them, and the recovery never becomes ready.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time

ARM = os.environ.get("VAR_TEST_FETCH_RACE")

if ARM:
    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    class _Race:
        consumer = None  # the Faust consumer (for its flow state)
        armed = fired = False
        sought: asyncio.Event | None = None
        drained: asyncio.Event | None = None

    def _say(text: str) -> None:
        print(f"fetch-race: {text}", file=sys.stderr, flush=True)

    def _arm() -> bool:
        if not _Race.armed and not _Race.fired:
            try:
                os.remove(ARM)  # exactly one process claims it
            except FileNotFoundError:
                return False
            _Race.armed, _Race.sought, _Race.drained = True, asyncio.Event(), asyncio.Event()
            _say("armed")
        return _Race.armed

    base_fetch_records = AIOKafkaConsumerThread._fetch_records
    base_seek_wait = AIOKafkaConsumerThread._seek_wait
    base_fetched_records = Fetcher.fetched_records

    async def _fetch_records(self, consumer, active_partitions, timeout=None, max_records=None):  # type: ignore[no-untyped-def]
        _Race.consumer = self.consumer
        return await base_fetch_records(self, consumer, active_partitions, timeout=timeout, max_records=max_records)

    async def fetched_records(self, partitions, timeout=0, max_records=None):  # type: ignore[no-untyped-def]
        c = _Race.consumer
        if c is None or not c.flow_active or not _arm():
            return await base_fetched_records(self, partitions, timeout, max_records)
        deadline = time.monotonic() + (timeout or 0)
        while c.flow_active and time.monotonic() < deadline:  # a fetch with nothing to read, waiting
            await asyncio.sleep(0.005)
        if c.flow_active:
            return await base_fetched_records(self, partitions, 0, max_records)
        assert _Race.sought is not None and _Race.drained is not None
        await asyncio.wait_for(_Race.sought.wait(), 30)
        _Race.armed, _Race.fired = False, True
        records = await base_fetched_records(self, partitions, 5.0, max_records)
        _say(f"drained {sum(len(r) for r in records.values())} records of {len(records)} partitions "
             f"after the recovery's seek, flow active: {c.flow_active}")
        _Race.drained.set()
        return records

    async def _seek_wait(self, consumer, partitions):  # type: ignore[no-untyped-def]
        await base_seek_wait(self, consumer, partitions)
        if _Race.armed and _Race.sought is not None and any(tp.topic.endswith("-changelog") for tp in partitions):
            _say(f"recovery sought {sorted((tp.partition, o) for tp, o in partitions.items())}")
            _Race.sought.set()
            assert _Race.drained is not None
            await asyncio.wait_for(_Race.drained.wait(), 30)

    AIOKafkaConsumerThread._fetch_records = _fetch_records  # type: ignore[method-assign]
    AIOKafkaConsumerThread._seek_wait = _seek_wait  # type: ignore[method-assign]
    Fetcher.fetched_records = fetched_records  # type: ignore[method-assign]
