"""The per-event pass of :func:`~.context.build_contexts` as one compiled loop (numba).

:mod:`.context` states the rules (windows, ordering, redeliveries) and keeps the Python side --
one start window per stream in, one new window per stream out; this loop walks the batch once
in arrival order and does everything per event. ``tests/unit/test_engine_context.py`` checks
the result against a naive per-event reference.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def advance(stream_ids, seqs, offsets, tokens, ring, last_seq, last_offset):
    """Walk a batch in arrival order, advancing each stream's window in place.

    ``stream_ids`` [n] index the per-stream state: ``ring`` [S, W-1] (the window's tokens,
    oldest first), ``last_seq`` [S] and ``last_offset`` [S], all updated in place (int64).
    An event is accepted when its seq exceeds its stream's last accepted seq; its context row is
    the window then the token, and the window shifts by one. A rejected event is a redelivery
    when ``0 <= offset <=`` its stream's ``last_offset`` at the start of the batch.

    Returns (accepted [n] bool, contexts [m, W] int64 of the m accepted events in arrival
    order, redelivered [n] bool, present [S] bool: the streams with an event in the batch).
    """
    n, streams, w1 = len(tokens), ring.shape[0], ring.shape[1]
    start_offset = last_offset.copy()
    accepted = np.zeros(n, np.bool_)
    redelivered = np.zeros(n, np.bool_)
    present = np.zeros(streams, np.bool_)
    contexts = np.empty((n, w1 + 1), np.int64)
    m = 0
    for i in range(n):
        s = stream_ids[i]
        if s < 0 or s >= streams:  # a compiled loop has no bounds checks of its own
            raise ValueError("a stream id is outside the batch's stream names")
        present[s] = True
        if seqs[i] <= last_seq[s]:
            redelivered[i] = 0 <= offsets[i] <= start_offset[s]
            continue
        accepted[i] = True
        for j in range(w1):
            contexts[m, j] = ring[s, j]
        contexts[m, w1] = tokens[i]
        for j in range(w1 - 1):
            ring[s, j] = ring[s, j + 1]
        if w1 > 0:
            ring[s, w1 - 1] = tokens[i]
        last_seq[s] = seqs[i]
        last_offset[s] = max(last_offset[s], offsets[i])
        m += 1
    return accepted, contexts[:m], redelivered, present
