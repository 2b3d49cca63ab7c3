"""Where the time of a routed batch goes: wall-clock seconds per routing stage.

A :class:`StageClock` is attached to an engine (``VAREngine.profile``) and, in the pipeline, to
the batch processor. Whoever handles a batch calls :meth:`StageClock.start` first; each stage
then calls :meth:`StageClock.lap` with its name when it ends, so the time since the previous
lap is charged to it and every moment of the batch is charged to exactly one stage. With no
clock attached (the default) a stage boundary costs one ``is None`` test.

``var bench engine --profile`` prints the result as microseconds per token.
"""
from __future__ import annotations

import time
from typing import Callable

# In the order a batch meets them. "store fetch"/"store write" are the routing store's two calls
# per batch (Redis round trips in a worker, the in-memory twin in the profile bench); the last
# three are a router worker's own: publishing outcomes until Kafka acknowledged them (a worker
# writes the cache meanwhile, so its "store write" is part of "kafka send"; the certificates
# follow), writing the windows to their changelog, and the time between batches (Faust
# receiving, or no traffic).
ENGINE_STAGES: tuple[str, ...] = ("parse", "contexts", "hashing", "cache lookup", "fast path", "governor", "router",
                                  "decision arrays", "cache write", "outcome encoding")
STORE_STAGES: tuple[str, ...] = ("store fetch", "store write")
WORKER_STAGES: tuple[str, ...] = ("kafka send", "window writes", "between batches")
STAGES: tuple[str, ...] = ENGINE_STAGES + STORE_STAGES + WORKER_STAGES


class StageClock:
    """Accumulates seconds per stage (see module docstring); ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.batches = 0
        self._clock = clock
        self._mark = clock()

    def start(self) -> None:
        """A batch begins: nothing before this moment is charged to any stage."""
        self.batches += 1
        self._mark = self._clock()

    def charge(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` measured elsewhere to ``stage`` (the time between two batches)."""
        self.lap_check(stage)
        self.seconds[stage] += seconds

    def lap_check(self, stage: str) -> None:
        if stage not in self.seconds:
            raise KeyError(f"unknown routing stage {stage!r} (known: {', '.join(STAGES)})")

    def lap(self, stage: str) -> None:
        """``stage`` ended now: charge it the time since the previous lap (or :meth:`start`)."""
        self.lap_check(stage)
        now = self._clock()
        self.seconds[stage] += now - self._mark
        self._mark = now

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    def per_token_us(self, tokens: int) -> dict[str, float]:
        """Microseconds per token for each stage, over ``tokens`` routed tokens."""
        if tokens <= 0:
            raise ValueError("no tokens were routed")
        return {stage: 1e6 * s / tokens for stage, s in self.seconds.items()}


def lap(clock: StageClock | None, stage: str) -> None:
    """``clock.lap(stage)`` when a clock is attached; nothing otherwise."""
    if clock is not None:
        clock.lap(stage)
