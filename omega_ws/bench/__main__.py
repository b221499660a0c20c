"""
C{python -m omega_ws.bench}: omega-ws and its peers, side by side, in one run.

Each server runs as its own process on 127.0.0.1 and is driven by the same
Node load generator (C{loadgen.js}: bare-socket WebSocket clients, since a
Python client, or even Node's C{ws}, would be the bottleneck on two cores).
Server CPU comes from the server process's own counters (C{/proc/PID/stat}),
so a saturated generator cannot fake it; the generator's own CPU is reported
too.

  - fan-out: N subscribers on one channel, one publisher, 100-byte JSON,
    closed loop with W messages in flight (W=20 throughput, W=1 latency):
    deliveries/s, server CPU per delivery, publish-to-delivery p50/p99;
  - idle memory: RSS growth per idle connection;
  - handshakes/s for many connections opened concurrently.

C{python -m omega_ws.bench soak} is something else: a bounded soak of one
server with random traffic and correctness and resource checks (C{soak.py}).
C{python -m omega_ws.bench redis} compares omega-ws on the Redis broker (two
nodes, one Redis) with the memory broker under the same load (C{redis_mode.py}).

Linux only (it reads /proc).  Needs Node.js and the C{websockets} package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .processes import (
    SERVERS,
    cpu_seconds,
    fail,
    loadgen,
    loadgen_dir,
    rss_kib,
    server,
)
from .progress import Progress, description


def fanout(directory: Path, pid: int, port: int, subscribers: int, window: int,
           seconds: float, warmup: float) -> dict[str, Any]:
    marks: dict[str, float] = {}

    def mark(event: dict[str, Any], _: Any) -> bool:
        if event["event"] in ("measuring", "measured"):
            marks[event["event"]] = cpu_seconds(pid)
        return False

    result = loadgen(directory, "fanout", f"ws://127.0.0.1:{port}/bench", subscribers, window,
                     seconds, 100, warmup, on_event=mark)
    server_cpu = marks["measured"] - marks["measuring"]
    deliveries = result["deliveries"]
    return {
        "deliveries_per_s": result["deliveries_per_s"],
        "cpu_us_per_delivery": server_cpu / deliveries * 1e6 if deliveries else None,
        "server_cpu_share": server_cpu / result["seconds"],
        "p50_ms": result["p50_us"] / 1000 if result["p50_us"] is not None else None,
        "p99_ms": result["p99_us"] / 1000 if result["p99_us"] is not None else None,
        "loadgen_cpu_share": result["loadgen_cpu_s"] / result["seconds"],
    }


def idle_memory(directory: Path, pid: int, port: int, connections: int) -> dict[str, Any]:
    time.sleep(0.5)
    before = rss_kib(pid)
    grown: dict[str, int] = {}

    def measure(event: dict[str, Any], _: Any) -> bool:
        if event["event"] == "open":
            time.sleep(1.0)  # let the server settle
            grown["kib"] = rss_kib(pid) - before
            return True  # close stdin: the generator lets go
        return False

    loadgen(directory, "idle", f"ws://127.0.0.1:{port}/idle", connections, on_event=measure)
    return {"kib_per_connection": grown["kib"] / connections}


def handshakes(directory: Path, port: int, connections: int) -> dict[str, Any]:
    result = loadgen(directory, "handshakes", f"ws://127.0.0.1:{port}/hs", connections, 500)
    return {"handshakes_per_s": result["handshakes_per_s"],
            "loadgen_cpu_share": result["loadgen_cpu_s"] / result["seconds"]}


def plan(args: argparse.Namespace) -> list[tuple[float, float]]:
    """
    One server's four steps (fan-out W=20 and W=1, idle memory, handshakes)
    for the time left: (timed seconds, seconds of work on a two-core
    machine, which the pace of the steps done corrects).
    """
    fanout = (args.warmup + args.seconds, args.subscribers / 1000 + 0.7)
    return [fanout, fanout, (1.5, args.connections / 1000 + 1.5),
            (0.0, args.connections / 1000 + 0.9)]


def measure(kind: str, directory: Path, workdir: Path, args: argparse.Namespace,
            progress: Progress) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with server(kind, workdir) as (pid, port):
        for window in (20, 1):
            progress.step(f"{kind}: fan-out W={window}, {args.subscribers} subscribers")
            results[f"w{window}"] = fanout(directory, pid, port, args.subscribers, window,
                                           args.seconds, args.warmup)
    progress.step(f"{kind}: idle memory, {args.connections} connections")
    with server(kind, workdir) as (pid, port):
        results["idle"] = idle_memory(directory, pid, port, args.connections)
    progress.step(f"{kind}: handshakes, {args.connections} connections")
    with server(kind, workdir) as (pid, port):
        results["handshakes"] = handshakes(directory, port, args.connections)
    return results


ROWS = [
    ("fan-out W=20: deliveries/s", "w20", "deliveries_per_s", "{:,.0f}"),
    ("fan-out W=20: server CPU µs/delivery", "w20", "cpu_us_per_delivery", "{:.2f}"),
    ("fan-out W=20: p50 / p99 ms", "w20", ("p50_ms", "p99_ms"), "{:.1f} / {:.1f}"),
    ("fan-out W=20: load generator CPU", "w20", "loadgen_cpu_share", "{:.0%}"),
    ("fan-out W=1: deliveries/s", "w1", "deliveries_per_s", "{:,.0f}"),
    ("fan-out W=1: server CPU µs/delivery", "w1", "cpu_us_per_delivery", "{:.2f}"),
    ("fan-out W=1: p50 / p99 ms", "w1", ("p50_ms", "p99_ms"), "{:.2f} / {:.2f}"),
    ("idle: RSS KiB/connection", "idle", "kib_per_connection", "{:.1f}"),
    ("handshakes/s", "handshakes", "handshakes_per_s", "{:,.0f}"),
]


def table(results: dict[str, dict[str, Any]]) -> str:
    kinds = list(results)
    width = max(len(r[0]) for r in ROWS) + 2
    lines = ["".ljust(width) + "".join(k.rjust(22) for k in kinds)]
    for label, section, key, fmt in ROWS:
        cells = []
        for kind in kinds:
            values = results[kind][section]
            keys = key if isinstance(key, tuple) else (key,)
            numbers = [values.get(k) for k in keys]
            cells.append("n/a" if None in numbers else fmt.format(*numbers))
        lines.append(label.ljust(width) + "".join(c.rjust(22) for c in cells))
    return "\n".join(lines)


def chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("no chart: pip install matplotlib\n")
        return
    metrics = [("µs CPU/delivery W=20", "w20", "cpu_us_per_delivery"),
               ("µs CPU/delivery W=1", "w1", "cpu_us_per_delivery"),
               ("p99 ms W=1", "w1", "p99_ms"),
               ("KiB/idle connection", "idle", "kib_per_connection")]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5))
    for axis, (title, section, key) in zip(axes, metrics, strict=True):
        kinds = list(results)
        axis.bar(kinds, [results[k][section][key] or 0 for k in kinds])
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=20)
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:  # the bounded soak: its own options (soak --help)
        from .soak import main as soak

        soak(argv[1:])
        return
    if argv[:1] == ["redis"]:  # the Redis broker against the memory broker (redis --help)
        from .redis_mode import main as redis_mode

        redis_mode(argv[1:])
        return
    parser = argparse.ArgumentParser(
        prog="python -m omega_ws.bench", description=description(__doc__, 3),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Progress goes to stderr, a line per step with an estimate of the time "
               "left;\nthe table to stdout.\n\n"
               "python -m omega_ws.bench soak [--duration SECONDS] ...: the bounded soak "
               "(soak --help, docs/soak.md)\n"
               "python -m omega_ws.bench redis [--seconds SECONDS] ...: the Redis broker "
               "against the memory broker (redis --help)")
    parser.add_argument("--subscribers", type=int, default=1000, metavar="N",
                        help="fan-out: subscribers on the one channel (default 1000)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="fan-out: measured seconds per run (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, metavar="SECONDS",
                        help="fan-out: seconds of load before each measurement (default 2)")
    parser.add_argument("--connections", type=int, default=5000, metavar="N",
                        help="connections opened for idle memory, and for handshakes "
                             "(default 5000)")
    parser.add_argument("--servers", default=",".join(SERVERS), metavar="NAMES",
                        help="the servers to compare, comma-separated, from: "
                             f"{', '.join(SERVERS)} (default: all)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--png", type=Path, metavar="PATH",
                        help="also draw a chart (needs matplotlib)")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    if unknown := [k for k in kinds if k not in SERVERS]:
        fail(f"unknown server {unknown[0]!r} (choose from {', '.join(SERVERS)})")
    directory = loadgen_dir()
    results: dict[str, dict[str, Any]] = {}
    progress = Progress(plan(args) * len(kinds))
    with tempfile.TemporaryDirectory() as workdir:
        for kind in kinds:
            results[kind] = measure(kind, directory, Path(workdir), args, progress)
    progress.done()
    sys.stdout.write(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
                     f"{args.subscribers} subscribers, {args.connections} connections\n")
    sys.stdout.write(table(results) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.png:
        chart(results, args.png)


if __name__ == "__main__":
    main()
