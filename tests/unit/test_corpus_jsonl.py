"""Recorded corpora: round trips, streaming, and one CorpusError per kind of bad input."""
from __future__ import annotations

import gzip
import os
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipeline.corpus.jsonl import CorpusError, CorpusInfo, iter_batches, read_corpus, scan_corpus, write_corpus
from pipeline.corpus.synthetic import SyntheticSpec, generate
from pipeline.engine.events import EventBatch, EventChunk


def content(chunks) -> list[tuple[str, int, tuple[int, ...]]]:
    return [(c.stream, c.first_seq, c.tokens) for c in chunks]


def write_lines(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.mark.parametrize("chunk_size", [1, 5])
@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_round_trip(tmp_path, chunk_size, name):
    spec = SyntheticSpec(vocab_size=100, num_streams=3, tokens_per_stream=40, chunk_size=chunk_size)
    chunks = list(generate(spec))
    path = tmp_path / name
    assert write_corpus(path, chunks) == len(chunks)
    back = list(read_corpus(path, vocab_size=100))
    assert content(back) == content(chunks)
    assert [c.offset for c in back] == list(range(1, len(chunks) + 1))
    assert os.listdir(tmp_path) == [name]  # no temporary file left behind


def test_gzip_file_is_really_compressed(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    write_corpus(path, [EventChunk("a", 0, (1,))])
    assert gzip.decompress(path.read_bytes()).startswith(b'{"stream":"a"')


def test_blank_lines_skipped_and_offsets_are_line_numbers(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", ['{"stream":"a","seq":0,"token":1}', "", "  ",
                                               '{"stream":"a","seq":1,"tokens":[2,3]}'])
    assert [(c.offset, c.tokens) for c in read_corpus(path)] == [(1, (1,)), (4, (2, 3))]


def test_seq_gaps_and_interleaved_streams_are_fine(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [
        '{"stream":"a","seq":0,"tokens":[1,2]}',
        '{"stream":"b","seq":0,"token":1}',
        '{"stream":"a","seq":2,"token":3}',
        '{"stream":"a","seq":10,"token":4}',
    ])
    assert len(list(read_corpus(path))) == 4


def test_reader_is_lazy_good_records_come_before_the_error(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", ['{"stream":"a","seq":0,"token":1}', "garbage" * 1000])
    records = read_corpus(path)
    assert next(records).tokens == (1,)
    with pytest.raises(CorpusError, match="line 2"):
        next(records)


def test_reader_streams_from_a_pipe_that_is_still_open(tmp_path):
    """The first record is returned while the writer has not finished (nothing reads to EOF)."""
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    release = threading.Event()

    def writer() -> None:
        with open(fifo, "wb") as out:
            out.write(b'{"stream":"a","seq":0,"token":1}\n')
            out.flush()
            release.wait(10)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    got: list[EventChunk] = []
    reader = threading.Thread(target=lambda: got.append(next(read_corpus(fifo))), daemon=True)
    reader.start()
    reader.join(5)
    release.set()
    thread.join(5)
    assert got and got[0].tokens == (1,)


def test_reading_memory_is_bounded(tmp_path):
    spec = SyntheticSpec(vocab_size=100, num_streams=4, tokens_per_stream=25_000)
    path = tmp_path / "big.jsonl"
    write_corpus(path, generate(spec))
    assert path.stat().st_size > 4_000_000
    tracemalloc.start()
    count = sum(1 for _ in read_corpus(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 100_000
    assert peak < 1_000_000


BAD_CASES = {
    "bad json": ('{"stream":"a","seq":1,', "not valid JSON"),
    "not an object": ("[1, 2]", "must be a JSON object"),
    "negative token": ('{"stream":"a","seq":1,"token":-3}', "negative"),
    "out of vocabulary": ('{"stream":"a","seq":1,"token":1200}', "token 1200 is outside the vocabulary (size 1000)"),
    "out of vocabulary in chunk": ('{"stream":"a","seq":1,"tokens":[1,1000]}', "outside the vocabulary"),
    "missing stream": ('{"seq":1,"token":3}', "'stream'"),
    "missing seq": ('{"stream":"a","token":3}', "'seq'"),
    "missing token": ('{"stream":"a","seq":1}', "exactly one of 'token' or 'tokens'"),
    "seq wrong type": ('{"stream":"a","seq":"1","token":3}', "'seq' must be an integer"),
    "token wrong type": ('{"stream":"a","seq":1,"token":3.5}', "must be an integer"),
    "token bool": ('{"stream":"a","seq":1,"token":true}', "must be an integer"),
    "tokens not a list": ('{"stream":"a","seq":1,"tokens":7}', "non-empty list"),
    "empty tokens": ('{"stream":"a","seq":1,"tokens":[]}', "non-empty list"),
    "stream wrong type": ('{"stream":5,"seq":1,"token":3}', "'stream'"),
    "seq does not increase": ('{"stream":"a","seq":0,"token":3}',
                              "seq 0 of stream 'a' does not increase (previous token had seq 0)"),
    "seq inside previous chunk": ('{"stream":"x","seq":1,"token":3}',
                                  "seq 1 of stream 'x' does not increase (previous token had seq 2)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz"])
def test_each_bad_line_is_a_corpus_error_naming_file_and_line(tmp_path, case, name):
    bad, reason = BAD_CASES[case]
    good = ['{"stream":"a","seq":0,"token":1}', "", '{"stream":"x","seq":0,"tokens":[1,2,3]}']
    path = write_lines(tmp_path / name, good + [bad, '{"stream":"a","seq":99,"token":1}'])
    with pytest.raises(CorpusError) as err:
        list(read_corpus(path, vocab_size=1000))
    message = str(err.value)
    assert message.startswith(f"{path} line 4: ")
    assert reason in message
    assert "\n" not in message
    assert isinstance(err.value, ValueError)


def test_missing_file_raises_at_call_time(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(CorpusError, match=f"^no such corpus file: {path}$"):
        read_corpus(path)
    with pytest.raises(CorpusError, match="no such corpus file"):
        scan_corpus(path)


def test_broken_gzip_is_a_corpus_error(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(b"this is not gzip\n")
    with pytest.raises(CorpusError, match=r"c\.jsonl\.gz line 1: cannot read"):
        list(read_corpus(path))


def test_truncated_gzip_is_a_corpus_error(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    write_corpus(path, generate(SyntheticSpec(num_streams=2, tokens_per_stream=2000)))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CorpusError, match="cannot read"):
        list(read_corpus(path))


def test_scan_corpus(tmp_path):
    spec = SyntheticSpec(vocab_size=50, num_streams=3, tokens_per_stream=100, chunk_size=4)
    chunks = list(generate(spec))
    path = tmp_path / "c.jsonl"
    write_corpus(path, chunks)
    info = scan_corpus(path)
    max_token = max(max(c.tokens) for c in chunks)
    assert info == CorpusInfo(records=len(chunks), tokens=300, streams=3, max_token=max_token)
    assert info.vocab_size == max_token + 1


def test_scan_empty_corpus(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    assert scan_corpus(path) == CorpusInfo(0, 0, 0, -1)


def test_iter_batches_groups_without_splitting():
    chunks = [EventChunk("a", 0, (1, 2, 3), 1), EventChunk("b", 0, (4,), 2),
              EventChunk("a", 3, (5, 6), 3), EventChunk("b", 1, (7,), 4)]
    batches = list(iter_batches(chunks, batch_tokens=4))
    assert [len(b) for b in batches] == [4, 3]
    assert isinstance(batches[0], EventBatch)
    assert batches[0].streams == ["a", "a", "a", "b"]
    assert batches[1].seqs.tolist() == [3, 4, 1]
    assert batches[1].offsets.tolist() == [3, 3, 4]
    flat = np.concatenate([b.tokens for b in batches])
    assert flat.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert list(iter_batches([], 4)) == []
    with pytest.raises(ValueError):
        list(iter_batches(chunks, 0))


def test_progress_goes_to_stderr(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    write_corpus(path, generate(SyntheticSpec(num_streams=2, tokens_per_stream=10)), progress=True)
    list(read_corpus(path, progress=True))
    captured = capsys.readouterr()
    assert captured.out == "" and "c.jsonl" in captured.err
