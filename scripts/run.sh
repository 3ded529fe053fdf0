#!/usr/bin/env bash
# Migrate, seed the demo host, then serve the portal with a Celery worker, beat, the state collector
# and the console proxy (websocket, 127.0.0.1:CONSOLE_PROXY_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE:-hypervisor_web.settings.dev}
PORT=${PORT:-8000}
BIND=${BIND:-127.0.0.1}
VAR=${PORTAL_VAR_DIR:-var}
source scripts/private-state.sh
make_state_private "$VAR"

$PY manage.py check --fail-level ERROR >/dev/null  # each problem in one line, with its fix

$PY manage.py migrate --noinput >/dev/null
$PY manage.py seed_demo

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

.venv/bin/celery -A hypervisor_web worker --loglevel=INFO --concurrency=2 -n "portal@%h" >"$VAR/log/worker.log" 2>&1 &
pids+=($!)
$PY manage.py collector >"$VAR/log/collector.log" 2>&1 &
pids+=($!)
$PY manage.py console_proxy >"$VAR/log/console-proxy.log" 2>&1 &
pids+=($!)
.venv/bin/celery -A hypervisor_web beat --loglevel=INFO --schedule "$VAR/celerybeat-schedule" >"$VAR/log/beat.log" 2>&1 &
pids+=($!)

echo
echo "Portal: http://$BIND:$PORT/  (logs in $VAR/log: worker.log, beat.log, collector.log, console-proxy.log)"
echo "Sign in with one of the demo users above. Ctrl-C stops the portal, worker, beat, collector and console proxy."
$PY manage.py runserver --noreload "$BIND:$PORT"
