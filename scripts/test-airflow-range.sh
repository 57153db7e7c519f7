#!/usr/bin/env bash
# The tested Airflow range (README "Installing into an existing Airflow 3"). The newest release is
# the main suite's .venv (constraints.txt, every extra), which runs tests/range with the rest.
# This script does the older ones named in $AIRFLOW_RANGE (default "3.1", the lowest supported;
# "3.1 3.2" adds 3.2): for each, with constraints/airflow-X.Y.txt, a virtualenv
# .venv-airflow-X.Y built from the repo's files the way a deployment gets the package:
#   1. Airflow alone at that file's pins (the existing deployment), its `pip freeze` kept;
#   2. `pip install <the package>` with no constraints and no extras: the core only;
#   3. the same with the constraints and pytest, so the tests run on the pinned libraries;
# then tests/range (which checks that step 2 moved nothing the deployment had, Airflow above all)
# and the import-cost check of tests/factory/test_dags_folder.py, with the installed copy of the package
# (pytest runs from outside the checkout). A virtualenv is reused until pyproject.toml or its
# constraints file change; the package itself is reinstalled from the working tree every run.
# pip's download cache is shared with .venv. Measured here on 2 cores shared with other jobs (load
# ~10), warm cache: a fresh 3.1 virtualenv 6 min, its tests 1.5 min; reused, 0.5 min + the tests.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The package's files only, outside the checkout: what `pip install airflow-mlops` gets.
mkdir "$work/src"
cp -r pyproject.toml README.md airflow_mlops "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +

status=0
for minor in ${AIRFLOW_RANGE:-3.1}; do
  constraints="constraints/airflow-$minor.txt"
  series="airflow-$minor"
  release=$(sed -n 's/^apache-airflow==//p' "$constraints")
  venv="$repo/.venv-$series"
  pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  stamp=$(cat pyproject.toml "$constraints" | sha256sum | cut -d' ' -f1)
  started=$SECONDS
  if [ "$(cat "$venv/.airflow-mlops-installed" 2>/dev/null)" != "$stamp" ]; then
    echo "==> $series: building $venv (Airflow $release, the core of airflow-mlops)"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "${pip[@]}" install -c "$constraints" "apache-airflow==$release" apache-airflow-providers-standard
    "${pip[@]}" freeze > "$venv/deployment.txt"
    "${pip[@]}" install "$work/src"
    "${pip[@]}" install -c "$constraints" "$work/src" pytest pytest-timeout
    echo "$stamp" > "$venv/.airflow-mlops-installed"
  else
    "${pip[@]}" install --no-deps --force-reinstall "$work/src"
  fi
  echo "==> $series: Airflow $release, installed in $((SECONDS - started)) s; running the range tests"
  mkdir -p "$work/run-$series"
  (cd "$work/run-$series" &&
   AIRFLOW_MLOPS_RANGE_AIRFLOW="$release" AIRFLOW_MLOPS_RANGE_BEFORE="$venv/deployment.txt" \
   "$venv/bin/python" -m pytest --rootdir "$repo" -c "$repo/pyproject.toml" --import-mode=append \
     -p no:cacheprovider "$repo/tests/range" \
     "$repo/tests/factory/test_dags_folder.py::test_parsing_the_dags_folder_imports_nothing_heavy" "$@") || status=1
  echo "==> $series: done in $((SECONDS - started)) s"
done
exit $status
