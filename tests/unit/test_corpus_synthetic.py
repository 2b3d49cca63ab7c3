"""Synthetic corpus: determinism, Zipf shape, bigram structure, interleaving."""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import pytest

from pipeline.corpus.synthetic import (
    BLOCK,
    SyntheticSpec,
    chain_model,
    chunked,
    generate,
    generate_tokens,
    interleave,
    stream_id,
)

SMALL = SyntheticSpec(vocab_size=200, num_streams=4, tokens_per_stream=500, chunk_size=3, seed=7)


def per_stream_tokens(chunks) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for chunk in chunks:
        out[chunk.stream].extend(chunk.tokens)
    return out


def test_same_spec_same_output_and_seed_changes_it():
    assert list(generate(SMALL)) == list(generate(SMALL))
    other = SyntheticSpec(**{**SMALL.__dict__, "seed": 8})
    assert [c.tokens for c in generate(SMALL)] != [c.tokens for c in generate(other)]


def test_streams_differ_from_each_other():
    assert not np.array_equal(generate_tokens(SMALL, 0), generate_tokens(SMALL, 1))


def test_generate_tokens_matches_generate_across_block_boundaries():
    spec = SyntheticSpec(vocab_size=300, num_streams=2, tokens_per_stream=BLOCK + 1000, chunk_size=7)
    streams = per_stream_tokens(generate(spec))
    for i in range(2):
        tokens = generate_tokens(spec, i)
        assert tokens.dtype == np.int64 and len(tokens) == spec.tokens_per_stream
        assert streams[stream_id(i)] == tokens.tolist()


def test_token_ids_in_range():
    tokens = np.concatenate([generate_tokens(SMALL, i) for i in range(SMALL.num_streams)])
    assert tokens.min() >= 0 and tokens.max() < SMALL.vocab_size


def test_zipf_shape_token_zero_most_frequent_and_decreasing():
    spec = SyntheticSpec(vocab_size=1000, num_streams=8, tokens_per_stream=25_000)
    tokens = np.concatenate([generate_tokens(spec, i) for i in range(spec.num_streams)])
    counts = np.bincount(tokens, minlength=spec.vocab_size)
    assert counts.argmax() == 0
    bands = [counts[0:10].mean(), counts[10:100].mean(), counts[100:1000].mean()]
    assert bands[0] > 5 * bands[1] > 25 * bands[2]
    # rank correlation between id and observed frequency rank is strongly positive
    observed_rank = np.argsort(np.argsort(-counts, kind="stable"))
    assert np.corrcoef(np.arange(spec.vocab_size), observed_rank)[0, 1] > 0.9


def test_model_ranks_follow_stationary_distribution():
    model = chain_model(SMALL)
    by_id = np.empty_like(model.stationary)
    by_id[model.rank] = model.stationary
    assert np.all(np.diff(by_id) <= 0)
    assert by_id.sum() == pytest.approx(1.0)


def emitted_successors(spec: SyntheticSpec) -> list[set[int]]:
    model = chain_model(spec)
    out: list[set[int]] = [set() for _ in range(spec.vocab_size)]
    for latent, succ in enumerate(model.table):
        out[model.rank[latent]] = set(model.rank[succ].tolist())
    return out


def transitions_in_successors(spec: SyntheticSpec) -> float:
    succ = emitted_successors(spec)
    tokens = generate_tokens(spec, 0).tolist()
    hits = sum(b in succ[a] for a, b in zip(tokens, tokens[1:]))
    return hits / (len(tokens) - 1)


def test_bigram_structure():
    base = dict(vocab_size=500, num_streams=1, tokens_per_stream=20_000)
    assert transitions_in_successors(SyntheticSpec(**base, bigram_prob=1.0)) == 1.0
    with_bigrams = transitions_in_successors(SyntheticSpec(**base))  # default bigram_prob 0.5
    without = transitions_in_successors(SyntheticSpec(**base, bigram_prob=0.0))
    assert with_bigrams > 0.5 and with_bigrams > without + 0.3


def test_round_robin_interleaving_and_seq_per_stream():
    chunks = list(generate(SMALL))
    names = [stream_id(i) for i in range(SMALL.num_streams)]
    assert [c.stream for c in chunks[:8]] == names + names
    assert [c.offset for c in chunks] == list(range(len(chunks)))
    expected_next: dict[str, int] = defaultdict(int)
    for chunk in chunks:
        assert chunk.first_seq == expected_next[chunk.stream]
        expected_next[chunk.stream] += len(chunk)
        assert 1 <= len(chunk) <= SMALL.chunk_size
    assert all(expected_next[n] == SMALL.tokens_per_stream for n in names)
    assert sum(map(len, chunks)) == SMALL.total_tokens


def test_interleave_with_max_open_replaces_finished_streams():
    streams = [("a", iter([(1,), (2,)])), ("b", iter([(3,)])), ("c", iter([(4,), (5,)]))]
    got = [(c.stream, c.first_seq, c.tokens) for c in interleave(streams, max_open=2)]
    assert got == [("a", 0, (1,)), ("b", 0, (3,)), ("a", 1, (2,)), ("c", 0, (4,)), ("c", 1, (5,))]


def test_chunked_regroups_across_blocks():
    blocks = [np.arange(5), np.arange(5, 8)]
    assert list(chunked(blocks, 3)) == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert list(chunked(blocks, 1)) == [(i,) for i in range(8)]


def test_empty_streams():
    assert list(generate(SyntheticSpec(tokens_per_stream=0))) == []


@pytest.mark.parametrize(
    "field, value",
    [("vocab_size", 0), ("num_streams", 0), ("zipf_s", 0.0), ("bigram_prob", 1.5), ("successors", 0),
     ("chunk_size", 0), ("seed", -1), ("tokens_per_stream", -1)],
)
def test_invalid_spec(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticSpec(**{field: value})


def test_million_tokens_generate_fast():
    spec = SyntheticSpec(num_streams=16, tokens_per_stream=62_500)
    start = time.perf_counter()
    total = sum(len(generate_tokens(spec, i)) for i in range(spec.num_streams))
    assert total == 1_000_000
    assert time.perf_counter() - start < 3.0  # ~0.12 s measured; generous for slow CI
