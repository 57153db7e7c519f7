#!/usr/bin/env bash
# Install (if needed) and run the whole test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The Kubernetes tests need a control plane built from source (~7 min once, then cached).
bash scripts/build-kube.sh
# House rules first (seconds): ruff (incl. the TID253 ban on heavy module-level imports) and the
# import-linter contracts in pyproject.toml (layers point one way, no cycles, private stays private).
.venv/bin/ruff check airflow_mlops tests benchmarks scripts dags
.venv/bin/lint-imports
# The older end of the tested Airflow range, each in its own virtualenv (scripts/test-airflow-range.sh;
# the newest release is this .venv, which runs tests/range with the rest below).
bash scripts/test-airflow-range.sh
exec .venv/bin/python -m pytest "$@"
