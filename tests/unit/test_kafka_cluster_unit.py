"""Unit tests of the multi-node cluster configs and broker restart/kill plumbing; no Java is started."""
from __future__ import annotations

import hashlib
import shutil
import socket
import struct
import sys
import threading
from pathlib import Path

import pytest

from pipeline.stack import kafka_jars
from pipeline.stack.errors import StackError
from pipeline.stack.kafka_broker import KafkaBroker, render_config
from pipeline.stack.kafka_cluster import KafkaCluster, metadata_broker_ids
from pipeline.stack.ports import free_port, is_port_free
from pipeline.stack.process import is_alive, spawn

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]
REPLICATION_KEYS = ("default.replication.factor", "offsets.topic.replication.factor",
                    "transaction.state.log.replication.factor")
MIN_ISR_KEYS = ("min.insync.replicas", "transaction.state.log.min.isr")


def _parse(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def _complete_lib(tmp_path: Path) -> Path:
    """A jar dir whose completeness marker matches the pom, so ensure_jars needs no Maven."""
    lib = tmp_path / "lib"
    lib.mkdir()
    pom = (kafka_jars.RESOURCES / "pom.xml").read_bytes()
    (lib / ".complete").write_text(hashlib.sha256(pom).hexdigest())
    return lib


def test_three_node_configs_share_the_quorum_and_replicate(tmp_path) -> None:
    cluster = KafkaCluster(tmp_path, size=3, partitions=6)
    confs = [_parse(node.render()) for node in cluster.nodes]
    ctrl = [node.controller_port for node in cluster.nodes]
    voters = f"1@127.0.0.1:{ctrl[0]},2@127.0.0.1:{ctrl[1]},3@127.0.0.1:{ctrl[2]}"
    assert [conf["node.id"] for conf in confs] == ["1", "2", "3"]
    for node, conf in zip(cluster.nodes, confs):
        assert conf["controller.quorum.voters"] == voters
        assert conf["process.roles"] == "broker,controller"
        listeners = f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        assert conf["listeners"] == listeners
        assert conf["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{node.port}"
        assert conf["log.dirs"] == str(node.data_dir)
        assert conf["num.partitions"] == "6"
        assert all(conf[key] == "3" for key in REPLICATION_KEYS)
        assert all(conf[key] == "2" for key in MIN_ISR_KEYS)
        assert "@" not in conf["log.dirs"] + conf["listeners"]


def test_nodes_have_distinct_ports_dirs_and_logs_and_share_the_jars(tmp_path) -> None:
    cluster = KafkaCluster(tmp_path, size=3, heap="448m")
    nodes = cluster.nodes
    ports = [p for node in nodes for p in (node.port, node.controller_port)]
    assert len(set(ports)) == 6
    for attr in ("home", "data_dir", "log_path", "pid_file", "config_path"):
        assert len({getattr(node, attr) for node in nodes}) == 3
    assert [node.home for node in nodes] == [tmp_path.resolve() / f"node-{i}" for i in (1, 2, 3)]
    assert len({node.lib_dir for node in nodes}) == 1
    assert all("-Xmx448m" in node.broker_argv() for node in nodes)
    assert cluster.bootstrap == ",".join(f"127.0.0.1:{node.port}" for node in nodes)
    assert cluster.size == 3 and cluster.cluster_id is None and cluster.running() == []


def test_default_heap_is_small(tmp_path) -> None:
    assert all("-Xmx384m" in node.broker_argv() for node in KafkaCluster(tmp_path).nodes)


@pytest.mark.parametrize("size, rf, isr", [(1, "1", "1"), (2, "2", "1"), (5, "3", "2")])
def test_replication_defaults_follow_the_size(tmp_path, size, rf, isr) -> None:
    cluster = KafkaCluster(tmp_path, size=size)
    conf = _parse(cluster.nodes[-1].render())
    assert conf["controller.quorum.voters"].count("@") == size
    assert all(conf[key] == rf for key in REPLICATION_KEYS)
    assert all(conf[key] == isr for key in MIN_ISR_KEYS)


def test_invalid_cluster_settings_and_node_indexes(tmp_path) -> None:
    with pytest.raises(StackError, match="at least one node"):
        KafkaCluster(tmp_path, size=0)
    with pytest.raises(StackError, match="min.insync.replicas 3 <= replication 2"):
        KafkaCluster(tmp_path, size=3, replication_factor=2, min_insync_replicas=3)
    cluster = KafkaCluster(tmp_path, size=3)
    for bad in (-1, 3):
        with pytest.raises(StackError, match="no node"):
            cluster.kill_node(bad)


def test_single_node_render_is_unchanged_by_the_new_parameters(tmp_path) -> None:
    conf = _parse(render_config(19092, 19093, tmp_path))
    assert conf["node.id"] == "1" and conf["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert all(conf[key] == "1" for key in REPLICATION_KEYS + MIN_ISR_KEYS)
    assert _parse(render_config(1, 2, tmp_path, node_id=4))["controller.quorum.voters"] == "4@127.0.0.1:2"


def test_restart_needs_a_formatted_data_dir_with_the_same_config(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # no Java needed
    broker = KafkaBroker(tmp_path / "k", free_port(), free_port(), lib_dir=_complete_lib(tmp_path))
    with pytest.raises(StackError, match="no formatted kafka data dir"):
        broker.start(fresh=False)
    broker.data_dir.mkdir(parents=True)
    (broker.data_dir / "meta.properties").write_text("version=1\ncluster.id=abcDEF123\nnode.id=1\n")
    assert broker.formatted_cluster_id() == "abcDEF123"
    broker.config_path.write_text(render_config(1, 2, broker.data_dir))  # other ports
    with pytest.raises(StackError, match="differs from this broker's settings"):
        broker.start(fresh=False)
    assert not broker.is_running()


def test_wait_started_needs_a_launch(tmp_path) -> None:
    with pytest.raises(StackError, match="not launched"):
        KafkaBroker(tmp_path, 1, 2).wait_started()


def test_kill_sigkills_and_reaps(tmp_path) -> None:
    broker = KafkaBroker(tmp_path, 1, 2)
    assert broker.kill() is False
    proc = spawn(SLEEP, broker.log_path, broker.pid_file)
    broker._proc = proc
    assert broker.kill() is True
    assert not is_alive(proc) and not broker.pid_file.exists() and broker.process is None


def _fake_metadata_server(reply_body: bytes) -> tuple[int, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            size = struct.unpack(">i", conn.recv(4))[0]
            request = b""
            while len(request) < size:
                request += conn.recv(size)
            api_key, version, correlation_id = struct.unpack_from(">hhi", request)
            assert (api_key, version) == (3, 1)
            body = struct.pack(">i", correlation_id) + reply_body
            conn.sendall(struct.pack(">i", len(body)) + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def _broker_entry(node_id: int, host: bytes, port: int, rack: bytes | None) -> bytes:
    entry = struct.pack(">ih", node_id, len(host)) + host + struct.pack(">i", port)
    return entry + (struct.pack(">h", -1) if rack is None else struct.pack(">h", len(rack)) + rack)


def test_metadata_broker_ids_parses_a_v1_reply() -> None:
    brokers = [_broker_entry(1, b"127.0.0.1", 9092, None), _broker_entry(3, b"127.0.0.1", 9094, b"r1")]
    body = struct.pack(">i", 2) + b"".join(brokers) + struct.pack(">ii", 3, 0)  # controller 3, no topics
    port, thread = _fake_metadata_server(body)
    assert metadata_broker_ids(port) == {1, 3}
    thread.join(5)


def test_metadata_broker_ids_is_none_without_a_broker() -> None:
    assert metadata_broker_ids(free_port(), timeout=0.5) is None
    port, thread = _fake_metadata_server(struct.pack(">i", 2))  # truncated reply
    assert metadata_broker_ids(port) is None
    thread.join(5)


def test_wait_for_brokers_times_out_with_what_the_nodes_report(tmp_path, monkeypatch) -> None:
    cluster = KafkaCluster(tmp_path, size=3)
    monkeypatch.setattr(cluster, "running", lambda: [0, 1])
    monkeypatch.setattr(cluster, "broker_ids", lambda i: {1} if i == 0 else None)
    with pytest.raises(StackError, match=r"want brokers \[1, 2\], nodes report \{0: \{1\}, 1: None\}"):
        cluster.wait_for_brokers(timeout=0.3)
    monkeypatch.setattr(cluster, "broker_ids", lambda i: {1, 2, 3})
    cluster.wait_for_brokers(timeout=0.3)


def test_restartable_ports_are_free_distinct_and_below_the_ephemeral_range(tmp_path, monkeypatch) -> None:
    from pipeline.stack import kafka_cluster

    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("32768\t60999\n")
    monkeypatch.setattr(kafka_cluster, "EPHEMERAL_RANGE_FILE", range_file)
    ports = kafka_cluster.restartable_ports(6)
    assert len(set(ports)) == 6 and all(10_000 <= p < 32768 and is_port_free(p) for p in ports)
    assert all(10_000 <= node.port < 32768 for node in KafkaCluster(tmp_path, size=3).nodes)
    range_file.write_text("1024\t65535\n")  # no room below: ordinary free ports
    assert len(set(kafka_cluster.restartable_ports(3))) == 3
