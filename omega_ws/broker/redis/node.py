"""What the parts of the Redis broker (sessions, cluster) need of it."""

from __future__ import annotations

from typing import Any, Protocol

from .layout import Keys
from .shard import Shard

__all__ = ["Node"]


class Node(Protocol):
    """This node as the broker's parts see it: its id, its keys, its shards."""

    reactor: Any
    keys: Keys
    node_id: str
    shards: list[Shard]

    def shard_for(self, name: str) -> Shard:
        """The shard that holds C{name} (a channel, or a client id)."""
