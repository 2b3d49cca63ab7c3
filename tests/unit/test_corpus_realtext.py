"""Real-text recorder: bundled plays and tokenizer, scenes as streams, determinism."""
from __future__ import annotations

import gzip
import re
from collections import Counter
from dataclasses import replace

import pytest

from pipeline.corpus.jsonl import read_corpus, scan_corpus
from pipeline.corpus.works import HELD_OUT, bundled_works, training_works
from pipeline.corpus.realtext import (
    DATA_DIR,
    bundled_play_path,
    bundled_plays,
    load_tokenizer,
    read_text,
    record_text,
    split_scenes,
    text_chunks,
    tokenizer_vocab_size,
)

PLAY_TEXT = """THE PLAY

SCENE: Somewhere.

ACT I.

SCENE I. A room.

First line.

Scene II. Another room.
Second line.

act 2
Chorus speaks before the scene.

SCENE 1
Third line.
"""


def test_bundled_assets_are_small_and_present():
    plays = bundled_plays()
    assert len(plays) >= 6 and "hamlet" in plays
    assert tokenizer_vocab_size() == 4096
    total = sum(p.stat().st_size for p in DATA_DIR.iterdir() if p.is_file())
    assert total < 3_000_000  # 42 works + tokenizer
    assert "ACT I" in read_text(bundled_play_path("hamlet"))
    with pytest.raises(ValueError, match="no bundled work"):
        bundled_play_path("no_such_play")


def test_bundled_texts_have_no_gutenberg_boilerplate():
    for play in bundled_works():
        assert "gutenberg" not in read_text(bundled_play_path(play)).lower()


def test_split_scenes():
    sections = split_scenes(PLAY_TEXT)
    assert [label for label, _ in sections] == ["0.0", "1.1", "1.2", "2.0", "2.1"]
    assert "SCENE: Somewhere." in sections[0][1]  # not a heading: no numeral
    assert sections[1][1].startswith("ACT I.")  # act heading opens its first scene
    assert "Chorus speaks" in sections[3][1]
    assert "".join(text for _, text in sections) == PLAY_TEXT


def test_tokenizer_is_lossless_and_deterministic():
    tokenizer = load_tokenizer()
    text = read_text(bundled_play_path("macbeth"))[:5000] + " naïve ünïcode ✓"
    ids = tokenizer.encode(text).ids
    assert ids == tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2.5  # a trained BPE, not bytes


@pytest.fixture(scope="module")
def bundled_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "plays.jsonl.gz"
    return path, record_text(path, chunk_size=64)


def test_record_bundled_plays_scenes_as_streams(bundled_corpus):
    path, stats = bundled_corpus
    chunks = list(read_corpus(path, vocab_size=tokenizer_vocab_size()))
    streams = {c.stream for c in chunks}
    assert {"hamlet/1.2", "hamlet/0.0", "macbeth/5.8"} <= streams
    assert all(re.fullmatch(r"[a-z_]+/\d+\.\d+", s) for s in streams)
    per_play = Counter(s.split("/")[0] for s in streams)
    assert set(per_play) == set(bundled_plays()) and min(per_play.values()) >= 9
    assert stats.documents == len(bundled_plays())
    assert stats.streams == len(streams) and stats.records == len(chunks)
    assert stats.tokens == sum(len(c) for c in chunks) > 200_000
    assert max(max(c.tokens) for c in chunks) < stats.vocab_size == tokenizer_vocab_size()
    info = scan_corpus(path)
    assert (info.records, info.tokens, info.streams) == (stats.records, stats.tokens, stats.streams)


def test_interleaving_keeps_at_most_max_open_streams(bundled_corpus):
    path, _ = bundled_corpus
    chunks = list(read_corpus(path))
    assert len({c.stream for c in chunks[:16]}) == 16
    last_seen = {c.stream: i for i, c in enumerate(chunks)}
    first_seen: dict[str, int] = {}
    for i, c in enumerate(chunks):
        first_seen.setdefault(c.stream, i)
        open_now = sum(1 for s, f in first_seen.items() if last_seen[s] >= i)
        assert open_now <= 16


def test_same_input_same_bytes(tmp_path):
    source = tmp_path / "play.txt"
    source.write_text(PLAY_TEXT * 3)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    stats_a, stats_b = record_text(a, [source]), record_text(b, [source])
    assert replace(stats_a, path="") == replace(stats_b, path="")
    assert a.read_bytes() == b.read_bytes()


def test_documents_as_streams_gzip_and_duplicate_names(tmp_path):
    (tmp_path / "x").mkdir()
    first, second = tmp_path / "doc.txt", tmp_path / "x" / "doc.txt.gz"
    first.write_text("To be, or not to be.\n")
    second.write_bytes(gzip.compress("That is the question.\n".encode()))
    chunks = list(text_chunks([first, second], stream_by="document", chunk_size=1000))
    assert [c.stream for c in chunks] == ["doc", "doc#2"]
    decode = load_tokenizer().decode
    assert decode(list(chunks[0].tokens)) == "To be, or not to be.\n"
    assert decode(list(chunks[1].tokens)) == "That is the question.\n"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="stream_by"):
        record_text(tmp_path / "c.jsonl", stream_by="chapter")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        record_text(tmp_path / "c.jsonl", chunk_size=0)
    with pytest.raises(FileNotFoundError):
        record_text(tmp_path / "c.jsonl", [tmp_path / "missing.txt"])


def test_works_split_holds_whole_plays_out():
    works = bundled_works()
    assert len(works) == 42
    assert set(HELD_OUT) <= set(works)
    assert not set(HELD_OUT) & set(training_works())
    assert len(training_works()) == 38
