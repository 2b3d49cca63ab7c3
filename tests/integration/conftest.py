"""Session fixtures for integration tests: a real Kafka broker and a real Redis server.

Set KAFKA_BOOTSTRAP / REDIS_URL to use running services instead of starting private ones.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from pipeline.stack.testing import kafka_for_tests, redis_for_tests


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address ("127.0.0.1:PORT") of a broker shared by the whole test session."""
    with kafka_for_tests(tmp_path_factory.mktemp("stack")) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL ("redis://127.0.0.1:PORT/0") of a Redis server shared by the whole test session."""
    with redis_for_tests(tmp_path_factory.mktemp("stack")) as url:
        yield url
