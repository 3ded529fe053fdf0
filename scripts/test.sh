#!/usr/bin/env bash
# The whole suite: lint, then pytest on PostgreSQL (when a server answers on
# 127.0.0.1:5432, or DATABASE_URL says so), then on the embedded SQLite. After a PostgreSQL
# run, the SQLite run is the database-facing part of the suite: the tests that boot VMs,
# build libvirt pools and networks, start Celery workers or drive the browser (markers
# libvirt, worker, e2e; tests/conftest.py adds them from the fixtures) exercise libvirt,
# QEMU and Redis the same way whichever database holds the rows, and already ran.
# PORTAL_TEST_SQLITE_ALL=1 runs everything on SQLite too; with no PostgreSQL it always does.
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
if [ -n "$PG_URL" ] && [ "${PORTAL_TEST_SQLITE_ALL:-0}" != 1 ]; then
  echo "== suite on SQLite: its database-facing part (libvirt, worker, e2e and slow_host_tool tests ran above)"
  env -u DATABASE_URL $PY -m pytest -m "not libvirt and not worker and not e2e and not slow_host_tool" "$@" || status=$?
else
  echo "== suite on SQLite"
  env -u DATABASE_URL $PY -m pytest "$@" || status=$?
fi
echo "test command took $(( $(date +%s) - start ))s"
exit $status
