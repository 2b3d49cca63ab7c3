"""The context-window table's changelog restore: a window only ever moves forward.

Kafka fences a worker that the group has moved on from only where the broker takes part: its
commits carry the consumer generation and fail once it is stale. Its changelog sends carry
nothing of the kind. A worker frozen past its session timeout (a stalled VM, SIGSTOP, a very long
pause) resumes as a zombie: before its consumer thread learns it was evicted, the agent finishes
the batch it was in -- its outcomes are acknowledged, then its windows are written to the
changelog, after the new owner's newer records for the same streams. Faust restores a table by
applying its changelog in order, last record wins, so the next restore (the zombie's own rejoin
triggers one) gave those streams windows from the past, and their next events wrong contexts.

A window is ``[last_seq, last_offset, *tokens]`` and a stream's seq strictly increases, so a
record with a lower ``last_seq`` than the window already restored is stale, whoever wrote it:
:class:`WindowTable` skips it. Nothing is lost by that: every window record is written only after
the outcomes of the events it covers were acknowledged, so the newest one is always covered. A
tombstone (an idle stream forgotten by its owner) always applies. What remains: once compaction
has removed the newer record of a stream that got no event since, the stale one is all there is
(compaction needs the segment to roll, 7 days by default, and the owner's idle sweep tombstones
such a stream after ``VAR_STREAM_IDLE_S``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator

import faust
from faust.types import EventT

log = logging.getLogger(__name__)


def forward_only(events: Iterable[EventT], current: Callable[[Any], Any],
                 skipped: Callable[[], None] = lambda: None) -> Iterator[EventT]:
    """``events`` (changelog records, in log order) without the ones that would move a window
    back: a value whose ``last_seq`` is below the window's at that point -- the table's
    (``current(key)``, None if absent) or a record earlier in ``events``. Tombstones pass.
    ``skipped()`` is called for each record left out."""
    latest: dict[Any, int | None] = {}
    for event in events:
        key, value = event.key, event.value
        if event.message.value is None:
            latest[key] = None
            yield event
            continue
        before = latest[key] if key in latest else _last_seq(current(key))
        seq = _last_seq(value)
        if before is not None and seq is not None and seq < before:
            log.debug("changelog record of stream %r at seq %s is older than its window (seq %s): skipped",
                      key, seq, before)
            skipped()
            continue
        latest[key] = seq
        yield event


def _last_seq(window: Any) -> int | None:
    return int(window[0]) if isinstance(window, (list, tuple)) and window else None


class WindowTable(faust.Table):
    """Faust's table whose changelog restore (recovery and standby replicas) never moves a window
    back (see module docstring). Most skipped records are harmless: a partition that comes back
    to a worker keeps the windows it held, and the whole changelog is replayed over them, older
    history first. ``skipped`` counts them all."""

    skipped = 0

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        before = self.skipped
        super().apply_changelog_batch(forward_only(batch, self.data.get, self._skip))
        if self.skipped > before:
            log.info("table %s: %d changelog records older than their window skipped (history replayed over "
                     "windows kept from an earlier assignment, or late writes of a worker the group had moved "
                     "on from)", self.name, self.skipped - before)

    def _skip(self) -> None:
        self.skipped += 1
