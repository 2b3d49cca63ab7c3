"""Create the pipeline's topics with the configured partition counts (idempotent).

Faust only creates its internal topics (table changelogs); the token, outcome and dead-letter
topics are created here so their partition counts are the configured ones rather than the
broker's ``num.partitions`` -- the window table must have as many partitions as the token topic.
"""
from __future__ import annotations

import asyncio
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from pipeline.errors import VARError
from pipeline.settings import Settings

from .kafka_access import KafkaAccess, kafka_access

_TOPIC_ALREADY_EXISTS = 36


class TopicError(VARError, RuntimeError):
    """Topics cannot be created or have the wrong shape; one-line message."""


def pipeline_topics(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions for a router deployment."""
    return {settings.topic_tokens: settings.partitions, settings.topic_outcomes: settings.partitions,
            settings.topic_deadletter: 1, settings.topic_certificates: 1}


async def started_admin(kafka: KafkaAccess | str) -> AIOKafkaAdminClient:
    """A started admin client (the caller closes it); :class:`TopicError` if Kafka is unreachable
    or refuses the credentials."""
    access = kafka_access(kafka)
    admin = access.admin(request_timeout_ms=15000)
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise TopicError(refusal(access, exc)) from None
    return admin


def refusal(access: KafkaAccess, exc: BaseException) -> str:
    """One line for a client that could not connect or log in (never the password)."""
    if isinstance(exc, KafkaConnectionError):
        return f"cannot reach Kafka at {access.bootstrap} ({access.protocol})"
    return f"Kafka at {access.bootstrap} refused the connection ({access.protocol}): {type(exc).__name__}"


async def ensure_topics(bootstrap: KafkaAccess | str, topics: dict[str, int], replication: int = 1) -> None:
    """Create missing topics (``replication`` copies); fail if an existing one has a different
    partition count."""
    admin = await started_admin(bootstrap)
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, count, replication) for name, count in topics.items() if name not in existing]
        if missing:
            response = await admin.create_topics(missing)
            for name, code, *_ in response.topic_errors:
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise TopicError(f"cannot create topic {name} (Kafka error code {code})")
        for name, count in (await _partition_counts(admin, list(topics))).items():
            if count != topics[name]:
                raise TopicError(f"topic {name} has {count} partitions, expected {topics[name]} (VAR_PARTITIONS)")
    except KafkaError as exc:
        raise TopicError(f"Kafka admin request failed: {exc}") from None
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str], wait_s: float = 15.0) -> dict[str, int]:
    """Partitions per topic; a topic created a moment ago may report none until its metadata has
    propagated, so wait (briefly) until every topic reports some."""
    deadline = time.monotonic() + wait_s
    while True:
        counts = {meta["topic"]: len(meta["partitions"]) for meta in await admin.describe_topics(names)}
        if all(counts.get(n, 0) > 0 for n in names) or time.monotonic() > deadline:
            return {n: counts.get(n, 0) for n in names}
        await asyncio.sleep(0.2)


async def partition_ids(bootstrap: KafkaAccess | str, topic: str) -> list[int]:
    """The partition ids of ``topic``; :class:`TopicError` if Kafka is unreachable or the topic
    does not exist. (A consumer without a subscription knows no topic metadata, so ask the admin API.)"""
    admin = await started_admin(bootstrap)
    try:
        meta = (await admin.describe_topics([topic]))[0]
    finally:
        await admin.close()
    if meta.get("error_code") or not meta.get("partitions"):
        raise TopicError(f"topic {topic} does not exist")
    return sorted(p["partition"] for p in meta["partitions"])


async def group_members(bootstrap: KafkaAccess | str, group_id: str) -> tuple[str, int]:
    """(state, number of members) of a consumer group, e.g. ("Stable", 2)."""
    admin = kafka_access(bootstrap).admin(request_timeout_ms=15000)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    group = responses[0].to_object()["groups"][0]
    return str(group.get("state", "")), len(group.get("members", []))


async def wait_for_group(bootstrap: KafkaAccess | str, group_id: str, members: int, timeout_s: float = 60.0) -> bool:
    """Wait until the group is Stable with at least ``members`` members (workers are assigned)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state, count = await group_members(bootstrap, group_id)
        except KafkaError:
            state, count = "unknown", 0
        if state == "Stable" and count >= members:
            return True
        await asyncio.sleep(0.5)
    return False


async def delete_run_topics(bootstrap: KafkaAccess | str, settings: Settings) -> list[str]:
    """Delete what a finished run created on the broker: the pipeline's topics
    (:func:`pipeline_topics`) and Faust's internal ones of its app id (``<app id>-...``: the
    window changelog, the assignor's leader topic). For run-scoped settings only (a bench case,
    see :func:`pipeline.stream.kafka_replay.scoped_settings`): a deployment's topics are its
    data. Returns the names deleted."""
    admin = await started_admin(bootstrap)
    try:
        ours = set(pipeline_topics(settings))
        names = sorted(t for t in await admin.list_topics() if t in ours or t.startswith(f"{settings.app_id}-"))
        if names:
            await admin.delete_topics(names)
        return names
    except KafkaError as exc:
        raise TopicError(f"Kafka admin request failed: {exc}") from None
    finally:
        await admin.close()
