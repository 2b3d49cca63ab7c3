"""The model's commands: one-line errors, record-text over directories, model info."""
from __future__ import annotations

import gzip

import pytest

from pipeline.cli.main import main
from pipeline.corpus.jsonl import scan_corpus


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("var: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_model_info_prints_the_content_hash(capsys):
    assert main(["model", "info"]) == 0
    out = capsys.readouterr().out
    assert "sha256" in out and "attn_window" in out


def test_bad_checkpoints_and_flags_are_one_line_errors(capsys, tmp_path):
    assert "no such checkpoint" in _error(capsys, ["model", "info", str(tmp_path / "none.safetensors")])
    assert "VAR_ROUTER" in _error(capsys, ["replay", "--router", f"model:{tmp_path / 'none.safetensors'}"])
    assert "--budgets" in _error(capsys, ["frontier", "--budgets", "0.1,two"])
    assert "--budgets" in _error(capsys, ["frontier", "--budgets", "1.5"])
    assert "--attach" in _error(capsys, ["replay", "--via", "kafka", "--attach"])  # the model replay starts its workers
    assert "--workers" in _error(capsys, ["replay", "--via", "kafka", "--workers", "0"])
    assert "frontier" in _error(capsys, ["replay", "--plot", str(tmp_path / "x.png")])
    assert "must be model" in _error(capsys, ["replay", "--router", "gate"])


def test_record_text_reads_directories_and_gzip(capsys, tmp_path):
    texts = tmp_path / "texts"
    (texts / "sub").mkdir(parents=True)
    (texts / "a.txt").write_text("To be, or not to be.\n")
    with gzip.open(texts / "sub" / "b.txt.gz", "wt") as handle:
        handle.write("Full fathom five thy father lies.\n")
    (texts / ".hidden").write_text("skipped\n")
    out = tmp_path / "mine.jsonl"
    assert main(["corpus", "record-text", str(out), str(texts)]) == 0
    info = scan_corpus(out)
    assert info.streams == 2 and info.max_token < 4096
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no text files" in _error(capsys, ["corpus", "record-text", str(out), str(empty)])


@pytest.mark.parametrize("argv", [["model", "train", "--steps", "0"], ["model", "train", "--threads", "0"]])
def test_model_train_rejects_bad_counts(capsys, argv):
    assert ">= 1" in _error(capsys, argv)
