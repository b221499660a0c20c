"""
Brokers carry publications between the hub and wherever they are shared,
and keep what outlives a connection: offsets, epochs, history, raw
sessions.  The hub talks to one interface, L{Broker}; L{MemoryBroker} is
the default (C{memory://}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime

from .history import Publication, Recovery, StreamPosition
from .interface import Broker, BrokerUnavailable, PublicationHandler
from .memory import MemoryBroker
from .sessions import Session, SessionStore

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Broker", "BrokerUnavailable", "MemoryBroker", "Publication", "PublicationHandler",
           "Recovery", "Session", "SessionStore", "StreamPosition", "make_broker"]


def make_broker(config: Config, clock: IReactorTime) -> Broker:
    """The broker for a validated configuration."""
    url = config.broker.url
    if url.startswith("memory://"):
        channels = config.channels
        # A stream outlives its history long enough for any held session to resume.
        meta_ttl = max(3600.0, channels.history_ttl, config.reconnect.session_ttl) * 2
        return MemoryBroker(clock, channels.history_size, channels.history_ttl, meta_ttl,
                            history_max_bytes=channels.history_max_bytes,
                            history_total_bytes=channels.history_total_bytes,
                            max_streams=channels.max_streams,
                            max_sessions=config.reconnect.max_sessions)
    raise ValueError(f"unsupported broker URL {url!r}")
