"""The chaos suite's CI subset: each fault once, on real Kafka, Redis and worker processes.

Each run routes 150,000 held-out events of the bundled plays (64 streams interleaved) and must
show 0 events missing, every context hash right, every poison message dead-lettered with its
reason, no unexpected worker death and a run that ends by itself (``pipeline.chaos.checks``).
``var chaos`` runs every scenario; ``var chaos SCENARIO --repeat 10`` is the stress run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from pipeline.chaos.runner import ChaosCorpus, ChaosOptions, load_corpus, run_scenario
from pipeline.chaos.scenarios import CI_RUNS, SCENARIOS
from pipeline.chaos.services import ChaosServices
from pipeline.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
EVENTS = 150_000


@pytest.fixture(scope="module")
def base() -> Settings:
    return Settings.load(env={}, cli={}).with_(session_timeout_s=6.0, log_level="info")


@pytest.fixture(scope="module")
def chaos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chaos")


@pytest.fixture(scope="module")
def corpus(base: Settings, chaos_dir: Path) -> ChaosCorpus:
    found = load_corpus(base, ChaosOptions(events=EVENTS, work_dir=chaos_dir))
    assert found.events >= EVENTS and len({c.stream for c in found.chunks}) >= 60
    return found


@pytest.fixture(scope="module")
def services(chaos_dir: Path) -> Iterator[ChaosServices]:
    with ChaosServices(chaos_dir / "services") as running:
        yield running


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("scenario", "message_size"), CI_RUNS, ids=[f"{n}-{s}" for n, s in CI_RUNS])
def test_chaos_scenario_loses_nothing(scenario: str, message_size: int, base: Settings, corpus: ChaosCorpus,
                                      services: ChaosServices, chaos_dir: Path) -> None:
    opts = ChaosOptions(message_size=message_size, events=EVENTS, work_dir=chaos_dir, timeout_s=600.0)
    result = run_scenario(SCENARIOS[scenario], base, services, corpus, opts)
    assert result.ok, (f"{scenario}/{message_size}: {result.failures()}; examples {result.examples}; "
                       f"logs {result.log_dir}")
    assert result.events_in >= EVENTS and result.outcomes_out == result.events_in
    if SCENARIOS[scenario].poison:
        assert result.poison_deadlettered == result.poison_sent == SCENARIOS[scenario].poison
