"""Seeded synthetic token corpus with language-like statistics (the proof of concept's corpus).

Every stream is a first-order Markov chain over ``vocab_size`` token ids:

* **Zipf unigrams.** A "free" token is drawn with probability ``∝ (rank + 1) ** -zipf_s`` and the
  token id *is* its rank, so token 0 is the most frequent.
* **Bigram structure.** Each token owns ``successors`` preferred successors (drawn once per seed
  from the same Zipf law, shared by all streams). With probability ``bigram_prob`` the next token
  is one of the previous token's successors (uniformly), otherwise it is a free Zipf draw. Since
  successors are Zipf-distributed, the bigram moves keep the unigram law Zipf-shaped on average.

Default parameters (``bigram_prob=0.5``, ``successors=8``) were chosen so that contexts recur
about as often as in real text. Measured "repeat rates" -- the share of n-token windows (within
a stream) already seen earlier in the corpus, for n = 2, 3, 4:

* bundled Shakespeare, BPE vocab 4096, 0.32M tokens: 0.71, 0.35, 0.18
* this generator, vocab 4096, 0.32M tokens (defaults): 0.77, 0.44, 0.18
* this generator, vocab 1000, 0.26M tokens (all defaults): 0.85, 0.53, 0.23 (1M tokens: 4-gram 0.33)
* i.i.d. Zipf (``bigram_prob=0``), vocab 1000, 0.26M tokens: 0.76, 0.33, 0.08

So 4-token contexts (the decision cache's key) repeat like in text; a first-order chain cannot
match all n at once. Raise ``bigram_prob`` / lower ``successors`` for a more repetitive corpus
(0.75 / 4 gives a 4-gram rate of 0.59 at 0.32M tokens, vocab 1000).

Token ids are ranks: free draws are Zipf over latent labels, and each latent label is emitted
as its rank in the chain's stationary distribution (by fixed-point iteration, :func:`chain_model`),
so the expected frequency of token ``t`` decreases with ``t`` and token 0 is the most frequent.

Determinism: the output depends only on the spec. Streams use independent generators derived
from ``(seed, stream index)`` and are produced in fixed blocks of :data:`BLOCK` tokens, so one
stream can be regenerated alone (:func:`generate_tokens`) and memory stays bounded by
``num_streams * BLOCK`` tokens however long the streams are.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from pipeline.engine.events import EventChunk

BLOCK = 1 << 14
"""Tokens generated per stream per step (part of the output's definition -- do not change)."""
_SLICE = 1024  # tokens converted to Python ints at a time by :func:`chunked`


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic corpus; equal specs give identical corpora."""

    vocab_size: int = 1000
    num_streams: int = 16
    tokens_per_stream: int = 16384
    zipf_s: float = 1.1
    bigram_prob: float = 0.5
    successors: int = 8
    chunk_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.vocab_size >= 1, "vocab_size must be >= 1"),
            (self.num_streams >= 1, "num_streams must be >= 1"),
            (self.tokens_per_stream >= 0, "tokens_per_stream must be >= 0"),
            (self.zipf_s > 0, "zipf_s must be > 0"),
            (0.0 <= self.bigram_prob <= 1.0, "bigram_prob must be in [0, 1]"),
            (self.successors >= 1, "successors must be >= 1"),
            (self.chunk_size >= 1, "chunk_size must be >= 1"),
            (self.seed >= 0, "seed must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def total_tokens(self) -> int:
        return self.num_streams * self.tokens_per_stream


def stream_id(index: int) -> str:
    """The id of synthetic stream ``index`` (``"syn-0003"``)."""
    return f"syn-{index:04d}"


def zipf_probs(vocab_size: int, s: float) -> np.ndarray:
    """Zipf probabilities over ranks ``0..vocab_size-1`` (``p[k] ∝ (k + 1) ** -s``)."""
    weights = np.arange(1, vocab_size + 1, dtype=np.float64) ** -s
    return weights / weights.sum()


@dataclass(frozen=True)
class ChainModel:
    """The Markov chain of a spec, in latent labels (free draws are Zipf over latent labels).

    ``table[t]`` are latent token ``t``'s preferred successors; ``rank[t]`` is the emitted id of
    latent token ``t``: its rank in the chain's stationary distribution ``stationary``.
    """

    table: np.ndarray  # int64 [vocab, successors]
    cdf: np.ndarray  # float64 [vocab], cumulative Zipf law of free draws
    rank: np.ndarray  # int64 [vocab]
    stationary: np.ndarray  # float64 [vocab], indexed by latent label


def chain_model(spec: SyntheticSpec) -> ChainModel:
    """Build the chain of ``spec`` (depends on ``seed``, ``vocab_size``, ``zipf_s``, bigram params)."""
    rng = np.random.default_rng([spec.seed, 0])
    probs = zipf_probs(spec.vocab_size, spec.zipf_s)
    cdf = np.cumsum(probs)
    table = _zipf_draws(rng, cdf, spec.vocab_size * spec.successors).reshape(spec.vocab_size, -1)
    pi = _stationary(table, probs, spec.bigram_prob)
    rank = np.empty(spec.vocab_size, dtype=np.int64)
    rank[np.argsort(-pi, kind="stable")] = np.arange(spec.vocab_size)
    return ChainModel(table, cdf, rank, pi)


def _stationary(table: np.ndarray, probs: np.ndarray, bigram_prob: float, iters: int = 200) -> np.ndarray:
    """Stationary law ``pi = (1 - p) * zipf + p * pi @ S`` by fixed-point iteration (contraction p)."""
    vocab, succ = table.shape
    pi = probs.copy()
    for _ in range(iters):
        moved = np.bincount(table.ravel(), weights=np.repeat(pi / succ, succ), minlength=vocab)
        new = (1.0 - bigram_prob) * probs + bigram_prob * moved
        if np.abs(new - pi).sum() < 1e-12:
            return new
        pi = new
    return pi


def _zipf_draws(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    draws = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return np.minimum(draws, len(cdf) - 1).astype(np.int64)


def _chain(free: np.ndarray, follow: np.ndarray, choice: np.ndarray, table: np.ndarray, prev: int) -> np.ndarray:
    """Resolve one block of the Markov chain without a per-token Python loop.

    ``ext[0]`` is the previous block's last token (``prev``; ``-1`` = stream start, where the
    first token is always free). A bigram position at depth ``k`` (``k`` positions after the
    last free token) only needs depth ``k-1`` resolved, so positions are processed one depth at
    a time: the number of numpy steps is the longest bigram run (~log(n) / log(1/bigram_prob)).
    """
    n = len(free)
    if prev < 0:
        follow = follow.copy()
        follow[0] = False
    ext = np.empty(n + 1, dtype=np.int64)
    ext[0] = max(prev, 0)
    ext[1:] = free
    idx = np.arange(1, n + 1)
    last_free = np.maximum.accumulate(np.where(follow, 0, idx))
    depth = np.where(follow, idx - last_free, 0)
    order = np.argsort(depth, kind="stable")
    bounds = np.cumsum(np.bincount(depth))
    for k in range(1, len(bounds)):
        pos = idx[order[bounds[k - 1] : bounds[k]]]
        ext[pos] = table[ext[pos - 1], choice[pos - 1]]
    return ext[1:]


def stream_blocks(spec: SyntheticSpec, index: int, model: ChainModel | None = None) -> Iterator[np.ndarray]:
    """Tokens of stream ``index`` as consecutive int64 blocks of (at most) :data:`BLOCK` tokens."""
    if not 0 <= index < spec.num_streams:
        raise ValueError(f"stream index {index} out of range (num_streams={spec.num_streams})")
    model = chain_model(spec) if model is None else model
    rng = np.random.default_rng([spec.seed, index + 1])
    prev, remaining = -1, spec.tokens_per_stream
    while remaining > 0:
        n = min(BLOCK, remaining)
        free = _zipf_draws(rng, model.cdf, n)
        follow = rng.random(n) < spec.bigram_prob
        choice = rng.integers(0, spec.successors, n)
        latent = _chain(free, follow, choice, model.table, prev)
        prev, remaining = int(latent[-1]), remaining - n
        yield model.rank[latent]


def generate_tokens(spec: SyntheticSpec, stream_index: int) -> np.ndarray:
    """All tokens of one stream (int64 array of ``tokens_per_stream``), same as in :func:`generate`."""
    blocks = list(stream_blocks(spec, stream_index))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)


def chunked(blocks: Iterable[np.ndarray], chunk_size: int) -> Iterator[tuple[int, ...]]:
    """Regroup token blocks into tuples of ``chunk_size`` tokens (the last may be shorter).

    Blocks are converted to Python ints a slice at a time, so memory stays at one block.
    """
    carry: list[int] = []
    step = max(_SLICE - _SLICE % chunk_size, chunk_size)
    for block in blocks:
        for start in range(0, len(block), step):
            values = carry + block[start : start + step].tolist()
            cut = len(values) - len(values) % chunk_size
            if chunk_size == 1:
                yield from ((v,) for v in values)
            else:
                yield from (tuple(values[i : i + chunk_size]) for i in range(0, cut, chunk_size))
            carry = values[cut:]
    if carry:
        yield tuple(carry)


def interleave(
    streams: Iterable[tuple[str, Iterator[tuple[int, ...]]]], max_open: int | None = None
) -> Iterator[EventChunk]:
    """Round-robin over streams, one chunk per stream per turn.

    ``streams`` yields ``(stream id, iterator of token tuples)``; at most ``max_open`` streams
    (all when ``None``) are interleaved at once, a finished stream being replaced by the next
    one. Each stream's ``first_seq`` starts at 0 and counts its tokens; ``offset`` is the
    running index of the chunk in the output (0-based).
    """
    pending = iter(streams)
    active: deque[list] = deque()

    def open_next() -> bool:
        item = next(pending, None)
        if item is not None:
            active.append([item[0], iter(item[1]), 0])
        return item is not None

    while (max_open is None or len(active) < max_open) and open_next():
        pass
    offset = 0
    while active:
        entry = active.popleft()
        tokens = next(entry[1], None)
        if tokens is None:
            open_next()
            continue
        yield EventChunk(entry[0], entry[2], tokens, offset)
        entry[2] += len(tokens)
        offset += 1
        active.append(entry)


def generate(spec: SyntheticSpec) -> Iterator[EventChunk]:
    """The corpus as chunks of ``spec.chunk_size`` tokens, streams interleaved round-robin."""
    model = chain_model(spec)
    return interleave(
        (stream_id(i), chunked(stream_blocks(spec, i, model), spec.chunk_size))
        for i in range(spec.num_streams)
    )
