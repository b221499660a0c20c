"""
The Redis broker (C{broker.url = "redis://..."}): any number of omega-ws
processes sharing one or several Redis servers behave as one server.

Per channel, on the shard its name hashes to: a meta hash (epoch, top
offset), a stream of publications (entry id = offset) and a pub/sub
channel.  One Lua script per publish numbers, appends, trims, refreshes
the TTLs and publishes the payload tagged with its offset and epoch, so
every node sees one channel's publications in offset order.  A node
holds one pub/sub subscription per channel with local subscribers, and
checks what arrives: a gap or a foreign epoch (pub/sub lost a message,
Redis failed over or lost its data), or a stream that moved while nothing
arrived (the periodic position check), makes it resync the channel's
subscribers (L{Broker.set_resync_handler}).  See docs/several-nodes.md.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..history import Publication, Recovery, StreamPosition
from ..interface import BrokerUnavailable, Cluster, PublicationHandler, ResyncHandler
from ..sessions import SessionStore
from . import scripts
from .cluster import RedisCluster
from .layout import (
    Keys,
    LiveStreams,
    RedisAddress,
    Verdict,
    fnv1a_64,
    jump_hash,
    parse_publication,
)
from .resp import RedisError
from .sessions import RedisSessions
from .shard import Shard

__all__ = ["RedisBroker"]

_log = Logger()

Entries = list[Any]


class RedisBroker:
    """Publications, history, sessions and presence in Redis, shared by every node."""

    def __init__(self, reactor: Any, addresses: Sequence[RedisAddress], node_id: str, *,
                 prefix: str = "omega-ws", history_size: int = 1000,
                 history_ttl: float = 300.0, meta_ttl: float = 7200.0,
                 reply_timeout: float = 2.0, check_interval: float = 2.0,
                 start_timeout: float = 5.0) -> None:
        self.reactor = reactor
        self.keys = keys = Keys(prefix)
        self.node_id = node_id
        self.history_size = history_size
        self.history_ttl = max(1, int(history_ttl))
        self.meta_ttl = max(1, int(meta_ttl))
        self.start_timeout = start_timeout
        own = keys.node(node_id).encode()
        self.shards = [
            Shard(reactor, i, address, [own] + ([keys.control.encode()] if i == 0 else []),
                  self._message, self._resubscribed, reply_timeout)
            for i, address in enumerate(addresses)]
        self.live = LiveStreams()
        self._sessions = RedisSessions(self)
        self._cluster = RedisCluster(self)
        self.sessions: SessionStore = self._sessions
        self.cluster: Cluster = self._cluster
        self._handler: PublicationHandler = lambda publication: None
        self._resync_handler: ResyncHandler = lambda channel: None
        self.resyncs = 0
        self._running = False
        self._timers = [(LoopingCall(self._probe), 1.0),
                        (LoopingCall(self._check_positions), check_interval),
                        (LoopingCall(self._sessions.flush), 1.0)]
        for timer, _ in self._timers:
            timer.clock = reactor

    # -- the node's life ------------------------------------------------------------

    def set_handler(self, handler: PublicationHandler) -> None:
        self._handler = handler

    def set_resync_handler(self, handler: ResyncHandler) -> None:
        self._resync_handler = handler

    def start(self) -> Deferred[None]:
        """Fires once every shard is connected; fails if one is not within C{start_timeout}."""
        self._running = True
        for shard in self.shards:
            shard.start()
        started = self.reactor.seconds()
        ready: Deferred[None] = Deferred()

        def poll() -> None:
            if not self._running:
                ready.errback(BrokerUnavailable("stopped while starting"))
            elif not self.problem:
                for timer, interval in self._timers:
                    timer.start(interval, now=False)
                self._cluster.start()
                ready.callback(None)
            elif self.reactor.seconds() - started > self.start_timeout:
                problem = self.problem
                self.stop()  # no reconnecting in the background of a failed start
                ready.errback(BrokerUnavailable(problem))
            else:
                self.reactor.callLater(0.02, poll)

        poll()
        return ready

    def stop(self) -> Deferred[None]:
        self._running = False
        for timer, _ in self._timers:
            if timer.running:
                timer.stop()
        d = self._cluster.stop()
        d.addBoth(lambda _: self._sessions.flush())
        d.addBoth(lambda _: DeferredList([shard.stop() for shard in self.shards]))
        return d.addBoth(lambda _: None)

    @property
    def problem(self) -> str:
        """Why publications cannot flow now (the first shard's trouble); empty if they can."""
        for shard in self.shards:
            if shard.problem:
                return shard.problem
        return ""

    @property
    def healthy(self) -> bool:
        return self._running and not self.problem

    def stats(self) -> dict[str, int]:
        return {"resyncs": self.resyncs, "sessions": self._sessions.live_count,
                "redis_shards_up": sum(1 for s in self.shards if not s.problem)}

    def housekeeping(self, now: float) -> None:
        return None  # Redis expires what it holds

    def shard_for(self, name: str) -> Shard:
        shards = self.shards
        if len(shards) == 1:
            return shards[0]
        return shards[jump_hash(fnv1a_64(name.encode()), len(shards))]

    # -- publishing ---------------------------------------------------------------------

    def publish(self, channel: str, data: bytes) -> Deferred[Publication]:
        shard = self.shard_for(channel)
        keys = self.keys
        d = scripts.PUBLISH.call(
            shard.commands.execute,
            [keys.meta(channel), keys.stream(channel), keys.generation],
            [data, self.history_size, self.history_ttl, self.meta_ttl, keys.pubsub(channel),
             channel, secrets.token_hex(8), shard.run_id])
        return d.addCallbacks(
            lambda reply: Publication(channel, reply[0], reply[1].decode(), data), _unavailable)

    def _message(self, shard: Shard, name: bytes, data: bytes) -> None:
        """Everything pub/sub brings: publications, announcements, node traffic."""
        if data[:1] == b"p":
            channel = self.keys.channel_of(name)
            if channel is None or not shard.confirmed(name):
                return  # in flight when this node unsubscribed
            offset, epoch, payload = parse_publication(data)
            verdict = self.live.accept(channel, epoch, offset)
            if verdict is Verdict.DELIVER:
                self._handler(Publication(channel, offset, epoch, payload))
            elif verdict is Verdict.GAP:
                self._resync(channel, f"offset {offset} of epoch {epoch} came next")
        else:
            self._cluster.message(name, data)

    # -- subscriptions -------------------------------------------------------------------

    def subscribe(self, channel: str) -> None:
        self.shard_for(channel).subscribe(self.keys.pubsub(channel))

    def unsubscribe(self, channel: str) -> None:
        self.shard_for(channel).unsubscribe(self.keys.pubsub(channel))
        self.live.forget(channel)

    def subscribed(self, channel: str) -> Deferred[None]:
        return self.shard_for(channel).subscribed(self.keys.pubsub(channel))

    def _resync(self, channel: str, why: str) -> None:
        self.resyncs += 1
        _log.warn("channel {channel}: live stream broken ({why}); resyncing its subscribers",
                  channel=channel, why=why)
        self._resync_handler(channel)

    def _probe(self) -> None:
        for shard in self.shards:
            shard.probe()

    def _check_positions(self) -> None:
        """Per channel, not per connection: has the stream moved past what arrived?"""
        for shard in self.shards:
            self._compare(shard, at_once=shard.comparison_owed)

    def _resubscribed(self, shard: Shard) -> None:
        """After a reconnect: anything published meanwhile was lost to pub/sub."""
        self._compare(shard, at_once=True)

    def _compare(self, shard: Shard, at_once: bool) -> None:
        """
        Read the metas of the shard's subscribed channels, then, once every
        message published before the reads has arrived, compare.
        C{at_once}: no grace (after a reconnect); owed until it could run.
        """
        keys = self.keys
        if shard.commands.protocol is None:
            return
        channels = [c for c in map(keys.channel_of, sorted(shard.wanted)) if c is not None]
        if at_once:
            shard.comparison_owed = False
        if not channels:
            return
        reads = shard.commands.pipeline([("HMGET", keys.meta(c), "e", "s") for c in channels])

        def read(results: list[tuple[bool, Any]]) -> None:
            def compare() -> None:
                for channel, (ok, meta) in zip(channels, results, strict=True):
                    if ok:
                        self._compared(meta, shard, channel, at_once)

            done = all(ok for ok, _ in results) and shard.after_messages(compare)
            if at_once and not done:
                shard.comparison_owed = True  # the next check tries again

        DeferredList(reads, consumeErrors=True).addCallback(read)

    def _compared(self, meta: list[bytes | None], shard: Shard, channel: str,
                  at_once: bool) -> None:
        if not shard.confirmed(self.keys.pubsub(channel)):
            return  # unsubscribed meanwhile
        epoch, top = meta
        seen = self.live.last(channel)
        if epoch is None:  # Redis lost the stream: what the subscribers hold is gone
            if seen is not None and seen[1] > 0 and at_once:
                self.live.forget(channel)
                self._resync(channel, "the stream is gone from Redis")
            return
        position = (epoch.decode(), int(top or 0))
        if at_once:
            # Moved on while pub/sub was away (a stream that went back, Redis
            # having lost writes, gets a new epoch at its next publication).
            if seen is not None and (position[0] != seen[0] or position[1] > seen[1]):
                self.live.forget(channel)
                self.live.learned(channel, *position)
                self._resync(channel, f"the stream is at {position}, {seen} arrived")
        elif self.live.check(channel, *position):
            self._resync(channel, f"nothing arrived though the stream is at {position[1]}")

    # -- reading ----------------------------------------------------------------------

    def _read(self, channel: str, *args: Any) -> Deferred[tuple[str, int, int, Entries]]:
        shard = self.shard_for(channel)
        keys = self.keys
        d = scripts.READ.call(
            shard.commands.execute, [keys.meta(channel), keys.stream(channel), keys.generation],
            [channel, self.meta_ttl, secrets.token_hex(8), *args])

        def parsed(reply: list[Any]) -> tuple[str, int, int, Entries]:
            epoch, top = reply[0].decode(), int(reply[1])
            if self.keys.pubsub(channel) in shard.wanted:
                self.live.learned(channel, epoch, top)
            return epoch, top, int(reply[2]), reply[3]

        return d.addCallbacks(parsed, _unavailable)

    def _publications(self, channel: str, epoch: str, now: int, entries: Entries
                      ) -> list[Publication]:
        """Stream entries still within the history TTL, as publications."""
        oldest = now - self.history_ttl
        publications = []
        for entry_id, fields in entries:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            if int(values[b"t"]) < oldest:
                continue
            publications.append(Publication(channel, int(entry_id.split(b"-")[0]), epoch,
                                            values[b"d"]))
        return publications

    def position(self, channel: str) -> Deferred[StreamPosition]:
        return self._read(channel).addCallback(lambda r: StreamPosition(r[0], r[1]))

    def recover(self, channel: str, since: StreamPosition) -> Deferred[Recovery]:
        def recovered(read: tuple[str, int, int, Entries]) -> Recovery:
            epoch, top, now, entries = read
            position = StreamPosition(epoch, top)
            if (since.epoch or epoch) != epoch or since.offset > top:
                return Recovery(False, [], position)
            missed = top - since.offset
            kept = self._publications(channel, epoch, now, entries)[:missed]
            if len(kept) != missed or (kept and kept[0].offset != since.offset + 1):
                return Recovery(False, [], position)
            return Recovery(True, kept, position)

        return self._read(channel, f"{since.offset + 1}-0", "+", -1, 0).addCallback(recovered)

    def history(self, channel: str, since: StreamPosition | None, limit: int | None,
                reverse: bool) -> Deferred[tuple[list[Publication], StreamPosition]]:
        if limit == 0:
            return self.position(channel).addCallback(lambda p: ([], p))
        first, last = "-", "+"
        if since is not None:
            if reverse:
                if since.offset <= 1:
                    return self.position(channel).addCallback(lambda p: ([], p))
                last = f"{since.offset - 1}-0"
            else:
                first = f"{since.offset + 1}-0"
        # Going forward the oldest may have expired: count after the TTL filter.
        count = limit if reverse and limit is not None else -1

        def kept(read: tuple[str, int, int, Entries]) -> tuple[list[Publication], StreamPosition]:
            epoch, top, now, entries = read
            position = StreamPosition(epoch, top)
            if since is not None and since.epoch and since.epoch != epoch:
                return [], position
            publications = self._publications(channel, epoch, now, entries)
            if limit is not None and limit >= 0:
                publications = publications[:limit]
            return publications, position

        return self._read(channel, first, last, count, int(reverse)).addCallback(kept)


def _unavailable(failure: Failure) -> Failure:
    """Every broker failure as L{BrokerUnavailable}, with what Redis said."""
    if failure.check(BrokerUnavailable):
        return failure
    if failure.check(RedisError):
        return Failure(BrokerUnavailable(f"Redis refused: {failure.value}"))
    return Failure(BrokerUnavailable(f"Redis: {failure.getErrorMessage()}"))

