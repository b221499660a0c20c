"""
The omega-ws process harness (tests/nodes.py, the C{nodes} fixture) does
what the multi-node tests rely on: real ports from the log, a working
server behind them, clean stops and crashes.
"""

from __future__ import annotations

import signal
import urllib.request

import pytest
from websockets.sync.client import connect

from .conftest import StartNode


def test_a_node_listens_answers_and_stops(nodes: StartNode) -> None:
    node = nodes()
    assert node.ws_url == f"ws://127.0.0.1:{node.ws_port}"
    assert node.admin_url == f"http://127.0.0.1:{node.admin_port}"
    with urllib.request.urlopen(node.admin_url + "/health", timeout=5) as health:
        assert health.status == 200
    with connect(node.ws_url + "/room", open_timeout=5) as a, \
            connect(node.ws_url + "/room", open_timeout=5) as b:
        a.send('{"n": 1}')
        assert b.recv(5) == '{"n": 1}'
    assert "wss:// listener is off" in node.wait_for(r"listener is off")
    # twistd stops cleanly and then ends by the signal itself, by design.
    assert node.stop() in (0, -signal.SIGTERM)
    assert not node.alive and "omega-ws stopped" in node.output()


def test_nodes_are_separate_and_a_kill_is_a_crash(nodes: StartNode) -> None:
    first, second = nodes(), nodes("--log-format", "json")
    assert len({first.ws_port, first.admin_port, second.ws_port, second.admin_port}) == 4
    assert second.output().startswith("{")
    assert first.kill() == -signal.SIGKILL
    assert "omega-ws stopped" not in first.output()
    assert second.alive


def test_a_node_that_cannot_start_says_why(nodes: StartNode) -> None:
    with pytest.raises(AssertionError, match="'x' .from WEBSOCKET_MESSAGE_SIZE_LIMIT"):
        nodes(env={"WEBSOCKET_MESSAGE_SIZE_LIMIT": "x"})
