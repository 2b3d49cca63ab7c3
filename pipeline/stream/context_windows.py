"""The router's per-stream context windows in a Faust table, kept bounded.

The table maps a stream id (raw UTF-8 key, ``use_partitioner=True``, so a window lives on the
partition number of its stream's token messages) to ``[last_seq, last_offset, *last W-1
tokens]``, backed by a changelog topic.

Bounded memory, by a documented rule:

* **Idle streams are forgotten.** A stream with no routed event for ``idle_s`` seconds has its
  window deleted -- a changelog tombstone, so the next owner of the partition forgets it too.
  An event of a forgotten stream starts a fresh window (its context holds only what follows).
  ``idle_s`` must exceed the longest time a message can wait for redelivery (commit interval
  plus a rebalance), or a late redelivery would be routed again instead of being skipped.

A worker also keeps (in Faust's in-memory store) the windows of partitions it owned before a
rebalance moved them away; Faust's recovery relies on them when a partition comes back, so they
are not dropped here. They are bounded by the streams alive when the partition moved.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Iterable

from aiokafka.partitioner import murmur2

from pipeline.engine.context import ContextWindow

log = logging.getLogger(__name__)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the Kafka default (murmur2) partitioner picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


ChangelogSend = Callable[[bytes, Any], Awaitable[Any]]


class ContextWindowTable:
    """Window lookup, write and idle sweep over a Faust table (tests pass plain dicts).

    ``changelog(key, value)`` sends one changelog record and returns its delivery future;
    :meth:`write` stores locally and waits for every record's acknowledgement, so a window is
    durable before the offsets it covers may be committed. (Faust's own ``table[key] = value``
    queues the record in a buffer whose ``flush`` can return before it was sent.) Without
    ``changelog`` (tests), ``table[key] = value`` is used.
    """

    def __init__(self, table: Any, partitions: int, idle_s: float,
                 clock: Callable[[], float] = time.monotonic, changelog: ChangelogSend | None = None) -> None:
        self.table, self.partitions, self.idle_s, self.clock = table, partitions, idle_s, clock
        self.local = getattr(table, "data", table)
        self.changelog = changelog
        self.touched: dict[bytes, float] = {}
        self.forgotten = 0

    def lookup(self, stream: str) -> ContextWindow | None:
        value = self.table.get(stream.encode())
        return ContextWindow.from_list(value) if value is not None else None

    async def write(self, windows: dict[str, ContextWindow]) -> None:
        """Write each touched stream's window once (a changelog record each); returns when the
        broker acknowledged every record (raises if a send failed: nothing may be committed)."""
        now, pending = self.clock(), []
        for stream_id, window in windows.items():
            key, value = stream_id.encode(), window.to_list()
            if self.changelog is None:
                self.table[key] = value
            else:
                self.local[key] = value
                pending.append(await self.changelog(key, value))
            self.touched[key] = now
        if pending:
            await asyncio.gather(*pending)

    def __len__(self) -> int:
        return len(self.local)

    def sweep(self, assigned: Iterable[int]) -> int:
        """Tombstone the windows of owned partitions idle for ``idle_s``; returns how many.

        A window this worker never touched (restored from the changelog) starts its idle clock
        at the first sweep that sees it.
        """
        owned, now = set(assigned), self.clock()
        idle = []
        for key in list(self.local.keys()):
            if key_partition(key, self.partitions) not in owned:
                continue
            seen = self.touched.setdefault(key, now)
            if now - seen >= self.idle_s:
                idle.append(key)
        for key in idle:
            del self.table[key]
            self.touched.pop(key, None)
        self.forgotten += len(idle)
        if idle:
            log.info("forgot %d idle stream windows (no event for %.0f s)", len(idle), self.idle_s)
        return len(idle)
