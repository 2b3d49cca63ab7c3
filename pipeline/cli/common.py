"""Helpers shared by the ``var`` subcommands: settings from flags, output, user errors."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable, Mapping

import orjson

from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.errors import VARError
from pipeline.settings import GROUPS, Settings, cli_flag, setting_fields, setting_type
from pipeline.sources import CorpusSource, FileSource, SyntheticSource

# The setting groups (pipeline/settings.py GROUPS) each kind of worker process reads. `var worker`
# and `var stats worker` take these; `var stack up` and `var replay --via kafka`, which start such
# workers, take them too (less what a launcher sets per worker itself), so no command drifts.
ROUTER_WORKER = ("routing", "engine", "kafka", "redis", "topics", "router_worker", "process", "instance")
STATS_WORKER = ("routing", "budgeting", "tables", "kafka", "redis", "topics", "stats_worker", "process", "instance")
LAUNCHER_OWN = ("services", "instance")  # the addresses, names and metrics ports a launcher gives its workers
DEFAULT_SYNTHETIC_VOCAB = 1000


class UserError(VARError):
    """A problem the user can fix in how ``var`` was called; printed as one line, exit status 2."""


def setting_names(groups: Iterable[str] = (), names: Iterable[str] = (),
                  without: Iterable[str] = ()) -> tuple[str, ...]:
    """The settings (in declaration order) in any of ``groups`` or named in ``names``, except those
    named in ``without`` or in a group named there."""
    wanted, named, skip = set(groups), set(names), set(without)
    known = {f.name for f in setting_fields()}
    unknown = sorted((wanted - set(GROUPS)) | (named - known) | (skip - set(GROUPS) - known))
    if unknown:
        raise ValueError(f"unknown setting groups or names {unknown}")
    return tuple(f.name for f in setting_fields()
                 if (f.name in named or wanted & set(f.metadata["groups"]))
                 and f.name not in skip and not skip & set(f.metadata["groups"]))


def add_settings(parser: argparse.ArgumentParser | argparse._ArgumentGroup, names: Iterable[str] = (), *,
                 groups: Iterable[str] = (), without: Iterable[str] = ()) -> None:
    """Add the flags of the settings :func:`setting_names` selects; an unset flag stays ``None``, so
    the environment or the default applies (:func:`settings_from`)."""
    by_name = {f.name: f for f in setting_fields()}
    for name in setting_names(groups, names, without):
        f = by_name[name]
        flag = cli_flag(f)
        if flag is None:
            continue
        help_text = f"{f.metadata['help']} [{f.metadata['env']}, default {f.default}]"
        if setting_type(name) is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text, choices=f.metadata["choices"],
                                metavar=name.upper())


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
