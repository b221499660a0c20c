"""
C{python -m omega_ws.bench soak}: a bounded soak of one omega-ws server process.

It starts C{python -m omega_ws} on 127.0.0.1 (ports 0, JSON logs) with small
limits (heartbeat, session TTL, history TTL, slow-consumer queue), drives
random traffic over both wires for C{--duration} seconds (default 600) with
the clients of C{soak_clients.py}, then lets the server settle and checks:

  - no publication went missing unless the server said so: a raw client's
    gap after a resume is explained only by the server's warning for that
    client (counted in C{omega_ws_recovery_gaps_total}); Centrifuge
    recoveries must be exact when C{recovered: true};
  - resources come back: open fds to the baseline (+-3), no connection left,
    RSS within max(+30 MiB, +50%) of the baseline, and, where the server
    exports them, sessions and history bytes back to the baseline and
    streams no more than the channels used;
  - no error in the server's log, and a clean stop (exit 0) on SIGTERM.

Linux only (it reads C{/proc}).  Needs the C{websockets} package.  Exit
status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .progress import Progress, description, span
from .soak_clients import (
    BULK,
    CHANNELS,
    CentrifugeClient,
    Http,
    RawClient,
    Tally,
    Target,
    api_publisher,
    chaos,
)

__all__ = ["main"]

GAUGES = {"connections": "omega_ws_connections", "streams": "omega_ws_streams",
          "sessions": "omega_ws_sessions", "history_bytes": "omega_ws_history_bytes"}
FIGURES = ("rss_mib", "fds", *GAUGES)
Sample = dict[str, Any]


def config_text(args: argparse.Namespace) -> str:
    return f"""\
[server]
host = "127.0.0.1"
port = 0
max_queue_size = {args.max_queue_size}
[heartbeat]
ping_interval = {args.ping_interval}
ping_timeout = {args.ping_interval}
[monitor]
interval = 1
idle_timeout = 120
[reconnect]
session_ttl = {args.session_ttl}
delay = 1
max_attempts = 3
[channels]
history_size = 200
history_ttl = {args.history_ttl}
history_max_bytes = 262144
history_total_bytes = 4194304
[admin]
host = "127.0.0.1"
port = 0
[log]
format = "json"
"""


class ServerLog:
    """What the server's JSON log says, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.urls: list[str] = []
        self.gap_warnings: list[tuple[str, str, float]] = []  # client_id, channel, time
        self.resumes: dict[str, list[float]] = {}  # client_id -> times it RECONNECTING
        self.closes: dict[str, list[tuple[float, str]]] = {}  # client_id -> (time, why)
        self.slow_warnings = 0
        self.errors: list[str] = []

    def read(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            try:
                self._event(json.loads(line))
            except (ValueError, AttributeError, TypeError):
                pass  # not one of ours (e.g. a traceback on stderr)

    def _event(self, event: dict[str, Any]) -> None:
        text = str(event.get("log_format", ""))
        level = (event.get("log_level") or {}).get("name")
        if text == "omega-ws listening on {url}":
            self.urls.append(event["url"])
        elif "with a gap" in text:
            self.gap_warnings.append((event["client_id"], event["channel"], event["log_time"]))
        elif text.startswith("client {client_id} {state} from") and event.get(
                "state") == "RECONNECTING":
            self.resumes.setdefault(event["client_id"], []).append(event["log_time"])
        elif "is a slow consumer" in text:
            self.slow_warnings += 1
            self.closes.setdefault(event["client_id"], []).append((event["log_time"], "slow"))
        elif text.startswith("client {client_id} {old_state} -> {state}") and event.get(
                "state") in ("DISCONNECTED", "ERROR"):
            self.closes.setdefault(event["client_id"], []).append(
                (event["log_time"], str(event["reason"]).split(" (")[0][:60]))
        if level in ("error", "critical") or "log_failure" in event:
            failure = str(event.get("log_failure", ""))[-300:]
            self.errors.append(f"{text[:200]} {failure}".strip())

    def resumed(self, client_id: str, around: float) -> bool:
        return any(abs(t - around) < 3 for t in self.resumes.get(client_id, ()))

    def last_close(self, client_id: str, before: float) -> float | None:
        """When the server last ended a connection of C{client_id} before a time."""
        times = [t for t, why in self.closes.get(client_id, ()) if why != "slow" and t <= before]
        return max(times) if times else None

    def why_closed(self, client_id: str, before: float) -> str:
        """The server's account of the last close of C{client_id} before a time."""
        events = [why for t, why in self.closes.get(client_id, ()) if t <= before + 0.5]
        closes = [i for i, why in enumerate(events) if why != "slow"]
        if not closes:
            return "unknown"
        since = closes[-2] + 1 if len(closes) > 1 else 0
        slow = "slow" in events[since:closes[-1]]
        return ("slow consumer, then " if slow else "") + events[closes[-1]]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: every series by its full name, and each name's sum."""
    values: defaultdict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
            values[series.split("{")[0] + "{*}"] += float(value)
    return values


async def sample(pid: int, admin_port: int) -> Sample:
    """RSS, fds and the gauges; metrics first, so that its connection is closed for the fds."""
    _, body = await Http(admin_port).request("/metrics", close=True)
    metrics = parse_metrics(body.decode())
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines()
               if line.startswith("VmRSS:"))
    figures: Sample = {"rss_mib": rss / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")),
                       "at": time.monotonic(), "metrics": metrics}
    for name, metric in GAUGES.items():
        figures[name] = metrics.get(metric + "{*}", metrics.get(metric))
    return figures


