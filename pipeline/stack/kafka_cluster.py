"""A local multi-node Apache Kafka KRaft cluster on 127.0.0.1, for replication and failure tests.

Every node is a ``KafkaBroker`` (combined broker+controller) in ``<home>/node-<id>`` with its own
client port, controller port, data dir and log; the nodes share the jar cache.  The controller
quorum has every node as a static voter (node ids 1..size), and all nodes are formatted with one
cluster id.  Nodes are addressed by index ``i`` in ``range(size)``; node ``i`` has node id ``i + 1``.
"""
from __future__ import annotations

import random
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

from .errors import StackError
from .kafka_broker import KafkaBroker, new_cluster_id
from .ports import LOCALHOST, free_ports, is_port_free
from .process import ProcessInfo

DEFAULT_CLUSTER_HEAP = "384m"
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_T = TypeVar("_T")


class KafkaCluster:
    """``size`` KRaft nodes on free ports under ``home_dir``; nothing runs until ``start()``.

    Defaults for ``size`` >= 3: default.replication.factor=3 (also for __consumer_offsets and
    __transaction_state), min.insync.replicas=2 (also transaction.state.log.min.isr); for smaller
    clusters the replication factor is ``size`` and the minimum ISR ``max(1, size - 1)``.
    ``partitions`` is num.partitions of auto-created topics; ``heap`` is each node's -Xmx.
    Ports come from ``restartable_ports`` (outside the ephemeral range), so a stopped or killed
    node can start again on its own ports.
    """

    def __init__(
        self,
        home_dir: Path | str,
        size: int = 3,
        partitions: int = 1,
        heap: str = DEFAULT_CLUSTER_HEAP,
        *,
        replication_factor: int | None = None,
        min_insync_replicas: int | None = None,
        jvm_opts: list[str] | None = None,
        lib_dir: Path | str | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        if size < 1:
            raise StackError(f"a cluster needs at least one node (size {size})")
        self.home = Path(home_dir).resolve()
        self.startup_timeout = startup_timeout
        rf = replication_factor or min(size, 3)
        ports = restartable_ports(2 * size)
        voters = ",".join(f"{i + 1}@{LOCALHOST}:{ports[2 * i + 1]}" for i in range(size))
        self.nodes: list[KafkaBroker] = [
            KafkaBroker(
                self.home / f"node-{i + 1}", ports[2 * i], ports[2 * i + 1], partitions, heap=heap,
                jvm_opts=jvm_opts, lib_dir=lib_dir, startup_timeout=startup_timeout, node_id=i + 1,
                quorum_voters=voters, replication_factor=rf,
                min_insync_replicas=min_insync_replicas or max(1, rf - 1),
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.render()  # invalid replication settings fail here, not at start()

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def bootstrap(self) -> str:
        """Client bootstrap list of all nodes, ``127.0.0.1:p1,127.0.0.1:p2,...``."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def cluster_id(self) -> str | None:
        """The cluster id the nodes were formatted with (None before the first ``start()``)."""
        return self.nodes[0].formatted_cluster_id()

    def running(self) -> list[int]:
        """Indexes of the nodes whose process runs."""
        return [i for i, node in enumerate(self.nodes) if node.is_running()]

    def start(self) -> None:
        """Format every node afresh with one new cluster id, launch them all, return when usable.

        Usable: every node logged "Kafka Server started" and every node's metadata lists all
        brokers.  On any failure every node is stopped and StackError is raised.
        """
        if self.running():
            raise StackError(f"kafka cluster in {self.home} already runs (nodes {self.running()})")
        self.nodes[0].ensure_jars()  # once, before the nodes look at the cache in parallel
        cluster_id = new_cluster_id()
        for node in self.nodes:
            node.cluster_id = cluster_id
        deadline = time.monotonic() + self.startup_timeout
        try:
            _each(self.nodes, lambda node: node.launch(fresh=True))  # formats run in parallel
            for node in self.nodes:  # a node starts only once a quorum of controllers runs
                node.wait_started(max(1.0, deadline - time.monotonic()))
            self.wait_for_brokers(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM every node at once (SIGKILL after each node's stop timeout) and wait for all."""
        _each(self.nodes, lambda node: node.stop())

    def kill_node(self, i: int) -> bool:
        """SIGKILL node ``i`` and reap it; True if it ran.  Its data dir stays as the crash left it."""
        return self._node(i).kill()

    def start_node(self, i: int) -> ProcessInfo:
        """Start node ``i`` again on its data dir; return when it started and every running node's
        metadata lists every running broker.  Raises StackError if it cannot (e.g. no quorum)."""
        node = self._node(i)
        deadline = time.monotonic() + self.startup_timeout
        proc = node.start(fresh=False)
        self.wait_for_brokers(max(1.0, deadline - time.monotonic()))
        return proc

    def broker_ids(self, i: int) -> set[int] | None:
        """Broker ids in node ``i``'s metadata (unfenced brokers), or None if it does not answer."""
        return metadata_broker_ids(self._node(i).port)

    def wait_for_brokers(self, timeout: float = 60.0) -> None:
        """Block until every running node's metadata lists every running node as a broker.

        A node that was just killed or stopped may still be listed until the controller fences it
        (broker.session.timeout.ms, 9 s).  Raises StackError after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            running = self.running()
            wanted = {i + 1 for i in running}
            seen = {i: self.broker_ids(i) for i in running}
            if all(ids is not None and wanted <= ids for ids in seen.values()):
                return
            if time.monotonic() >= deadline:
                raise StackError(f"kafka cluster metadata incomplete after {timeout:.0f} s: "
                                 f"want brokers {sorted(wanted)}, nodes report {seen}")
            time.sleep(0.2)

    def _node(self, i: int) -> KafkaBroker:
        if not 0 <= i < self.size:
            raise StackError(f"no node {i} in a {self.size}-node cluster (indexes 0..{self.size - 1})")
        return self.nodes[i]


def _each(nodes: list[KafkaBroker], action: Callable[[KafkaBroker], _T]) -> list[_T]:
    """``action`` on every node in parallel threads; the first error is re-raised after all finish."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = [pool.submit(action, node) for node in nodes]
    return [future.result() for future in futures]


def restartable_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """``count`` distinct ports free on ``host`` a moment ago, below the kernel's ephemeral range.

    ``free_ports()`` returns ephemeral ports; once a server on one dies, any outgoing connection
    on the machine may take that port as its local port, so a restart on the same port can fail.
    Ports below the ephemeral range (from 10000 up) are never taken that way.  Falls back to
    ``free_ports()`` when that range is unknown or too small.
    """
    try:
        low = int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    candidates = list(range(10_000, low))
    if len(candidates) < 100 * count:
        return free_ports(count, host)
    random.shuffle(candidates)
    ports: list[int] = []
    for port in candidates:
        if is_port_free(port, host) and is_port_free(port, "0.0.0.0"):
            ports.append(port)
            if len(ports) == count:
                return ports
    return free_ports(count, host)


def metadata_broker_ids(port: int, host: str = LOCALHOST, timeout: float = 2.0) -> set[int] | None:
    """Node ids of the brokers in a Metadata (v1, no topics) response from ``host:port``.

    None when nothing answers in ``timeout`` seconds or the reply is malformed.  Stdlib only, so
    the launcher needs no Kafka client.
    """
    client_id = b"var-stack"
    request = struct.pack(">hhih", 3, 1, 1, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            reply = _recv_exactly(sock, size)
        correlation_id, count = struct.unpack_from(">ii", reply, 0)
        if correlation_id != 1:
            return None
        ids, pos = set(), 8
        for _ in range(count):  # node_id int32, host string, port int32, rack nullable string
            (node_id, host_len) = struct.unpack_from(">ih", reply, pos)
            pos += 6 + host_len + 4
            (rack_len,) = struct.unpack_from(">h", reply, pos)
            pos += 2 + max(rack_len, 0)
            ids.add(node_id)
        return ids
    except (OSError, struct.error):
        return None


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-reply")
        data += chunk
    return bytes(data)
