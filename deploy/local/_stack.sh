#!/usr/bin/env bash
# Shared by kafka.sh / redis.sh: _stack.sh SERVICE start|stop|status [python -m pipeline.stack options]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
service="$1"; shift
case "${1:-}" in
  start) action=up ;; stop) action=down ;; status) action=status ;;
  *) echo "usage: $service.sh start|stop|status [--state-dir D] [--kafka-port N] [--redis-port N] [--json]" >&2; exit 2 ;;
esac
shift
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "${VAR_PYTHON:-python3}" -m pipeline.stack "$action" --only "$service" "$@"
