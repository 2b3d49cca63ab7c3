#!/usr/bin/env bash
# Local Redis (127.0.0.1): redis.sh start|stop|status [options]; see pipeline/stack.
exec "$(dirname "${BASH_SOURCE[0]}")/_stack.sh" redis "$@"
