"""The windows changelog restore never moves a window back (pipeline.stream.window_table)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.stream.window_table import forward_only


@dataclass
class _Message:
    value: Any


@dataclass
class _Event:
    key: bytes
    value: Any

    @property
    def message(self) -> _Message:  # the raw record: None for a tombstone
        return _Message(None if self.value is None else b"raw")


def _restore(table: dict, events: list[_Event]) -> dict:
    """Apply ``events`` as Faust's memory store does: in order, the last record wins."""
    for event in forward_only(events, table.get):
        if event.value is None:
            table.pop(event.key, None)
        else:
            table[event.key] = event.value
    return table


def test_a_record_older_than_the_window_is_skipped_whoever_wrote_it() -> None:
    log = [_Event(b"s", [10, 100, 1, 2, 3]), _Event(b"s", [20, 110, 4, 5, 6]), _Event(b"s", [15, 105, 7, 8, 9])]
    assert _restore({}, log) == {b"s": [20, 110, 4, 5, 6]}


def test_the_table_already_held_counts_as_the_window() -> None:
    table = {b"s": [30, 120, 1, 1, 1]}
    assert _restore(table, [_Event(b"s", [20, 110, 4, 5, 6])]) == {b"s": [30, 120, 1, 1, 1]}
    assert _restore(table, [_Event(b"s", [31, 121, 2, 2, 2])]) == {b"s": [31, 121, 2, 2, 2]}


def test_a_tombstone_applies_and_what_follows_it_starts_afresh() -> None:
    log = [_Event(b"s", [20, 110, 4, 5, 6]), _Event(b"s", None), _Event(b"s", [5, 90, 1, 2, 3])]
    assert _restore({}, log) == {b"s": [5, 90, 1, 2, 3]}
    assert _restore({b"s": [20, 110, 4, 5, 6]}, [_Event(b"s", None)]) == {}


def test_streams_are_independent_and_an_equal_seq_applies() -> None:
    log = [_Event(b"a", [20, 1, 1]), _Event(b"b", [3, 2, 2]), _Event(b"a", [20, 1, 9]), _Event(b"b", [2, 3, 3])]
    assert _restore({}, log) == {b"a": [20, 1, 9], b"b": [3, 2, 2]}


def test_each_skipped_record_is_reported() -> None:
    skipped: list[None] = []
    log = [_Event(b"s", [20, 110, 4, 5, 6]), _Event(b"s", [15, 105, 7, 8, 9]), _Event(b"s", [16, 106, 7, 8, 9])]
    kept = list(forward_only(log, {}.get, lambda: skipped.append(None)))
    assert [e.value[0] for e in kept] == [20] and len(skipped) == 2
