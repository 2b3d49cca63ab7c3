"""Debian packages the local stack and the tests need (Redis, Prometheus), installed on demand."""
from __future__ import annotations

import os
import shutil
import subprocess

from .errors import StackError, require_tool


def ensure_package(binary: str, package: str, found: str | None = None, yourself: str = "") -> str:
    """Path of ``binary`` (or ``found``, a path the caller located itself); installs Debian's
    ``package`` with apt-get when it is missing.

    Tries ``apt-get install`` first without, then with ``apt-get update``.  Raises a one-line
    StackError when apt-get is missing (``yourself`` names what to install instead), when not
    running as root, or when the install fails (apt's output in its details).
    """
    found = shutil.which(binary) or found
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise StackError(f"{binary} not found and apt-get is unavailable: install {yourself or package} yourself")
    if os.geteuid() != 0:
        raise StackError(f"{binary} not found: run `sudo apt-get install -y --no-install-recommends {package}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise StackError(f"apt-get install {package} failed", (result.stdout + result.stderr)[-2000:])
    return require_tool(binary)
