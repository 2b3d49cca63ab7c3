"""Local worker processes: the same topology as docker compose, without Docker.

Each worker is a separate OS process running ``python -m pipeline worker`` (or the stats
worker) with the settings passed through the environment -- exactly what a compose service
gets. Used by ``var replay --via kafka --workers N``, ``var stack up --workers N`` and the
integration tests (which also kill -9 workers to test take-over). Processes are started and
stopped by the project's one supervisor, :mod:`pipeline.stack.process`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import VARError
from pipeline.settings import Settings, settings_env
from pipeline.stack.process import start_child, terminate
from pipeline.stack.secure import read_env_file


class WorkerFailed(VARError, RuntimeError):
    """A worker process exited or never became ready; one line naming its log."""


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def failure(self, what: str) -> WorkerFailed:
        """The one-line error for this worker: what went wrong, its last log line and the log."""
        last = self.log_tail(1).strip()[:200] or "no output"
        status = f"exited with status {self.process.returncode}" if not self.alive() else "is running"
        return WorkerFailed(f"{what}: worker {self.name} {status} ({last}); see {self.log_path}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


ROLES = ("router", "stats")


def with_role(env: dict[str, str], settings: Settings, role: str) -> dict[str, str]:
    """``env`` with the credentials of ``role`` (router or stats) from ``settings.role_env_dir``
    (``<role>.env``), when one is set: a worker started locally then logs in as its own, least-
    privileged user instead of the caller's. A ``X_FILE`` there replaces the caller's ``X``."""
    if not settings.role_env_dir:
        return env
    path = Path(settings.role_env_dir) / f"{role}.env"
    try:
        extra = read_env_file(path)
    except OSError as exc:
        raise WorkerFailed(f"cannot read the {role} credentials {path} ({exc.strerror})") from None
    for key in extra:
        if key.endswith("_FILE"):
            env.pop(key[:-len("_FILE")], None)
    return {**env, **extra}


def worker_env(settings: Settings, name: str, role: str = "router") -> dict[str, str]:
    """The whole environment of a local worker: ours, the settings (a secret given as a value
    replaces an inherited ``X_FILE``), then the role's credentials (:func:`with_role`)."""
    env = dict(os.environ)
    values = settings_env(settings)
    for key in values:
        env.pop(key + "_FILE", None)
    env.update(values)
    env = with_role(env, settings, role)
    env["VAR_WORKER_NAME"] = name
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class WorkerPool:
    """Start, stop and kill local worker processes; logs go to ``log_dir``."""

    settings: Settings
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(self, name: str, command: tuple[str, ...] = ("worker",),
              settings: Settings | None = None) -> WorkerProcess:
        """Start ``python -m pipeline COMMAND`` with the pool's settings (or ``settings``)."""
        log_path = self.log_dir / f"{name}.log"
        env = worker_env(settings or self.settings, name, "stats" if command[0] == "stats" else "router")
        process = start_child([sys.executable, "-m", "pipeline", *command], log_path, env)
        worker = WorkerProcess(name, process, log_path)
        self.workers.append(worker)
        return worker

    def start_routers(self, count: int, prefix: str = "router") -> list[WorkerProcess]:
        return [self.start(f"{prefix}-{i}") for i in range(count)]

    def kill(self, worker: WorkerProcess) -> None:
        """SIGKILL: the worker gets no chance to commit or leave the group."""
        if worker.alive():
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(10)

    def pause(self, worker: WorkerProcess, seconds: float) -> None:
        """SIGSTOP, ``seconds`` frozen, SIGCONT: a stalled VM or a long collector pause. Frozen past
        its session timeout, the worker is a zombie when it resumes -- the group moved on."""
        if worker.alive():
            worker.process.send_signal(signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                worker.process.send_signal(signal.SIGCONT)

    def stop(self, worker: WorkerProcess, timeout_s: float = 30.0) -> bool:
        """SIGTERM: the worker leaves the group cleanly; False if it had to be SIGKILLed."""
        return terminate([worker.process], timeout_s)[0]

    def stop_all(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every live worker, then SIGKILL whatever did not exit in time."""
        terminate([w.process for w in self.workers], timeout_s)

    def dead(self) -> list[WorkerProcess]:
        """The workers that have exited (crashed, killed or stopped)."""
        return [w for w in self.workers if not w.alive()]
