"""Helpers shared by the ``var`` subcommands: settings from flags, output, user errors."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable, Mapping

import orjson

from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.settings import Settings, add_arguments, setting_fields
from pipeline.sources import CorpusSource, FileSource, SyntheticSource

ROUTING_SETTINGS = ("router", "vocab_size", "hidden", "experts", "top_k", "context_window", "seed", "device")
ENGINE_SETTINGS = ("cache_ttl_s", "cache_size", "cache_min_confidence", "cache_scope", "min_frequency", "max_entropy",
                   "static_below", "pair_min_count", "pair_max_entropy", "pair_cap", "table_file", "budget",
                   "budget_window", "budget_split", "budget_layer_max", "governor", "audit_rate", "batch_size")
DEFAULT_SYNTHETIC_VOCAB = 1000


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def add_settings(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    add_arguments(parser, tuple(names))


def settings_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Resolve :class:`Settings` from the environment (or ``env``) and whatever flags ``args`` carries."""
    names = {f.name for f in setting_fields()}
    cli = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return Settings.load(env=env, cli=cli)


def add_synthetic_arguments(parser: argparse.ArgumentParser, default_tokens: int = 65536) -> None:
    group = parser.add_argument_group("synthetic corpus")
    group.add_argument("--streams", type=int, default=16, help="number of streams (default 16)")
    group.add_argument("--tokens-per-stream", type=int, default=default_tokens,
                       help=f"tokens per stream (default {default_tokens})")
    group.add_argument("--chunk-size", type=int, default=1, help="tokens per record (default 1)")
    group.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent (default 1.1)")
    group.add_argument("--bigram-prob", type=float, default=0.5, help="probability of following a bigram (0.5)")


def synthetic_spec(args: argparse.Namespace, settings: Settings) -> SyntheticSpec:
    try:
        return SyntheticSpec(
            vocab_size=settings.vocab_size or DEFAULT_SYNTHETIC_VOCAB, num_streams=args.streams,
            tokens_per_stream=args.tokens_per_stream, zipf_s=args.zipf_s, bigram_prob=args.bigram_prob,
            chunk_size=args.chunk_size, seed=settings.seed,
        )
    except ValueError as exc:
        raise UserError(f"invalid synthetic corpus: {exc}") from None


def corpus_source(args: argparse.Namespace, settings: Settings) -> CorpusSource:
    """The corpus named by ``args.path`` or, with ``--synthetic``, the generator."""
    if getattr(args, "synthetic", False):
        if args.path:
            raise UserError("give either a corpus PATH or --synthetic, not both")
        return SyntheticSource(synthetic_spec(args, settings))
    if not args.path:
        raise UserError("give a corpus PATH or --synthetic")
    return FileSource(args.path)


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def show_progress(args: argparse.Namespace) -> bool:
    flag = getattr(args, "progress", None)
    return sys.stderr.isatty() if flag is None else flag


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")
