"""Base class for a server process whose files live in one home directory."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from . import process
from .errors import StackError
from .ports import LOCALHOST, is_port_free
from .process import ProcessInfo


class Service:
    """A detached server process with ``<home>/<name>.log`` and ``<home>/<name>.pid``.

    Subclasses set ``name`` and ``stop_timeout`` and call ``_launch`` from their ``start()``.
    """

    name = "service"
    stop_timeout = 10.0

    def __init__(self, home_dir: Path | str, startup_timeout: float) -> None:
        self.home = Path(home_dir).resolve()
        self.startup_timeout = startup_timeout
        self._proc: ProcessInfo | None = None

    @property
    def log_path(self) -> Path:
        return self.home / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"

    @property
    def process(self) -> ProcessInfo | None:
        """The running process (started here, or found through the pid file), else None."""
        if self._proc is not None and process.is_alive(self._proc):
            return self._proc
        return process.read_pid_file(self.pid_file)

    def is_running(self) -> bool:
        return self.process is not None

    def stop(self, timeout: float | None = None) -> bool:
        """SIGTERM the process, SIGKILL after ``timeout`` s (default ``stop_timeout``); True if it ran."""
        proc = self.process
        stopped = process.stop(proc, self.stop_timeout if timeout is None else timeout) if proc else False
        self._proc = None
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def _check_can_start(self, ports: Sequence[int]) -> None:
        """StackError if this service already runs or one of ``ports`` is taken."""
        running = self.process
        if running is not None:
            raise StackError(f"{self.name} already running (pid {running.pid}) in {self.home}")
        for port in ports:
            if not is_port_free(port):
                raise StackError(f"port {port} on {LOCALHOST} is already in use (choose another port)")

    def _launch(self, argv: Sequence[str], ready: Callable[[int], bool]) -> ProcessInfo:
        """Spawn ``argv`` and wait until ``ready(log_offset)``; ``log_offset`` is where this run's log starts."""
        self.home.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = process.spawn(argv, self.log_path, self.pid_file)
        process.wait_ready(
            self._proc, lambda: ready(offset), self.startup_timeout, self.name, self.log_path
        )
        return self._proc
