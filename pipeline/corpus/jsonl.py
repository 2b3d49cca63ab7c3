"""Recorded corpora: JSON Lines files of token records (format: :mod:`pipeline.engine.records`).

One record per line; blank lines are ignored; a path ending in ``.gz`` is gzip-compressed.
Reading *streams* the file line by line (memory: one line plus one integer per stream), and
every problem -- missing file, broken gzip, bad JSON, invalid record, token outside the
vocabulary, sequence numbers that do not increase within a stream -- raises
:class:`CorpusError` with a one-line message naming the file and the 1-based line number.
"""
from __future__ import annotations

import gzip
import io
import os
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

from tqdm import tqdm

from pipeline.engine.events import EventBatch, EventChunk
from pipeline.engine.records import RecordError, encode_chunk, parse_record_bytes
from pipeline.errors import VARError

PathLike = str | os.PathLike[str]
_WRITE_BATCH = 4096  # records joined per write() call


class CorpusError(VARError, ValueError):
    """A corpus file that cannot be read; ``str(err)`` names the file and line."""


@dataclass(frozen=True)
class CorpusInfo:
    """Summary of a corpus file from one streaming pass (:func:`scan_corpus`)."""

    records: int
    tokens: int
    streams: int
    max_token: int  # -1 for an empty corpus

    @property
    def vocab_size(self) -> int:
        """The smallest vocabulary that holds every token of the corpus."""
        return self.max_token + 1


def _is_gzip(path: PathLike) -> bool:
    return os.fspath(path).endswith(".gz")


@contextmanager
def _open_for_reading(path: PathLike) -> Iterator[io.BufferedIOBase]:
    name = os.fspath(path)
    try:
        raw = open(name, "rb")
    except FileNotFoundError:
        raise CorpusError(f"no such corpus file: {name}") from None
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {name}: {exc.strerror or exc}") from None
    with raw:
        yield gzip.GzipFile(fileobj=raw, mode="rb") if _is_gzip(name) else raw


def _numbered_lines(handle: io.BufferedIOBase, name: str) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based line numbers; decompression errors become CorpusError."""
    lineno = 0
    try:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                yield lineno, line
    except (OSError, EOFError, zlib.error) as exc:
        raise CorpusError(f"{name} line {lineno + 1}: cannot read ({exc})") from None


def _check_order(chunk: EventChunk, next_seq: dict[str, int]) -> None:
    """Require ``chunk`` to start after the previous chunk of its stream ended (gaps allowed)."""
    expected = next_seq.get(chunk.stream)
    if expected is not None and chunk.first_seq < expected:
        raise RecordError(
            f"seq {chunk.first_seq} of stream {chunk.stream!r} does not increase "
            f"(previous token had seq {expected - 1})"
        )
    next_seq[chunk.stream] = chunk.first_seq + len(chunk.tokens)


def read_corpus(path: PathLike, vocab_size: int | None = None, progress: bool = False) -> Iterator[EventChunk]:
    """Stream the records of a corpus file as chunks, ``offset`` = 1-based line number.

    A missing file raises :class:`CorpusError` at once; otherwise the returned iterator is
    lazy: the file is opened on the first ``next()`` and read one line at a time. It raises
    :class:`CorpusError` at the offending record (the good records before it have been
    yielded) for every problem listed in the module docstring. With ``vocab_size``, tokens
    ``>= vocab_size`` are errors. ``progress`` shows a record counter on stderr.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise CorpusError(f"no such corpus file: {name}")
    return _read(name, vocab_size, progress)


def _read(name: str, vocab_size: int | None, progress: bool) -> Iterator[EventChunk]:
    next_seq: dict[str, int] = {}
    with _open_for_reading(name) as handle, _progress(progress, name, "rec") as bar:
        for lineno, line in _numbered_lines(handle, name):
            try:
                chunk = parse_record_bytes(line, lineno, vocab_size)
                _check_order(chunk, next_seq)
            except RecordError as exc:
                raise CorpusError(f"{name} line {lineno}: {exc}") from None
            bar.update(1)
            yield chunk


def write_corpus(path: PathLike, chunks: Iterable[EventChunk], progress: bool = False) -> int:
    """Write chunks as JSON Lines (gzip for ``*.gz``); returns the number of records written.

    The file is written under a temporary name and renamed when complete, so a reader never
    sees a half-written corpus. Chunks are written as given (no ordering checks); a chunk of one
    token becomes a ``"token"`` record, longer chunks ``"tokens"`` records.
    """
    name = os.fspath(path)
    partial = f"{name}.partial"
    records = 0
    try:
        with _open_for_writing(partial, _is_gzip(name)) as out, _progress(progress, name, "tok") as bar:
            pending: list[bytes] = []
            for chunk in chunks:
                pending.append(encode_chunk(chunk))
                bar.update(len(chunk.tokens))
                if len(pending) >= _WRITE_BATCH:
                    records += _flush(out, pending)
            records += _flush(out, pending)
        os.replace(partial, name)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    return records


@contextmanager
def _open_for_writing(path: str, compress: bool) -> Iterator[io.BufferedIOBase]:
    with open(path, "wb") as raw:
        if not compress:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as packed:
            yield packed


def _flush(out: io.BufferedIOBase, pending: list[bytes]) -> int:
    count = len(pending)
    if count:
        out.write(b"\n".join(pending) + b"\n")
        pending.clear()
    return count


@contextmanager
def _progress(enabled: bool, name: str, unit: str) -> Iterator[tqdm]:
    bar = tqdm(desc=os.path.basename(name), unit=unit, unit_scale=True, file=sys.stderr, disable=not enabled)
    try:
        yield bar
    finally:
        bar.close()


def scan_corpus(path: PathLike) -> CorpusInfo:
    """Count records, tokens and streams and find the largest token in one validating pass."""
    records = tokens = 0
    max_token = -1
    streams: set[str] = set()
    for chunk in read_corpus(path):
        records += 1
        tokens += len(chunk.tokens)
        max_token = max(max_token, max(chunk.tokens))
        streams.add(chunk.stream)
    return CorpusInfo(records, tokens, len(streams), max_token)


def iter_batches(chunks: Iterable[EventChunk], batch_tokens: int) -> Iterator[EventBatch]:
    """Group consecutive chunks into batches of at least ``batch_tokens`` tokens (the last may be smaller).

    Chunks are never split, so a batch holds at most ``batch_tokens + max chunk length - 1``
    tokens and every event keeps the offset of the record it came from. Order is preserved.
    """
    if batch_tokens < 1:
        raise ValueError("batch_tokens must be >= 1")
    group: list[EventChunk] = []
    size = 0
    for chunk in chunks:
        group.append(chunk)
        size += len(chunk.tokens)
        if size >= batch_tokens:
            yield EventBatch.from_chunks(group)
            group, size = [], 0
    if group:
        yield EventBatch.from_chunks(group)


__all__ = [
    "CorpusError",
    "CorpusInfo",
    "iter_batches",
    "read_corpus",
    "scan_corpus",
    "write_corpus",
]
