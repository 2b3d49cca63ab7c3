"""Readable rendering of outcome and dead-letter messages for ``var outcomes tail``."""
from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError

from pipeline.engine.events import TIER_LABELS
from pipeline.outcomes import OutcomeError, decode_outcome

from .topics import TopicError


def render_outcome(raw: bytes) -> list[str]:
    """One line per token: stream, seq, token, tier, experts:weights, confidence, table version."""
    try:
        o = decode_outcome(raw)
    except OutcomeError as exc:
        return [f"<invalid outcome: {exc}>"]
    lines = []
    for i in range(len(o)):
        experts = " ".join(f"{e}:{w:.2f}" for e, w in zip(o.experts[i].tolist(), o.weights[i].tolist()))
        lines.append(f"{o.streams[i]:<20} seq {int(o.seqs[i]):>7} token {int(o.tokens[i]):>6}  "
                     f"{TIER_LABELS[o.tiers[i]]:<15} experts {experts:<22} conf {o.confidence[i]:.3f}  "
                     f"table v{int(o.table_versions[i])}  {o.workers[i]}")
    return lines


def render_deadletter(value: bytes, headers: dict[str, bytes]) -> list[str]:
    reason = headers.get("var-reason", b"?").decode(errors="replace")
    where = f"{headers.get('var-partition', b'?').decode()}@{headers.get('var-offset', b'?').decode()}"
    return [f"{where:<10} {reason}  <- {value[:120]!r}"]


async def tail(bootstrap: str, topic: str, from_beginning: bool, limit: int | None, idle_exit: float | None,
               as_json: bool, deadletter: bool) -> int:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest" if from_beginning else "latest")
    try:
        await consumer.start()
    except KafkaConnectionError:
        raise TopicError(f"cannot reach Kafka at {bootstrap}") from None
    seen, last = 0, time.monotonic()
    try:
        while limit is None or seen < limit:
            batches = await consumer.getmany(timeout_ms=500)
            records = [r for part in batches.values() for r in part]
            if not records and idle_exit is not None and time.monotonic() - last > idle_exit:
                break
            for rec in records[: None if limit is None else limit - seen]:
                seen += 1
                last = time.monotonic()
                if as_json:
                    print(rec.value.decode(errors="replace"), flush=True)
                    continue
                lines = render_deadletter(rec.value, dict(rec.headers or ())) if deadletter else render_outcome(rec.value)
                print("\n".join(lines), flush=True)
    finally:
        await consumer.stop()
    return seen
