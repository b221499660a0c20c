"""Log observers for C{log.format} (text or JSON lines) and C{log.level}."""

from __future__ import annotations

from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

from .config import LogConfig

__all__ = ["make_observer"]


def make_observer(config: LogConfig, stream: IO[str]) -> ILogObserver:
    """
    An observer writing to C{stream}: text lines, or one JSON object per
    line (C{twisted.logger}'s event format, for log shippers); events below
    C{config.level} are dropped.
    """
    if config.format == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")
    else:
        observer = textFileLogObserver(stream)
    level = LogLevel.levelWithName(config.level)
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=level)])
