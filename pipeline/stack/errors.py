"""User-facing errors of the local stack launcher."""
from __future__ import annotations

import shutil

from pipeline.errors import VARError


class StackError(VARError, RuntimeError):
    """A failure the user can act on.

    ``message`` (= ``str(error)``) is one line, what the CLI prints; ``details`` (optional, e.g.
    the last lines of a log file) is printed by ``var --verbose`` and shown as a note in
    tracebacks and pytest reports (see :class:`pipeline.errors.VARError`).
    """


TOOL_HINTS: dict[str, str] = {
    "java": "install OpenJDK 17 (apt-get install openjdk-17-jre-headless)",
    "mvn": "install Maven (apt-get install maven)",
    "redis-server": "install Redis (apt-get install redis-server)",
}


def require_tool(name: str) -> str:
    """Return the absolute path of executable ``name`` on PATH, or raise a one-line StackError."""
    path = shutil.which(name)
    if path is None:
        hint = TOOL_HINTS.get(name, "install it and make sure it is on PATH")
        raise StackError(f"{name} not found: {hint}")
    return path
