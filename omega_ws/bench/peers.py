"""
The servers omega-ws is measured against, run as their own processes:

  - C{websockets}: what the seed did — validate each message as a JSON
    object, then C{await ws.send()} to every client of the channel in turn.
  - C{autobahn}: stock Autobahn on Twisted, the message framed once with
    C{prepareMessage} and handed to each client with C{sendPreparedMessage}.

Both speak the raw protocol (path = channel, sender included), without
compression, with a 20 s ping, like omega-ws's defaults.

    python -m omega_ws.bench.peers websockets|autobahn PORT
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _is_object(message: str | bytes) -> bool:
    try:
        return isinstance(json.loads(message), dict)
    except ValueError:
        return False


def run_websockets(port: int) -> None:
    import asyncio

    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    channels: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        members = channels.setdefault(ws.request.path, set())
        members.add(ws)
        try:
            async for message in ws:
                if not _is_object(message):
                    await ws.close(1003, "Invalid message format")
                    break
                for client in list(members):
                    try:
                        await client.send(message)
                    except ConnectionClosed:
                        pass
        except ConnectionClosed:
            pass
        finally:
            members.discard(ws)

    async def main() -> None:
        async with serve(handler, "127.0.0.1", port, compression=None, max_size=1 << 20,
                         ping_interval=20, ping_timeout=10):
            await asyncio.Future()

    asyncio.run(main())


def run_autobahn(port: int) -> None:
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor

    channels: dict[str, set[Any]] = {}

    class Protocol(WebSocketServerProtocol):
        def onConnect(self, request: Any) -> None:
            self.channel = request.path

        def onOpen(self) -> None:
            channels.setdefault(self.channel, set()).add(self)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            if not _is_object(payload):
                self.sendClose(1000, "Invalid message format")
                return
            prepared = self.factory.prepareMessage(payload)
            for client in list(channels.get(self.channel, ())):
                client.sendPreparedMessage(prepared)

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
            channels.get(getattr(self, "channel", ""), set()).discard(self)

    factory = WebSocketServerFactory()
    factory.protocol = Protocol
    factory.setProtocolOptions(autoPingInterval=20, autoPingTimeout=10)
    reactor.listenTCP(port, factory, backlog=1024, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    peers = {"websockets": run_websockets, "autobahn": run_autobahn}
    if len(sys.argv) != 3 or sys.argv[1] not in peers:
        sys.stderr.write("usage: python -m omega_ws.bench.peers websockets|autobahn PORT\n")
        raise SystemExit(2)
    peers[sys.argv[1]](int(sys.argv[2]))
