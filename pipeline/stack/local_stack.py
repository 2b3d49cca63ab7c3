"""A local stack of services (Kafka, Redis, and any worker processes) recorded on disk.

The record, ``<state_dir>/stack.json``, holds each service's PID, start time, address and log
path, so ``down()`` and ``status()`` work from any later process (``var stack down`` in another
shell).  Service names: ``kafka``, ``redis``, and names given to ``add_process``.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, TypeGuard

from pipeline.settings import Settings

from . import process
from .errors import StackError
from .kafka_broker import KafkaBroker
from .ports import free_port
from .process import ProcessInfo
from .redis_server import RedisServer
from .secure import StackSecrets, generate, kafka_acls, read_env_file, write_env_files

DEFAULT_KAFKA_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
DEFAULT_REDIS_PORT = 6379
SERVICES = ("kafka", "redis")
STOP_TIMEOUTS = {"kafka": KafkaBroker.stop_timeout, "redis": RedisServer.stop_timeout}
PROCESS_STOP_TIMEOUT = 10.0

Record = dict[str, Any]


def default_state_dir() -> Path:
    """``$VAR_STACK_DIR``, else ``.var/stack`` under the current working directory."""
    return Path(os.environ.get("VAR_STACK_DIR") or Path.cwd() / ".var" / "stack").resolve()


def pick_port(requested: int | None, default: int) -> int:
    """None -> ``default``; 0 -> a free port; anything else as given."""
    if requested is None:
        return default
    return free_port() if requested == 0 else requested


class LocalStack:
    """Kafka + Redis + named processes, started detached and recorded in ``state_dir``."""

    def __init__(self, state_dir: Path | str | None = None) -> None:
        self.state_dir = Path(state_dir).resolve() if state_dir else default_state_dir()

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    # -- services ------------------------------------------------------------------------
    def up(
        self,
        kafka_port: int | None = None,
        controller_port: int | None = None,
        redis_port: int | None = None,
        *,
        num_partitions: int = 1,
        services: Sequence[str] = SERVICES,
        secure: bool = False,
        namespace: str = "default",
    ) -> dict[str, Record]:
        """Start the named services that are not already running; return ``status()``.

        Ports: None means the default (9092, kafka_port + 1, 6379); 0 means a free port.
        Services already running are left as they are.  Raises StackError on failure.
        ``secure``: Kafka SASL_SSL (SCRAM) and Redis TLS + ACL for ``namespace``, with the
        credentials of :attr:`secrets_dir` (made on first use), and ``<role>.env`` files there.
        """
        secrets = generate(self.secrets_dir, namespace) if secure else None
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise StackError(f"unknown service(s): {', '.join(sorted(unknown))} (known: kafka, redis)")
        with self._locked() as state:
            if "kafka" in services and not _alive(state.get("kafka")):
                state["kafka"] = self._start_kafka(kafka_port, controller_port, num_partitions, secrets)
                self._save(state)
            if "redis" in services and not _alive(state.get("redis")):
                state["redis"] = self._start_redis(redis_port, secrets)
                self._save(state)
            if secrets is not None and _alive(state.get("kafka")) and _alive(state.get("redis")):
                write_env_files(secrets, state["kafka"]["address"], state["redis"]["address"], namespace)
        return self.status()

    def operator_env(self) -> dict[str, str] | None:
        """The operator's settings of this stack when it runs secured (``admin.env``), else None."""
        rec = self._load().get("kafka")
        path = self.secrets_dir / "admin.env"
        if not (_alive(rec) and rec and rec.get("secure") and path.exists()):
            return None
        return read_env_file(path)

    @property
    def secrets_dir(self) -> Path:
        """Where a secured stack keeps its CA, certificates, passwords and ``<role>.env`` files."""
        return self.state_dir / "secrets"

    def down(self, names: Sequence[str] | None = None) -> list[str]:
        """Stop the named services (default: all, worker processes first); return those that ran."""
        stopped = []
        with self._locked() as state:
            order = [n for n in state if n not in SERVICES] + [n for n in SERVICES if n in state]
            for name in order if names is None else [n for n in order if n in names]:
                if _stop(name, state.pop(name)):
                    stopped.append(name)
                self._save(state)
        return stopped

    def status(self) -> dict[str, Record]:
        """Each recorded service: kind, pid, alive, address (None for plain processes), log."""
        state = self._load()
        return {
            name: {
                "kind": rec["kind"], "pid": rec["pid"], "alive": _alive(rec),
                "address": rec.get("address"), "log": rec["log"],
            }
            for name, rec in state.items()
        }

    def address(self, name: str) -> str | None:
        """Recorded address of a running service (bootstrap for kafka, URL for redis), else None."""
        rec = self._load().get(name)
        return rec.get("address") if _alive(rec) else None

    # -- generic processes ---------------------------------------------------------------
    def add_process(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | str | None = None,
        cwd: Path | str | None = None,
    ) -> ProcessInfo:
        """Start ``argv`` detached as stack member ``name``; ``down()`` and ``status()`` include it.

        ``env`` adds to the current environment; the log defaults to ``<state_dir>/logs/<name>.log``.
        No readiness check: the caller decides when the process is ready.
        """
        if name in SERVICES or not name or "/" in name:
            raise StackError(f"invalid process name {name!r}")
        log = Path(log_path).resolve() if log_path else self.state_dir / "logs" / f"{name}.log"
        with self._locked() as state:
            if _alive(state.get(name)):
                raise StackError(f"process {name!r} already running (pid {state[name]['pid']})")
            proc = process.spawn(argv, log, env=env, cwd=Path(cwd) if cwd else None)
            state[name] = _record("process", proc, None, log, argv=list(argv))
            self._save(state)
        return proc

    def stop_process(self, name: str, timeout: float = PROCESS_STOP_TIMEOUT) -> bool:
        """Stop stack member ``name`` and forget it; True if it was running."""
        with self._locked() as state:
            rec = state.pop(name, None)
            stopped = _stop(name, rec, timeout) if rec else False
            self._save(state)
        return stopped

    # -- internals -----------------------------------------------------------------------
    def _start_kafka(self, port: int | None, controller_port: int | None, partitions: int,
                     secrets: StackSecrets | None) -> Record:
        kafka_port = pick_port(port, DEFAULT_KAFKA_PORT)
        default_ctrl = free_port() if port == 0 else kafka_port + 1
        broker = KafkaBroker(
            self.state_dir / "kafka", kafka_port, pick_port(controller_port, default_ctrl), partitions,
            secrets=secrets,
        )
        proc = broker.start()
        if secrets is not None:
            broker.grant(kafka_acls(Settings.load()))  # the topic and group names of this environment
        return _record("kafka", proc, broker.bootstrap, broker.log_path, home=str(broker.home),
                       secure=secrets is not None)

    def _start_redis(self, port: int | None, secrets: StackSecrets | None) -> Record:
        server = RedisServer(self.state_dir / "redis", pick_port(port, DEFAULT_REDIS_PORT), secrets=secrets)
        proc = server.start()
        return _record("redis", proc, server.url, server.log_path, home=str(server.home),
                       secure=secrets is not None)

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Record]]:
        """The recorded state, under an exclusive lock against other processes."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self._load()

    def _load(self) -> dict[str, Record]:
        try:
            return json.loads(self.state_file.read_text())["services"]
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError) as exc:
            raise StackError(f"corrupt stack state {self.state_file}: {exc}") from exc

    def _save(self, services: dict[str, Record]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"services": services}, indent=2) + "\n")
        os.replace(tmp, self.state_file)


def _record(kind: str, proc: ProcessInfo, address: str | None, log: Path, **extra: Any) -> Record:
    return {
        "kind": kind, "pid": proc.pid, "start_ticks": proc.start_ticks,
        "address": address, "log": str(log), **extra,
    }


def _info(rec: Record) -> ProcessInfo:
    return ProcessInfo(rec["pid"], rec.get("start_ticks"))


def _alive(rec: Record | None) -> TypeGuard[Record]:
    return rec is not None and process.is_alive(_info(rec))


def _stop(name: str, rec: Record, timeout: float | None = None) -> bool:
    """Stop a recorded service, with its own default timeout; removes a service's pid file."""
    wait = timeout if timeout is not None else STOP_TIMEOUTS.get(name, PROCESS_STOP_TIMEOUT)
    stopped = process.stop(_info(rec), wait)
    if rec.get("home"):
        (Path(rec["home"]) / f"{rec['kind']}.pid").unlink(missing_ok=True)
    return stopped
