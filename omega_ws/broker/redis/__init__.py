"""
The Redis broker: several omega-ws nodes over one or several Redis
servers behave as one server.  L{RedisBroker} is the broker; the rest of
the package is its parts (connections, scripts, shards, sessions, what
spans the nodes).  See docs/several-nodes.md.
"""

from .broker import RedisBroker
from .layout import parse_broker_url

__all__ = ["RedisBroker", "parse_broker_url"]
