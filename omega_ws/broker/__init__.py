"""
Brokers carry publications between the hub and wherever they are shared,
and keep what outlives a connection: offsets, epochs, history, raw
sessions.  The hub talks to one interface, L{Broker}; L{MemoryBroker} is
the default (C{memory://}).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime

from .history import Publication, Recovery, StreamPosition
from .interface import Broker, BrokerUnavailable, Member, PublicationHandler
from .memory import MemoryBroker
from .sessions import Session, SessionStore

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Broker", "BrokerUnavailable", "Member", "MemoryBroker", "Publication",
           "PublicationHandler",
           "Recovery", "Session", "SessionStore", "StreamPosition", "make_broker"]


def make_broker(config: Config, clock: IReactorTime, node_id: str | None = None) -> Broker:
    """
    The broker for a validated configuration; C{clock} is the reactor,
    C{node_id} names this process to the others sharing a Redis.
    @raise ValueError: the URL is neither memory:// nor Redis URLs.
    """
    url = config.broker.url
    channels = config.channels
    # A stream outlives its history long enough for any held session to resume.
    meta_ttl = max(3600.0, channels.history_ttl, config.reconnect.session_ttl) * 2
    if not url.startswith("memory://"):
        # Imported only when used: the memory broker needs no Redis client.
        from .redis import RedisBroker, parse_broker_url
        from .redis.layout import redacted
        try:
            shards = parse_broker_url(url)
        except ValueError as e:
            raise ValueError(f"unsupported broker URL {redacted(url)!r}: {e}") from None
        return RedisBroker(clock, shards, node_id or uuid.uuid4().hex,
                           prefix=config.broker.prefix,
                           history_size=channels.history_size,
                           history_ttl=channels.history_ttl, meta_ttl=meta_ttl)
    return MemoryBroker(clock, channels.history_size, channels.history_ttl, meta_ttl,
                        history_max_bytes=channels.history_max_bytes,
                        history_total_bytes=channels.history_total_bytes,
                        max_streams=channels.max_streams,
                        max_sessions=config.reconnect.max_sessions)
