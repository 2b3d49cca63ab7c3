"""A throw-away Prometheus server (Debian's ``prometheus``) on 127.0.0.1 that scrapes local workers.

It runs ``deploy/prometheus/prometheus.local.yml`` (the compose scrape configuration with
file-based discovery): the config is copied into the server's home directory, the targets of the
``router``, ``stats`` and ``prometheus`` jobs are written to ``<home>/targets/<job>.json`` (which
Prometheus re-reads on change), and the TSDB lives in ``<home>/data``. The binary is run directly;
the Debian package's service is never enabled or started by this module.

``python -m pipeline.stack.prometheus_server --routers 9100 9101 --stats 9102`` runs one in the
foreground (state in ``.var/prometheus``) for the workers of ``var stack up ... --metrics-port-base``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import StackError
from .packages import ensure_package
from .ports import LOCALHOST, check_port
from .process import ProcessInfo
from .service import Service

LOCAL_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.local.yml"
JOBS = ("router", "stats", "prometheus")


def ensure_installed() -> str:
    """Path of ``prometheus`` (Debian's package, installed when missing: :func:`ensure_package`)."""
    debian = "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    return ensure_package("prometheus", "prometheus", debian, "Prometheus 2")


def write_targets(directory: Path, job: str, addresses: Sequence[str]) -> Path:
    """Write ``<directory>/<job>.json``, a file_sd target group listing ``addresses`` ("host:port").

    Atomic (written aside, then renamed), so Prometheus' file watcher never reads half a file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{job}.json"
    aside = path.with_suffix(".json.tmp")
    aside.write_text(json.dumps([{"targets": list(addresses), "labels": {}}]) + "\n")
    aside.replace(path)
    return path


class PrometheusServer(Service):
    """One Prometheus process whose files live in ``home_dir`` (prometheus.yml, targets/, data/, log).

    ``targets`` maps job name (``router``, ``stats``) to "host:port" addresses; the ``prometheus``
    job always scrapes this server itself. Data is kept in ``<home>/data`` between restarts.
    """

    name = "prometheus"
    stop_timeout = 15.0

    def __init__(self, home_dir: Path | str, port: int = 9090, targets: Mapping[str, Sequence[str]] | None = None,
                 *, config: Path = LOCAL_CONFIG, startup_timeout: float = 60.0) -> None:
        super().__init__(home_dir, startup_timeout)
        self.port = check_port(port)
        self.config = Path(config)
        self.targets = {job: list((targets or {}).get(job, ())) for job in JOBS if job != "prometheus"}
        unknown = set(targets or {}) - set(self.targets)
        if unknown:
            raise StackError(f"unknown Prometheus job(s) {sorted(unknown)}: the config has {list(self.targets)}")

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:<port>``."""
        return f"http://{LOCALHOST}:{self.port}"

    def argv(self, binary: str = "prometheus") -> list[str]:
        """The server's command line."""
        return [binary, f"--config.file={self.home / 'prometheus.yml'}", f"--storage.tsdb.path={self.home / 'data'}",
                f"--web.listen-address={LOCALHOST}:{self.port}", "--storage.tsdb.retention.time=1d"]

    def start(self) -> ProcessInfo:
        """Write config and targets, launch, and return once ``/-/ready`` answers 200; StackError on failure."""
        binary = ensure_installed()
        self._check_can_start([self.port])
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(self.config, self.home / "prometheus.yml")
        except OSError as exc:
            raise StackError(f"cannot read the Prometheus config {self.config}: {exc.strerror or exc}") from None
        for job, addresses in self.targets.items():
            write_targets(self.home / "targets", job, addresses)
        write_targets(self.home / "targets", "prometheus", [f"{LOCALHOST}:{self.port}"])
        return self._launch(self.argv(binary), lambda _offset: self.ready())

    def ready(self) -> bool:
        """True when the server answers ``/-/ready`` with 200 (TSDB open, scraping)."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response:
                return bool(response.status == 200)
        except OSError:  # URLError and HTTPError included
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; StackError when the API reports an error
        (e.g. a query that does not parse), with Prometheus' own message."""
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            try:
                with urllib.request.urlopen(url, timeout=10.0) as response:
                    body = json.loads(response.read())
            except urllib.error.HTTPError as exc:  # 400/422: bad query; the JSON body still says why
                body = json.loads(exc.read() or b"{}")
        except OSError as exc:
            raise StackError(f"Prometheus API {path} unreachable at {self.url}: {exc}") from None
        except ValueError:
            raise StackError(f"Prometheus API {path} at {self.url} did not answer JSON") from None
        if body.get("status") != "success":
            raise StackError(f"Prometheus API {path} failed: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query ``expr`` (at ``at``, Unix seconds; default now): the result vector
        (``[{"metric": {...}, "value": [ts, "v"]}]``; a scalar comes back as one sample)."""
        data = self.api("query", query=expr, **({"time": f"{at:.3f}"} if at is not None else {}))
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def active_targets(self) -> list[dict[str, Any]]:
        """``/api/v1/targets``' active targets (each with ``labels.job``, ``health``, ``lastError``)."""
        return list(self.api("targets", state="active")["activeTargets"])


def main(argv: Sequence[str] | None = None) -> None:
    """Run Prometheus in the foreground for local workers until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.stack.prometheus_server", description=main.__doc__)
    parser.add_argument("--routers", type=int, nargs="*", default=[], metavar="PORT", help="router metrics ports")
    parser.add_argument("--stats", type=int, nargs="*", default=[], metavar="PORT", help="stats worker metrics port")
    parser.add_argument("--port", type=int, default=9090, help="Prometheus' own port (default 9090)")
    parser.add_argument("--home", type=Path, default=Path(".var/prometheus"), help="state directory")
    args = parser.parse_args(argv)
    server = PrometheusServer(args.home, args.port, {"router": [f"{LOCALHOST}:{p}" for p in args.routers],
                                                     "stats": [f"{LOCALHOST}:{p}" for p in args.stats]})
    try:
        proc = server.start()
    except StackError as exc:
        raise SystemExit(f"prometheus: error: {exc.message}") from None
    print(f"prometheus on {server.url} (pid {proc.pid}, log {server.log_path}); Ctrl-C stops it")
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background (SIGINT ignored)
        signal.signal(sig, signal.default_int_handler)
    try:
        while server.is_running():
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
