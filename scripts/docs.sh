#!/usr/bin/env bash
# Build the docs site strictly: the reference pages generated from the code (scripts/gen_docs.py,
# with the package's .venv), then `mkdocs build --strict` with the tools pinned in
# docs/requirements.txt (in .venv-docs, made here when missing or when the pins changed).
# A broken link, a missing page or an unknown snippet fails the build. Output: site/ (or $1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stamp=$(sha256sum docs/requirements.txt | cut -d' ' -f1)
if [ "$(cat .venv-docs/.installed 2>/dev/null)" != "$stamp" ]; then
  echo "==> installing the docs tools into .venv-docs (docs/requirements.txt)"
  rm -rf .venv-docs
  python3 -m venv .venv-docs
  .venv-docs/bin/python -m pip install --quiet --disable-pip-version-check -r docs/requirements.txt
  echo "$stamp" > .venv-docs/.installed
fi
.venv/bin/python scripts/gen_docs.py docs/reference
NO_MKDOCS_2_WARNING=1 .venv-docs/bin/mkdocs build --strict --site-dir "${1:-site}"
