"""A router worker's Faust configuration: its name, app settings and data directory.

The settings tie the consumer to the pipeline's contract (README "Pipeline guarantees"): the
session/rebalance/request timeouts from ``session_timeout_s``, earliest reset, a memory store, no
producer linger but big producer batches, bounded fetch rounds, and the same request-size limit
as the token producers.
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from pipeline.settings import Settings

from .kafka_access import KafkaAccess
from .producer import MAX_REQUEST_BYTES, PRODUCER_BATCH_BYTES


def worker_name(settings: Settings) -> str:
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"


def broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Faust app settings for a router worker (one broker or many; memory store)."""
    return {
        "broker": broker_url(settings.kafka_bootstrap),
        **KafkaAccess.from_settings(settings).faust_options(),
        "store": "memory://",
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "table_standby_replicas": 0,
        "web_enabled": False,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": min(3.0, settings.session_timeout_s / 4),
        "broker_rebalance_timeout": max(20.0, 2 * settings.session_timeout_s),
        "broker_request_timeout": max(90.0, settings.session_timeout_s * 2),
        "broker_commit_interval": 1.0,
        # No linger: the agent enqueues a batch's records, then awaits their acks, twice per batch
        # (outcomes, then windows) -- a linger only added its length to both waits.
        "producer_linger": 0.0,
        "producer_max_request_size": MAX_REQUEST_BYTES,  # the same limit as the token producers
        # Big batches: aiokafka sends one batch per partition in a request and keeps one request
        # in flight per broker (MessageAccumulator.drain_by_nodes skips nodes with one in flight),
        # so Faust's default 16 KiB batches cut a batch's ~300 KiB of outcome records into several
        # sequential round trips (measured: 19 ms per batch at half load, against 7 for the one
        # round trip of the window writes).
        "producer_max_batch_size": PRODUCER_BATCH_BYTES,
        # Bounded fetch rounds: a seek waits for the records already fetched to drain.
        "broker_max_poll_records": 2000,
        "datadir": str(worker_datadir()),
    }


def worker_datadir(base: Path | None = None, pid: int | None = None) -> Path:
    """This process's Faust data directory (the memory store writes little there).

    ``<tmp>/var-worker-<pid>``: removed when the process exits normally, and directories left
    by processes that no longer exist (kill -9) are removed when the next worker starts.
    """
    base = Path(base or tempfile.gettempdir())
    pid = os.getpid() if pid is None else pid
    for old in base.glob("var-worker-*"):
        suffix = old.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and int(suffix) != pid and not _pid_alive(int(suffix)):
            shutil.rmtree(old, ignore_errors=True)
    path = base / f"var-worker-{pid}"
    path.mkdir(exist_ok=True)
    atexit.register(shutil.rmtree, path, True)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
