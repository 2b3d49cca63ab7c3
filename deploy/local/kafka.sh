#!/usr/bin/env bash
# Local Kafka broker (KRaft, 127.0.0.1): kafka.sh start|stop|status [options]; see pipeline/stack.
exec "$(dirname "${BASH_SOURCE[0]}")/_stack.sh" kafka "$@"
