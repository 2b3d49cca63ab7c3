"""A small harness for pipeline integration tests: real Kafka, real Redis, worker processes.

Each harness is scoped to a fresh run id (topics, consumer group, Redis namespace), so tests
sharing the session's broker and Redis never see each other's data.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.engine.context import corpus_context_hashes
from pipeline.engine.events import Tier
from pipeline.outcomes import Outcomes
from pipeline.replay import Prepared, offline_phase
from pipeline.settings import Settings
from pipeline.sources import SyntheticSource
from pipeline.stream.collector import Collected, collect
from pipeline.stream.kafka_replay import scoped_settings
from pipeline.table_sets import publish_table_and_stats
from pipeline.stream.replay_checks import exact_reference
from pipeline.stream.producer import produce_chunks, rechunk
from pipeline.stream.topics import ensure_topics, pipeline_topics, wait_for_group
from pipeline.stream.worker_pool import WorkerPool


@dataclass
class Harness:
    settings: Settings
    prepared: Prepared
    chunks: list
    pool: WorkerPool

    @property
    def tokens(self) -> int:
        return sum(len(c) for c in self.chunks)

    async def produce(self, message_size: int = 1, rate: float | None = None) -> None:
        await produce_chunks(rechunk(self.chunks, message_size), self.settings.kafka_bootstrap,
                             self.settings.topic_tokens, rate)

    async def collect(self, expected: int | None = None, idle_timeout_s: float = 60.0,
                      got: Collected | None = None) -> Collected:
        return await collect(self.settings.kafka_bootstrap, self.settings.topic_outcomes,
                             self.tokens if expected is None else expected, self.settings.topic_deadletter,
                             idle_timeout_s, got=got)

    def start_routers(self, count: int, timeout_s: float = 90.0) -> list:
        """Start ``count`` router processes and wait until all of them own partitions."""
        workers = self.pool.start_routers(count)
        ready = asyncio.run(wait_for_group(self.settings.kafka_bootstrap, self.settings.app_id, count, timeout_s))
        assert ready, f"router workers did not join the group\n{self.worker_logs()}"
        return workers

    def missing(self, got: Collected) -> list[tuple[str, int]]:
        """Events without an outcome, in corpus order."""
        return [(c.stream, c.first_seq + i) for c in self.chunks for i in range(len(c))
                if (c.stream, c.first_seq + i) not in got.seen]

    def worker_logs(self) -> str:
        return "\n".join(f"--- {w.name} (exit {w.process.poll()})\n{w.log_tail(15)}" for w in self.pool.workers)


def make_harness(kafka: str, redis: str, tmp_path: Path, spec: SyntheticSpec, **overrides) -> Harness:
    base = Settings.load(env={}, cli={}).with_(kafka_bootstrap=kafka, redis_url=redis, partitions=4,
                                                session_timeout_s=6.0, log_level="info", **overrides)
    prepared, rest = offline_phase(SyntheticSource(spec), base)
    settings = scoped_settings(base, uuid.uuid4().hex[:8], prepared.vocab_size)
    asyncio.run(ensure_topics(kafka, pipeline_topics(settings)))
    prepared.table.version, _ = asyncio.run(publish_table_and_stats(settings, prepared.table, None))
    return Harness(settings, prepared, list(rest), WorkerPool(settings, tmp_path / "logs"))


def reference_context_hashes(h: Harness) -> dict[tuple[str, int], int]:
    """(stream, seq) -> the context hash the router must have used (from the corpus itself)."""
    return corpus_context_hashes(h.chunks, h.settings.context_window)


def check_contexts(h: Harness, outcomes: Outcomes) -> None:
    """Every outcome's context hash matches the corpus: windows continued correctly."""
    ref = reference_context_hashes(h)
    wrong = [(s, q) for s, q, c in zip(outcomes.streams, outcomes.seqs.tolist(), outcomes.layers[0].ctx.tolist())
             if ref[(s, q)] != c]
    assert not wrong, f"{len(wrong)} outcomes with a wrong context, e.g. {wrong[:5]}"


def check_exact(h: Harness, outcomes: Outcomes) -> None:
    """Learned and cached decisions equal the learned router's decisions for the same events."""
    streams, seqs, _, experts, weights = exact_reference(h.prepared, h.chunks, h.settings)
    index = {(s, q): i for i, (s, q) in enumerate(zip(streams, seqs.tolist()))}
    layer = outcomes.layers[0]
    exact_tiers = (layer.tiers == Tier.LEARNED) | (layer.tiers == Tier.CACHE)
    rows = np.asarray([index[(s, q)] for s, q in zip(outcomes.streams, outcomes.seqs.tolist())], dtype=np.int64)
    assert (layer.experts[exact_tiers] == experts[rows[exact_tiers]]).all()
    np.testing.assert_allclose(layer.weights[exact_tiers], weights[rows[exact_tiers]], atol=1e-5)


def arrival_order_ok(outcomes: Outcomes) -> bool:
    """Within each stream, distinct outcomes arrived in increasing seq order."""
    last: dict[str, int] = {}
    for stream, seq in zip(outcomes.streams, outcomes.seqs.tolist()):
        if seq <= last.get(stream, -1):
            return False
        last[stream] = seq
    return True
