"""Record real text as a token corpus, with a bundled byte-level BPE tokenizer (no downloads).

Bundled in ``pipeline/corpus/data/`` (made by ``deploy/tools/build_realtext_assets.py``): the 42
Shakespeare works (Project Gutenberg editions, public domain; see ``data/SOURCES.md`` and
:mod:`.works`) as ``<work>.txt.gz`` and ``tokenizer.json``, a byte-level BPE (vocab 4096) trained
on the training works (never on :data:`.works.HELD_OUT`). It is also the bundled MoE model's
vocabulary. Byte level means any UTF-8 text encodes, and encoding is deterministic.

Streams: with ``stream_by="scene"`` each scene is a stream ``"<doc>/<act>.<scene>"`` (e.g.
``"hamlet/1.2"``), split at lines ``ACT <n>`` / ``SCENE <n>`` (roman or arabic numerals, any
case); text before the first scene heading of an act is ``"<doc>/<act>.0"`` and the front matter
``"<doc>/0.0"``. With ``stream_by="document"`` each source file is one stream ``"<doc>"``.
``<doc>`` is the file name without ``.gz``/``.txt`` suffixes; repeated ids get ``#2``, ``#3``.
Streams are interleaved like live traffic: ``max_open`` streams at a time, round-robin by chunk,
a finished stream replaced by the next in source order (see :func:`.synthetic.interleave`).
"""
from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
from tokenizers import Tokenizer

from pipeline.engine.events import EventChunk

from .jsonl import PathLike, write_corpus
from .synthetic import chunked, interleave
from .works import DATA_DIR, DEFAULT_PLAYS, work_path

TOKENIZER_PATH = DATA_DIR / "tokenizer.json"
_ROMAN = r"(?:x{0,3}(?:ix|iv|v?i{0,3}))"
_HEADING = re.compile(rf"^\s*(act|scene)\s+(\d+|{_ROMAN})(?=$|[\s.,:;-])", re.I)
_ROMAN_VALUES = {"i": 1, "v": 5, "x": 10}

StreamBy = Literal["scene", "document"]


@dataclass(frozen=True)
class RealTextStats:
    """What :func:`record_text` wrote."""

    path: str
    documents: int
    streams: int
    records: int
    tokens: int
    vocab_size: int


def bundled_plays() -> list[str]:
    """Names of the eight plays recorded by default (``"hamlet"``, ...), sorted."""
    return sorted(DEFAULT_PLAYS)


def bundled_play_path(name: str) -> Path:
    """The file of a bundled work; ``ValueError`` for an unknown name."""
    return work_path(name)


@lru_cache(maxsize=1)
def load_tokenizer() -> Tokenizer:
    """The bundled tokenizer (loaded once per process)."""
    return Tokenizer.from_file(str(TOKENIZER_PATH))


def tokenizer_vocab_size() -> int:
    """Size of the bundled tokenizer's vocabulary: every token id is below it."""
    return load_tokenizer().get_vocab_size()


def read_text(path: PathLike) -> str:
    """A text file (gzip if ``*.gz``) as str; UTF-8, undecodable bytes replaced."""
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        return handle.read().decode("utf-8", errors="replace")


def document_name(path: PathLike) -> str:
    """``hamlet`` for ``.../hamlet.txt.gz``: the file name without ``.gz`` and one extension."""
    name = os.path.basename(os.fspath(path))
    name = name[:-3] if name.endswith(".gz") else name
    return os.path.splitext(name)[0] or name


def _numeral(text: str) -> int:
    if text.isdigit():
        return int(text)
    values = [_ROMAN_VALUES[c] for c in text.lower()]
    return sum(-v if i + 1 < len(values) and v < values[i + 1] else v for i, v in enumerate(values))


def _is_heading(line: str) -> bool:
    return _HEADING.match(line) is not None


