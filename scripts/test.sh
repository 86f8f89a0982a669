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

# A venv of its own for a stage: made once, installed again when pyproject.toml or this
# script is newer than its last install. Arguments: the venv, then what to pip install.
stage_venv() {
  local venv=$1
  shift
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
  fi
  if [ ! -f "$venv/.installed" ] || [ pyproject.toml -nt "$venv/.installed" ] \
    || [ scripts/test.sh -nt "$venv/.installed" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "$@" \
      pytest pytest-timeout pytest-asyncio hypothesis anyio websockets
    touch "$venv/.installed"
  fi
}

# Second stage: openai 3.x, and the middle majors of the other SDKs (anthropic 1.x,
# google-genai 2.x, mistralai 2.x). langchain-openai pins openai<3, so the venv above has
# openai 2.x (on httpx); openai 3.x is built on httpx2 (and httpcore2, which closes streams
# differently), so it gets its own small venv with only the SDKs, and only the provider tests
# run there. Tests of what these SDKs lack skip with the version; their warnings that the
# models the tests name are deprecated are not the guard's.
VENV_OPENAI3=${VENV_OPENAI3:-.venv-openai3}
T=tests/kavach_integrations
stage_two() {
  stage_venv "$VENV_OPENAI3" -e '.[openai,anthropic,google,mistral,redis]' \
    'openai>=3' 'anthropic>=1,<2' 'google-genai>=2,<3' 'mistralai>=2,<3'
  "$VENV_OPENAI3/bin/python" -m pytest $T/test_openai.py $T/test_anthropic.py \
    $T/test_price_tiers.py $T/test_search_fees.py $T/test_stored_context.py \
    $T/test_responses_socket.py $T/test_realtime.py $T/test_transcriptions.py $T/test_speech.py \
    $T/test_google.py $T/test_google_wrap.py $T/test_google_tools.py \
    $T/test_google_continuation.py $T/test_mistral.py $T/test_mistral_reasoning.py \
    $T/test_clients.py $T/test_unmetered.py \
    -q -p no:cacheprovider -rs -W "ignore:The model:DeprecationWarning"
}

# Third stage: the oldest SDK majors the extras admit: openai 1.x and anthropic 0.x (on httpx;
# anthropic 1.0 moved to httpx2 and dropped the temperature parameter, which
# llama-index-llms-anthropic always sends, so LlamaIndex users of Anthropic are on 0.x),
# google-genai 1.x, mistralai 1.x and LangChain 0.3 (langchain-core, -openai, -anthropic;
# langgraph 0.x). The LlamaIndex Anthropic round trip, skipped in stage
# one, must run here (AGENTKAVACH_TEST_OLDER_SDKS makes its skip a failure); tests of what
# these SDKs lack skip with the version. Their warnings that the models the tests name are
# deprecated, and google-genai 1.x's about its own experimental parts, are not the guard's.
VENV_OLDER=${VENV_OLDER:-.venv-older-sdks}
stage_three() {
  stage_venv "$VENV_OLDER" -e '.[openai,anthropic,google,mistral,llamaindex,langchain,redis]' \
    'openai<2' 'anthropic<1' 'google-genai<2' 'mistralai<2' 'langchain-core<1' \
    'langchain-openai<1' 'langchain-anthropic<1' 'langgraph<1' \
    llama-index-llms-openai llama-index-llms-anthropic
  AGENTKAVACH_TEST_OLDER_SDKS=1 "$VENV_OLDER/bin/python" -m pytest \
    $T/test_openai.py $T/test_anthropic.py $T/test_google.py $T/test_google_wrap.py \
    $T/test_google_tools.py $T/test_google_continuation.py $T/test_mistral.py \
    $T/test_mistral_reasoning.py $T/test_clients.py $T/test_llamaindex.py $T/test_price_tiers.py \
    $T/test_search_fees.py $T/test_stored_context.py $T/test_raw_responses.py \
    $T/test_usage_mapping.py $T/test_langchain.py $T/test_examples.py $T/test_unmetered.py \
    $T/test_realtime.py $T/test_speech.py $T/test_transcriptions.py \
    -q -p no:cacheprovider -rs -W "ignore:The model:DeprecationWarning" \
    -W "ignore:Async interactions client:UserWarning" \
    -W "ignore:Interactions usage is experimental:UserWarning"
}

# Fourth stage: the engine and integration tests on the newest Python this machine has (3.12
# or later; pyenv's versions count), for what stage one's Python cannot show: since 3.12,
# gathering finished tasks returns without yielding to the event loop, and asyncio.wait_for
# runs what it waits for on the calling task. In CI a machine without such a Python fails
# here, saying so; elsewhere the stage is skipped with that reason.
newest_python() {
  local version candidate
  for version in 3.14 3.13 3.12; do
    for candidate in "$(command -v "python$version" || true)" \
      $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version".*/bin/"python$version" 2>/dev/null | sort -rV); do
      # pyenv's shims are on PATH for every version and fail for one not selected: try each.
      if [ -n "$candidate" ] && "$candidate" -c 'import sys' >/dev/null 2>&1; then
        echo "$candidate"
        return 0
      fi
    done
  done
  return 1
}
VENV_NEWEST=${VENV_NEWEST:-.venv-newest-python}
stage_four() {
  local newest
  if ! newest=$(newest_python); then
    echo "no Python 3.12 or later found (on PATH or in ${PYENV_ROOT:-$HOME/.pyenv}/versions)"
    if [ -n "${CI:-}" ]; then
      return 1
    fi
    echo "stage four skipped"
    return 0
  fi
  PYTHON=$newest stage_venv "$VENV_NEWEST" -e '.[dev]'
  "$VENV_NEWEST/bin/python" --version
  "$VENV_NEWEST/bin/python" -m pytest tests/kavach tests/kavach_integrations \
    -q -p no:cacheprovider -rs
}

# Stages two to four run in the background, one after the other, while stage one runs: stage
# one keeps about one core busy, and on a machine of two cores this saves their whole time.
# Each runs in a subshell of its own, started with & and then waited for, so that set -e holds
# inside it and a failed install stops that stage (bash ignores set -e in a command run on the
# left of ||, so `(stage_two) || status=$?` would go on to the tests). Their output is
# printed after stage one's, and the script fails if any stage failed. They run in a process
# group of their own (set -m), which the script stops if it is stopped or ends first.
LOGS=$(mktemp -d)
set -m
(
  status=0
  # A stage's function, then what it tests: run it, and keep and say its failure.
  background_stage() {
    ("$1") &
    wait $! || { status=$?; echo "stage ${1#stage_} ($2) failed: exit status $status"; }
  }
  background_stage stage_two "openai 3.x"
  background_stage stage_three "the oldest SDK majors"
  background_stage stage_four "the newest Python"
  exit "$status"
) </dev/null >"$LOGS/later" 2>&1 &
LATER=$!
set +m
trap 'kill -- -"$LATER" 2>/dev/null || true; rm -rf "$LOGS"' EXIT
trap 'exit 130' INT TERM

echo "Stage one: the whole suite (stages two to four run beside it; their output follows it)"
status=0
"$VENV/bin/python" -m pytest "$@" || status=$?
echo
echo "Stages two to four: the provider tests on openai 3.x, then on the oldest SDK majors;"
echo "the engine and integration tests on the newest Python"
later=0
wait "$LATER" || later=$?
cat "$LOGS/later"
if [ "$status" = 0 ]; then
  status=$later
fi
exit "$status"
