"""The stuck table recovery, made to happen every time: a fetch that spans a rebalance returns
the changelog records the recovery has just sought to, while the flow is still stopped (injected
by ``fetch_race/sitecustomize.py`` in one worker; in the chaos suite it happened by chance, rarely).

Two waves of events: the first with one worker, which then sits idle with a fetch waiting; a
second worker joins; the first worker's recovery must still finish and route its share of the
second wave. Without the consumer thread's give-back its recovery never ends
(``No event received for active tp ... since recovery start``) and its partitions' events of the
second wave are missing.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.stream.collector import Collected
from pipeline.stream.producer import produce_chunks, rechunk
from pipeline.stream.topics import wait_for_group

from .harness import make_harness

pytestmark = pytest.mark.integration

INJECTION = Path(__file__).resolve().parent / "fetch_race"


@pytest.mark.parametrize("intake", ["batched", "faust"])
def test_a_fetch_returning_the_recovery_s_records_into_a_stopped_flow_loses_nothing(
        kafka_bootstrap: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, intake: str) -> None:
    arm = tmp_path / "arm-fetch-race"
    monkeypatch.setenv("VAR_TEST_FETCH_RACE", str(arm))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(INJECTION), os.environ.get("PYTHONPATH")) if p))
    h = make_harness(kafka_bootstrap, redis_url, tmp_path,
                     SyntheticSpec(vocab_size=500, num_streams=12, tokens_per_stream=400, seed=5), intake=intake)
    half = len(h.chunks) // 2
    first_wave = sum(len(c) for c in h.chunks[:half])

    async def produce(chunks: list) -> None:
        await produce_chunks(rechunk(chunks, 4), h.settings.kafka_bootstrap, h.settings.topic_tokens)

    first = h.start_routers(1)[0]
    try:
        got = Collected()
        asyncio.run(produce(h.chunks[:half]))
        asyncio.run(h.collect(expected=first_wave, idle_timeout_s=60, got=got))
        assert got.distinct == first_wave, h.worker_logs()
        arm.touch()  # the idle worker's next fetch claims it
        deadline = time.monotonic() + 20
        while arm.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not arm.exists(), f"the first worker never fetched again\n{h.worker_logs()}"
        h.pool.start_routers(1, prefix="late")
        assert asyncio.run(wait_for_group(h.settings.kafka_bootstrap, h.settings.app_id, 2, 60)), h.worker_logs()
        asyncio.run(produce(h.chunks[half:]))
        asyncio.run(h.collect(idle_timeout_s=30, got=got))
    finally:
        h.pool.stop_all()
    log = first.log_path.read_text(errors="replace")
    assert "fetch-race: drained" in log, f"the race was not injected\n{h.worker_logs()}"
    assert got.distinct == h.tokens, (f"missing {h.tokens - got.distinct} of the second wave: {h.missing(got)[:5]}"
                                      f"\n{h.worker_logs()}")
    assert "given back" in log
