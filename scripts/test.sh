#!/usr/bin/env bash
# The whole suite: lint, then pytest on PostgreSQL (when a server answers on
# 127.0.0.1:5432, or DATABASE_URL says so) and again on the embedded SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
unset DJANGO_SETTINGS_MODULE
PY=.venv/bin/python
start=$(date +%s)

.venv/bin/ruff check .
# the state directory private, as `make run` keeps it (the start-up check refuses it open)
(source scripts/private-state.sh && make_state_private "${PORTAL_VAR_DIR:-var}")
# preflight: QEMU (libvirt-qemu) must reach the VM image directory; one line says how to fix it
$PY manage.py check --tag images >/dev/null

PG_URL=${DATABASE_URL:-}
if [ -z "$PG_URL" ] && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  PG_URL=postgres://postgres@127.0.0.1:5432/test
fi

status=0
if [ -n "$PG_URL" ]; then
  echo "== suite on PostgreSQL ($PG_URL)"
  DATABASE_URL=$PG_URL $PY -m pytest "$@" || status=$?
else
  echo "== no PostgreSQL reachable: the PostgreSQL run is skipped on this machine"
fi
echo "== suite on SQLite"
env -u DATABASE_URL $PY -m pytest "$@" || status=$?
echo "test command took $(( $(date +%s) - start ))s"
exit $status
