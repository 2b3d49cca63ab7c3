"""``var verify`` and ``var outcomes export`` on real runs: two router worker processes on real
Kafka and Redis, verified through the CLI users run. A clean run passes; its export, tampered
with, fails the check meant for each change; a run without the governor fails the budget."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipeline.corpus.jsonl import write_corpus
from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.settings import settings_env

from .harness import Harness, make_harness

pytestmark = pytest.mark.integration

SPEC = SyntheticSpec(vocab_size=1000, num_streams=12, tokens_per_stream=1500, seed=7)
KEY = "integration-secret"


def var(h: Harness, *args: str) -> tuple[int, str]:
    env = {**os.environ, **settings_env(h.settings), "VAR_CERTIFICATE_KEY": KEY}
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    return done.returncode, done.stdout + done.stderr


def routed(kafka: str, redis: str, tmp_path: Path, workers: int, **overrides) -> tuple[Harness, Path]:
    h = make_harness(kafka, redis, tmp_path, SPEC, certificate_key=KEY, **overrides)
    h.start_routers(workers)
    try:
        async def run():
            collector = asyncio.create_task(h.collect(idle_timeout_s=60))
            await h.produce(message_size=4)
            return await collector
        got = asyncio.run(run())
        assert got.distinct == h.tokens, h.worker_logs()
    finally:
        h.pool.stop_all()
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, h.chunks)
    return h, corpus


def report(output: str) -> dict[str, str]:
    data = orjson.loads(output[output.index("{"):])
    return {c["name"]: c["status"] for c in data["checks"]}


@pytest.fixture(scope="module")
def clean_run(kafka_bootstrap, redis_url, tmp_path_factory):
    return routed(kafka_bootstrap, redis_url, tmp_path_factory.mktemp("verify"), 2)


def test_a_clean_two_worker_run_verifies_from_the_topic(clean_run):
    h, corpus = clean_run
    rc, out = var(h, "verify", f"kafka:{h.settings.topic_outcomes}", "--corpus", str(corpus), "--json")
    assert rc == 0, out
    statuses = report(out)
    assert set(statuses) == {"completeness", "budget", "exactness", "tables", "certificates", "audits"}
    assert all(s in ("pass", "warn") for s in statuses.values()), out
    assert statuses["audits"] == "pass", out  # audits on by default (1%), the table agrees with its router


def _rewrite(path: Path, change) -> None:
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(change(lines)) + b"\n")


def _sealed_records(export: Path) -> list[int]:
    """Indices of the outcome records whose layer-0 decisions all lie in a certificate's range."""
    ranges = {}
    for line in (export / "certificates.jsonl").read_bytes().splitlines():
        cert = orjson.loads(line)
        if cert["layer"] == 0 and not cert["void"]:
            ranges.setdefault(cert["worker"], []).append((cert["first"], cert["end"]))
    sealed = []
    for i, line in enumerate((export / "outcomes.jsonl").read_bytes().splitlines()):
        record = orjson.loads(line)
        first, n = record["layers"][0]["pos"], len(record.get("tokens", [0]))
        if any(a <= first and first + n <= b for a, b in ranges.get(record["worker"], [])):
            sealed.append(i)
    assert len(sealed) >= 3, sealed
    return sealed


def test_every_tampering_of_the_export_is_caught(clean_run, tmp_path):
    h, corpus = clean_run
    rc, out = var(h, "outcomes", "export", "--out", str(tmp_path / "clean"))
    assert rc == 0, out
    rc, out = var(h, "verify", str(tmp_path / "clean" / "outcomes.jsonl"), "--corpus", str(corpus), "--json")
    assert rc == 0, out
    # Records hold one stream's decisions of one batch: how many there are, and which of them the
    # workers sealed before they stopped, depends on the batching. Tamper with sealed ones.
    s_expert, s_tier, s_drop = _sealed_records(tmp_path / "clean")[:3]

    def tampered(name: str, target: str, change) -> dict[str, str]:
        directory = tmp_path / name
        subprocess.run(["cp", "-r", str(tmp_path / "clean"), str(directory)], check=True)
        _rewrite(directory / target, change)
        rc, out = var(h, "verify", str(directory / "outcomes.jsonl"), "--corpus", str(corpus), "--json")
        assert rc == 1, out
        return report(out)

    def alter_expert(lines):
        record = orjson.loads(lines[s_expert])
        layer = record["layers"][0]
        first = layer["experts"][0] if "tokens" in record else layer["experts"]
        first[0] = next(e for e in range(8) if e not in first)
        lines[s_expert] = orjson.dumps(record)
        return lines

    def alter_tier(lines):
        record = orjson.loads(lines[s_tier])
        layer = record["layers"][0]
        tiers = layer["tier"] if isinstance(layer["tier"], list) else None
        if tiers is None:
            layer["tier"] = "fast" if layer["tier"] != "fast" else "learned"
        else:
            tiers[0] = "fast" if tiers[0] != "fast" else "learned"
        lines[s_tier] = orjson.dumps(record)
        return lines

    assert tampered("dropped", "outcomes.jsonl", lambda ls: ls[:s_drop] + ls[s_drop + 1:])["certificates"] == "fail"
    assert tampered("duplicated", "outcomes.jsonl", lambda ls: ls + [ls[s_tier]])["certificates"] == "fail"
    assert tampered("expert", "outcomes.jsonl", alter_expert)["certificates"] == "fail"
    assert tampered("tier", "outcomes.jsonl", alter_tier)["certificates"] == "fail"
    def drop_inner_certificate(lines):
        """Remove a certificate that another of its chain follows: a hole, not a killed worker's end
        (which chain comes where in the export depends on the workers' timing)."""
        chains = [(c["worker"], c["layer"], c["index"]) for c in map(orjson.loads, lines)]
        inner = next(i for i, (w, l, n) in enumerate(chains) if (w, l, n + 1) in chains)
        return lines[:inner] + lines[inner + 1:]

    assert tampered("no-certificate", "certificates.jsonl", drop_inner_certificate)["certificates"] == "fail"

    def inject(lines):
        record = orjson.loads(lines[0])
        record["stream"] = "intruder"
        return lines + [orjson.dumps(record)]
    injected = tampered("injected", "outcomes.jsonl", inject)
    assert injected["certificates"] == "fail" and injected["completeness"] == "fail"


def test_a_run_without_the_governor_fails_the_budget_check(kafka_bootstrap, redis_url, tmp_path):
    h, corpus = routed(kafka_bootstrap, redis_url, tmp_path, 1, governor=False, budget=0.02)
    rc, out = var(h, "verify", f"kafka:{h.settings.topic_outcomes}", "--json")
    assert rc == 1, out
    assert report(out)["budget"] == "fail"


def test_bad_input_is_one_line(clean_run, tmp_path):
    h, _ = clean_run
    bad = tmp_path / "outcomes.jsonl"
    bad.write_text('{"v": 2}\n')
    rc, out = var(h, "verify", str(bad))
    assert rc == 2 and out.strip().startswith("var: error:") and len(out.strip().splitlines()) == 1, out
