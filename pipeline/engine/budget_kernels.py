"""The budget's per-batch loops, compiled (numba): the governor's admissions and the ledger's
sliding-window count. :mod:`.budget` states what they compute; ``tests/unit/test_kernels.py``
and ``tests/unit/test_engine_budget.py`` check them against plain definitions.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def admit(positions, ring, state, window, cap):
    """BudgetGovernor.admit: greedy in order, a position is admitted while fewer than ``cap``
    positions were admitted in the ``window - 1`` before it. ``ring`` (length >= max(cap, 1))
    and ``state`` ([head, count]) hold the admitted positions still in the window. Returns
    (granted bool [n], how many were granted)."""
    n, size = len(positions), len(ring)
    granted = np.zeros(n, np.bool_)
    head, count = state[0], state[1]
    admitted = 0
    for i in range(n):
        p = positions[i]
        while count > 0 and ring[head] <= p - window:
            head = (head + 1) % size
            count -= 1
        if count < cap:
            ring[(head + count) % size] = p
            count += 1
            granted[i] = True
            admitted += 1
    state[0], state[1] = head, count
    return granted, admitted


@njit(cache=True)
def record(flags, ring, state, window):
    """BudgetLedger.record of one batch's learned-call flags (bool [n], decision order):
    ``ring`` (int8 [window]) holds the flags of the last ``window`` decisions, ``state`` is
    [decisions so far, learned calls among the last ``window``, most in any window]. Returns
    the learned calls per block of ``window`` decisions, from the block the batch starts in."""
    n, pos = len(flags), state[0]
    first = pos // window
    counts = np.zeros((pos + n - 1) // window - first + 1 if n else 0, np.int64)
    total, most = state[1], state[2]
    for i in range(n):
        f = np.int64(flags[i])
        slot = pos % window
        total += f - ring[slot]  # the decision window positions ago leaves the window
        ring[slot] = f
        most = max(most, total)
        counts[pos // window - first] += f
        pos += 1
    state[0], state[1], state[2] = pos, total, most
    return counts
