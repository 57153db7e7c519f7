#!/usr/bin/env bash
# Install (if needed) and run the whole test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The Kubernetes tests need a control plane built from source (~7 min once, then cached).
bash scripts/build-kube.sh
exec .venv/bin/python -m pytest "$@"
