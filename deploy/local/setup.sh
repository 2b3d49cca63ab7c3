#!/usr/bin/env bash
# Create or refresh the project's virtualenv; print its python path on stdout.
#
# The venv lives outside the checkout (default ~/.cache/var/venv, override VAR_VENV) so that a
# fresh clone -- and every CI run on the same machine -- reuses the large torch install.
# Dependencies are (re)installed only when pyproject.toml's dependency lists change; the
# checkout itself is installed in editable mode (cheap) whenever the venv points elsewhere.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VAR_VENV:-$HOME/.cache/var/venv}"
PY="${VAR_BASE_PYTHON:-python3}"

log() { echo "setup: $*" >&2; }

command -v "$PY" >/dev/null || { echo "setup: error: $PY not found (need Python >= 3.11)" >&2; exit 2; }
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: error: Python >= 3.11 required ($("$PY" --version 2>&1))" >&2; exit 2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi

deps_hash="$("$PY" - "$ROOT/pyproject.toml" <<'PYEOF'
import hashlib, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
blob = repr((project["dependencies"], project.get("optional-dependencies", {})))
print(hashlib.sha256(blob.encode()).hexdigest()[:16])
PYEOF
)"
stamp="$VENV/.var-deps-$deps_hash"
if [ ! -f "$stamp" ]; then
  log "installing dependencies (first run: torch is large, this takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]" >&2
  rm -f "$VENV"/.var-deps-*
  touch "$stamp"
  echo "$ROOT" > "$VENV/.var-checkout"
fi
if [ "$(cat "$VENV/.var-checkout" 2>/dev/null)" != "$ROOT" ]; then
  log "pointing the venv at this checkout ($ROOT)"
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" >&2
  echo "$ROOT" > "$VENV/.var-checkout"
fi
echo "$VENV/bin/python"
