"""An attached replay checks the running workers' router first, instead of losing its events to
the dead-letter topic when their vocabularies differ."""
from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.replay import ReplayError
from pipeline.sources import SyntheticSource
from pipeline.stores.registry import running_workers
from pipeline.stream.kafka_replay import KafkaReplayOptions, run_kafka_replay

from .harness import make_harness

pytestmark = pytest.mark.integration


def test_attaching_to_workers_of_another_router_fails_up_front(kafka_bootstrap, redis_url, tmp_path):
    h = make_harness(kafka_bootstrap, redis_url, tmp_path, SyntheticSpec(vocab_size=300, num_streams=4,
                                                                         tokens_per_stream=400, seed=5))
    h.start_routers(1)
    try:
        deadline = time.monotonic() + 30
        while not asyncio.run(running_workers(redis_url, h.settings.namespace, h.settings.topic_tokens)):
            assert time.monotonic() < deadline, h.worker_logs()
            time.sleep(0.5)
        [worker] = asyncio.run(running_workers(redis_url, h.settings.namespace, h.settings.topic_tokens))
        assert worker["router_id"] == h.prepared.router.router_id and worker["vocab_size"] == 300
        bigger = SyntheticSource(SyntheticSpec(vocab_size=900, num_streams=4, tokens_per_stream=400, seed=5))
        opts = KafkaReplayOptions(workers=0, attach=True, log_dir=tmp_path / "logs")
        with pytest.raises(ReplayError, match="the running workers use router .* this replay expects"):
            run_kafka_replay(bigger, h.settings.with_(vocab_size=None), opts)
    finally:
        h.pool.stop_all()
