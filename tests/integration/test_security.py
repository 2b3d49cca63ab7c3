"""The secured deployment against real services: Kafka SASL_SSL (SCRAM-SHA-512) and Redis TLS with
ACL users, from ``LocalStack.up(secure=True)`` (the same code as ``var stack up --secure``).

- a replay through 2 router workers and the stats worker is complete and routes like an open run;
- clients without credentials, with wrong ones, or in plain text to a TLS listener are refused;
- the router's Redis user cannot write a table nor read another namespace;
- no secret appears in any log or output of the run.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ConnectionError as RedisConnectionError, NoPermissionError, \
    ResponseError

from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.settings import Settings
from pipeline.sources import SyntheticSource
from pipeline.stack.local_stack import LocalStack
from pipeline.stack.secure import ROLES, StackSecrets, read_env_file
from pipeline.stores.redis_access import RedisAccess
from pipeline.stream.kafka_access import KafkaAccess
from pipeline.stream.kafka_replay import KafkaReplayOptions, run_kafka_replay, scoped_settings
from pipeline.stream.topics import TopicError, ensure_topics
from pipeline.verify.gather import gather
from pipeline.verify.run import verify
from pipeline.verify.sources import KAFKA_PREFIX

NAMESPACE = "secured"
# No table refresh during the run: both runs route with the offline table, so the fast-path
# decisions are the same token for token.
NO_REFRESH = {"refresh_every": 10**9, "refresh_interval_s": 3600.0, "session_timeout_s": 6.0}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path_factory.mktemp("secured-stack"))
    try:
        stack.up(0, 0, 0, secure=True, namespace=NAMESPACE)
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def secrets(secured: LocalStack) -> StackSecrets:
    return StackSecrets(secured.secrets_dir)


def role_settings(stack: LocalStack, role: str = "admin") -> Settings:
    """The operator's settings (admin.env), with ``role``'s login laid over them (``<role>.env``)."""
    env = {**read_env_file(stack.secrets_dir / "admin.env"), **read_env_file(stack.secrets_dir / f"{role}.env")}
    return Settings.load(env=env).with_(**NO_REFRESH)


def secret_values(secrets: StackSecrets) -> list[str]:
    names = [f"{s}-{r}.password" for s in ("kafka", "redis") for r in ROLES] + ["certificate.key"]
    return [secrets.path(n).read_text().strip() for n in names]


def test_replay_through_the_secured_stack_matches_an_open_run(secured, secrets, kafka_bootstrap, redis_url,
                                                               tmp_path):
    source = SyntheticSource(SyntheticSpec(vocab_size=1000, num_streams=12, tokens_per_stream=3000, seed=11))
    opts = dict(workers=2, message_size=8, stats_worker=True)
    secure_run = role_settings(secured)
    report, _ = run_kafka_replay(source, secure_run, KafkaReplayOptions(**opts, log_dir=tmp_path / "secure"))
    open_run = Settings.load(env={}).with_(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, **NO_REFRESH)
    baseline, _ = run_kafka_replay(source, open_run, KafkaReplayOptions(**opts, log_dir=tmp_path / "open"))
    got, want = report.to_dict(), baseline.to_dict()
    assert got["completeness"]["complete"], got["completeness"]
    assert want["completeness"]["complete"], want["completeness"]
    assert got["tokens"] == want["tokens"] == 12 * 3000 * 7 // 10
    assert got["tiers"]["fast"] == want["tiers"]["fast"] > 0
    for tier in ("cache", "learned", "budget_fallback", "prior"):
        assert abs(got["tiers"][tier] - want["tiers"][tier]) / want["tokens"] <= 0.03, (tier, got["tiers"],
                                                                                     want["tiers"])
    assert got["constraints_ok"], got["constraints"]
    # the workers logged in as their own users: the router user's cache entries exist
    pattern = f"var:{NAMESPACE}-{got['completeness']['run_id']}:dc:*"
    assert asyncio.run(_redis_call(RedisAccess.from_settings(secure_run), lambda c: _count(c, pattern))) > 0
    # verify reads the run back as the operator: both topics over SASL_SSL, the table archive over
    # TLS, the certificates' MACs with the key the routers sealed them with
    scoped = scoped_settings(secure_run, got["completeness"]["run_id"], 1000)
    verified = verify(gather(scoped, KAFKA_PREFIX + scoped.topic_outcomes, None, None, None, None))
    assert verified.ok, verified.render()
    leaked = _scan_for_secrets(secret_values(secrets), [secured.state_dir, tmp_path],
                               [str(got), repr(secure_run), verified.render()])
    assert not leaked, leaked


def test_stats_worker_publishes_tables_as_its_own_user(secured, tmp_path):
    """Cold start: only the stats worker (logged in as ``stats``) makes tables, the routers (as
    ``router``) pick them up."""
    source = SyntheticSource(SyntheticSpec(vocab_size=1000, num_streams=8, tokens_per_stream=2500, seed=3))
    run = role_settings(secured).with_(refresh_every=2000, refresh_interval_s=1.0, log_level="info")
    report, _ = run_kafka_replay(source, run, KafkaReplayOptions(workers=2, message_size=8, stats_worker=True,
                                                                 cold=True, log_dir=tmp_path))
    got = report.to_dict()
    if not got["completeness"]["complete"]:  # a string: pytest prints it whole
        pytest.fail("\n".join([json.dumps(got["completeness"]), *_log_warnings(tmp_path)]))
    assert len(got["table"]["versions_seen"]) >= 2 and got["tiers"]["fast"] > 0, got["table"]
    stats_log = next(tmp_path.rglob("stats.log")).read_text()
    assert "published table" in stats_log and "NOPERM" not in stats_log


def _log_warnings(root: Path) -> list[str]:
    """The workers' warning and error lines (what a failed run shows first)."""
    return [f"{path.name}: {line}" for path in sorted(root.rglob("*.log"))
            for line in path.read_text(errors="replace").splitlines() if " WARNING " in line or " ERROR " in line]


