"""The one process supervisor: start, identify, wait for readiness, stop (by PID only).

Every child process of the project -- the stack's Kafka and Redis, local router and stats
workers (:mod:`pipeline.stream.worker_pool`) -- is started by :func:`start_child`: in its own
session (so it outlives the Python process that started it and a terminal's Ctrl-C does not
reach it), stdin closed, stdout and stderr appended to a log file. :func:`terminate` stops one:
SIGTERM, a grace period, then SIGKILL.

A detached service is identified by its PID *and* its start time (field 22 of
``/proc/<pid>/stat``), so a PID that the kernel reused for an unrelated program is never
signalled (:class:`ProcessInfo`, :func:`stop`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .errors import StackError

# Popen objects of children we started, so they are reaped (no zombies) and never GC-warned.
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class ProcessInfo:
    """A running (or once running) process: ``pid`` plus its kernel start time in clock ticks.

    ``start_ticks`` is None where /proc is unavailable; then only the PID is checked.
    """

    pid: int
    start_ticks: int | None = None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces and ')'


def start_ticks_of(pid: int) -> int | None:
    """Kernel start time of ``pid`` in clock ticks since boot, or None if unknown."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def is_alive(proc: ProcessInfo) -> bool:
    """True while ``proc`` runs (not a zombie, and its start time still matches)."""
    _reap(proc.pid)
    if not Path("/proc").is_dir():
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _stat_fields(proc.pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return proc.start_ticks is None or int(fields[19]) == proc.start_ticks


def spawn(
    argv: Sequence[str],
    log_path: Path,
    pid_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ProcessInfo:
    """:func:`start_child`, detached: the PID is written to ``pid_file`` (one line, the PID only)
    when given, and the child is known from then on by PID and start time only.
    """
    child = start_child(argv, log_path, env, cwd)
    _CHILDREN[child.pid] = child
    if pid_file is not None:
        pid_file.write_text(f"{child.pid}\n")
    return ProcessInfo(child.pid, start_ticks_of(child.pid))


def start_child(argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session; stdout and stderr are appended to ``log_path``.

    ``env`` holds variables added to (or overriding) the current environment. A program that
    cannot be started is a one-line :class:`StackError`.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    try:
        with open(log_path, "ab") as log:
            return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=full_env, cwd=cwd, start_new_session=True)
    except OSError as exc:
        raise StackError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc


def terminate(children: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> list[bool]:
    """SIGTERM every running child at once, wait up to ``timeout_s`` in all, then SIGKILL what is
    left; per child, True if it exited by itself (or had already)."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    clean = []
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
            clean.append(True)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
            clean.append(False)
    return clean


def read_pid_file(pid_file: Path) -> ProcessInfo | None:
    """The live process named by ``pid_file``, or None (no file, or the process is gone).

    A process that started after the PID file was written is a reused PID, not ours.
    """
    try:
        pid = int(pid_file.read_text().split()[0])
        written = pid_file.stat().st_mtime
    except (OSError, ValueError, IndexError):
        return None
    ticks = start_ticks_of(pid)
    proc = ProcessInfo(pid, ticks)
    if not is_alive(proc):
        return None
    if ticks is not None and _boot_time() + ticks / os.sysconf("SC_CLK_TCK") > written + 1.0:
        return None
    return proc


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def wait_while_alive(proc: ProcessInfo, timeout: float) -> bool:
    """Wait until ``proc`` exits; True if it did within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while is_alive(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop(proc: ProcessInfo, timeout: float = 20.0) -> bool:
    """SIGTERM ``proc``, wait up to ``timeout`` s, then SIGKILL; True if it was running.

    Only this exact process is signalled (never its session, never anything by name).
    """
    if not is_alive(proc):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            break
        if wait_while_alive(proc, wait):
            break
    if is_alive(proc):
        raise StackError(f"process {proc.pid} survived SIGKILL")
    return True


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except FileNotFoundError:
        return ""


def wait_ready(
    proc: ProcessInfo, ready: Callable[[], bool], timeout: float, what: str, log_path: Path
) -> None:
    """Poll ``ready()`` until it is true; on early exit or timeout raise StackError with the log tail.

    On timeout the process is stopped first, so a failed start leaves nothing behind.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if not is_alive(proc):
            raise _startup_error(f"{what} exited during startup", log_path)
        if time.monotonic() >= deadline:
            stop(proc, timeout=5.0)
            raise _startup_error(f"{what} not ready after {timeout:.0f} s", log_path)
        time.sleep(0.05)


def _startup_error(summary: str, log_path: Path) -> StackError:
    details = f"--- last lines of {log_path} ---\n{tail(log_path)}"
    return StackError(f"{summary} (log: {log_path})", details)
