"""``var produce``: send a recorded or synthetic corpus to the tokens topic."""
from __future__ import annotations

import argparse
import asyncio

from pipeline.stream.kafka_access import KafkaAccess

from .common import UserError, add_progress_flag, add_settings, add_synthetic_arguments, corpus_source, \
    settings_from, show_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("produce", help="produce token streams to Kafka (per-token or chunked messages)")
    p.add_argument("path", nargs="?", help="recorded corpus (JSON Lines)")
    p.add_argument("--synthetic", action="store_true", help="produce the seeded synthetic corpus")
    p.add_argument("--message-size", type=int, default=1, help="tokens per message (1 = per-token messages)")
    p.add_argument("--rate", type=float, default=None, help="limit to this many tokens per second")
    add_progress_flag(p)
    add_settings(p, ("vocab_size", "seed"), groups=("kafka", "topics"))
    add_synthetic_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.stream.producer import produce_chunks, rechunk
    from pipeline.stream.topics import ensure_topics, pipeline_topics

    if args.message_size < 1 or (args.rate is not None and args.rate <= 0):
        raise UserError("--message-size must be >= 1 and --rate > 0")
    settings = settings_from(args)
    source = corpus_source(args, settings)
    info = source.info()
    asyncio.run(ensure_topics(KafkaAccess.from_settings(settings), pipeline_topics(settings), settings.replication_factor))
    stats = asyncio.run(produce_chunks(rechunk(source.chunks(settings.vocab_size), args.message_size),
                                       KafkaAccess.from_settings(settings), settings.topic_tokens, args.rate,
                                       show_progress(args), info.tokens, settings.topic_deadletter))
    print(f"produced {stats.tokens:,} tokens in {stats.messages:,} messages to {settings.topic_tokens} "
          f"in {stats.seconds:.1f} s ({stats.tokens / max(stats.seconds, 1e-9):,.0f} tokens/s)")
    return 0