async def _count(client: aioredis.Redis, pattern: str) -> int:
    return len([k async for k in client.scan_iter(match=pattern, count=1000)])


def _scan_for_secrets(values: list[str], roots: list[Path], outputs: list[str]) -> list[str]:
    """Every log file under ``roots`` and every output that contains one of ``values``."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and (path.suffix == ".log" or "log" in path.parent.name):
                text = path.read_text(errors="replace")
                found += [f"{path}: secret #{i}" for i, v in enumerate(values) if v in text]
    for n, text in enumerate(outputs):
        found += [f"output {n}: secret #{i}" for i, v in enumerate(values) if v in text]
    return found


def _kafka_refusal(access: KafkaAccess) -> str:
    with pytest.raises(TopicError) as caught:
        asyncio.run(asyncio.wait_for(ensure_topics(access, {"var-refused": 1}), 60))
    return str(caught.value)


def test_kafka_refuses_missing_and_wrong_credentials_and_plaintext(secured, secrets):
    good = KafkaAccess.from_settings(role_settings(secured))
    messages = [
        _kafka_refusal(KafkaAccess(good.bootstrap)),  # plain text to the TLS listener
        _kafka_refusal(KafkaAccess(good.bootstrap, "SSL", ca_file=good.ca_file)),  # TLS, no SASL login
        _kafka_refusal(KafkaAccess(good.bootstrap, "SASL_SSL", username="router", password="wrong-password",
                                   ca_file=good.ca_file)),
        _kafka_refusal(KafkaAccess(good.bootstrap, "SASL_SSL", username="nobody", password=good.password,
                                   ca_file=good.ca_file)),
    ]
    asyncio.run(ensure_topics(good, {"var-accepted": 1}))  # the right credentials are accepted
    assert all("Kafka at" in m for m in messages), messages
    assert not any(v in m for m in messages for v in secret_values(secrets))


async def _redis_call(access: RedisAccess, call):  # noqa: ANN001 - a coroutine function of a client
    client = access.client(3.0)
    try:
        return await call(client)
    finally:
        await client.aclose()


def test_redis_refuses_missing_and_wrong_credentials_and_plaintext(secured, secrets):
    admin = RedisAccess.from_settings(role_settings(secured))
    plain_url = admin.url.replace("rediss://", "redis://")
    ping = lambda c: c.ping()  # noqa: E731
    with pytest.raises(RedisConnectionError):  # plain text to the TLS port
        asyncio.run(_redis_call(RedisAccess(plain_url, "admin", admin.password), ping))
    with pytest.raises((AuthenticationError, ResponseError)):  # no user: the default user is off
        asyncio.run(_redis_call(RedisAccess(admin.url, ca_file=admin.ca_file), ping))
    with pytest.raises((AuthenticationError, ResponseError)):
        asyncio.run(_redis_call(RedisAccess(admin.url, "router", "wrong-password", ca_file=admin.ca_file), ping))
    assert asyncio.run(_redis_call(admin, ping))


def test_router_redis_user_cannot_write_tables_or_read_other_namespaces(secured):
    router = RedisAccess.from_settings(role_settings(secured, "router"))
    stats = RedisAccess.from_settings(role_settings(secured, "stats"))
    table = f"var:{NAMESPACE}:fp:some-router:v9:l0"
    assert asyncio.run(_redis_call(stats, lambda c: c.set(table, b"blob")))  # the stats user publishes
    assert asyncio.run(_redis_call(router, lambda c: c.get(table))) == b"blob"  # the router reads
    assert asyncio.run(_redis_call(router, lambda c: c.set(f"var:{NAMESPACE}:dc:r:0:00", b"d", px=1000)))
    for call in (lambda c: c.set(table, b"forged"), lambda c: c.set(f"var:{NAMESPACE}:fp:r:current", b"9"),
                 lambda c: c.get("var:other:fp:r:current"), lambda c: c.get("var:other:dc:r:0:00"),
                 lambda c: c.set(f"var:{NAMESPACE}:stats:r:snapshot", b"x"), lambda c: c.flushall()):
        with pytest.raises(NoPermissionError):
            asyncio.run(_redis_call(router, call))
    with pytest.raises(NoPermissionError):  # nor may the stats user write the decision cache
        asyncio.run(_redis_call(stats, lambda c: c.set(f"var:{NAMESPACE}:dc:r:0:00", b"d")))


def test_cli_outputs_never_show_secrets(secured, secrets):
    env = {**read_env_file(secured.secrets_dir / "admin.env"), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    outputs = []
    for argv in (["config"], ["config", "--json"], ["worker", "--help"], ["verify", "--help"]):
        result = subprocess.run([sys.executable, "-m", "pipeline", *argv], env=env, capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[2], timeout=120)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    assert "<set>" in outputs[0]  # the secrets are there, masked
    assert not _scan_for_secrets(secret_values(secrets), [], outputs)


def test_stack_up_starts_workers_on_the_secured_stack_as_router(secured):
    """``var stack up --workers 1`` on a secured stack: the worker gets the operator's settings
    and the router login without the caller loading any file, and registers in Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "VAR_"))}
    argv = [sys.executable, "-m", "pipeline", "stack", "up", "--secure", "--state-dir", str(secured.state_dir),
            "--workers", "1", "--vocab-size", "1000"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    admin = RedisAccess.from_settings(role_settings(secured))
    try:
        deadline = time.monotonic() + 90
        while not asyncio.run(_redis_call(admin, lambda c: _count(c, f"var:{NAMESPACE}:workers:*"))):
            assert time.monotonic() < deadline, "the worker never registered"
            assert secured.status()["router-0"]["alive"], Path(secured.status()["router-0"]["log"]).read_text()
            time.sleep(1)
    finally:
        secured.stop_process("router-0")
    log = Path(secured.state_dir / "logs" / "router-0.log").read_text()
    assert not any(v in log for v in secret_values(StackSecrets(secured.secrets_dir)))


async def _produce(access: KafkaAccess, topic: str) -> None:
    producer = access.producer(request_timeout_ms=10_000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x")
    finally:
        await producer.stop()


def test_kafka_users_may_only_do_what_their_role_needs(secured):
    """The broker's authorizer: the stats user cannot write outcomes, the router user cannot
    write tokens nor touch a topic outside the pipeline's names; the right user can."""
    from aiokafka.errors import TopicAuthorizationFailedError

    admin, router = (KafkaAccess.from_settings(role_settings(secured, role)) for role in ("admin", "router"))
    stats = KafkaAccess.from_settings(role_settings(secured, "stats"))
    topics = {"var-outcomes-acl": 1, "var-tokens-acl": 1, "unrelated-acl": 1}
    asyncio.run(ensure_topics(admin, topics))
    asyncio.run(_produce(router, "var-outcomes-acl"))  # allowed: routers write outcomes
    for user, topic in ((stats, "var-outcomes-acl"), (router, "var-tokens-acl"), (router, "unrelated-acl")):
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(asyncio.wait_for(_produce(user, topic), 60))
