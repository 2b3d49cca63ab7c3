"""The chaos scenarios: what happens to the pipeline mid-stream, as data.

A scenario starts ``routers`` router worker processes (and optionally the stats worker) and runs
its steps when the given fraction of the expected outcomes has been collected -- so a fault
always lands mid-stream, whatever the machine's speed.
"""
from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("start_router", "stop_router", "kill_router", "pause_router", "restart_kafka", "kill_broker",
           "restart_redis", "kill_stats", "start_stats")


@dataclass(frozen=True)
class Step:
    at: float  # fraction of expected outcomes collected
    action: str  # one of ACTIONS
    seconds: float = 0.0  # down time for restarts and pauses, delay before the action otherwise
    # A recovery restores capacity after a fault (the replacement an orchestrator starts). It is
    # not a fault: when the survivors finished the stream before it was due, it is skipped.
    recovery: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    routers: int = 2
    steps: tuple[Step, ...] = ()
    stats_worker: bool = False
    poison: int = 0
    brokers: int = 1  # > 1: a local KRaft cluster, replication factor 3, min.insync.replicas 2
    stress_only: bool = False  # not part of `var chaos` without names (too heavy for 2 cores)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("plain-2", "2 workers, nothing happens"),
    Scenario("plain-3", "3 workers, nothing happens", routers=3),
    Scenario("join", "a third worker joins mid-stream", steps=(Step(0.3, "start_router"),)),
    Scenario("leave", "one of 3 workers stops gracefully (SIGTERM)", routers=3, steps=(Step(0.3, "stop_router"),)),
    Scenario("kill", "kill -9 of a worker, twice; each time a replacement starts (as an orchestrator would)",
             steps=(Step(0.25, "kill_router"), Step(0.25, "start_router", recovery=True),
                    Step(0.6, "kill_router"), Step(0.6, "start_router", recovery=True))),
    Scenario("pause", "a worker freezes (SIGSTOP) for 8 s, past its session timeout, and resumes: the "
             "group has moved its partitions on, and the zombie finishes what it was doing", routers=3,
             steps=(Step(0.15, "pause_router", 8.0),)),
    Scenario("broker-restart", "Kafka is stopped and started again on the same data directory (5 s down)",
             steps=(Step(0.3, "restart_kafka", 5.0),)),
    Scenario("redis-restart", "Redis is restarted (cache and tables lost)", steps=(Step(0.3, "restart_redis", 0.5),)),
    Scenario("redis-outage", "Redis is down for 30 s", steps=(Step(0.2, "restart_redis", 30.0),)),
    Scenario("stats-worker", "the stats worker is killed (-9) and restarted 3 s later", stats_worker=True,
             steps=(Step(0.3, "kill_stats"), Step(0.3, "start_stats", 3.0, recovery=True))),
    Scenario("poison", "10,000 malformed messages interleaved with the good ones", poison=10_000),
    Scenario("broker-failover", "3 brokers (RF 3, min ISR 2): kill -9 of one broker mid-run", brokers=3,
             steps=(Step(0.3, "kill_broker", 0.0),), stress_only=True),
)}
# What CI runs (one run each; `var chaos --ci`): every fault once, sized to fit the CI budget.
CI_RUNS: tuple[tuple[str, int], ...] = (
    ("kill", 1), ("kill", 64), ("poison", 1), ("broker-restart", 64), ("join", 1), ("leave", 64),
    ("redis-restart", 1), ("stats-worker", 64), ("pause", 64),
)
