"""Where a replay's events come from: a recorded corpus file or the synthetic generator.

A source can be iterated more than once (each call to :meth:`chunks` starts over) and knows its
size, so replays can infer the vocabulary and split a training prefix off without loading the
corpus into memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

from pipeline.corpus.jsonl import CorpusInfo, read_corpus, scan_corpus
from pipeline.corpus.synthetic import SyntheticSpec, generate
from pipeline.engine.events import EventChunk


class CorpusSource(Protocol):
    @property
    def name(self) -> str:
        """A short label for reports (a file name, ``synthetic``, ...)."""
        ...

    def chunks(self, vocab_size: int | None = None) -> Iterator[EventChunk]:
        """Every record, in order (validated against ``vocab_size`` when given)."""
        ...

    def info(self) -> CorpusInfo:
        """Records, tokens, streams and largest token."""
        ...


@dataclass
class FileSource:
    """A JSON Lines corpus file (optionally gzip-compressed)."""

    path: str

    @property
    def name(self) -> str:
        return self.path

    def chunks(self, vocab_size: int | None = None) -> Iterator[EventChunk]:
        return read_corpus(self.path, vocab_size=vocab_size)

    def info(self) -> CorpusInfo:
        return scan_corpus(self.path)


@dataclass
class SyntheticSource:
    """The seeded synthetic generator (Zipf + bigram streams)."""

    spec: SyntheticSpec

    @property
    def name(self) -> str:
        s = self.spec
        return f"synthetic(vocab={s.vocab_size}, streams={s.num_streams}, tokens/stream={s.tokens_per_stream}, seed={s.seed})"

    def chunks(self, vocab_size: int | None = None) -> Iterator[EventChunk]:
        return generate(self.spec)

    def info(self) -> CorpusInfo:
        s = self.spec
        records = s.num_streams * -(-s.tokens_per_stream // s.chunk_size)
        return CorpusInfo(records, s.total_tokens, s.num_streams, s.vocab_size - 1)


@dataclass
class TextSource:
    """Text files (default: the held-out bundled works) tokenized in memory, one stream per scene."""

    works: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        from pipeline.corpus.works import HELD_OUT

        return "held-out works (" + ", ".join(self.works or HELD_OUT) + ")"

    def _chunks(self) -> list[EventChunk]:
        from pipeline.corpus.realtext import text_chunks
        from pipeline.corpus.works import HELD_OUT, work_path

        return list(text_chunks([work_path(w) for w in (self.works or HELD_OUT)], "scene"))

    def chunks(self, vocab_size: int | None = None) -> Iterator[EventChunk]:
        return iter(self._chunks())

    def info(self) -> CorpusInfo:
        chunks = self._chunks()
        return CorpusInfo(len(chunks), sum(len(c) for c in chunks), len({c.stream for c in chunks}),
                          max(max(c.tokens) for c in chunks))
