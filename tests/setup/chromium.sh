#!/usr/bin/env bash
# Headless Chromium and the Playwright Python package for tests/test_e2e_browser.py.
# Idempotent: installs only what is missing. Run as root (tests/run.sh does) from
# anywhere; the project venv is ./.venv at the repository's root.
#
# Playwright drives Debian's /usr/bin/chromium; its own browser download
# (`playwright install`) is never used, since only package registries are reachable.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x /usr/bin/chromium ]; then  # the path the tests launch
    echo "installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
/usr/bin/chromium --version 2>/dev/null  # (its wrapper script warns about /dev/shm on stderr)

[ -x .venv/bin/python ] || { echo "no .venv/bin/python: run tests/run.sh first" >&2; exit 1; }
if ! .venv/bin/python -c "import playwright" >/dev/null 2>&1; then
    echo "installing playwright into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check playwright
fi
.venv/bin/python -c "from importlib.metadata import version; print('playwright', version('playwright'))"
