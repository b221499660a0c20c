"""Log observers: JSON lines, and the level filter."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger

from omega_ws.config import LogConfig
from omega_ws.logs import make_observer


def test_json_format_is_one_object_per_line() -> None:
    stream = io.StringIO()
    log = Logger(namespace="test", observer=make_observer(LogConfig("json", "info"), stream))
    log.info("client {client_id} subscribed to {channel}", client_id="c1", channel="news")
    log.warn("second")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["log_format"] == "client {client_id} subscribed to {channel}"
    assert (first["client_id"], first["channel"]) == ("c1", "news")


def test_text_format_and_level_filter() -> None:
    stream = io.StringIO()
    log = Logger(namespace="test", observer=make_observer(LogConfig("text", "warn"), stream))
    log.info("hidden {x}", x=1)
    log.warn("shown {x}", x=2)
    assert "hidden" not in stream.getvalue()
    assert "shown 2" in stream.getvalue()
