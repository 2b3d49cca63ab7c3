"""Create the pipeline's topics with the configured partition counts (idempotent).

Faust only creates its internal topics (table changelogs); the token, outcome and dead-letter
topics are created here so their partition counts are the configured ones rather than the
broker's ``num.partitions`` -- the window table must have as many partitions as the token topic.
"""
from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from pipeline.settings import Settings

_TOPIC_ALREADY_EXISTS = 36


class TopicError(RuntimeError):
    """Topics cannot be created or have the wrong shape; one-line message."""


def pipeline_topics(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions for a router deployment."""
    return {settings.topic_tokens: settings.partitions, settings.topic_outcomes: settings.partitions,
            settings.topic_deadletter: 1}


async def ensure_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create missing topics; fail if an existing one has a different partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        await admin.start()
    except KafkaConnectionError:
        raise TopicError(f"cannot reach Kafka at {bootstrap}") from None
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, count, 1) for name, count in topics.items() if name not in existing]
        if missing:
            response = await admin.create_topics(missing)
            for name, code, *_ in response.topic_errors:
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise TopicError(f"cannot create topic {name} (Kafka error code {code})")
        for meta in await admin.describe_topics(list(topics)):
            name, count = meta["topic"], len(meta["partitions"])
            if count != topics[name]:
                raise TopicError(f"topic {name} has {count} partitions, expected {topics[name]} (VAR_PARTITIONS)")
    except KafkaError as exc:
        raise TopicError(f"Kafka admin request failed: {exc}") from None
    finally:
        await admin.close()