def judge(before: Sample, after: Sample) -> list[tuple[str, bool | None, str]]:
    """(figure, passed or None when not exported, limit) for the settled server."""
    rss_limit = before["rss_mib"] + max(30.0, before["rss_mib"] / 2)
    limits: dict[str, tuple[float, float]] = {
        "rss_mib": (0, rss_limit), "fds": (before["fds"] - 3, before["fds"] + 3),
        "connections": (0, 0)}
    if before["streams"] is not None:
        limits["streams"] = (0, before["streams"] + len(CHANNELS) + 1)
    if before["sessions"] is not None:
        limits["sessions"] = (0, before["sessions"])
    if before["history_bytes"] is not None:
        limits["history_bytes"] = (0, before["history_bytes"])
    results: list[tuple[str, bool | None, str]] = []
    for name in FIGURES:
        if name not in limits or after[name] is None:
            results.append((name, None, "not exported"))
            continue
        low, high = limits[name]
        limit = f"<= {high:.1f}" if name == "rss_mib" else f"{low:.0f}..{high:.0f}"
        results.append((name, low <= after[name] <= high, limit))
    return results


def clients(target: Target, count: int, rng: random.Random) -> list[RawClient | CentrifugeClient]:
    """The mix: raw with sessions, raw without, slow raw on the bulk channel, Centrifuge."""
    slow_raw, slow_cf = max(1, count * 15 // 100), max(1, count // 10)
    plain, centrifuge = max(1, count // 10), max(1, count // 4)
    with_session = max(2, count - slow_raw - slow_cf - plain - centrifuge)
    everywhere = (*CHANNELS, BULK)
    made: list[RawClient | CentrifugeClient] = []
    for i in range(with_session):
        made.append(RawClient(target, f"soak-raw-{i}", everywhere[i % 4], True, False, rng))
    for i in range(plain):
        made.append(RawClient(target, f"soak-plain-{i}", CHANNELS[i % 3], False, False, rng))
    for i in range(slow_raw):
        made.append(RawClient(target, f"soak-slow-{i}", BULK, True, True, rng))
    for i in range(centrifuge):
        chosen = rng.sample(CHANNELS, rng.randint(1, 3))
        made.append(CentrifugeClient(target, f"soak-cf-{i}", chosen, False, rng))
    for i in range(slow_cf):
        made.append(CentrifugeClient(target, f"soak-cfslow-{i}", [BULK, CHANNELS[i % 3]],
                                     True, rng))
    return made


def settling_time(args: argparse.Namespace) -> float:
    """About how long the server takes to settle: until sessions and history expire."""
    return max(args.session_ttl, args.history_ttl) + 5


def progress(start: float, args: argparse.Namespace, now: Sample, last: Sample,
             tally: Tally) -> None:
    """A line on stderr per sample while the traffic runs, with the time left."""
    elapsed = now["at"] - start
    interval = max(1e-6, now["at"] - last["at"])

    def rate(name: str) -> float:
        return (now["metrics"].get(name + "{*}", 0)
                - last["metrics"].get(name + "{*}", 0)) / interval

    certain = sum(1 for g in tally.gaps if g.kind == "live" or g.wire == "centrifuge")
    left = max(0.0, args.duration - elapsed) + settling_time(args)
    sys.stderr.write(
        f"[{elapsed:5.0f}/{args.duration:.0f} s] connections {now['connections'] or 0:.0f}, "
        f"RSS {now['rss_mib']:.1f} MiB, fds {now['fds']}, "
        f"publications/s {rate('omega_ws_messages_published_total'):.0f}, "
        f"deliveries/s {rate('omega_ws_messages_delivered_total'):.0f}, "
        f"gaps seen {len(tally.gaps)} ({certain} live or Centrifuge); "
        f"about {span(left)} left\n")


def settling(since: float, now: Sample, earliest: float, settle_end: float) -> None:
    """A line on stderr while the server settles: the figures that must come back."""
    figures = ", ".join(f"{name.replace('_', ' ')} {now[name]:.0f}" for name in GAUGES
                        if now[name] is not None)
    soonest = max(0.0, earliest - now["at"]) + 2
    sys.stderr.write(f"[settling {now['at'] - since:4.0f} s] {figures}, "
                     f"RSS {now['rss_mib']:.1f} MiB, fds {now['fds']}; about "
                     f"{span(soonest)} left, at most {span(settle_end - now['at'])}\n")


async def run(args: argparse.Namespace, process: subprocess.Popen[bytes], log: ServerLog,
              ws_port: int, admin_port: int, steps: Progress) -> dict[str, Any]:
    """Traffic for C{args.duration} seconds, then settle; figures and counts."""
    pid = process.pid
    samples = [await sample(pid, admin_port)]
    before = samples[0]
    steps.step(f"traffic: {args.clients} clients, {args.rate:g} API publications/s, "
               f"for {args.duration:g} s")
    start = time.monotonic()
    tally = Tally()
    target = Target(ws_port, admin_port, args.session_ttl, start + args.duration, tally)
    rng = random.Random(args.seed)
    tasks = [asyncio.create_task(c.run()) for c in clients(target, args.clients, rng)]
    tasks += [asyncio.create_task(api_publisher(target, channel, args.rate / 4, rng))
              for channel in (*CHANNELS, BULK)]
    tasks.append(asyncio.create_task(chaos(target, rng)))
    pending = set(tasks)
    while pending and time.monotonic() < target.deadline + 30:
        _, pending = await asyncio.wait(pending, timeout=args.interval)
        if process.poll() is not None:
            raise OSError(f"the server exited during the soak (status {process.returncode})")
        samples.append(await sample(pid, admin_port))
        log.read()
        progress(start, args, samples[-1], samples[-2], tally)
    for task in pending:
        task.cancel()
    if pending:
        tally.problem(f"{len(pending)} soak tasks did not stop within 30 s of the end")
    traffic_end = samples[-1]
    steps.step("settling: until sessions and history have expired and the figures are back")
    # Judged once every session and publication has outlived its TTL (and a
    # monitor run has seen it), then as soon as everything is back.
    earliest = time.monotonic() + max(args.session_ttl, args.history_ttl) + 3
    settle_end = time.monotonic() + max(args.settle, earliest - time.monotonic())
    said = time.monotonic()
    while True:
        await asyncio.sleep(2)
        samples.append(await sample(pid, admin_port))
        if time.monotonic() > settle_end or time.monotonic() > earliest and all(
                ok is not False for _, ok, _ in judge(before, samples[-1])):
            break
        if time.monotonic() - said >= args.interval:
            said = time.monotonic()
            settling(traffic_end["at"], samples[-1], earliest, settle_end)
    return {"samples": samples, "traffic_end": traffic_end, "tally": tally,
            "settled_s": samples[-1]["at"] - traffic_end["at"]}


def explain(tally: Tally, log: ServerLog, session_ttl: float) -> tuple[Counter[str], int]:
    """
    Mark the gaps the server warned about; count unexplained ones by likely
    cause, and the warnings for resumes that in fact missed nothing.
    """
    used: set[int] = set()
    causes: Counter[str] = Counter()
    for gap in tally.gaps:
        if gap.wire == "raw" and gap.kind == "resume":
            for i, (client_id, channel, at) in enumerate(log.gap_warnings):
                if i not in used and (client_id, channel) == (gap.client, gap.channel) and (
                        gap.connected_at - 2 <= at <= gap.seen_at + 2):
                    used.add(i)
                    gap.explained = True
                    break
        if gap.explained:
            continue
        closed_at = log.last_close(gap.client, gap.connected_at)
        if (gap.wire == "raw" and gap.kind == "resume" and closed_at is not None
                and not log.resumed(gap.client, gap.connected_at)
                and gap.connected_at - closed_at >= session_ttl):
            # The session ran out: the client counts its TTL from when it saw the
            # end, which for a stalled reader is long after the server's close.
            gap.explained = True
            continue
        cause = f"{gap.wire} {gap.kind}"
        if gap.kind == "resume" and gap.wire == "raw":
            cause += (f" after close {gap.after}; server: "
                      f"{log.why_closed(gap.client, gap.connected_at)}")
            if not log.resumed(gap.client, gap.connected_at):
                cause += " (server did not resume the session)"
        causes[cause] += 1
    needless = sum(1 for i, (client_id, channel, at) in enumerate(log.gap_warnings)
                   if i not in used and any((c, h) == (client_id, channel) and abs(t - at) < 2
                                            for c, h, t in tally.whole))
    return causes, needless


def report(args: argparse.Namespace, result: dict[str, Any], log: ServerLog,
           exit_status: int | None) -> tuple[str, dict[str, Any], bool]:
    samples: list[Sample] = result["samples"]
    tally: Tally = result["tally"]
    before, after = samples[0], samples[-1]
    c = tally.counts
    m0, m1 = before["metrics"], after["metrics"]

    def server(name: str, label: str = "", value: str = "") -> int:
        """How much a counter grew during the soak (all its series, or one label's)."""
        series = name + ("{" + label + '="' + value + '"}' if label else "{*}")
        return int(m1.get(series, 0) - m0.get(series, 0))

    causes, needless = explain(tally, log, args.session_ttl)
    gaps = "omega_ws_recovery_gaps_total"
    explained = sum(1 for g in tally.gaps if g.explained)
    unexplained = len(tally.gaps) - explained
    checks: list[tuple[str, bool, str]] = []
    figures: dict[str, dict[str, Any]] = {}
    lines = [f"omega-ws soak: {args.duration:.0f} s of traffic, {args.clients} clients, "
             f"{args.rate:g} API publications/s, seed {args.seed}; "
             f"settled in {result['settled_s']:.0f} s", "",
             f"{'figure':<16}{'before':>10}{'peak':>10}{'after':>10}   check"]
    for name, ok, limit in judge(before, after):
        values = [before[name], max((s[name] for s in samples if s[name] is not None),
                                    default=None), after[name]]
        figures[name] = dict(zip(("before", "peak", "after"), values, strict=True))
        cells = ["n/a" if v is None else f"{v:.1f}" if name == "rss_mib" else f"{v:.0f}"
                 for v in values]
        verdict = "n/a" if ok is None else f"{'ok' if ok else 'FAIL'} ({limit})"
        lines.append(f"{name:<16}" + "".join(f"{v:>10}" for v in cells) + f"   {verdict}")
        if ok is not None:
            checks.append((f"{name} back near its baseline", ok,
                           f"before {cells[0]}, after {cells[2]}, allowed {limit}"))

    def closes(wire: str) -> str:
        codes = sorted((k.rsplit(".", 1)[1], n) for k, n in c.items()
                       if k.startswith(f"closes.{wire}."))
        return ", ".join(f"{code}×{n}" for code, n in codes) or "none"

    counts = [
        ("connects", f"raw {c['connects.raw']}, centrifuge {c['connects.centrifuge']}"),
        ("raw resumes", f"{c['resumes.raw']} (server logged "
                        f"{sum(len(v) for v in log.resumes.values())})"),
        ("refused handshakes", ", ".join(f"{k[8:]}×{n}" for k, n in sorted(c.items())
                                         if k.startswith("refused.")) or "none"),
        ("slow-consumer closes", f"raw 4008×{c['closes.raw.4008']}, centrifuge "
                                 f"3008×{c['closes.centrifuge.3008']} (server counted "
                                 f"{server('omega_ws_slow_consumer_drops_total')})"),
        ("closes seen, raw", closes("raw")),
        ("closes seen, centrifuge", closes("centrifuge")),
        ("slow pauses / floods", f"raw {c['paused.raw']}/{c['floods.raw']}, centrifuge "
                                 f"{c['paused.centrifuge']}/{c['floods.centrifuge']}"),
        ("admin disconnects", f"raw {c['admin_disconnects.raw']}, centrifuge "
                              f"{c['admin_disconnects.centrifuge']}"),
        ("pings / pongs", f"{c['pings']} / {c['pongs']}"),
        ("publications sent", f"api {c['published.api']}, raw {c['published.raw']}, "
                              f"centrifuge {c['published.centrifuge']}"),
        ("flood messages sent", f"raw {c['flood.raw']}, centrifuge {c['flood.centrifuge']}"),
        ("server published", ", ".join(
            f"{source} {server('omega_ws_messages_published_total', 'source', source)}"
            for source in ("api", "raw", "centrifuge"))),
        ("messages received", f"raw {c['received.raw']}, centrifuge "
                              f"{c['received.centrifuge']}+{c['recovered_publications']} "
                              f"recovered"),
        ("duplicates", f"raw {c['duplicates.raw.resume']} on resume + "
                       f"{c['duplicates.raw.live']} live, centrifuge "
                       f"{c['duplicates.centrifuge.resume']} on recovery + "
                       f"{c['duplicates.centrifuge.live']} live + "
                       f"{c['duplicates.centrifuge.resubscribe']} after a resubscribe"),
        ("centrifuge recovered", f"true {c['recovered.true']}, false {c['recovered.false']}"),
        ("gaps explained", f"{explained} (server warned {len(log.gap_warnings)}, {needless} "
                           "of them for a resume that missed nothing; "
                           f"omega_ws_recovery_gaps_total raw {server(gaps, 'transport', 'raw')}"
                           f", centrifuge {server(gaps, 'transport', 'centrifuge')})"),
        ("gaps unexplained", f"{unexplained}" + "".join(
            f"\n{'':<26}{n} {cause}" for cause, n in causes.most_common())),
    ]
    lines += ["", *(f"{label:<26}{text}" for label, text in counts)]
    checks += [
        ("no unexplained gap", unexplained == 0, f"{unexplained} unexplained"),
        ("traffic flowed", c["received.raw"] > 0 and c["received.centrifuge"] > 0
         and c["published.api"] > 0, "publications sent and received on both wires"),
        ("no error in the server's log", not log.errors, f"{len(log.errors)} errors"),
        ("clean stop on SIGTERM", exit_status == 0, f"exit status {exit_status}"),
        ("no surprise on the client side", not tally.problems,
         f"{c['problems']} problems"),
    ]
    ok = all(passed for _, passed, _ in checks)
    lines += ["", *(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}"
                    for name, passed, detail in checks)]
    lines += [f"  server error: {e}" for e in log.errors[:5]]
    lines += [f"  client problem: {p}" for p in tally.problems[:10]]
    lines += [f"  unexplained gap: {g.wire} {g.client} on {g.channel}: {g.kind}, last "
              f"{g.last}, got {g.got}, after close {g.after}"
              for g in tally.gaps if not g.explained][:10]
    lines.append("PASSED" if ok else "FAILED")
    figures_json = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "server_log")},
        "figures": figures, "counts": dict(sorted(c.items())), "settled_s": result["settled_s"],
        "server_log": {"resumes": sum(len(v) for v in log.resumes.values()),
                       "gap_warnings": len(log.gap_warnings),
                       "slow_consumer_warnings": log.slow_warnings, "errors": log.errors[:20]},
        "gaps": {"explained": explained, "unexplained": unexplained,
                 "warned_but_nothing_missed": needless,
                 "unexplained_by_cause": dict(causes),
                 "unexplained_examples": [asdict(g) for g in tally.gaps
                                          if not g.explained][:20]},
        "problems": tally.problems,
        "checks": [{"name": n, "ok": p, "detail": d} for n, p, d in checks], "ok": ok}
    return "\n".join(lines), figures_json, ok


