"""
The attacks of issue 7 (`python -m omega_ws.bench.attacks`), run as a smoke
test: two cheap ones at a tiny scale against real server processes.  It
must exit 0 (every bound held) and print its table; no timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def attacks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "omega_ws.bench.attacks", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=150)


@pytest.mark.timeout(180)
def test_two_cheap_attacks_run_and_print_the_table() -> None:
    result = attacks("--only", "replacements", "streams", "--scale", "0.05")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| attack | achieved | server closes | RSS MiB")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert set(rows) == {"streams", "replacements"}
    assert "4 accepted, then 8 x HTTP 429" in rows["replacements"]
    assert "streams 0" in rows["streams"]
    assert all(line.endswith("| held |") for line in rows.values())


@pytest.mark.timeout(120)
def test_json_rows_carry_the_figures() -> None:
    result = attacks("--only", "replacements", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [row] = json.loads(result.stdout)
    assert row["attack"] == "replacements"
    assert row["figures"]["outcomes"] == [101] * 4 + [429] * 8
    assert row["problems"] == []
    before, peak, after = row["rss_mib"]
    assert 0 < before <= peak


def test_a_bad_scale_is_refused() -> None:
    result = attacks("--scale", "0")
    assert result.returncode == 2
    assert "--scale" in result.stderr
