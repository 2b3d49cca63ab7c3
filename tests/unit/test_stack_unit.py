"""Unit tests of the stack launcher that need no Kafka or Redis (pipeline/stack)."""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.main import main as var_main
from pipeline.stack import kafka_jars, packages, redis_server
from pipeline.stack.errors import StackError, require_tool
from pipeline.stack.kafka_broker import KafkaBroker, new_cluster_id, render_config
from pipeline.stack.local_stack import LocalStack, pick_port
from pipeline.stack.ports import check_port, free_ports, is_port_free, wait_for_port
from pipeline.stack.process import ProcessInfo, is_alive, read_pid_file, spawn, stop
from pipeline.stack.redis_server import RedisServer

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def _parse(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def test_render_config_fills_ports_partitions_and_absolute_data_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    text = render_config(19092, 19093, Path("rel/data"), num_partitions=4)
    assert "@" not in text.replace("1@127.0.0.1", "")
    conf = _parse(text)
    assert conf["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert conf["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert conf["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert conf["log.dirs"] == str(tmp_path / "rel" / "data")
    assert conf["num.partitions"] == "4"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.min.isr"):
        assert conf[key] == "1"
    assert conf["group.initial.rebalance.delay.ms"] == "0"


def test_cluster_id_is_22_url_safe_chars_never_starting_with_dash() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_broker_argv_heap_default_and_env_override(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("VAR_KAFKA_HEAP", raising=False)
    assert "-Xmx512m" in KafkaBroker(tmp_path, 1, 2).broker_argv()
    monkeypatch.setenv("VAR_KAFKA_HEAP", "1g")
    monkeypatch.setenv("VAR_KAFKA_JVM_OPTS", "-XX:+UseSerialGC -Dx=1")
    argv = KafkaBroker(tmp_path, 1, 2).broker_argv()
    assert "-Xmx1g" in argv and "-XX:+UseSerialGC" in argv
    assert argv[-2:] == ["kafka.Kafka", str(tmp_path.resolve() / "server.properties")]
    assert KafkaBroker(tmp_path, 1, 2).bootstrap == "127.0.0.1:1"


def test_redis_argv_and_url(tmp_path) -> None:
    server = RedisServer(tmp_path, 7000, maxmemory="64mb")
    argv = server.argv()
    assert argv[argv.index("--port") + 1] == "7000" and argv[argv.index("--bind") + 1] == "127.0.0.1"
    assert argv[argv.index("--save") + 1] == "" and argv[argv.index("--maxmemory") + 1] == "64mb"
    assert argv[argv.index("--dir") + 1] == str(tmp_path.resolve())
    assert server.url == "redis://127.0.0.1:7000/0"


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5 and all(is_port_free(p) for p in ports)


def test_port_checks_see_a_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not is_port_free(port)
        assert wait_for_port("127.0.0.1", port, timeout=1.0)
    assert not wait_for_port("127.0.0.1", port, timeout=0.2)


def test_invalid_ports_and_port_picking() -> None:
    with pytest.raises(StackError, match="invalid port 70000"):
        check_port(70000)
    assert pick_port(None, 9092) == 9092 and pick_port(1234, 9092) == 1234
    assert pick_port(0, 9092) not in (0, 9092)


def test_missing_tool_messages(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    expected = {
        "java": "java not found: install OpenJDK 17 (apt-get install openjdk-17-jre-headless)",
        "mvn": "mvn not found: install Maven (apt-get install maven)",
    }
    for tool, message in expected.items():
        with pytest.raises(StackError) as caught:
            require_tool(tool)
        assert str(caught.value) == message


def test_ensure_jars_is_a_noop_with_a_complete_marker_and_needs_maven_without(monkeypatch, tmp_path) -> None:
    broker = KafkaBroker(tmp_path, 1, 2, lib_dir=tmp_path / "lib")
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "mvn" else f"/usr/bin/{name}")
    with pytest.raises(StackError, match="mvn not found"):
        broker.ensure_jars()
    digest = hashlib.sha256((kafka_jars.RESOURCES / "pom.xml").read_bytes()).hexdigest()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / ".complete").write_text(digest)
    assert broker.ensure_jars() == tmp_path / "lib"  # no Maven needed


def test_redis_install_errors(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(StackError, match="apt-get is unavailable"):
        redis_server.ensure_installed()
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    monkeypatch.setattr(packages.os, "geteuid", lambda: 1000)
    with pytest.raises(StackError, match="sudo apt-get install -y --no-install-recommends redis-server"):
        redis_server.ensure_installed()


def test_redis_install_retries_after_apt_update(monkeypatch) -> None:
    calls: list[list[str]] = []
    installed: list[bool] = []

    def fake_run(argv, **kwargs):  # "install" fails until "update" has run
        calls.append(argv[:2])
        ok = ["apt-get", "update"] in calls
        if ok and argv[1] == "install":
            installed.append(True)
        return subprocess.CompletedProcess(argv, 0 if ok else 100, "", "E: Unable to locate package")

    def fake_which(name):
        return {"apt-get": "/usr/bin/apt-get"}.get(name) or ("/usr/bin/redis-server" if installed else None)

    monkeypatch.setattr(shutil, "which", fake_which)
    monkeypatch.setattr(packages.os, "geteuid", lambda: 0)
    monkeypatch.setattr(packages.subprocess, "run", fake_run)
    assert redis_server.ensure_installed() == "/usr/bin/redis-server"
    assert calls == [["apt-get", "install"], ["apt-get", "update"], ["apt-get", "install"]]


def test_spawn_stop_and_pid_reuse_guard(tmp_path) -> None:
    proc = spawn(SLEEP, tmp_path / "p.log", pid_file=tmp_path / "p.pid")
    assert is_alive(proc) and read_pid_file(tmp_path / "p.pid") == proc
    assert not is_alive(ProcessInfo(proc.pid, (proc.start_ticks or 0) + 1))  # a "reused" pid
    assert stop(proc, timeout=5) and not is_alive(proc)
    assert read_pid_file(tmp_path / "p.pid") is None and not stop(proc)


def test_local_stack_processes_are_recorded_and_stopped(tmp_path) -> None:
    stack = LocalStack(tmp_path)
    proc = stack.add_process("worker-0", SLEEP, env={"VAR_X": "1"})
    with pytest.raises(StackError, match="already running"):
        stack.add_process("worker-0", SLEEP)
    stack.add_process("worker-1", SLEEP)
    again = LocalStack(tmp_path)  # state is on disk, not in the object
    assert again.status()["worker-0"] == {
        "kind": "process", "pid": proc.pid, "alive": True, "address": None,
        "log": str(tmp_path / "logs" / "worker-0.log"),
    }
    assert again.stop_process("worker-0") and not is_alive(proc)
    assert again.down() == ["worker-1"] and again.status() == {}
    assert json.loads((tmp_path / "stack.json").read_text()) == {"services": {}}


def test_cli_status_with_nothing_recorded_exits_3(tmp_path, capsys) -> None:
    assert var_main(["stack", "status", "--state-dir", str(tmp_path)]) == 3
    assert capsys.readouterr().out.strip() == "no services recorded"


@pytest.mark.parametrize("verbose", [[], ["--verbose"]])
def test_cli_user_error_is_one_line_exit_2_details_with_verbose(tmp_path, capsys, monkeypatch, verbose) -> None:
    def fail(*args, **kwargs):
        raise StackError("port 9092 on 127.0.0.1 is already in use (choose another port)", "log tail\nline 2")

    monkeypatch.setattr(LocalStack, "up", fail)
    assert var_main(["stack", "up", "--state-dir", str(tmp_path), *verbose]) == 2
    err = capsys.readouterr().err
    line = "var: error: port 9092 on 127.0.0.1 is already in use (choose another port)"
    assert err == (f"{line}\nlog tail\nline 2\n" if verbose else f"{line} (--verbose: details)\n")


def test_testing_helpers_use_services_named_by_the_environment(monkeypatch, tmp_path) -> None:
    from pipeline.stack.testing import kafka_for_tests, redis_for_tests

    monkeypatch.setenv("KAFKA_BOOTSTRAP", "10.0.0.1:9092")
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.1:6379/0")
    with kafka_for_tests(tmp_path) as bootstrap, redis_for_tests(tmp_path) as url:
        assert (bootstrap, url) == ("10.0.0.1:9092", "redis://10.0.0.1:6379/0")
    assert list(tmp_path.iterdir()) == []  # nothing was started
