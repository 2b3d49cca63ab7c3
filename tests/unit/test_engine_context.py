"""build_contexts against a naive per-event reference: contexts, windows, rejections."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from pipeline.engine.context import REDELIVERED, SEQ_NOT_INCREASING, ContextWindow, build_contexts
from pipeline.engine.events import PAD_TOKEN, EventBatch, EventChunk

PAD = -1


def reference(events, windows, window):
    """Naive model: per stream a deque of the last W-1 tokens, events in arrival order.

    ``events`` are (stream, seq, token, offset). Returns (accepted, contexts, windows, rejected
    indices) where windows are (tokens, last_seq, last_offset) per stream.
    """
    state = {}
    for name, w in windows.items():
        state[name] = [deque(w.tokens, maxlen=window - 1) if window > 1 else deque(maxlen=0), w.last_seq,
                       w.last_offset]
    accepted, contexts, rejected = [], [], []
    for i, (stream, seq, token, offset) in enumerate(events):
        if stream not in state:
            state[stream] = [deque([PAD] * (window - 1), maxlen=max(window - 1, 0)), -1, -1]
        buf, last_seq, last_offset = state[stream]
        if seq <= last_seq:
            accepted.append(False)
            rejected.append(i)
            continue
        accepted.append(True)
        contexts.append(list(buf) + [token])
        if window > 1:
            buf.append(token)
        state[stream][1] = seq
        state[stream][2] = max(last_offset, offset)
    final = {s: (tuple(v[0]), v[1], v[2]) for s, v in state.items()}
    return np.array(accepted, dtype=bool), np.array(contexts, dtype=np.int64).reshape(-1, window), final, rejected


def make_batch(events):
    return EventBatch.from_chunks([EventChunk(s, seq, (tok,), off) for s, seq, tok, off in events])


def random_events(rng, streams, n, next_seq, next_offset, vocab=30, disorder=0.0):
    events = []
    for _ in range(n):
        s = streams[int(rng.integers(len(streams)))]
        if disorder and rng.random() < disorder and next_seq[s] > 0:
            seq = int(rng.integers(0, next_seq[s]))  # not increasing
        else:
            seq = next_seq[s] + int(rng.integers(0, 3))  # gaps allowed
            next_seq[s] = seq + 1
        events.append((s, seq, int(rng.integers(vocab)), next_offset[0]))
        next_offset[0] += 1
    return events


def check_against_reference(events, windows, window):
    res = build_contexts(make_batch(events), windows, window)
    acc, ctx, final, rejected = reference(events, windows, window)
    np.testing.assert_array_equal(res.accepted, acc)
    assert res.contexts.shape == (int(acc.sum()), window)
    np.testing.assert_array_equal(res.contexts, ctx)
    assert [r.index for r in res.rejections] == rejected
    streams_in_batch = {e[0] for e in events}
    assert set(res.windows) == streams_in_batch
    for s in streams_in_batch:
        w = res.windows[s]
        assert (w.tokens, w.last_seq, w.last_offset) == final[s], s
    return res


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_across_batches(window, seed):
    rng = np.random.default_rng(seed * 10 + window)
    streams = [f"s{i}" for i in range(5)]
    next_seq = {s: 0 for s in streams}
    next_offset = [0]
    windows: dict[str, ContextWindow] = {}
    for _ in range(6):
        n = int(rng.integers(1, 40))
        events = random_events(rng, streams, n, next_seq, next_offset)
        res = check_against_reference(events, windows, window)
        assert not res.rejections
        windows.update(res.windows)
    assert all(len(w.tokens) == window - 1 for w in windows.values())


@pytest.mark.parametrize("window", [1, 3, 5])
def test_matches_reference_with_out_of_order_events(window):
    rng = np.random.default_rng(100 + window)
    streams = ["a", "b", "c"]
    next_seq = {s: 0 for s in streams}
    next_offset = [0]
    windows: dict[str, ContextWindow] = {}
    total_rejected = 0
    for _ in range(8):
        events = random_events(rng, streams, int(rng.integers(5, 30)), next_seq, next_offset, disorder=0.2)
        res = check_against_reference(events, windows, window)
        total_rejected += len(res.rejections)
        # offsets only grow in this scenario, so nothing is a redelivery
        assert all(r.kind == SEQ_NOT_INCREASING for r in res.rejections)
        windows.update(res.windows)
    assert total_rejected > 0  # the scenario really exercised rejections


@pytest.mark.parametrize("window", [1, 2, 4])
def test_resumed_from_given_windows(window):
    rng = np.random.default_rng(7)
    start = {
        "x": ContextWindow(tuple(int(t) for t in rng.integers(0, 30, window - 1)), last_seq=10, last_offset=100),
        "y": ContextWindow((PAD,) * (window - 1), last_seq=3, last_offset=50),
    }
    events = [("x", 11, 5, 101), ("z", 0, 6, 102), ("y", 9, 7, 103), ("x", 15, 8, 104), ("x", 16, 9, 105),
              ("y", 10, 1, 106)]
    res = check_against_reference(events, start, window)
    if window > 1:
        # the first event of x sees exactly the resumed tail, not PADs
        assert res.contexts[0, :-1].tolist() == list(start["x"].tokens)
    assert res.windows["x"].last_seq == 16 and res.windows["x"].last_offset == 105


def test_interleaved_streams_small_example():
    events = [("a", 0, 1, 0), ("b", 0, 10, 1), ("a", 1, 2, 2), ("b", 1, 11, 3), ("a", 2, 3, 4)]
    res = build_contexts(make_batch(events), {}, 3)
    assert res.contexts.tolist() == [[PAD, PAD, 1], [PAD, PAD, 10], [PAD, 1, 2], [PAD, 10, 11], [1, 2, 3]]
    assert res.windows["a"] == ContextWindow((2, 3), 2, 4)
    assert res.windows["b"] == ContextWindow((10, 11), 1, 3)


def test_empty_batch():
    res = build_contexts(EventBatch.empty(), {}, 4)
    assert res.contexts.shape == (0, 4) and res.windows == {} and res.rejections == []


def test_seq_not_increasing_rejected_and_window_untouched():
    start = ContextWindow((4, 5, 6), last_seq=7, last_offset=20)
    # offset 30 is after the window's last offset: bad input, not a redelivery
    res = build_contexts(make_batch([("a", 7, 9, 30), ("a", 2, 9, 31)]), {"a": start}, 4)
    assert res.accepted.tolist() == [False, False]
    assert [(r.index, r.kind) for r in res.rejections] == [(0, SEQ_NOT_INCREASING), (1, SEQ_NOT_INCREASING)]
    assert "'a'" in res.rejections[0].reason and "7" in res.rejections[0].reason
    assert res.windows["a"] == start
    assert res.contexts.shape == (0, 4)


def test_rejected_event_does_not_enter_the_context():
    res = build_contexts(make_batch([("a", 5, 1, 0), ("a", 5, 2, 1), ("a", 4, 3, 2), ("a", 6, 4, 3)]), {}, 3)
    assert res.accepted.tolist() == [True, False, False, True]
    assert res.contexts.tolist() == [[PAD, PAD, 1], [PAD, 1, 4]]
    assert [r.index for r in res.rejections] == [1, 2]
    assert all(r.kind == SEQ_NOT_INCREASING for r in res.rejections)
    assert res.windows["a"] == ContextWindow((1, 4), 6, 3)


def test_redelivered_event():
    start = ContextWindow((4, 5), last_seq=9, last_offset=20)
    events = [("a", 8, 1, 19), ("a", 9, 1, 20), ("a", 10, 2, 21), ("b", 0, 3, 22)]
    res = build_contexts(make_batch(events), {"a": start}, 3)
    assert res.accepted.tolist() == [False, False, True, True]
    assert [(r.index, r.kind) for r in res.rejections] == [(0, REDELIVERED), (1, REDELIVERED)]
    assert res.contexts.tolist() == [[4, 5, 2], [PAD, PAD, 3]]
    assert res.windows["a"] == ContextWindow((5, 2), 10, 21)


def test_redelivered_stream_keeps_its_window_when_all_events_rejected():
    start = ContextWindow((1, 2, 3), last_seq=4, last_offset=10)
    res = build_contexts(make_batch([("a", 3, 9, 9), ("a", 4, 9, 10)]), {"a": start}, 4)
    assert {r.kind for r in res.rejections} == {REDELIVERED}
    assert res.windows["a"] == start


def test_whole_batch_redelivered_after_routing():
    rng = np.random.default_rng(3)
    next_seq, next_offset = {"a": 0, "b": 0}, [0]
    first = random_events(rng, ["a", "b"], 20, next_seq, next_offset)
    windows = dict(build_contexts(make_batch(first), {}, 4).windows)
    again = build_contexts(make_batch(first), windows, 4)
    assert not again.accepted.any()
    assert [r.kind for r in again.rejections] == [REDELIVERED] * len(first)
    assert again.windows == windows


def test_negative_offset_is_never_a_redelivery():
    start = ContextWindow((1,), last_seq=4, last_offset=10)
    res = build_contexts(make_batch([("a", 3, 9, -1)]), {"a": start}, 2)
    assert res.rejections[0].kind == SEQ_NOT_INCREASING


@pytest.mark.parametrize("window", [
    ContextWindow(()),
    ContextWindow((PAD, PAD, 3), last_seq=12, last_offset=-1),
    ContextWindow((7, 0, 9), last_seq=0, last_offset=123456789),
])
def test_stream_window_list_round_trip(window):
    values = window.to_list()
    assert values[:2] == [window.last_seq, window.last_offset]
    assert ContextWindow.from_list(values) == window
    assert ContextWindow.from_list(list(values)).tokens == window.tokens


def test_empty_window_is_pads():
    assert ContextWindow.empty(4) == ContextWindow((PAD_TOKEN,) * 3, -1, -1)
    assert ContextWindow.empty(1).tokens == ()


def test_a_stream_id_outside_the_batch_s_names_is_an_error_not_a_wild_read():
    batch = EventBatch(["a"], np.array([0, 1], np.int64), np.array([1, 2], np.int64), np.array([3, 4], np.int64),
                       np.array([-1, -1], np.int64))
    with pytest.raises(ValueError, match="stream id"):
        build_contexts(batch, {}, 4)
