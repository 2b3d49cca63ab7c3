"""The Kafka broker's classpath: Apache Kafka jars from Maven Central, cached once per machine.

``kafka/pom.xml`` names the broker (and its tools); :func:`ensure_jars` has Maven copy its
runtime classpath into a shared directory (:func:`default_lib_dir`) the first time, and is a
no-op after that. The broker (:mod:`.kafka_broker`) and Kafka's own console tools
(:mod:`.console_tools`) run from it.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from .errors import StackError, require_tool

KAFKA_VERSION = "3.9.2"
RESOURCES = Path(__file__).resolve().parent / "kafka"
# Kafka's tools are short-lived JVMs: C1 and SerialGC start them fastest.
TOOL_JVM_FLAGS = ("-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")


def default_lib_dir() -> Path:
    """Shared jar cache: ``$VAR_KAFKA_LIB`` or ``~/.cache/var/kafka-<version>/lib``."""
    override = os.environ.get("VAR_KAFKA_LIB")
    if override:
        return Path(override).expanduser().resolve()
    return Path.home() / ".cache" / "var" / f"kafka-{KAFKA_VERSION}" / "lib"


def ensure_jars(lib_dir: Path) -> Path:
    """Make sure the broker classpath is in ``lib_dir``; a no-op when it is complete.

    Completeness is a marker file holding the pom's hash, written only after Maven copied
    every jar, so an interrupted download (or a changed pom) is redone.  A file lock
    serialises concurrent callers.  Returns ``lib_dir``.
    """
    require_tool("java")
    pom = RESOURCES / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    marker = lib_dir / ".complete"
    if read_text(marker) == digest:
        return lib_dir
    mvn = require_tool("mvn")
    lib_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(lib_dir.parent / ".lib.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if read_text(marker) != digest:
            shutil.rmtree(lib_dir, ignore_errors=True)
            _maven_copy(mvn, pom, lib_dir)
            marker.write_text(digest)
    return lib_dir


def _maven_copy(mvn: str, pom: Path, lib_dir: Path) -> None:
    """Resolve the runtime classpath of ``pom`` from Maven Central into ``lib_dir``."""
    argv = [
        mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={lib_dir}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0 or not any(lib_dir.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        output = (result.stdout + result.stderr).strip().splitlines()[-30:]
        raise StackError(
            f"maven could not fetch the Kafka {KAFKA_VERSION} jars (exit {result.returncode})",
            "\n".join(output),
        )


def read_text(path: Path) -> str | None:
    """The stripped text of ``path``; None when it cannot be read."""
    try:
        return path.read_text().strip()
    except OSError:
        return None