def split_scenes(text: str) -> list[tuple[str, str]]:
    """``[(act.scene label, text)]`` in order; a section starts at each heading line.

    An act heading followed directly by a scene heading (only blank lines between) belongs to
    that scene. Sections holding only whitespace are dropped.
    """
    sections: list[tuple[str, list[str]]] = [("0.0", [])]
    act = 0
    for line in text.splitlines(keepends=True):
        match = _HEADING.match(line)
        if match:
            kind, number = match.group(1).lower(), _numeral(match.group(2))
            act = number if kind == "act" else act
            label = f"{act}.{number if kind == 'scene' else 0}"
            opening, lines = sections[-1]
            if kind == "scene" and opening == f"{act}.0" and all(not l.strip() or _is_heading(l) for l in lines):
                sections[-1] = (label, lines)
            else:
                sections.append((label, []))
        sections[-1][1].append(line)
    return [(label, "".join(lines)) for label, lines in sections if "".join(lines).strip()]


def _unique(name: str, seen: dict[str, int]) -> str:
    seen[name] = seen.get(name, 0) + 1
    return name if seen[name] == 1 else f"{name}#{seen[name]}"


def text_streams(sources: Sequence[PathLike], stream_by: StreamBy) -> list[tuple[str, str]]:
    """``[(stream id, text)]`` for the sources, in source order."""
    if stream_by not in ("scene", "document"):
        raise ValueError(f"stream_by must be 'scene' or 'document', got {stream_by!r}")
    docs: dict[str, int] = {}
    streams: list[tuple[str, str]] = []
    for source in sources:
        doc, text = _unique(document_name(source), docs), read_text(source)
        if stream_by == "document":
            streams.append((doc, text))
            continue
        labels: dict[str, int] = {}
        streams.extend((f"{doc}/{_unique(label, labels)}", part) for label, part in split_scenes(text))
    return streams


def encode_streams(streams: list[tuple[str, str]]) -> list[tuple[str, np.ndarray]]:
    """Tokenize each stream's text with the bundled tokenizer (empty encodings dropped)."""
    encodings = load_tokenizer().encode_batch([text for _, text in streams])
    out = [(name, np.asarray(enc.ids, dtype=np.int64)) for (name, _), enc in zip(streams, encodings)]
    return [(name, ids) for name, ids in out if len(ids)]


def _encoded_sources(
    sources: Sequence[PathLike] | None, stream_by: StreamBy
) -> tuple[int, list[tuple[str, np.ndarray]]]:
    paths = [bundled_play_path(p) for p in bundled_plays()] if sources is None else list(sources)
    return len(paths), encode_streams(text_streams(paths, stream_by))


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")


def _chunks(encoded: list[tuple[str, np.ndarray]], chunk_size: int, max_open: int | None) -> Iterator[EventChunk]:
    return interleave(((name, chunked([ids], chunk_size)) for name, ids in encoded), max_open)


def text_chunks(
    sources: Sequence[PathLike] | None = None,
    stream_by: StreamBy = "scene",
    chunk_size: int = 1,
    max_open: int | None = 16,
) -> Iterator[EventChunk]:
    """The chunks :func:`record_text` writes, without writing them (offset = record index)."""
    _check_chunk_size(chunk_size)
    return _chunks(_encoded_sources(sources, stream_by)[1], chunk_size, max_open)


def record_text(
    out_path: PathLike,
    sources: Sequence[PathLike] | None = None,
    stream_by: StreamBy = "scene",
    chunk_size: int = 1,
    max_open: int | None = 16,
    progress: bool = False,
) -> RealTextStats:
    """Tokenize text files (default: the bundled plays) and write them as a JSON Lines corpus.

    ``sources`` are text files (UTF-8, gzip if ``*.gz``); a missing one raises
    ``FileNotFoundError``. Deterministic: the same sources and arguments give a byte-identical
    file. Every token id is below :func:`tokenizer_vocab_size`. ``max_open=None`` interleaves
    all streams at once.
    """
    _check_chunk_size(chunk_size)
    documents, encoded = _encoded_sources(sources, stream_by)
    records = write_corpus(out_path, _chunks(encoded, chunk_size, max_open), progress=progress)
    return RealTextStats(
        path=os.fspath(out_path),
        documents=documents,
        streams=len(encoded),
        records=records,
        tokens=int(sum(len(ids) for _, ids in encoded)),
        vocab_size=tokenizer_vocab_size(),
    )
