#!/usr/bin/env bash
# Shared by kafka.sh / redis.sh: _stack.sh SERVICE start|stop|status [var stack options]
# (VAR_PYTHON: the python to run `-m pipeline` with; default: the project venv, see setup.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
service="$1"; shift
case "${1:-}" in
  start) action=up ;; stop) action=down ;; status) action=status ;;
  *) echo "usage: $service.sh start|stop|status [--state-dir D] [--kafka-port N] [--redis-port N] [--json]" >&2; exit 2 ;;
esac
shift
PYTHON="${VAR_PYTHON:-$("$ROOT/deploy/local/setup.sh")}"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m pipeline stack "$action" --only "$service" "$@"
