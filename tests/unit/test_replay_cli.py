"""The ``var`` command line: replay output, determinism, file replay, one-line user errors, config."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.corpus.jsonl import write_corpus
from pipeline.corpus.synthetic import SyntheticSpec, generate
from pipeline.engine.events import EventChunk
from pipeline.report import TIMING_FIELDS
from pipeline.settings import setting_fields

REPO = Path(__file__).resolve().parents[2]
SYNTH = ["replay", "--synthetic", "--streams", "4", "--tokens-per-stream", "3000", "--json"]
KEYS = {"tokens", "tiers", "learned_fraction", "max_window_learned_fraction", "cache_hit_rate", "agreement_top1",
        "tokens_per_s", "constraints_ok"}
TIERS = {"cache", "fast", "learned", "budget_fallback", "prior"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("VAR_"):
            monkeypatch.delenv(name)


def clean_subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAR_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run_json(capsys, argv) -> tuple[int, dict]:
    status = main(argv)
    out = capsys.readouterr().out
    return status, json.loads(out)  # exactly one JSON object: json.loads rejects trailing data


def without_timing(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in TIMING_FIELDS}


@pytest.fixture(scope="module")
def synthetic_reports():
    """The synthetic replay twice plus --no-governor (in-process, shared by several tests)."""
    import contextlib
    import io

    def once(argv):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            status = main(argv)
        return status, json.loads(buf.getvalue())

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("VAR_")}
    try:
        return once(SYNTH), once(SYNTH), once(SYNTH + ["--no-governor"])
    finally:
        os.environ.update(saved)


def test_synthetic_replay_json_has_the_documented_keys(synthetic_reports):
    (status, report), _, _ = synthetic_reports
    assert KEYS <= set(report)
    assert set(report["tiers"]) == TIERS
    assert report["tokens"] == sum(report["tiers"].values())
    assert report["tokens"] == 4 * 3000 - report["train_tokens"]
    assert 0 < report["learned_fraction"] <= 1 and 0 <= report["cache_hit_rate"] <= 1
    assert 0 <= report["agreement_top1"] <= 1 and report["tokens_per_s"] > 0
    assert isinstance(report["constraints_ok"], bool)
    assert status == (0 if report["constraints_ok"] else 1)
    assert report["learned_fraction"] == pytest.approx(report["tiers"]["learned"] / report["tokens"])


def test_governor_holds_the_window_cap(synthetic_reports):
    (_, report), _, _ = synthetic_reports
    assert report["governor"] is True
    assert report["max_window_learned_fraction"] <= report["budget"] + 1e-12
    assert all(f <= report["budget"] + 1e-12 for f in report["window_learned_fractions"])
    assert report["tiers"]["budget_fallback"] > 0
    assert report["constraints"]["window_cap_held"] is True


def test_governor_on_means_learned_under_budget(synthetic_reports):
    (status, report), _, _ = synthetic_reports
    assert report["learned_fraction_full_windows"] <= report["budget"]
    assert report["constraints"]["learned_under_budget"] is True
    assert status == 0


def test_same_command_twice_gives_identical_json_apart_from_timing(synthetic_reports):
    (s1, a), (s2, b), _ = synthetic_reports
    assert s1 == s2
    assert without_timing(a) == without_timing(b)
    assert set(TIMING_FIELDS) <= set(a)


def test_no_governor_has_no_budget_fallback(synthetic_reports):
    (_, governed), _, (_, free) = synthetic_reports
    assert free["governor"] is False
    assert free["tiers"]["budget_fallback"] == 0
    assert free["tokens"] == governed["tokens"]
    assert free["tiers"]["learned"] > governed["tiers"]["learned"]


def test_file_replay_of_a_written_corpus_matches_the_synthetic_replay(tmp_path, capsys):
    spec = SyntheticSpec(vocab_size=200, num_streams=3, tokens_per_stream=800, seed=0)
    path = tmp_path / "corpus.jsonl"
    records = write_corpus(path, generate(spec))
    assert records == 3 * 800
    common = ["--json", "--vocab-size", "200", "--budget-window", "100"]
    status, from_file = run_json(capsys, ["replay", str(path)] + common)
    assert status in (0, 1)
    assert from_file["source"] == str(path)
    assert from_file["tokens"] + from_file["train_tokens"] == 3 * 800
    assert from_file["router"]["vocab_size"] == 200
    _, synthetic = run_json(capsys, ["replay", "--synthetic", "--streams", "3", "--tokens-per-stream", "800"]
                            + common)
    ignore = set(TIMING_FIELDS) | {"source"}
    assert {k: v for k, v in from_file.items() if k not in ignore} == \
           {k: v for k, v in synthetic.items() if k not in ignore}


def test_file_replay_of_a_chunked_gzip_corpus(tmp_path, capsys):
    path = tmp_path / "chunks.jsonl.gz"
    chunks = [EventChunk(f"d{s}", seq, tuple((s * 7 + seq + i) % 30 for i in range(5)))
              for seq in range(0, 200, 5) for s in range(3)]
    write_corpus(path, chunks)
    status, report = run_json(capsys, ["replay", str(path), "--json", "--batch-size", "64"])
    assert report["tokens"] + report["train_tokens"] == 3 * 200
    assert report["router"]["vocab_size"] == 30  # inferred: largest token + 1


def test_config_markdown_lists_every_env_var(capsys):
    assert main(["config", "--markdown"]) == 0
    out = capsys.readouterr().out
    for f in setting_fields():
        assert f"`{f.metadata['env']}`" in out, f.metadata["env"]
    assert len([line for line in out.splitlines() if line.startswith("| ")]) == len(setting_fields()) + 1


def test_config_resolves_flag_over_env(monkeypatch, capsys):
    monkeypatch.setenv("VAR_BUDGET", "0.3")
    monkeypatch.setenv("VAR_EXPERTS", "16")
    assert main(["config", "--json", "--experts", "4"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["budget"] == 0.3 and values["experts"] == 4


# --- user errors: exit 2, one line, no traceback (subprocesses, run concurrently) ------------------


def write(tmp: Path, name: str, lines: list[str]) -> str:
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


GOOD = '{"stream":"a","seq":0,"token":1}'


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    synth = ["replay", "--synthetic", "--streams", "2", "--tokens-per-stream", "50"]
    cases = {
        "missing": (["replay", str(tmp / "missing.jsonl")], {}),
        "bad_json": (["replay", write(tmp, "json.jsonl", [GOOD, GOOD.replace("0", "1")[:-1]])], {}),
        "negative": (["replay", write(tmp, "neg.jsonl", [GOOD, '{"stream":"a","seq":1,"token":-3}'])], {}),
        "too_big": (["replay", write(tmp, "big.jsonl", [GOOD, GOOD.replace('"a"', '"b"'),
                                                          '{"stream":"a","seq":1,"token":60}']),
                     "--vocab-size", "50"], {}),
        "seq": (["replay", write(tmp, "seq.jsonl", ['{"stream":"a","seq":5,"token":1}', GOOD.replace('"a"', '"b"'),
                                                     '{"stream":"a","seq":3,"token":2}'])], {}),
        "env_budget": (synth, {"VAR_BUDGET": "2"}),
        "flag_experts": (synth + ["--experts", "0"], {}),
        "usage": (["replay", "--experts"], {}),  # argparse's own error (usage + message)
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", "pipeline", *argv], cwd=tmp, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=clean_subprocess_env(**env))
             for name, (argv, env) in cases.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, out, err)
    return results


@pytest.mark.parametrize("case,needles", [
    ("missing", ["no such corpus file", "missing.jsonl"]),
    ("bad_json", ["json.jsonl", "line 2", "JSON"]),
    ("negative", ["neg.jsonl", "line 2", "negative", "-3"]),
    ("too_big", ["60", "50"]),
    ("seq", ["seq.jsonl", "line 3", "seq 3", "'a'", "does not increase"]),
    ("env_budget", ["VAR_BUDGET", "'2'", "[0, 1]"]),
    ("flag_experts", ["--experts", "'0'", ">= 1"]),
])
def test_user_error_is_one_line_with_exit_status_2(error_runs, case, needles):
    status, out, err = error_runs[case]
    assert status == 2, err
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("var: error:")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert out == ""


def test_token_outside_vocab_error_names_file_and_line(error_runs):
    _, _, err = error_runs["too_big"]
    assert "big.jsonl" in err and "line 3" in err


def test_argparse_usage_errors_exit_2_without_traceback(error_runs):
    status, out, err = error_runs["usage"]
    assert status == 2 and "Traceback" not in err
    assert "--experts" in err and "expected one argument" in err
