"""Reading back what was published to a run's Redis namespace: a table set, or that one exists."""
from __future__ import annotations

import asyncio
import logging
import time

from pipeline.engine.table import RoutingTable
from pipeline.settings import Settings
from pipeline.stores.base import StoreUnavailable

from .worker_pool import WorkerPool

log = logging.getLogger(__name__)


def wait_for_tables(run: Settings, pool: WorkerPool, timeout_s: float = 180.0) -> None:
    """Until the stats worker has published a table set (raises WorkerFailed if it died)."""
    from pipeline.table_sets import layer_routers, routing_store

    store_ids = [router_id for _, router_id in layer_routers(run)]

    async def published() -> bool:
        store = routing_store(run, store_ids, timeout_s=5.0)
        try:
            return (await store.fetch([], [0] * len(store_ids)))[1] is not None
        except StoreUnavailable:
            return False
        finally:
            await store.close()

    deadline = time.monotonic() + timeout_s
    while not asyncio.run(published()):
        for worker in pool.workers:
            if worker.name == "stats" and not worker.alive():
                raise worker.failure("the stats worker stopped before publishing a table set")
        if time.monotonic() > deadline:
            log.warning("the stats worker published no table set within %.0f s; producing anyway", timeout_s)
            return
        time.sleep(0.5)


async def load_published(settings: Settings, router_ids: list[str], version: int) -> list[RoutingTable] | None:
    """Table-set ``version`` of these layers as the routers read it (``None`` if unreachable)."""
    from pipeline.table_sets import routing_store

    store = routing_store(settings, router_ids, timeout_s=5.0)
    try:
        return await store.load_tables(version)
    except StoreUnavailable:  # the report then names the table(s) the replay started with
        return None
    finally:
        await store.close()
