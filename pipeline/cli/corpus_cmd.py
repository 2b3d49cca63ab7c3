"""``var corpus``: write synthetic or real-text corpora, and inspect corpus files."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.corpus.jsonl import scan_corpus, write_corpus
from pipeline.corpus.synthetic import generate

from .common import UserError, add_progress_flag, add_settings, add_synthetic_arguments, print_json, \
    settings_from, show_progress, synthetic_spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="make or inspect recorded corpora (JSON Lines)")
    csub = p.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)

    synth = csub.add_parser("synth", help="write the seeded synthetic corpus to a file")
    synth.add_argument("out", help="output path (.jsonl or .jsonl.gz)")
    add_settings(synth, ("vocab_size", "seed"))
    add_synthetic_arguments(synth)
    add_progress_flag(synth)
    synth.set_defaults(handler=run_synth)

    text = csub.add_parser("record-text", help="tokenize real text (BPE) into a corpus; streams = scenes/documents")
    text.add_argument("out", help="output path (.jsonl or .jsonl.gz)")
    text.add_argument("sources", nargs="*", metavar="FILE_OR_DIR",
                      help="UTF-8 text files (.gz read transparently) or directories of them, recursively "
                           "(default: the bundled Shakespeare plays)")
    text.add_argument("--stream-by", choices=("scene", "document"), default=None,
                      help="one stream per scene (default for the bundled plays) or per document (default for files)")
    text.add_argument("--chunk-size", type=int, default=1, help="tokens per record (default 1)")
    add_progress_flag(text)
    text.set_defaults(handler=run_record_text)

    info = csub.add_parser("info", help="validate a corpus file and print its size and vocabulary")
    info.add_argument("path")
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=run_info)


def run_synth(args: argparse.Namespace) -> int:
    spec = synthetic_spec(args, settings_from(args))
    records = write_corpus(args.out, generate(spec), progress=show_progress(args))
    print(f"wrote {records:,} records ({spec.total_tokens:,} tokens, {spec.num_streams} streams) to {args.out}")
    return 0


def run_record_text(args: argparse.Namespace) -> int:
    from pipeline.corpus.realtext import StreamBy, record_text

    if args.chunk_size < 1:
        raise UserError("--chunk-size must be >= 1")
    stream_by: StreamBy = args.stream_by or ("document" if args.sources else "scene")
    sources = expand_sources(args.sources)
    try:
        stats = record_text(args.out, sources or None, stream_by, args.chunk_size, progress=show_progress(args))
    except FileNotFoundError as exc:
        raise UserError(f"no such text file: {exc.filename}") from None
    print(f"wrote {stats.records:,} records ({stats.tokens:,} tokens, {stats.streams} streams from "
          f"{stats.documents} documents, BPE vocabulary {stats.vocab_size}) to {stats.path}")
    return 0


def expand_sources(sources: list[str]) -> list[str]:
    """Files as given; directories replaced by their regular, non-hidden files (recursive, sorted)."""
    out: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise UserError(f"no text files in directory {source}")
            out.extend(str(p) for p in files)
        else:
            out.append(source)
    return out


def run_info(args: argparse.Namespace) -> int:
    info = scan_corpus(args.path)
    data = {"path": args.path, "records": info.records, "tokens": info.tokens, "streams": info.streams,
            "max_token": info.max_token, "vocab_size": info.vocab_size}
    if args.json:
        print_json(data)
    else:
        print("\n".join(f"{k:<11} {v}" for k, v in data.items()))
    return 0
