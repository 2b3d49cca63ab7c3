"""Assemble ``var verify``'s inputs from settings and sources, and ``var outcomes export``.

An export is a directory: ``outcomes.jsonl`` and ``certificates.jsonl`` (the topics' value bytes,
one per line) and ``tables/`` (every table set the outcomes name, from the Redis archive). A
verifier given ``DIR/outcomes.jsonl`` finds the other two beside it.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Callable

import redis.asyncio as aioredis

from pipeline.assembly import build_routers, empty_tables, is_model, layer_budgets
from pipeline.engine.routers import Router
from pipeline.outcomes import Outcomes
from pipeline.settings import Settings
from pipeline.stores.archive import DirectoryTableArchive, RedisTableArchive, TableArchive
from pipeline.stores.redis_access import RedisAccess
from pipeline.stores.keys import RedisKeys, table_set_id
from pipeline.stream.kafka_access import KafkaAccess

from .run import VerifyInputs, load_tables, table_versions
from .sources import KAFKA_PREFIX, VerifyInputError, certificates_of, is_topic, outcomes_of, read_records

OUTCOMES_FILE, CERTIFICATES_FILE, TABLES_DIR = "outcomes.jsonl", "certificates.jsonl", "tables"
_VOCAB = re.compile(r"-v(\d+)-")


def parse_time(value: str | None) -> int | None:
    """Epoch milliseconds from ``value``: an integer (ms) or an ISO 8601 time."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1000)
    except ValueError:
        raise VerifyInputError(f"--start-time/--end-time {value!r}: not epoch milliseconds or ISO 8601") from None


def verifier_routers(settings: Settings, outcomes: Outcomes) -> list[Router]:
    """The routers of the verifier's own settings; a synthetic router's vocabulary, when not set,
    is the one its recorded id states (the id pins every other parameter too)."""
    if not is_model(settings) and settings.vocab_size is None:
        ids = outcomes.layers[0].router_ids if outcomes.num_layers else []
        found = _VOCAB.search(ids[0]) if ids else None
        if found is None:
            raise VerifyInputError("set VAR_VOCAB_SIZE / --vocab-size: the outcomes do not state it")
        settings = replace(settings, vocab_size=int(found.group(1)))
    assert settings.vocab_size is not None or is_model(settings)
    return build_routers(settings, settings.vocab_size or 0)


def _archive(settings: Settings, source: str, tables_dir: str | None, routers: list[Router]
             ) -> tuple[TableArchive, aioredis.Redis | None]:
    local = Path(tables_dir) if tables_dir else (None if is_topic(source) else Path(source).parent / TABLES_DIR)
    if local is not None and local.is_dir():
        return DirectoryTableArchive(local, len(routers)), None
    client = RedisAccess.from_settings(settings).client(5.0)
    keys = RedisKeys(settings.namespace, table_set_id([r.router_id for r in routers]))
    return RedisTableArchive(client, keys, len(routers)), client


def default_certificates(source: str, settings: Settings) -> str | None:
    if is_topic(source):
        return KAFKA_PREFIX + settings.topic_certificates
    beside = Path(source).parent / CERTIFICATES_FILE
    return str(beside) if beside.exists() else None


def gather(settings: Settings, source: str, certificates: str | None, tables_dir: str | None,
           start_ms: int | None, end_ms: int | None, progress: Callable[[int], None] | None = None) -> VerifyInputs:
    """Read the outcomes and certificates, rebuild the routers, fetch every named table set."""
    outcomes = outcomes_of(read_records(source, KafkaAccess.from_settings(settings), start_ms, end_ms, progress))
    if not len(outcomes):
        raise VerifyInputError(f"{source}: no outcomes to verify")
    cert_source = certificates or default_certificates(source, settings)
    certs = certificates_of(read_records(cert_source, KafkaAccess.from_settings(settings))) if cert_source else []
    routers = verifier_routers(settings, outcomes)
    archive, client = _archive(settings, source, tables_dir, routers)
    try:
        tables = load_tables(archive, table_versions(outcomes), empty_tables(routers),
                             client.aclose if client is not None else None)
    except (OSError, aioredis.RedisError) as exc:
        raise VerifyInputError(f"cannot read the table archive at {RedisAccess.from_settings(settings).display}: {exc}") from None
    budgets = layer_budgets(settings, len(routers))
    window = settings.budget_window
    caps = [(int(b * window + 1e-9), window) for b in budgets]
    key = settings.certificate_key.encode() if settings.certificate_key else None
    return VerifyInputs(outcomes, certs, routers, tables, caps, None, key,
                        audit_min_agreement=settings.audit_min_agreement)


def export(settings: Settings, out_dir: Path, start_ms: int | None, end_ms: int | None,
           progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write an export directory from the outcomes and certificates topics and the archive."""
    records = read_records(KAFKA_PREFIX + settings.topic_outcomes, KafkaAccess.from_settings(settings), start_ms, end_ms, progress)
    certs = read_records(KAFKA_PREFIX + settings.topic_certificates, KafkaAccess.from_settings(settings))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in ((OUTCOMES_FILE, records), (CERTIFICATES_FILE, certs)):
        with (out_dir / name).open("wb") as fh:
            for _, raw in lines:
                fh.write(raw.rstrip(b"\n") + b"\n")
    outcomes = outcomes_of(records)
    written = 0
    if len(outcomes):
        ids = [outcomes.layers[i].router_ids[0] for i in range(outcomes.num_layers)]
        client = RedisAccess.from_settings(settings).client(5.0)
        archive = RedisTableArchive(client, RedisKeys(settings.namespace, table_set_id(ids)), len(ids))
        files = DirectoryTableArchive(out_dir / TABLES_DIR, len(ids))

        async def copy() -> int:
            try:
                count = 0
                for version in table_versions(outcomes):
                    raws = await archive.raw(version) if version else []
                    if raws and all(r is not None for r in raws):
                        files.write(version, raws)  # type: ignore[arg-type]
                        count += 1
                return count
            finally:
                await client.aclose()
        written = asyncio.run(copy())
    return {"outcomes": len(records), "certificates": len(certs), "table_sets": written}
