"""systemd readiness notifications, to a real Unix datagram socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from twisted.logger import capturedLogs

from omega_ws.systemd import notify


def test_notify_sends_the_state_as_one_datagram(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert listener.recv(64) == b"READY=1"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"omega-ws-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(64) == b"STOPPING=1"


def test_without_systemd_nothing_is_sent() -> None:
    assert notify("READY=1", {}) is False


def test_an_unreachable_socket_is_a_warning_not_an_error(tmp_path: Path) -> None:
    with capturedLogs() as events:
        assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False
    assert [e["log_level"].name for e in events] == ["warn"]
