"""
The soak (`python -m omega_ws.bench soak`), run short with small limits: a
real server process, both wires, slow readers, resumes and recoveries for
about 25 s.  It must pass its own checks: no gap the server did not report,
resources back to their baseline, no server error, a clean stop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_a_short_soak_finds_no_unexplained_gap_and_no_leak(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "-m", "omega_ws.bench", "soak", "--duration", "25",
         "--session-ttl", "5", "--history-ttl", "6", "--seed", "7", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.rstrip().endswith("PASSED")
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert report["gaps"]["unexplained"] == 0, report["gaps"]
    counts = report["counts"]
    for key in ("connects.raw", "connects.centrifuge", "resumes.raw", "received.raw",
                "received.centrifuge", "published.api", "pings", "recovered.true"):
        assert counts.get(key, 0) > 0, key
    assert report["figures"]["connections"]["after"] == 0
    assert report["figures"]["connections"]["peak"] > 0


def test_the_soak_refuses_a_bad_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "omega_ws.bench", "soak", "--duration", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--duration and --rate must be > 0" in result.stderr
