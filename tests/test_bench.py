"""
The benchmark tool itself, run small: it must keep working, since its
figures are how speed is judged.  (No timing is asserted here.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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


def test_bench_refuses_an_unknown_server() -> None:
    result = subprocess.run([sys.executable, "-m", "omega_ws.bench", "--servers", "nginx"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "omega-ws bench: error: unknown server 'nginx' (choose from omega-ws, websockets, "
        "autobahn)")
