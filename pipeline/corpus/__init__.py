"""Token corpora for VAR: synthetic (seeded Zipf + bigram chains), recorded JSON Lines files,
and real text tokenized with the bundled byte-level BPE.

* :mod:`.synthetic` -- :class:`SyntheticSpec`, :func:`generate`, :func:`generate_tokens`
* :mod:`.jsonl` -- :func:`write_corpus`, :func:`read_corpus` (streaming, strict),
  :func:`scan_corpus`, :func:`iter_batches`, :class:`CorpusError`
* :mod:`.realtext` -- :func:`record_text`, :func:`bundled_plays`, :func:`tokenizer_vocab_size`
  (imports ``tokenizers`` lazily, on first use of these names)
"""
from __future__ import annotations

from typing import Any

from .jsonl import CorpusError, CorpusInfo, iter_batches, read_corpus, scan_corpus, write_corpus
from .synthetic import SyntheticSpec, generate, generate_tokens, interleave, stream_id

_REALTEXT = ("RealTextStats", "bundled_plays", "record_text", "text_chunks", "tokenizer_vocab_size")


def __getattr__(name: str) -> Any:
    if name in _REALTEXT:
        from . import realtext

        return getattr(realtext, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CorpusError",
    "CorpusInfo",
    "SyntheticSpec",
    "generate",
    "generate_tokens",
    "interleave",
    "iter_batches",
    "read_corpus",
    "scan_corpus",
    "stream_id",
    "write_corpus",
    *_REALTEXT,
]