def start_server(workdir: Path, args: argparse.Namespace, log_path: Path
                 ) -> tuple[subprocess.Popen[bytes], ServerLog, int, int]:
    config = workdir / "soak.toml"
    config.write_text(config_text(args))
    with log_path.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "omega_ws", "--config", str(config)],
                                   stdout=out, stderr=subprocess.STDOUT)
    log = ServerLog(log_path)
    deadline = time.monotonic() + 20
    while len(log.urls) < 2:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = log_path.read_text(errors="replace")[-800:]
            raise SystemExit(f"omega-ws soak: error: the server did not start: {tail}")
        time.sleep(0.1)
        log.read()
    ports = {url.split(":")[0]: int(url.rsplit(":", 1)[1]) for url in log.urls}
    return process, log, ports["ws"], ports["http"]


def stop_server(process: subprocess.Popen[bytes]) -> int | None:
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None
    return process.returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m omega_ws.bench soak", description=description(__doc__),
        epilog="Progress goes to stderr: a line per phase and per sample, with an "
               "estimate of the time left; the report to stdout.  Exit status 0 when every "
               "check passed, 1 otherwise.  Details: docs/soak.md")
    parser.add_argument("--duration", type=float, default=600.0, metavar="SECONDS",
                        help="seconds of traffic (default 600)")
    parser.add_argument("--clients", type=int, default=24, metavar="N",
                        help="WebSocket clients, at least 6 (default 24)")
    parser.add_argument("--rate", type=float, default=100.0, metavar="PER_SECOND",
                        help="admin-API publications per second, over 4 channels (default 100)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed, to run the same traffic again (default: from the "
                             "time)")
    parser.add_argument("--interval", type=float, default=5.0, metavar="SECONDS",
                        help="seconds between samples, and progress lines (default 5)")
    parser.add_argument("--session-ttl", type=float, default=15.0, metavar="SECONDS",
                        help="the server's reconnect.session_ttl (default 15)")
    parser.add_argument("--history-ttl", type=float, default=20.0, metavar="SECONDS",
                        help="the server's channels.history_ttl (default 20)")
    parser.add_argument("--ping-interval", type=float, default=3.0, metavar="SECONDS",
                        help="the server's heartbeat.ping_interval and ping_timeout "
                             "(default 3)")
    parser.add_argument("--max-queue-size", type=int, default=65536, metavar="BYTES",
                        help="the server's server.max_queue_size (default 65536)")
    parser.add_argument("--settle", type=float, default=None, metavar="SECONDS",
                        help="most seconds to wait for the server to settle "
                             "(default: session TTL + history TTL + 30)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the figures here")
    parser.add_argument("--server-log", type=Path, metavar="PATH",
                        help="keep the server's log here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.clients < 6 or args.rate <= 0:
        parser.error("--duration and --rate must be > 0, --clients at least 6")
    if args.seed is None:
        args.seed = int(time.time()) % 100000
    if args.settle is None:
        args.settle = args.session_ttl + args.history_ttl + 30
    # Starting the server; the traffic; settling (and stopping the server).
    steps = Progress([(0.0, 2.0), (args.duration + 1, 0.0), (settling_time(args), 1.0)])
    with tempfile.TemporaryDirectory() as workdir:
        steps.step("starting the server")
        log_path = args.server_log or Path(workdir) / "server.log"
        process, log, ws_port, admin_port = start_server(Path(workdir), args, log_path)
        try:
            result = asyncio.run(run(args, process, log, ws_port, admin_port, steps))
        except (OSError, EOFError, TimeoutError, ValueError, IndexError) as e:
            # Mostly: the server died (no /proc entry, /metrics unreachable).
            status = process.poll()
            tail = log_path.read_text(errors="replace")[-1500:]
            raise SystemExit(f"omega-ws soak: error: {e!r}; server exit status {status}; "
                             f"its log ends with:\n{tail}") from None
        finally:
            exit_status = stop_server(process)
        log.read()
    steps.done()
    text, figures, ok = report(args, result, log, exit_status)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
