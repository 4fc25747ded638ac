#!/usr/bin/env bash
# Install everything, then run the checks and the whole test suite (fast tier and the tier
# that loads the embedded model). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
.venv/bin/ruff check src tests examples bench scripts
.venv/bin/ruff format --check src tests examples bench scripts
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
