#!/usr/bin/env bash
# Create .venv (when missing) and install airflow-mlops with every extra and its test tools, pinned by
# constraints.txt (the set the tests pass with). Re-running is cheap: pip runs only when
# pyproject.toml or constraints.txt changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.airflow-mlops-installed 2>/dev/null)" != "$stamp" ]; then
  echo "==> installing airflow-mlops and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[all,test]"
  echo "$stamp" > .venv/.airflow-mlops-installed
fi
# The UI tests render the Airflow pages in headless Chromium (tests/ui/test_ui_plugin.py; under CI=true
# they fail rather than skip without it). Installed only when missing and apt-get can be used
# (root, e.g. CI on Debian); elsewhere install the distribution's chromium package yourself.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing chromium (apt-get) for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "==> chromium is not installed: the browser tests (tests/ui/test_ui_plugin.py) will be skipped" >&2
  fi
fi
# The S3-protocol server the object-storage and deployment tests run against: moto's standalone
# server, in its own virtualenv (moto pins libraries Airflow needs at other versions).
if [ ! -x .venv-moto/bin/moto_server ]; then
  echo "==> installing moto[server] into .venv-moto (the tests' S3-protocol server)"
  "$PYTHON" -m venv .venv-moto
  .venv-moto/bin/python -m pip install --quiet "moto[server]==5.2.6"
fi
# The deployment tests (tests/deployment) run Airflow on Postgres with Celery over Redis, as
# production Airflows do: Debian's servers, installed when missing and apt-get can be used.
if ! [ -x /usr/lib/postgresql/15/bin/initdb ] || ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing postgresql and redis-server (apt-get) for the deployment tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null
  else
    echo "==> postgresql or redis-server is not installed: the deployment tests will be skipped" >&2
  fi
fi
