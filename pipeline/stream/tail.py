"""Readable rendering of outcome and dead-letter messages for ``var outcomes tail``."""
from __future__ import annotations

import time

from aiokafka.errors import KafkaError

from pipeline.engine.events import TIER_LABELS
from pipeline.outcomes import LayerOutcomes, OutcomeError, decode_outcome

from .kafka_access import KafkaAccess, kafka_access
from .topics import TopicError, refusal


def _experts(layer: LayerOutcomes, i: int) -> str:
    return " ".join(f"{e}:{w:.2f}" for e, w in zip(layer.experts[i].tolist(), layer.weights[i].tolist()))


def render_outcome(raw: bytes) -> list[str]:
    """One line per token: stream, seq, token, then tier, experts:weights and confidence -- of the
    one layer, or compactly of every layer (``l0 fast 3:0.81 5:0.19 | l1 ...``) -- table version."""
    try:
        o = decode_outcome(raw)
    except OutcomeError as exc:
        return [f"<invalid outcome: {exc}>"]
    lines = []
    for i in range(len(o)):
        head = f"{o.streams[i]:<20} seq {int(o.seqs[i]):>7} token {int(o.tokens[i]):>6}  "
        version = int(o.layers[0].table_versions[i])
        if o.num_layers == 1:
            layer = o.layers[0]
            body = (f"{TIER_LABELS[layer.tiers[i]]:<15} experts {_experts(layer, i):<22} "
                    f"conf {layer.confidence[i]:.3f}  ")
        else:
            body = " | ".join(f"l{layer.layer} {TIER_LABELS[layer.tiers[i]]} {_experts(layer, i)}"
                              for layer in o.layers) + "  "
        lines.append(f"{head}{body}table v{version}  {o.workers[i]}")
    return lines


def render_deadletter(value: bytes, headers: dict[str, bytes]) -> list[str]:
    reason = headers.get("var-reason", b"?").decode(errors="replace")
    where = f"{headers.get('var-partition', b'?').decode()}@{headers.get('var-offset', b'?').decode()}"
    return [f"{where:<10} {reason}  <- {value[:120]!r}"]


async def tail(bootstrap: KafkaAccess | str, topic: str, from_beginning: bool, limit: int | None, idle_exit: float | None,
               as_json: bool, deadletter: bool) -> int:
    access = kafka_access(bootstrap)
    consumer = access.consumer(topic, group_id=None, auto_offset_reset="earliest" if from_beginning else "latest")
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise TopicError(refusal(access, exc)) from None
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
