#!/usr/bin/env bash
# Installs everything the checks need into ./.venv (a normal, non-editable
# install, as users get it) and runs them all: ruff, mypy, then pytest.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k tls`.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check '.[test]'
# The npm centrifuge SDK that the end-to-end tests drive through Node.
npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
# Everything else the tests drive (a browser, the conformance suite, ...):
# one idempotent script per tool, each installing what it needs.
for setup in tests/setup/*.sh; do
    [ -e "$setup" ] || continue
    echo "== setup: $setup"
    bash "$setup"
done
echo "== ruff"
.venv/bin/ruff check omega_ws tests twisted
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
