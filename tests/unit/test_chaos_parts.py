"""Pieces of the reliability work that need no broker: window forgetting, poison messages and
their reasons, the chaos checks, the worker data directory."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import numpy as np
from aiokafka.partitioner import DefaultPartitioner

from pipeline.chaos.checks import RunChecks, check_deadletters, check_outcomes, corpus_context_hashes
from pipeline.chaos.poison import KINDS, interleave, poison_set
from pipeline.chaos.scenarios import ACTIONS, CI_RUNS, SCENARIOS
from pipeline.engine.context import ContextWindow
from pipeline.engine.records import encode_chunk
from pipeline.outcomes import Outcomes, decode_outcome
from pipeline.stream.faust_config import worker_datadir
from pipeline.stream.processor import InMessage
from pipeline.stream.producer import oversized_deadletter
from pipeline.stream.context_windows import ContextWindowTable, key_partition

from .test_processor import corpus, make, messages_for


def test_key_partition_is_the_kafka_default_partitioner():
    keys = [f"stream-{i}".encode() for i in range(500)]
    parts = list(range(8))
    assert [key_partition(k, 8) for k in keys] == [DefaultPartitioner()(k, parts, parts) for k in keys]


def test_idle_windows_of_owned_partitions_are_tombstoned_and_others_kept():
    now = [0.0]
    table: dict[bytes, list] = {}
    state = ContextWindowTable(table, 4, idle_s=10.0, clock=lambda: now[0])
    streams = [f"s{i}" for i in range(40)]
    asyncio.run(state.write({s: ContextWindow((1, 2), 0, i) for i, s in enumerate(streams)}))
    owned = [0, 1]
    now[0] = 5.0
    asyncio.run(state.write({streams[0]: ContextWindow((2, 3), 1, 99)}))  # one stream stays active
    now[0] = 12.0
    forgotten = state.sweep(owned)
    left = {k.decode() for k in table}
    assert forgotten == sum(key_partition(s.encode(), 4) in owned for s in streams[1:])
    assert all(key_partition(s.encode(), 4) not in owned or s == streams[0] for s in left)
    assert state.lookup(streams[0]) is not None  # active: kept
    kept_elsewhere = [s for s in streams if key_partition(s.encode(), 4) not in owned]
    assert kept_elsewhere and all(state.lookup(s) is not None for s in kept_elsewhere)  # not ours to forget


def test_every_poison_kind_is_dead_lettered_by_the_router_with_its_reason():
    processor, _, windows = make()
    poison = poison_set(len(KINDS) * 3, 200, seed=3, oversized=0)
    msgs, offset = [], 0
    for p in poison:
        if p.anchor is not None:
            msgs.append(InMessage(p.anchor.stream.encode(), encode_chunk(p.anchor), 0, offset))
            offset += 1
        msgs.append(InMessage(p.key, p.value, 0, offset))
        offset += 1
    out = asyncio.run(processor.process(msgs, windows.get))
    reasons = {dl.value: dl.reason for dl in out.deadletters}
    assert len(out.deadletters) == len(poison)
    for p in poison:
        assert p.reason in reasons[p.value], (p.kind, reasons[p.value])
    routed = Outcomes.concat([decode_outcome(v) for _, v in out.outcomes])
    assert len(routed) == sum(p.anchor is not None for p in poison)  # the anchors are good events


def test_oversized_poison_is_over_the_limit_and_its_dead_letter_under_it():
    [big] = poison_set(1, 200, oversized=1)
    assert big.kind == "oversized" and len(big.value) > 1024 * 1024
    body, headers = oversized_deadletter(big.key, big.value, 1024 * 1024)
    assert len(body) < 100_000 and b"larger than the maximum" in headers["var-reason"]


def test_interleave_keeps_good_order_and_puts_each_anchor_before_its_poison():
    good = [((b"k", b"g%d" % i), 1) for i in range(100)]
    poison = poison_set(30, 50, oversized=0)
    mixed = interleave(good, poison, seed=1)
    assert [m for m in mixed if m[0][1].startswith(b"g")] == good
    values = [m[0][1] for m in mixed]
    for p in poison:
        if p.anchor is not None:
            assert values.index(p.value) > 0 and b'"seq":100' in values[values.index(p.value) - 1]


def test_checks_fail_on_a_missing_event_a_wrong_context_and_a_stray_dead_letter():
    chunks = corpus(30)
    expected = corpus_context_hashes(chunks, 3)
    processor, _, windows = make(records="message")  # one-token records: one can go missing alone
    out = asyncio.run(processor.process(messages_for(chunks), windows.get))
    parts = [decode_outcome(v) for _, v in out.outcomes]
    seen = {(s, q) for p in parts for s, q in zip(p.streams, p.seqs.tolist())}
    ok = RunChecks("t", 1, ended_by_itself=True)
    check_outcomes(ok, expected, parts, seen)
    check_deadletters(ok, [], [])
    assert ok.ok, ok.failures()
    bad = RunChecks("t", 1, ended_by_itself=True)
    tampered = parts[1:]
    tampered[0].layers[0].ctx[:] = tampered[0].layers[0].ctx + 1
    check_outcomes(bad, expected, tampered, seen - {(parts[0].streams[0], int(parts[0].seqs[0]))})
    check_deadletters(bad, [], [(b"k", b"good", {"var-reason": b"x"})])
    assert bad.missing == 1 and bad.context_mismatches == 1 and bad.good_deadlettered == 1 and not bad.ok


def test_scenarios_are_well_formed_and_cover_the_issue():
    assert {"plain-2", "plain-3", "join", "leave", "kill", "broker-restart", "redis-restart", "redis-outage",
            "stats-worker", "poison"} <= set(SCENARIOS)
    assert all(step.action in ACTIONS for s in SCENARIOS.values() for step in s.steps)
    assert sum(step.action == "kill_router" for step in SCENARIOS["kill"].steps) == 2
    assert all(name in SCENARIOS for name, _ in CI_RUNS)
    assert {size for _, size in CI_RUNS} == {1, 64}


def test_worker_datadirs_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"var-worker-{int(dead.stdout)}"
    stale.mkdir()
    mine = worker_datadir(tmp_path, pid=os.getpid())
    assert mine.exists() and not stale.exists()
    assert np.all([p.name.startswith("var-worker-") for p in tmp_path.iterdir()])


def test_window_writes_wait_for_every_changelog_acknowledgement():
    local: dict[bytes, list] = {}
    acked: list[bytes] = []

    class Table(dict):
        data = local

    async def changelog(key, value):
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, lambda: (acked.append(key), future.set_result(None)))
        return future

    state = ContextWindowTable(Table(), 4, 60.0, changelog=changelog)
    asyncio.run(state.write({"a": ContextWindow((1, 2), 5, 9), "b": ContextWindow((3, 4), 6, 10)}))
    assert sorted(acked) == [b"a", b"b"] and local[b"a"] == [5, 9, 1, 2]


def _fire_kill_steps(monkeypatch, stream_ends_after: int) -> tuple[list[str], int]:
    """The kill scenario's steps with every step due at once; the stream ends (``done``) once
    ``stream_ends_after`` steps acted. Returns (actions taken, faults counted as fired)."""
    from types import SimpleNamespace

    from pipeline.chaos import runner

    acted: list[str] = []

    async def scenario() -> int:
        done = asyncio.Event()

        async def act(step, fleet, services):
            acted.append(step.action)
            if len(acted) == stream_ends_after:
                done.set()

        monkeypatch.setattr(runner, "_act", act)
        fleet = SimpleNamespace(fired=0)
        await runner._run_steps(SCENARIOS["kill"].steps, SimpleNamespace(distinct=100), 100, fleet, None, done)
        return fleet.fired

    return acted, asyncio.run(scenario())


def test_a_recovery_due_after_the_stream_ended_is_skipped_but_a_missed_fault_counts(monkeypatch):
    """Faults must land mid-stream; a replacement due when the survivors have already finished
    is not needed, so its absence does not fail the scenario -- a fault's does."""
    planned = sum(not step.recovery for step in SCENARIOS["kill"].steps)
    acted, fired = _fire_kill_steps(monkeypatch, stream_ends_after=3)  # ends during the second kill
    assert acted == ["kill_router", "start_router", "kill_router"] and fired == planned == 2
    acted, fired = _fire_kill_steps(monkeypatch, stream_ends_after=1)  # ends during the first kill
    assert acted == ["kill_router"] and fired == 1 < planned
