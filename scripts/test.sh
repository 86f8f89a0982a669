#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine and runs all of it.
# Used by the README's test command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"

# Services: PostgreSQL and Redis are started by the machine; start them if they are not up.
if command -v pg_ctlcluster >/dev/null 2>&1 && ! (echo > /dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if command -v redis-server >/dev/null 2>&1 && ! (echo > /dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
fi

# The dashboard: built into backend/static (served at /, carried by the wheel) when its
# sources changed, and Debian's Chromium for its browser tests. Without npm, or without
# Chromium when not root, the dashboard tests skip with the reason (outside CI).
if command -v npm >/dev/null 2>&1; then
  if [ ! -f ui/node_modules/.package-lock.json ] || [ ui/package-lock.json -nt ui/node_modules/.package-lock.json ]; then
    (cd ui && npm ci --no-audit --no-fund)
  fi
  if [ ! -f backend/static/index.html ] || [ -n "$(find ui/src ui/index.html ui/package-lock.json ui/vite.config.ts -newer backend/static/index.html -print -quit)" ]; then
    (cd ui && npm run build)
  fi
fi
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || true
fi

"$VENV/bin/python" -m pytest "$@"
