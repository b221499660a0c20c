"""
What spans the nodes sharing a Redis: presence, join/leave, the list of
live nodes, and surveys (a question every node answers: channels, info,
disconnect).

Presence: every node writes its local members of each channel into a
hash (client id -> who) and a sorted set (client id -> expiry) on the
channel's shard every C{PRESENCE_INTERVAL} seconds, with a TTL of three
intervals, and removes those who left; a read drops the expired.  So a
node that dies stops being present within C{PRESENCE_TTL} seconds.

Nodes: each node says it is alive on the control channel every
C{NODE_INTERVAL} seconds with its figures; one not heard of for three
intervals is gone.  A survey goes out on the control channel; each node
answers on the asker's own channel; the asker waits for every node it
knows of, or C{SURVEY_TIMEOUT} seconds.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..interface import AnnounceHandler, Member, PresenceSource, SurveyHandler
from . import scripts
from .node import Node

__all__ = ["RedisCluster"]

_log = Logger()

PRESENCE_INTERVAL = 5.0
PRESENCE_TTL = 15
NODE_INTERVAL = 2.0
SURVEY_TIMEOUT = 1.5


class RedisCluster:
    def __init__(self, broker: Node) -> None:
        self._broker = broker
        self._presence_source: PresenceSource = dict
        self._survey_handler: SurveyHandler = lambda kind, request: {}
        self._announce_handler: AnnounceHandler = lambda channel, kind, info: None
        self._written: dict[str, set[str]] = {}  # channel -> client ids written last sweep
        self.nodes: dict[str, tuple[dict[str, Any], float]] = {}  # other nodes: info, heard at
        self._surveys: dict[str, tuple[Deferred[list[Any]], list[Any], set[str]]] = {}
        self._timers = [(LoopingCall(self._sweep_presence), PRESENCE_INTERVAL),
                        (LoopingCall(self._say_alive), NODE_INTERVAL)]
        for timer, _ in self._timers:
            timer.clock = broker.reactor

    def start(self) -> None:
        for timer, interval in self._timers:
            timer.start(interval, now=True)
        # The others answer at once: a survey right after start knows them all.
        self._send_control({"t": "hello"})

    def stop(self) -> Deferred[None]:
        for timer, _ in self._timers:
            if timer.running:
                timer.stop()
        self._presence_source = dict  # nobody is here any more
        self._sweep_presence()
        return succeed(None)

    # -- presence ----------------------------------------------------------------------

    def set_presence_source(self, source: PresenceSource) -> None:
        self._presence_source = source

    def _sweep_presence(self) -> None:
        """Every local member again (their expiry moves on), and those gone removed."""
        now_present: dict[str, set[str]] = {}
        for channel, members in self._presence_source().items():
            if members:
                self._write_presence(channel, members)
                now_present[channel] = {m.client_id for m in members}
        for channel, before in self._written.items():
            gone = before - now_present.get(channel, set())
            if gone:
                self._remove_presence(channel, gone)
        self._written = now_present

    def present(self, channel: str, member: Member) -> None:
        self._write_presence(channel, [member])
        self._written.setdefault(channel, set()).add(member.client_id)

    def absent(self, channel: str, client_id: str) -> None:
        written = self._written.get(channel)
        if written is not None:
            written.discard(client_id)
        self._remove_presence(channel, {client_id})

    def _write_presence(self, channel: str, members: list[Member]) -> None:
        broker = self._broker
        keys = broker.keys
        args: list[Any] = [PRESENCE_TTL]
        for m in members:
            args += [m.client_id, json.dumps([m.user, m.transport, broker.node_id])]
        scripts.PRESENCE_ADD.call(broker.shard_for(channel).commands.execute,
                                  [keys.presence(channel), keys.presence_expiry(channel)],
                                  args).addErrback(lambda _: None)

    def _remove_presence(self, channel: str, gone: set[str]) -> None:
        keys = self._broker.keys
        commands = self._broker.shard_for(channel).commands
        for d in commands.pipeline([("HDEL", keys.presence(channel), *gone),
                                    ("ZREM", keys.presence_expiry(channel), *gone)]):
            d.addErrback(lambda _: None)

    def presence(self, channel: str, local: list[Member]) -> Deferred[list[Member]]:
        """Everyone subscribed to C{channel} on any node (this node's from C{local})."""
        broker = self._broker
        keys = broker.keys

        def merged(flat: list[bytes]) -> list[Member]:
            members = {m.client_id: m for m in local}
            for client_id, info in zip(flat[::2], flat[1::2], strict=True):
                user, transport, node = json.loads(info)
                if node != broker.node_id:
                    members.setdefault(client_id.decode(), Member(client_id.decode(), user,
                                                                  transport))
            return list(members.values())

        d = scripts.PRESENCE_READ.call(broker.shard_for(channel).commands.execute,
                                       [keys.presence(channel), keys.presence_expiry(channel)],
                                       [])
        return d.addCallback(merged)

    # -- join and leave ------------------------------------------------------------------

    def set_announce_handler(self, handler: AnnounceHandler) -> None:
        self._announce_handler = handler

    def announce(self, channel: str, kind: str, info: bytes) -> None:
        """Tell the other nodes' subscribers of C{channel} that someone joined or left."""
        broker = self._broker
        frame = kind[:1].encode() + broker.node_id.encode() + b" " + info
        broker.shard_for(channel).commands.execute(
            "PUBLISH", broker.keys.pubsub(channel), frame).addErrback(lambda _: None)

    # -- nodes and surveys ------------------------------------------------------------------

    def set_survey_handler(self, handler: SurveyHandler) -> None:
        self._survey_handler = handler

    def _say_alive(self) -> None:
        now = self._broker.reactor.seconds()
        for node, (_, heard) in list(self.nodes.items()):
            if now - heard > 3 * NODE_INTERVAL:
                del self.nodes[node]
        self._send_control({"t": "alive", "info": self._survey_handler("info", {})})

    def _send_control(self, message: dict[str, Any], to: str | None = None) -> None:
        broker = self._broker
        message["from"] = broker.node_id
        channel = broker.keys.control if to is None else broker.keys.node(to)
        broker.shards[0].commands.execute(
            "PUBLISH", channel, json.dumps(message, separators=(",", ":"))
        ).addErrback(lambda _: None)

    def survey(self, kind: str, request: dict[str, Any]) -> Deferred[list[Any]]:
        """Every node's answer to C{kind} (this node's first)."""
        answers = [self._survey_handler(kind, request)]
        waiting = set(self.nodes)
        if not waiting:
            return succeed(answers)
        survey_id = uuid.uuid4().hex
        done: Deferred[list[Any]] = Deferred()
        self._surveys[survey_id] = (done, answers, waiting)
        self._send_control({"t": "survey", "id": survey_id, "kind": kind, "request": request})
        self._broker.reactor.callLater(SURVEY_TIMEOUT, self._finish, survey_id)
        return done

    def _finish(self, survey_id: str) -> None:
        held = self._surveys.pop(survey_id, None)
        if held is not None:
            held[0].callback(held[1])

    def message(self, name: bytes, data: bytes) -> None:
        """Pub/sub traffic that is not a publication: control, replies, join/leave."""
        broker = self._broker
        kind = data[:1]
        if kind in (b"j", b"l"):
            node, _, info = data[1:].partition(b" ")
            channel = broker.keys.channel_of(name)
            if channel is not None and node.decode() != broker.node_id:
                self._announce_handler(channel, "join" if kind == b"j" else "leave", info)
            return
        try:
            message = json.loads(data)
            sender = message["from"]
        except (ValueError, KeyError, TypeError):
            return
        if sender == broker.node_id:
            return
        self._control(message, sender)

    def _control(self, message: dict[str, Any], sender: str) -> None:
        what = message.get("t")
        if what in ("alive", "hello"):
            self.nodes[sender] = (message.get("info") or {}, self._broker.reactor.seconds())
            if what == "hello":
                self._send_control({"t": "alive", "info": self._survey_handler("info", {})},
                                   to=sender)
        elif what == "survey":
            self.nodes.setdefault(sender, ({}, self._broker.reactor.seconds()))
            try:
                answer = self._survey_handler(str(message.get("kind")), message.get("request")
                                              or {})
            except Exception:
                _log.failure("answering a survey from node {node}", node=sender)
                answer = None
            self._send_control({"t": "reply", "id": message.get("id"), "answer": answer},
                               to=sender)
        elif what == "reply":
            held = self._surveys.get(str(message.get("id")))
            if held is not None:
                held[1].append(message.get("answer"))
                held[2].discard(sender)
                if not held[2]:
                    self._finish(str(message.get("id")))

