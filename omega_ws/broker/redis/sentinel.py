"""
Redis Sentinel: which server is the master now.  The Sentinels are asked
in the order of the URL, each with a deadline (one that hangs must not
hide the next); the first that names the master answers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint

from ..interface import BrokerUnavailable
from .layout import RedisAddress
from .resp import protocol_factory

__all__ = ["master_of"]


@inlineCallbacks
def master_of(reactor: Any, address: RedisAddress, timeout: float) -> Any:
    """Fires with (host, port) of the master C{address}'s Sentinels name."""
    errors = []
    for host, port in address.sentinel:
        try:
            reply = yield _ask(reactor, host, port, address.master, timeout)
        except Exception as e:
            errors.append(f"{host}:{port}: {str(e) or type(e).__name__}")
            continue
        if reply:
            return (reply[0].decode(), int(reply[1]))
        errors.append(f"{host}:{port} knows no master {address.master!r}")
    raise BrokerUnavailable("no Sentinel named the master: " + "; ".join(errors))


@inlineCallbacks
def _ask(reactor: Any, host: str, port: int, master: str, timeout: float) -> Any:
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    protocol = yield endpoint.connect(protocol_factory(reactor))
    try:
        d = protocol.execute("SENTINEL", "get-master-addr-by-name", master)
        reply = yield d.addTimeout(timeout, reactor)
    finally:
        protocol.transport.abortConnection()
    return reply
